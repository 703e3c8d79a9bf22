"""Failing backends, for real: redis-server and tritonserver are stopped, paused (SIGSTOP) and restarted
under a running gateway, which must answer with the right status, keep what it can serve, and recover
by itself. Also: deadlines and cancellation end to end, and a graceful shutdown under load."""

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api.recsys.v1 import recsys_pb2 as pb
from gateway.api.recsys.v1 import recsys_pb2_grpc as pb_grpc
from gateway.catalog import open_catalog_store
from gateway.domain import ModelInfo, Unavailable
from gateway.fashion_mnist import load_split
from gateway.images import encode_png
from stack.load import Outcome, closed_loop, timed
from stack.net import free_port
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.reliability_fixtures import NOT_SERVING, SERVING, Running, running_gateway, tiny_settings, wait_for_health
from tests.triton_fixtures import start_triton

pytestmark = pytest.mark.slow
PRODUCT = "fmnist-train-000003"
RECOVERY_BOUND_S = 5.0
FAST_S = 2.0  # well below the 5 s request timeout, with room for a machine shared with other work


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server of this module's own, to stop and pause without disturbing other tests."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def own_triton(tiny_repository) -> Iterator[TritonServer]:
    server = start_triton(tiny_repository)
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def running(own_triton, own_redis, tmp_path_factory) -> AsyncIterator[Running]:
    settings = tiny_settings(own_triton.grpc_url, own_redis.url, tmp_path_factory.mktemp("data"))
    async with running_gateway(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def channel(running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(running.target) as channel:
        await wait_for_health(channel, SERVING)
        yield channel


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode_png(load_split("test").images[0])


def recommender(channel: grpc.aio.Channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


async def health_of(channel: grpc.aio.Channel) -> int:
    return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)).status


async def until_ok(send, bound_s: float = RECOVERY_BOUND_S) -> float:
    """Repeats a call until it answers OK without degradation; returns the seconds that took."""
    start = time.monotonic()
    while True:
        outcome: Outcome = await send()
        if outcome.code == "OK" and not outcome.degraded:
            return time.monotonic() - start
        assert time.monotonic() - start < bound_s, f"no recovery within {bound_s} s: {outcome}"
        await asyncio.sleep(0.05)


async def test_redis_stopped_mid_load_degrades_recommend_fails_record_view_and_both_recover(
        channel, own_redis, photo):
    stub = recommender(channel)
    outcomes: list[Outcome] = []

    async def recommend_and_record() -> Outcome:
        pair = await asyncio.gather(
            timed("recommend", stub.Recommend(pb.RecommendRequest(image=photo, user_id="u-redis"), timeout=5)),
            timed("view", stub.RecordView(pb.RecordViewRequest(user_id="u-redis", product_id=PRODUCT), timeout=5)))
        outcomes.extend(pair)
        return pair[0]

    load = asyncio.create_task(closed_loop(recommend_and_record, workers=3, seconds=6))
    await asyncio.sleep(1)
    await asyncio.to_thread(own_redis.stop)
    down = time.monotonic()
    await asyncio.sleep(1.5)
    assert await health_of(channel) == SERVING, "a history outage leaves image queries served"
    back = time.monotonic()
    await asyncio.to_thread(own_redis.start)
    up = time.monotonic()
    await load

    assert {o.code for o in outcomes} <= {"OK", "UNAVAILABLE"}, {o.code for o in outcomes}
    during = [o for o in outcomes if o.started > down and o.ended < back]
    recommends = [o for o in during if o.kind == "recommend"]
    views = [o for o in during if o.kind == "view"]
    assert recommends and all(o.code == "OK" and o.degraded == ("history",) for o in recommends)
    assert views and all(o.code == "UNAVAILABLE" for o in views), "a view is never acknowledged without Redis"
    assert max(o.seconds for o in during) < FAST_S, "failures are fast"
    last_failure = max(o.ended for o in outcomes if o.code != "OK" or o.degraded)
    recovery_s = max(0.0, last_failure - up)
    print(f"Redis down {back - down:.1f} s: {len(recommends)} degraded recommendations, {len(views)} refused views; "
          f"restart took {up - back:.2f} s, the gateway recovered {recovery_s:.2f} s after")
    assert recovery_s < RECOVERY_BOUND_S
    assert [o for o in outcomes if o.started > last_failure], "requests succeed again after the last failure"


async def test_triton_stopped_fails_image_queries_fast_flips_health_and_recovers_without_a_restart(
        channel, own_triton, photo):
    stub = recommender(channel)
    await stub.RecordView(pb.RecordViewRequest(user_id="u-triton", product_id=PRODUCT), timeout=5)
    stopping = time.monotonic()
    await asyncio.to_thread(own_triton.stop)
    stop_s = time.monotonic() - stopping
    image_query = await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=10))
    assert image_query.code == "UNAVAILABLE" and image_query.seconds < 1.0, image_query
    await wait_for_health(channel, NOT_SERVING, timeout_s=10)
    not_serving_s = time.monotonic() - stopping
    by_product = await stub.Recommend(pb.RecommendRequest(product_id=PRODUCT, limit=5), timeout=5)
    by_history = await stub.Recommend(pb.RecommendRequest(user_id="u-triton", limit=5), timeout=5)
    assert len(by_product.items) == 5 and len(by_history.items) == 5
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Recommend(pb.RecommendRequest(image=photo), timeout=10)
    assert "Triton" in error.value.details()

    started = time.monotonic()
    await asyncio.to_thread(own_triton.start)
    restart_s = time.monotonic() - started
    recovery_s = await until_ok(lambda: timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=5)))
    serving_s = await wait_for_health(channel, SERVING)
    print(f"Triton stopped (SIGTERM, {stop_s:.1f} s): image query failed in {image_query.seconds * 1000:.0f} ms, "
          f"health NOT_SERVING {not_serving_s:.1f} s after the stop began; Triton restart {restart_s:.1f} s, image queries back {recovery_s:.2f} s and "
          f"health SERVING {serving_s:.2f} s after it was ready")


