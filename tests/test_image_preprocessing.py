"""Photos decoded in Triton (IMAGE_PREPROCESSING=triton): the image model against the gateway's own decoding, over a
real tritonserver serving two versions of the tiny embedder."""

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image

from gateway.domain import FailedPrecondition, InvalidArgument
from gateway.embedder import IMAGE_MODEL, TritonEmbedder
from gateway.images import ImageLimits, preprocess
from model_export.image_model import write_image_model
from model_export.triton_config import CPU_PROFILE, parse_config, render_config
from stack.triton import TritonServer, derive_local_repository
from tests.triton_fixtures import TINY_BACKBONE, TINY_DIM, TINY_MODEL, TinyEmbedder, start_triton

TIMEOUT_S = 60.0


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


RNG = np.random.default_rng(7)
PHOTOS = {
    "RGB JPEG, odd size": encoded(Image.fromarray(RNG.integers(0, 255, (157, 301, 3), dtype=np.uint8)), "JPEG"),
    "greyscale PNG": encoded(Image.fromarray(RNG.integers(0, 255, (28, 28), dtype=np.uint8)), "PNG"),
    "16-bit greyscale PNG": encoded(Image.fromarray(RNG.integers(0, 65535, (40, 30), dtype=np.uint16)), "PNG"),
    "RGBA PNG": encoded(Image.fromarray(RNG.integers(0, 255, (60, 90, 4), dtype=np.uint8), "RGBA"), "PNG"),
    "palette GIF": encoded(Image.fromarray(RNG.integers(0, 255, (50, 50, 3), dtype=np.uint8)).convert("P"), "GIF"),
}


@pytest.fixture(scope="module")
def decoding_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """Two versions of the tiny embedder (different weights) and the image model in front of them."""
    repository = tmp_path_factory.mktemp("decoding_repository")
    (repository / TINY_MODEL).mkdir()
    (repository / TINY_MODEL / "config.pbtxt").write_text(render_config(TINY_MODEL, TINY_BACKBONE, TINY_DIM))
    for version in (1, 2):
        torch.manual_seed(version)
        (repository / TINY_MODEL / str(version)).mkdir()
        torch.jit.script(TinyEmbedder(TINY_DIM).eval()).save(str(repository / TINY_MODEL / str(version) / "model.pt"))
    write_image_model(repository, TINY_MODEL)
    server = start_triton(repository, CPU_PROFILE)  # the embedder takes batches of at most 4 images
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["1", "2"])
async def decoding_embedder(decoding_triton: TritonServer, request: pytest.FixtureRequest
                            ) -> AsyncIterator[TritonEmbedder]:
    embedder = await TritonEmbedder.connect(decoding_triton.grpc_url, TINY_MODEL, request.param, decodes=True)
    yield embedder
    await embedder.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("photo", PHOTOS, ids=list(PHOTOS))
async def test_a_photo_decoded_in_triton_embeds_as_the_gateway_decodes_it(decoding_embedder: TritonEmbedder,
                                                                          photo: str) -> None:
    data = PHOTOS[photo]
    in_gateway = (await decoding_embedder.embed(preprocess(data)[np.newaxis], TIMEOUT_S))[0]
    in_triton = await decoding_embedder.embed_encoded(data, ImageLimits(), TIMEOUT_S)
    assert in_triton.shape == (TINY_DIM,)
    np.testing.assert_allclose(in_triton, in_gateway, atol=1e-5, rtol=0)


