"""Overload: past the admission bound the gateway refuses at once with RESOURCE_EXHAUSTED and keeps
serving what it admitted; Triton's own queue limit is answered the same way.

These tests check behaviour, which holds on a machine shared with other work. How admitted latency
and goodput compare with capacity depends on the machine: `make overload` measures that and writes a
report (README, Reliability).
"""

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest

from gateway.config import Settings
from harness.gateway import RunningGateway, in_process
from harness.health import SERVING, wait_for_health
from harness.load import Outcome, timed
from model_export.triton_config import CPU_PROFILE, render_config
from ops.overload import image_queries, measure_overload, sample_photos
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from tests.triton_fixtures import (
    TINY_BACKBONE,
    TINY_CATALOG_SIZE,
    TINY_DIM,
    TINY_MAX_BATCH_SIZE,
    TINY_MODEL,
    TinyEmbedder,
    add_model,
    start_triton,
    tiny_settings,
)

pytestmark = pytest.mark.slow
IMAGE_LIMIT = 4


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return sample_photos()


@pytest.fixture(scope="module")
async def running(triton_server, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    """The exported model, whose CPU cost makes Triton the bottleneck as in production."""
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url,
                        data_dir=tmp_path_factory.mktemp("data"), max_concurrent_images=IMAGE_LIMIT,
                        embed_timeout_s=10, request_timeout_s=10)
    async with in_process(settings, TINY_CATALOG_SIZE) as running:
        yield running


async def test_three_times_capacity_is_shed_at_once_and_the_gateway_keeps_serving(running, photos):
    """Capacity is measured first, then offered three times over. Excess requests are refused without
    waiting for work, so a refusal is quicker than an admitted request; nothing else fails."""
    async with grpc.aio.insecure_channel(running.target) as channel:
        await wait_for_health(channel, SERVING)
        report = await measure_overload(image_queries(channel, photos), workers=IMAGE_LIMIT)
        print(report)
        assert report["codes_at_capacity"].keys() == {"OK"}
        assert report["codes"].keys() <= {"OK", "RESOURCE_EXHAUSTED"}
        assert report["codes"].get("OK") and report["codes"].get("RESOURCE_EXHAUSTED")
        assert report["refused_latency_ms"]["p50"] < report["admitted_latency_ms"]["p50"], "refusals do not queue"
        await wait_for_health(channel, SERVING, timeout_s=5)
        response = await pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(image=photos[0]), timeout=10)
    assert len(response.items) == 10
    assert running.sample("recsys_requests_total", {"method": "Recommend", "code": "INTERNAL"}) == 0


@pytest.fixture(scope="module")
def short_queue_triton(tmp_path_factory):
    """The tiny model behind a dynamic batcher that holds one request and waits 200 ms for more."""
    import torch

    module = torch.jit.script(TinyEmbedder(TINY_DIM).eval())
    repository = tmp_path_factory.mktemp("short_queue")
    add_model(repository, TINY_MODEL, render_config(TINY_MODEL, TINY_BACKBONE, TINY_DIM), module)
    server = start_triton(repository, dataclasses.replace(
        CPU_PROFILE, max_batch_size=TINY_MAX_BATCH_SIZE, preferred_batch_sizes=(TINY_MAX_BATCH_SIZE,),
        max_queue_delay_us=200_000, instances=1, max_queue_size=1))
    yield server
    server.stop()


async def test_a_full_triton_queue_is_resource_exhausted_too(short_queue_triton, redis_server, tmp_path, photos):
    settings = tiny_settings(short_queue_triton.grpc_url, redis_server.url, tmp_path, max_concurrent_images=64)
    async with in_process(settings, catalog_size=16) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            outcomes: list[Outcome] = await asyncio.gather(*(
                timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=10)) for photo in photos[:20]))
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await asyncio.gather(*(stub.Recommend(pb.RecommendRequest(image=photo), timeout=10)
                                       for photo in photos[:20]))
    codes = [o.code for o in outcomes]
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Triton is overloaded" in (error.value.details() or "")