async def test_a_hung_redis_costs_recommend_its_history_budget_only_and_record_view_fails_fast(
        channel, own_redis, photo):
    stub = recommender(channel)
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        recommend = await timed("recommend", stub.Recommend(pb.RecommendRequest(image=photo, user_id="u-slow"),
                                                            timeout=5))
        view = await timed("view", stub.RecordView(pb.RecordViewRequest(user_id="u-slow", product_id=PRODUCT),
                                                   timeout=5))
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    assert recommend.code == "OK" and recommend.degraded == ("history",) and recommend.seconds < FAST_S, recommend
    assert view.code == "UNAVAILABLE" and view.seconds < FAST_S, view
    await until_ok(lambda: timed("view", stub.RecordView(pb.RecordViewRequest(user_id="u-slow", product_id=PRODUCT),
                                                         timeout=5)))


async def test_a_hung_triton_is_bounded_by_the_callers_deadline_and_cancellation_frees_the_work(
        channel, running, own_triton, photo):
    stub = recommender(channel)
    in_flight = {"work": "image queries"}
    os.kill(own_triton.pid, signal.SIGSTOP)
    try:
        short = await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=0.5))
        capped = await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=30))
        calls = [stub.Recommend(pb.RecommendRequest(image=photo), timeout=30) for _ in range(4)]
        await asyncio.sleep(0.3)
        assert running.sample("recsys_in_flight", in_flight) == 4
        for call in calls:
            call.cancel()
        await asyncio.sleep(0.3)
        assert running.sample("recsys_in_flight", in_flight) == 0, "cancelled calls stop their work"
        assert running.sample("recsys_requests_total", {"method": "Recommend", "code": "CANCELLED"}) >= 4
    finally:
        os.kill(own_triton.pid, signal.SIGCONT)
    assert short.code == "DEADLINE_EXCEEDED" and short.seconds < 0.8, short
    embed_timeout_s = running.settings.embed_timeout_s
    assert capped.code == "DEADLINE_EXCEEDED" and embed_timeout_s <= capped.seconds < embed_timeout_s + 1, capped
    await until_ok(lambda: timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=5)))


