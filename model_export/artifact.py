"""`make model-artifact VERSION=N`: one model version as a versioned, reproducible tarball for delivery.

``build/artifacts/<name>-<N>.tar.gz`` holds, in Triton's repository layout, the production config
(``<name>/config.pbtxt``, GPU profile) and ``<name>/<N>/model.pt`` with the training card when the version has
one. For the image model (``--name image_embedder --version 1``, which decodes photos in Triton for
IMAGE_PREPROCESSING=triton) it holds its config and every file of its version folder: ``model.py`` and the
gateway's decoding code. The same files give the same bytes (entries sorted, no timestamps or owners), and
``<tarball>.sha256`` holds its digest in sha256sum's format. deploy/docker/model-repository.Dockerfile unpacks
artifacts into the image that Triton's init container copies from (deploy/k8s/triton.yaml).
"""

import argparse
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from tritonclient.grpc.model_config_pb2 import ModelConfig

from gateway.embedder import IMAGE_MODEL
from model_export.export import CARD_JSON, CARD_MARKDOWN, CONFIG_FILENAME, MODEL_FILENAME, write_atomically
from model_export.image_model import PYTHON_MODEL_FILENAME
from model_export.triton_config import PRODUCTION_PLATFORM, parse_config

READABLE_FILE = 0o644
READABLE_DIRECTORY = 0o755


def artifact_name(name: str, version: int) -> str:
    return f"{name}-{version}.tar.gz"


def artifact_members(repository: Path, name: str, version: int) -> dict[str, Path]:
    """The files of version ``version`` of model ``name`` to deliver, by their path in the tarball.

    Raises FileNotFoundError when the version was not written, ValueError when the config is not a production one.
    """
    model_dir = repository / name
    version_dir = model_dir / str(version)
    config_path = model_dir / CONFIG_FILENAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: run make model first")
    config = parse_config(config_path.read_text())
    if name == IMAGE_MODEL and config.name == name and _fronts_a_production_embedder(repository, config):
        files = _image_model_files(version_dir)
    elif config.name == name and config.platform == PRODUCTION_PLATFORM:
        files = _embedder_files(version_dir, version)
    else:
        raise ValueError(f"{config_path} is not the production config of '{name}'")
    return {path.relative_to(repository).as_posix(): path for path in [config_path, *files]}


def _fronts_a_production_embedder(repository: Path, config: ModelConfig) -> bool:
    """Whether `config` is the image model as `make model` writes it: python backend, in front of an embedder with
    the production config, batching as that embedder does (a local derivation batches less)."""
    embedder_path = repository / config.parameters["EMBEDDER"].string_value / CONFIG_FILENAME
    if config.backend != "python" or not embedder_path.is_file():
        return False
    embedder = parse_config(embedder_path.read_text())
    return embedder.platform == PRODUCTION_PLATFORM and embedder.max_batch_size == config.max_batch_size


def _embedder_files(version_dir: Path, version: int) -> list[Path]:
    """The version's weights and its training card when it has one."""
    weights = version_dir / MODEL_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: export version {version} first (make model, "
                                "make finetune)")
    return [weights, *(path for path in (version_dir / CARD_MARKDOWN, version_dir / CARD_JSON) if path.is_file())]


def _image_model_files(version_dir: Path) -> list[Path]:
    """Every file of the image model's version folder (its model.py and the decoding package), bytecode left out."""
    if not (version_dir / PYTHON_MODEL_FILENAME).is_file():
        raise FileNotFoundError(f"{version_dir / PYTHON_MODEL_FILENAME} does not exist: run make model first")
    return sorted(path for path in version_dir.rglob("*") if path.is_file() and "__pycache__" not in path.parts)


def _entry(path: str, size: int, mode: int, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.type = size, mode, kind
    return info


def write_artifact(members: dict[str, Path], target: Path) -> str:
    """Writes the tarball of ``members`` (path in the tarball -> file) to ``target``; returns its sha256."""
    folders = sorted({parent.as_posix() for path in members for parent in Path(path).parents if parent != Path(".")})
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for folder in folders:
            archive.addfile(_entry(folder, 0, READABLE_DIRECTORY, tarfile.DIRTYPE))
        for path in sorted(members):
            data = members[path].read_bytes()
            archive.addfile(_entry(path, len(data), READABLE_FILE, tarfile.REGTYPE), io.BytesIO(data))
    write_atomically(target, lambda path: path.write_bytes(buffer.getvalue()))
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    write_atomically(target.with_name(target.name + ".sha256"),
                     lambda path: path.write_text(f"{digest}  {target.name}\n"))
    return digest


def build_artifact(repository: Path, name: str, version: int, out: Path) -> Path:
    """``out/<name>-<version>.tar.gz`` from the repository's files of that version; returns its path."""
    target = out / artifact_name(name, version)
    write_artifact(artifact_members(repository, name, version), target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--name", default="product_embedder", help="Triton model name")
    parser.add_argument("--version", type=int, required=True, help="model version to deliver")
    parser.add_argument("--out", type=Path, default=Path("build/artifacts"))
    args = parser.parse_args(argv)
    try:
        target = build_artifact(args.repository, args.name, args.version, args.out)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {target} (sha256 in {target.name}.sha256)")


if __name__ == "__main__":
    main()
