"""`make model-artifact`: one model version as a reproducible tarball, unpacked into the repository Triton serves."""

import asyncio
import fnmatch
import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tritonclient.grpc import InferenceServerClient

from gateway.embedder import IMAGE_MODEL, TritonEmbedder
from gateway.images import ImageLimits, preprocess
from model_export.artifact import artifact_name, build_artifact, main
from model_export.export import CARD_JSON, CARD_MARKDOWN
from model_export.image_model import local_image_config, write_image_model
from model_export.triton_config import CPU_PROFILE, local_config, render_config
from stack.triton import TritonServer
from tests.triton_fixtures import TINY_BACKBONE, TINY_DIM, TINY_MODEL, TinyEmbedder, add_model

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "docker" / "model-repository.Dockerfile"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """The tiny model's version 1, plus a version 2 with a training card."""
    module = torch.jit.script(TinyEmbedder(TINY_DIM).eval())
    model_dir = add_model(tmp_path / "repository", TINY_MODEL, render_config(TINY_MODEL, TINY_BACKBONE, TINY_DIM),
                          module)
    (model_dir / "2").mkdir()
    module.save(str(model_dir / "2" / "model.pt"))
    (model_dir / "2" / CARD_JSON).write_text("{}\n")
    (model_dir / "2" / CARD_MARKDOWN).write_text("# Training card\n")
    (model_dir / "2" / "notes.txt").write_text("not delivered\n")
    return tmp_path / "repository"


def test_an_artifact_holds_the_version_its_config_and_card_and_is_reproducible(repository: Path,
                                                                              tmp_path: Path) -> None:
    first = build_artifact(repository, TINY_MODEL, 2, tmp_path / "first")
    again = build_artifact(repository, TINY_MODEL, 2, tmp_path / "again")
    assert first.name == artifact_name(TINY_MODEL, 2) == f"{TINY_MODEL}-2.tar.gz"
    assert first.read_bytes() == again.read_bytes()
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert first.with_name(first.name + ".sha256").read_text() == f"{digest}  {first.name}\n"
    with tarfile.open(first) as archive:
        files = {member.name: member for member in archive.getmembers() if member.isfile()}
        assert sorted(files) == sorted([f"{TINY_MODEL}/config.pbtxt", f"{TINY_MODEL}/2/model.pt",
                                        f"{TINY_MODEL}/2/{CARD_JSON}", f"{TINY_MODEL}/2/{CARD_MARKDOWN}"])
        assert all(member.mtime == 0 and member.uid == 0 for member in archive.getmembers())
        config = archive.extractfile(f"{TINY_MODEL}/config.pbtxt")
        assert config is not None and config.read() == (repository / TINY_MODEL / "config.pbtxt").read_bytes()


def test_the_image_model_artifact_holds_its_config_model_and_decoding_code(repository: Path, tmp_path: Path) -> None:
    model_dir = write_image_model(repository, TINY_MODEL)
    (model_dir / "1" / "gateway" / "__pycache__").mkdir()
    (model_dir / "1" / "gateway" / "__pycache__" / "images.cpython-311.pyc").write_bytes(b"left by a server")
    first = build_artifact(repository, IMAGE_MODEL, 1, tmp_path / "first")
    assert first.name == f"{IMAGE_MODEL}-1.tar.gz"
    assert first.read_bytes() == build_artifact(repository, IMAGE_MODEL, 1, tmp_path / "again").read_bytes()
    with tarfile.open(first) as archive:
        files = sorted(member.name for member in archive.getmembers() if member.isfile())
    assert files == [f"{IMAGE_MODEL}/1/gateway/{name}" for name in ("__init__.py", "domain.py", "images.py")] + [
        f"{IMAGE_MODEL}/1/model.py", f"{IMAGE_MODEL}/config.pbtxt"]
    with pytest.raises(SystemExit, match=r"image_embedder/2/model\.py does not exist: run make model first"):
        main(["--repository", str(repository), "--name", IMAGE_MODEL, "--version", "2", "--out", str(tmp_path)])
    config = model_dir / "config.pbtxt"
    config.write_text(local_image_config(config.read_text(), CPU_PROFILE))  # as the local launcher derives it
    with pytest.raises(SystemExit, match="is not the production config of 'image_embedder'"):
        main(["--repository", str(repository), "--name", IMAGE_MODEL, "--version", "1", "--out", str(tmp_path)])


def test_only_an_exported_version_with_the_production_config_is_delivered(repository: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"model\.pt does not exist: export version 3 first"):
        main(["--repository", str(repository), "--name", TINY_MODEL, "--version", "3", "--out", str(tmp_path)])
    config = repository / TINY_MODEL / "config.pbtxt"
    config.write_text(local_config(config.read_text()))
    with pytest.raises(SystemExit, match="is not the production config"):
        main(["--repository", str(repository), "--name", TINY_MODEL, "--version", "1", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.tar.gz"))


def test_the_repository_image_unpacks_every_artifact_into_the_folder_the_init_container_copies() -> None:
    instructions = [line.split(maxsplit=2) for line in DOCKERFILE.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    added = [rest for instruction, *rest in instructions if instruction == "ADD"]
    for name, version in (("product_embedder", 12), (IMAGE_MODEL, 1)):
        assert [destination for sources, destination in added
                if fnmatch.fnmatch(artifact_name(name, version), sources)] == ["/models/"], name
    assert re.fullmatch(r"\d+(:\d+)?", next(rest[0] for instruction, *rest in instructions if instruction == "USER"))


@pytest.mark.slow
def test_unpacked_artifacts_are_a_repository_triton_serves_in_explicit_mode(repository: Path,
                                                                             tmp_path: Path) -> None:
    write_image_model(repository, TINY_MODEL)
    unpacked = tmp_path / "unpacked"
    for name, version in ((TINY_MODEL, 1), (TINY_MODEL, 2), (IMAGE_MODEL, 1)):
        with tarfile.open(build_artifact(repository, name, version, tmp_path / "artifacts")) as archive:
            archive.extractall(unpacked, filter="data")
    with TritonServer(unpacked, explicit=True) as server:
        client = InferenceServerClient(server.grpc_url)
        try:
            assert client.is_model_ready(TINY_MODEL, "1") and client.is_model_ready(TINY_MODEL, "2")
            assert client.is_model_ready(IMAGE_MODEL)
        finally:
            client.close()
        assert asyncio.run(_decoded_in_triton_as_in_the_gateway(server.grpc_url))


async def _decoded_in_triton_as_in_the_gateway(url: str) -> bool:
    """Whether a photo sent to the delivered image model embeds as the gateway's decoding of it does."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(buffer, "JPEG")
    async with await TritonEmbedder.connect(url, TINY_MODEL, "2", decodes=True) as embedder:
        in_triton = await embedder.embed_encoded(buffer.getvalue(), ImageLimits(), 60.0)
        in_gateway = (await embedder.embed(preprocess(buffer.getvalue())[np.newaxis], 60.0))[0]
    return bool(np.allclose(in_triton, in_gateway, atol=1e-5, rtol=0))
