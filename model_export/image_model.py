"""Writes the ``image_embedder`` model into a Triton repository: image bytes in, the embedder's vectors out.

With IMAGE_PREPROCESSING=triton the gateway sends the encoded photo, and this python-backend model decodes it with
the gateway's own code (shipped next to ``model_export/triton_image_model.py`` as its ``model.py``) and runs the
embedder version the request names. It is written in the same form for production (the NGC image has the python
backend; its Python needs numpy and Pillow) and for the local stack, whose derived repository copies it unchanged.
``python -m model_export.image_model`` (part of ``make model``) writes it for an exported embedder.
"""

import argparse
import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import gateway
from gateway.embedder import IMAGE_INPUT, IMAGE_MODEL, IMAGE_OUTPUT
from model_export.export import CONFIG_FILENAME, READABLE_DIRECTORY, write_atomically
from model_export.triton_config import INPUT_NAME, OUTPUT_NAME, TritonProfile, parse_config

SOURCE = Path(__file__).resolve().with_name("triton_image_model.py")
# The gateway's decoding and what it imports, shipped as a package next to the model.
DECODING_MODULES = ("domain.py", "images.py")
VERSION = "1"
# The file the python backend runs in the version folder.
PYTHON_MODEL_FILENAME = "model.py"
# Decoding runs on the Triton host's CPU cores, one batch of requests per instance at a time; the requests waiting
# together reach the embedder as one batch, so the image model batches at most as many images as the embedder.
INSTANCES = 2
QUEUE_DELAY_US = 500


def render_image_config(embedder: str, dim: int, max_batch_size: int, instances: int = INSTANCES) -> str:
    """config.pbtxt of the image model in front of `embedder`, whose vectors have `dim` numbers and whose batches
    hold at most `max_batch_size` images."""
    config = model_config_pb2.ModelConfig(name=IMAGE_MODEL, backend="python", max_batch_size=max_batch_size)
    config.input.add(name=IMAGE_INPUT, data_type=model_config_pb2.TYPE_STRING, dims=[1])
    config.output.add(name=IMAGE_OUTPUT, data_type=model_config_pb2.TYPE_FP32, dims=[dim])
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    config.instance_group.add(count=instances, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    for key, value in (("EMBEDDER", embedder), ("EMBEDDER_INPUT", INPUT_NAME), ("EMBEDDER_OUTPUT", OUTPUT_NAME)):
        config.parameters[key].string_value = value
    return text_format.MessageToString(config)


def write_image_model(repository: Path, embedder: str) -> Path:
    """Writes ``<repository>/image_embedder`` for the exported `embedder` (its config gives the dimension); the
    version folder appears whole, replacing an older one. Returns the model's folder."""
    embedder_config = parse_config((repository / embedder / CONFIG_FILENAME).read_text())
    model_dir = repository / IMAGE_MODEL
    partial = model_dir / f".{VERSION}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    package = partial / "gateway"
    package.mkdir(parents=True)
    shutil.copyfile(SOURCE, partial / PYTHON_MODEL_FILENAME)
    (package / "__init__.py").write_text('"""The gateway\'s image decoding, as the image_embedder model runs it."""\n')
    for module in DECODING_MODULES:
        shutil.copyfile(Path(gateway.__file__).with_name(module), package / module)
    for path in (partial, package):
        path.chmod(READABLE_DIRECTORY)
    shutil.rmtree(model_dir / VERSION, ignore_errors=True)
    os.replace(partial, model_dir / VERSION)
    config = render_image_config(embedder, embedder_config.output[0].dims[0], embedder_config.max_batch_size)
    write_atomically(model_dir / CONFIG_FILENAME, lambda path: path.write_text(config))
    return model_dir


def local_image_config(production: str, profile: TritonProfile) -> str:
    """The image model's config for an embedder served with `profile`, whose batches may be smaller."""
    config = parse_config(production)
    config.max_batch_size = min(config.max_batch_size, profile.max_batch_size)
    return text_format.MessageToString(config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model_export.image_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--embedder", default="product_embedder", help="the exported embedder it runs")
    args = parser.parse_args(argv)
    print(f"wrote {write_image_model(args.repository, args.embedder)}")


if __name__ == "__main__":
    main()