@pytest.mark.asyncio(loop_scope="module")
async def test_each_request_runs_the_embedder_version_its_gateway_pinned(decoding_triton: TritonServer) -> None:
    data = PHOTOS["RGB JPEG, odd size"]
    vectors = []
    for version in ("1", "2"):
        embedder = await TritonEmbedder.connect(decoding_triton.grpc_url, TINY_MODEL, version, decodes=True)
        async with embedder:
            vectors.append(await embedder.embed_encoded(data, ImageLimits(), TIMEOUT_S))
            np.testing.assert_allclose(vectors[-1], (await embedder.embed(preprocess(data)[np.newaxis], TIMEOUT_S))[0],
                                       atol=1e-5, rtol=0)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3), "the two versions have different weights"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("data", "limits"), [
    (b"", ImageLimits()),
    (b"not an image at all", ImageLimits()),
    (PHOTOS["RGB JPEG, odd size"][:200], ImageLimits()),
    (PHOTOS["RGB JPEG, odd size"], ImageLimits(max_bytes=100)),
    (PHOTOS["RGB JPEG, odd size"], ImageLimits(max_pixels=1000)),
    (PHOTOS["RGB JPEG, odd size"], ImageLimits(max_side=300)),
], ids=["empty", "not an image", "truncated", "too many bytes", "too many pixels", "side too long"])
async def test_a_photo_triton_refuses_gets_the_gateways_own_message(decoding_embedder: TritonEmbedder, data: bytes,
                                                                     limits: ImageLimits) -> None:
    with pytest.raises(InvalidArgument) as in_gateway:
        preprocess(data, limits)
    with pytest.raises(InvalidArgument) as in_triton:
        await decoding_embedder.embed_encoded(data, limits, TIMEOUT_S)
    assert str(in_triton.value) == str(in_gateway.value)
    assert len(await decoding_embedder.embed_encoded(PHOTOS["greyscale PNG"], ImageLimits(), TIMEOUT_S)) == TINY_DIM


async def test_decoding_in_triton_needs_the_image_model(tiny_triton: TritonServer) -> None:
    with pytest.raises(FailedPrecondition, match=f"needs Triton's model '{IMAGE_MODEL}', which `make model` writes"):
        await TritonEmbedder.connect(tiny_triton.grpc_url, TINY_MODEL, decodes=True)


def test_the_image_model_runs_locally_as_written_and_names_its_embedder(tmp_path: Path) -> None:
    production = tmp_path / "production"
    (production / TINY_MODEL).mkdir(parents=True)
    (production / TINY_MODEL / "config.pbtxt").write_text(render_config(TINY_MODEL, TINY_BACKBONE, TINY_DIM))
    model_dir = write_image_model(production, TINY_MODEL)
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert (config.backend, config.output[0].dims[:]) == ("python", [TINY_DIM])
    assert config.parameters["EMBEDDER"].string_value == TINY_MODEL
    assert sorted(path.name for path in (model_dir / "1" / "gateway").iterdir()) == \
        ["__init__.py", "domain.py", "images.py"]
    assert (model_dir / "1" / "gateway" / "images.py").read_text() == \
        (Path(__file__).parent.parent / "gateway" / "images.py").read_text()
    assert config.max_batch_size == 32, "as the embedder's production (GPU) profile"
    derive_local_repository(production, tmp_path / "local")
    local = parse_config((tmp_path / "local" / IMAGE_MODEL / "config.pbtxt").read_text())
    assert local.max_batch_size == CPU_PROFILE.max_batch_size, "never more images than the local embedder takes"
    local.max_batch_size = config.max_batch_size
    assert local == config
    assert (tmp_path / "local" / IMAGE_MODEL / "1" / "model.py").read_text() == \
        (model_dir / "1" / "model.py").read_text()


@pytest.mark.asyncio(loop_scope="module")
async def test_more_concurrent_photos_than_the_embedder_batches_are_all_embedded(decoding_embedder: TritonEmbedder
                                                                                 ) -> None:
    photos = list(PHOTOS.values()) * 4  # 20 at once, more than a batch of the embedder
    vectors = await asyncio.gather(*(decoding_embedder.embed_encoded(data, ImageLimits(), TIMEOUT_S)
                                     for data in photos))
    for data, vector in zip(photos, vectors, strict=True):
        np.testing.assert_allclose(vector, (await decoding_embedder.embed(preprocess(data)[np.newaxis], TIMEOUT_S))[0],
                                   atol=1e-5, rtol=0)
