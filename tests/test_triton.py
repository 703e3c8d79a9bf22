"""Integration tests over a real tritonserver: the launcher, the python-backend model and TritonEmbedder."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.domain import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelInfo,
    RecsysError,
    ResourceExhausted,
    Unavailable,
)
from gateway.embedder import IMAGE_BYTES, REQUEST_OVERHEAD_BYTES, TritonEmbedder, check_model, domain_error
from model_export.triton_config import ALLOCATOR_ENV, local_config, render_config
from stack.net import free_port
from stack.triton import PYTHON_MODEL_SOURCE, TritonServer, TritonStartError, derive_local_repository
from tests.triton_fixtures import FLOAT_INPUT_MODEL, TINY_BACKBONE, TINY_DIM, TINY_MODEL, TINY_PROFILE, add_model


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 224, 224, 3), dtype=np.uint8)


def torchscript_embeddings(repository: Path, images: np.ndarray) -> np.ndarray:
    """The same model.pt run in this process."""
    torch.set_num_threads(2)
    module = torch.jit.load(str(repository / TINY_MODEL / "1" / "model.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(images)).numpy()


async def model_counts(url: str, at_least_inferred: int = 0) -> tuple[int, int]:
    """(images inferred, model executions) of the tiny model, once Triton has counted ``at_least_inferred``
    images (it updates its statistics just after answering)."""
    async with InferenceServerClient(url) as client:
        for _ in range(100):
            stats = (await client.get_inference_statistics(TINY_MODEL)).model_stats[0]
            if stats.inference_count >= at_least_inferred:
                break
            await asyncio.sleep(0.05)
    return stats.inference_count, stats.execution_count


def test_launcher_serves_the_derived_python_backend_repository(tiny_triton: TritonServer,
                                                               tiny_repository: Path) -> None:
    for model in (TINY_MODEL, FLOAT_INPUT_MODEL):
        production, derived = tiny_repository / model, tiny_triton.local_repository / model
        assert (derived / "config.pbtxt").read_text() == local_config((production / "config.pbtxt").read_text(),
                                                                      TINY_PROFILE)
        assert (derived / "1" / "model.py").read_bytes() == PYTHON_MODEL_SOURCE.read_bytes()
        assert (derived / "1" / "model.pt").is_symlink()
        assert (derived / "1" / "model.pt").resolve() == (production / "1" / "model.pt").resolve()


def child_environments(pid: int) -> list[dict[str, str]]:
    """The environments of the direct children of process ``pid`` (read from /proc)."""
    environments = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                entries = (stat.parent / "environ").read_bytes().split(b"\0")
                environments.append(dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry))
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return environments


def test_the_processes_running_the_model_use_the_serving_allocator_settings(tiny_triton: TritonServer) -> None:
    assert tiny_triton.pid is not None
    stubs = child_environments(tiny_triton.pid)
    assert stubs, "tritonserver started no python backend stub"
    for environment in stubs:
        assert ALLOCATOR_ENV.items() <= environment.items()


def test_deriving_an_empty_repository_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make model"):
        derive_local_repository(tmp_path, tmp_path / "local")


async def test_embedder_reads_the_model_identity_from_triton(tiny_embedder: TritonEmbedder) -> None:
    assert tiny_embedder.info == ModelInfo(name=TINY_MODEL, version="1", backbone=TINY_BACKBONE, dim=TINY_DIM)
    assert tiny_embedder.max_batch_size == 32
    assert await tiny_embedder.ready()


async def test_triton_output_equals_in_process_torchscript(tiny_embedder: TritonEmbedder,
                                                           tiny_repository: Path) -> None:
    images = random_images(5, seed=1)
    served = await tiny_embedder.embed(images, timeout_s=10.0)
    assert served.dtype == np.float32 and served.shape == (5, TINY_DIM)
    assert np.abs(served - torchscript_embeddings(tiny_repository, images)).max() <= 1e-5
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


async def test_concurrent_requests_are_batched_and_get_their_own_rows(tiny_triton: TritonServer,
                                                                      tiny_embedder: TritonEmbedder,
                                                                      tiny_repository: Path) -> None:
    batches = [random_images(1 + index % 3, seed=100 + index) for index in range(12)]
    inferred_before, executed_before = await model_counts(tiny_triton.grpc_url)
    results = await asyncio.gather(*(tiny_embedder.embed(batch, timeout_s=20.0) for batch in batches))
    images = sum(len(batch) for batch in batches)
    inferred_after, executed_after = await model_counts(tiny_triton.grpc_url, inferred_before + images)
    for batch, result in zip(batches, results):
        assert np.abs(result - torchscript_embeddings(tiny_repository, batch)).max() <= 1e-5
    assert inferred_after - inferred_before == images
    assert executed_after - executed_before < len(batches), "no two requests shared a forward pass"


async def test_batches_above_max_batch_size_are_split(tiny_embedder: TritonEmbedder, tiny_repository: Path) -> None:
    images = random_images(tiny_embedder.max_batch_size + 8, seed=2)
    served = await tiny_embedder.embed(images, timeout_s=20.0)
    assert np.abs(served - torchscript_embeddings(tiny_repository, images)).max() <= 1e-5


async def test_the_message_size_limit_caps_the_request_batch_and_the_requests_go_together(
        tiny_triton: TritonServer, tiny_repository: Path) -> None:
    limit = REQUEST_OVERHEAD_BYTES + 4 * IMAGE_BYTES
    async with await TritonEmbedder.connect(tiny_triton.grpc_url, TINY_MODEL, max_message_bytes=limit) as embedder:
        assert embedder.max_batch_size == 4
        in_flight, most_in_flight = 0, 0
        infer = embedder._infer

        async def counted(batch: np.ndarray, timeout_s: float) -> np.ndarray:
            nonlocal in_flight, most_in_flight
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            try:
                return await infer(batch, timeout_s)
            finally:
                in_flight -= 1

        embedder._infer = counted  # type: ignore[method-assign]
        images = random_images(10, seed=4)
        served = await embedder.embed(images, timeout_s=20.0)
    assert np.abs(served - torchscript_embeddings(tiny_repository, images)).max() <= 1e-5
    assert most_in_flight == 3, "the three requests of 4, 4 and 2 images were sent one after the other"


@pytest.mark.parametrize("images", [
    np.zeros((2, 224, 224, 3), np.float32),
    np.zeros((2, 112, 112, 3), np.uint8),
    np.zeros((224, 224, 3), np.uint8),
    np.zeros((0, 224, 224, 3), np.uint8),
], ids=["float32", "112px", "no-batch-axis", "empty"])
async def test_malformed_images_are_invalid_arguments(tiny_embedder: TritonEmbedder, images: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match=r"uint8 array of shape \[N, 224, 224, 3\]"):
        await tiny_embedder.embed(images, timeout_s=5.0)


async def test_a_model_with_float_input_is_refused(tiny_triton: TritonServer) -> None:
    with pytest.raises(FailedPrecondition, match=f"'{FLOAT_INPUT_MODEL}' takes images__0 FP32"):
        await TritonEmbedder.connect(tiny_triton.grpc_url, FLOAT_INPUT_MODEL)


async def test_an_unknown_model_is_unavailable(tiny_triton: TritonServer) -> None:
    with pytest.raises(Unavailable, match="unknown model"):
        await TritonEmbedder.connect(tiny_triton.grpc_url, "no_such_model")


async def test_an_unreachable_server_is_unavailable_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"Triton at 127\.0\.0\.1:\d+"):
        await TritonEmbedder.connect(f"127.0.0.1:{free_port()}", TINY_MODEL, timeout_s=30.0)
    assert time.monotonic() - started < 5.0


async def test_a_message_limit_below_one_image_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold one"):
        await TritonEmbedder.connect("127.0.0.1:1", TINY_MODEL, max_message_bytes=IMAGE_BYTES)


async def test_a_spent_deadline_is_deadline_exceeded(tiny_embedder: TritonEmbedder) -> None:
    with pytest.raises(DeadlineExceeded, match="did not answer within"):
        await tiny_embedder.embed(random_images(1, seed=3), timeout_s=1e-4)
    with pytest.raises(DeadlineExceeded, match="ran out of its 0 s budget"):
        await tiny_embedder.embed(random_images(1, seed=3), timeout_s=0.0)


@pytest.mark.parametrize("status, message, expected", [
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", Unavailable),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceeded),
    ("StatusCode.RESOURCE_EXHAUSTED", "too many pings", ResourceExhausted),
    ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", ResourceExhausted),
    ("StatusCode.INTERNAL", "RuntimeError: shape mismatch", Unavailable),
    (None, "model version must be a string", Unavailable),
])
def test_triton_errors_map_to_domain_errors(status: str | None, message: str, expected: type[RecsysError]) -> None:
    error = domain_error(InferenceServerException(message, status), "embedding 1 image", timeout_s=0.5)
    assert type(error) is expected
    assert str(error).startswith("embedding 1 image: ")


async def test_ready_is_false_after_close(tiny_triton: TritonServer) -> None:
    embedder = await TritonEmbedder.connect(tiny_triton.grpc_url, TINY_MODEL)
    await embedder.close()
    assert not await embedder.ready()


def _tiny_signature() -> tuple[service_pb2.ModelMetadataResponse, model_config_pb2.ModelConfig]:
    metadata = service_pb2.ModelMetadataResponse(
        name=TINY_MODEL, versions=["1", "3", "2"],
        inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(name="images__0", datatype="UINT8",
                                                                 shape=[-1, 224, 224, 3])],
        outputs=[service_pb2.ModelMetadataResponse.TensorMetadata(name="embeddings__0", datatype="FP32",
                                                                  shape=[-1, TINY_DIM])])
    config = model_config_pb2.ModelConfig(name=TINY_MODEL, max_batch_size=32)
    config.parameters["backbone"].string_value = TINY_BACKBONE
    return metadata, config


def test_check_model_picks_the_latest_served_version_unless_one_is_asked() -> None:
    metadata, config = _tiny_signature()
    assert check_model(metadata, config, "").version == "3"
    assert check_model(metadata, config, "2").version == "2"


def _set_shape(tensor: service_pb2.ModelMetadataResponse.TensorMetadata, shape: list[int]) -> None:
    tensor.ClearField("shape")
    tensor.shape.extend(shape)


Spoiler = Callable[[service_pb2.ModelMetadataResponse, model_config_pb2.ModelConfig], object]


@pytest.mark.parametrize("spoil, message", [
    (lambda metadata, _: _set_shape(metadata.inputs[0], [-1, 112, 112, 3]), r"UINT8 \[-1, 112, 112, 3\]"),
    (lambda metadata, _: _set_shape(metadata.inputs[0], [224, 224, 3]), r"takes images__0 UINT8 \[224, 224, 3\]"),
    (lambda metadata, _: metadata.inputs.add(name="mask", datatype="BOOL", shape=[-1]), r"mask BOOL \[-1\]"),
    (lambda metadata, _: setattr(metadata.outputs[0], "datatype", "FP16"), "returns embeddings__0 FP16"),
    (lambda metadata, _: _set_shape(metadata.outputs[0], [-1, 4, 4]), r"returns embeddings__0 FP32 \[-1, 4, 4\]"),
    (lambda _, config: config.parameters.pop("backbone"), "no 'backbone' parameter"),
], ids=["112px", "unbatched", "two-inputs", "fp16-output", "3d-output", "no-backbone"])
def test_check_model_refuses_other_signatures(spoil: Spoiler, message: str) -> None:
    metadata, config = _tiny_signature()
    spoil(metadata, config)
    with pytest.raises(FailedPrecondition, match=message):
        check_model(metadata, config, "")


@pytest.mark.slow
def test_a_broken_repository_fails_fast_with_the_server_log(tmp_path: Path) -> None:
    add_model(tmp_path / "repository", "missing_weights", render_config("missing_weights", "tiny-test", TINY_DIM), None)
    server = TritonServer(tmp_path / "repository", work_dir=tmp_path / "work", ready_timeout_s=120.0)
    with pytest.raises(TritonStartError, match="exited") as failure:
        server.start()
    assert "no TorchScript file at" in str(failure.value)
    assert not server.running