async def test_a_catalog_outage_is_unavailable_and_heals_without_a_restart(channel, running, photo):
    """A Qdrant server cannot run here, so the outage is injected in front of the real embedded catalog."""
    await wait_for_health(channel, SERVING)
    pipeline = running.gateway.pipeline
    real = pipeline.catalog
    pipeline.catalog = Outage(real)
    stub = recommender(channel)
    try:
        for request in (pb.RecommendRequest(product_id=PRODUCT), pb.RecommendRequest(image=photo)):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Recommend(request, timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        await wait_for_health(channel, NOT_SERVING, timeout_s=10)
    finally:
        pipeline.catalog = real
    await until_ok(lambda: timed("product", stub.Recommend(pb.RecommendRequest(product_id=PRODUCT), timeout=5)))
    await wait_for_health(channel, SERVING)


class Outage:
    """Every call of the wrapped catalog fails as an unreachable Qdrant does."""

    def __init__(self, store: object) -> None:
        self._store = store

    def __getattr__(self, name: str):
        async def fail(*args: object, **kwargs: object) -> None:
            raise Unavailable("Qdrant cannot be reached (check QDRANT_URL and that the server is up)")

        return fail


async def test_a_qdrant_url_that_refuses_or_never_answers_is_unavailable_with_a_clear_message_fast(tmp_path):
    model = ModelInfo("product_embedder", "1", "efficientnet_lite0", 16)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for url in (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{silent.getsockname()[1]}"):
            store = open_catalog_store(url, tmp_path, "products", timeout_s=1)
            started = time.monotonic()
            with pytest.raises(Unavailable, match="Qdrant cannot be reached .check QDRANT_URL"):
                await store.open(model)
            assert time.monotonic() - started < 3
            await store.close()


async def test_graceful_shutdown_under_load_finishes_in_flight_refuses_new_and_flips_health_first(
        tiny_triton, redis_server, tmp_path, photo):
    """In flight means started by the server. A request the client has sent but the server has not yet
    taken up (on a busy machine gRPC can hold a few) is cancelled by gRPC's shutdown before it reaches
    the gateway: the server's own count of requests shows that none it started was cut off."""
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path)
    async with running_gateway(settings) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            await wait_for_health(channel, SERVING)
            statuses: list[tuple[float, int]] = []

            async def watch() -> None:
                async for answer in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                    statuses.append((time.monotonic(), answer.status))

            watcher = asyncio.create_task(watch())
            stub = recommender(channel)
            send = lambda: timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=10))  # noqa: E731
            load = asyncio.create_task(closed_loop(send, workers=8, seconds=1.3))
            await asyncio.sleep(1)
            deadline = time.monotonic() + 2  # stop at an instant when the server has requests in progress
            while not (in_progress := running.sample("recsys_in_flight", {"work": "requests"})) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            stop_called = time.monotonic()
            await running.gateway.stop(grace_s=5)
            stopped = time.monotonic()
            outcomes = await load
            watcher.cancel()

    served = {code: running.sample("recsys_requests_total", {"method": "Recommend", "code": code})
              for code in ("OK", "CANCELLED")}
    flipped = min(at for at, status in statuses if status == NOT_SERVING)
    finished = [o for o in outcomes if o.code == "OK" and o.ended > stop_called]
    refused = [o for o in outcomes if o.code != "OK"]
    new_refused = [o for o in refused if o.started >= stop_called]
    print(f"shutdown: {in_progress:.0f} in progress, {len(finished)} finished after stop was called, "
          f"{len(new_refused)} new requests refused, {len(refused) - len(new_refused)} sent before stop but not "
          f"yet taken up; stop took {stopped - stop_called:.2f} s")
    assert in_progress and len(finished) >= in_progress, "what the server had started finished"
    assert served["CANCELLED"] == 0 and served["OK"] == sum(o.code == "OK" for o in outcomes)
    assert all(o.code == "OK" for o in outcomes if o.ended <= stop_called)
    assert all(o.code in ("CANCELLED", "UNAVAILABLE") for o in refused if o.started < stop_called)
    assert new_refused and all(o.code == "UNAVAILABLE" for o in new_refused)
    assert flipped <= min(o.ended for o in new_refused), "health flips before a new request is refused"
