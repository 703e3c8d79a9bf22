"""Triton fixtures: a tiny TorchScript embedder repository and a real tritonserver over it.

Register with ``pytest_plugins = ["tests.triton_fixtures"]`` in tests/conftest.py. ``triton_server``
serves version 1 of the real exported ``model_repository/`` (``make model``) for end-to-end tests,
whatever other versions ``make finetune`` added there.
"""

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
import pytest_asyncio
import torch

from gateway.config import Settings
from gateway.embedder import TritonEmbedder
from model_export.triton_config import CPU_PROFILE, TritonProfile, render_config
from stack.triton import TritonServer, with_versions

TINY_MODEL = "tiny_embedder"
TINY_BACKBONE = "tiny-test"
TINY_DIM = 16
FLOAT_INPUT_MODEL = "float_input"
MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
TINY_MAX_BATCH_SIZE = 32  # above the message-size cap that test_triton.py sets, so that the cap shows
QUEUE_DELAY_US = 20_000  # long enough for concurrent test requests to meet in one dynamic batch
TINY_PROFILE = dataclasses.replace(CPU_PROFILE, max_batch_size=TINY_MAX_BATCH_SIZE, max_queue_delay_us=QUEUE_DELAY_US)
TINY_CATALOG_SIZE = 64  # Fashion-MNIST training images a gateway over the tiny model indexes


class Timeouts(TypedDict):
    """The gateway's timeouts, as Settings fields."""

    embed_timeout_s: float
    request_timeout_s: float


# For tests that check wiring rather than latency: a 2-core machine busy with Triton may take seconds
# to embed one image, which the production timeouts (3 s to embed, 5 s a request) would turn into errors.
PATIENT_TIMEOUTS = Timeouts(embed_timeout_s=20.0, request_timeout_s=30.0)


class TinyEmbedder(torch.nn.Module):
    """The exported models' signature in miniature: uint8 NHWC images -> L2-normalised float32 [N, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.patches = torch.nn.Conv2d(3, dim, kernel_size=8, stride=8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        pooled = torch.tanh(self.patches(pixels)).mean(dim=(2, 3))
        return torch.nn.functional.normalize(pooled, dim=1)


def tiny_settings(triton_url: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a gateway over the tiny test model."""
    return Settings(triton_url=triton_url, redis_url=redis_url, data_dir=data_dir, model_name=TINY_MODEL, **overrides)


def add_model(repository: Path, name: str, config: str, module: torch.jit.ScriptModule | None) -> Path:
    """Writes ``<name>/config.pbtxt`` and, given a module, ``<name>/1/model.pt``; returns the model folder."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    if module is not None:
        module.save(str(model_dir / "1" / "model.pt"))
    return model_dir


def write_test_repository(repository: Path) -> Path:
    """The tiny embedder plus a servable model the gateway must refuse (its input is float32)."""
    torch.manual_seed(0)
    module = torch.jit.script(TinyEmbedder(TINY_DIM).eval())

    def config(name: str) -> str:
        return render_config(name, backbone=TINY_BACKBONE, dim=TINY_DIM)

    add_model(repository, TINY_MODEL, config(TINY_MODEL), module)
    add_model(repository, FLOAT_INPUT_MODEL, config(FLOAT_INPUT_MODEL).replace("TYPE_UINT8", "TYPE_FP32"), module)
    return repository


def start_triton(repository: Path, profile: TritonProfile = CPU_PROFILE) -> TritonServer:
    """A ready tritonserver over ``repository`` on free ports, serving with ``profile``; the caller stops it."""
    return TritonServer(repository, profile=profile).start()


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver over version 1 of the exported model_repository/; fails with 'run make model' when it is empty."""
    server = start_triton(with_versions(MODEL_REPOSITORY, tmp_path_factory.mktemp("version_1"), ("1",)))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def tiny_triton(tiny_repository: Path) -> Iterator[TritonServer]:
    server = start_triton(tiny_repository, TINY_PROFILE)
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tiny_embedder(tiny_triton: TritonServer) -> AsyncIterator[TritonEmbedder]:
    embedder = await TritonEmbedder.connect(tiny_triton.grpc_url, TINY_MODEL)
    yield embedder
    await embedder.close()
