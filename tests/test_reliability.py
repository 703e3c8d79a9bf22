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

from catalog_sources.fashion_mnist import load_split
from gateway.composition import Components
from gateway.config import Settings
from gateway.domain import ModelInfo, Unavailable
from gateway.images import encode_png
from harness.gateway import RunningGateway, in_process
from harness.health import NOT_SERVING, SERVING, eventually, wait_for_health
from harness.load import Outcome, closed_loop, timed
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.net import free_port
from stack.redis import RedisServer
from stack.triton import TritonServer
from tests.triton_fixtures import TINY_CATALOG_SIZE, TINY_PROFILE, start_triton, tiny_settings

pytestmark = pytest.mark.slow
PRODUCT = "fmnist-train-000003"
# Recovery after a backend returns: the Triton channel retries with a backoff capped at 1 s and Redis connections
# are retried on the next call, so seconds are plenty; the bound only keeps a broken recovery from hanging.
RECOVERY_BOUND_S = 10.0
PHASE_TIMEOUT_S = 60.0  # a bound for each phase of a load test, far above what it takes


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server of this module's own, to stop and pause without disturbing other tests."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def own_triton(tiny_repository) -> Iterator[TritonServer]:
    server = start_triton(tiny_repository, TINY_PROFILE)
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def running(own_triton, own_redis, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = tiny_settings(own_triton.grpc_url, own_redis.url, tmp_path_factory.mktemp("data"))
    async with in_process(settings, TINY_CATALOG_SIZE) as running:
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
        channel, running, own_redis, photo):
    stub = recommender(channel)
    outcomes: list[Outcome] = []

    async def recommend_and_record(number: int) -> Outcome:
        pair = await asyncio.gather(
            timed("recommend", stub.Recommend(pb.RecommendRequest(image=photo, user_id="u-redis"), timeout=5)),
            timed("view", stub.RecordView(pb.RecordViewRequest(user_id="u-redis", product_id=PRODUCT), timeout=5)))
        outcomes.extend(pair)
        return pair[0]

    def answered_since(at: float, kind: str, healthy: bool) -> int:
        return sum(o.started > at and o.kind == kind and (o.ok and not o.degraded) == healthy for o in outcomes)

    done = asyncio.Event()
    load = asyncio.create_task(closed_loop(recommend_and_record, workers=3, seconds=3 * PHASE_TIMEOUT_S, stop=done))
    try:
        await eventually(lambda: answered_since(0, "view", healthy=True) >= 3, PHASE_TIMEOUT_S, "views recorded")
        await asyncio.to_thread(own_redis.stop)
        down = time.monotonic()
        await eventually(lambda: min(answered_since(down, "recommend", False), answered_since(down, "view", False))
                         >= 3, PHASE_TIMEOUT_S, "requests answered while Redis is down")
        assert await health_of(channel) == SERVING, "a history outage leaves image queries served"
        back = time.monotonic()
        await asyncio.to_thread(own_redis.start)
        up = time.monotonic()
        await eventually(lambda: answered_since(up, "view", healthy=True) >= 3, PHASE_TIMEOUT_S,
                         "views recorded after the restart")
    finally:
        done.set()
        await load

    assert {o.code for o in outcomes} <= {"OK", "UNAVAILABLE"}, {o.code for o in outcomes}
    during = [o for o in outcomes if o.started > down and o.ended < back]
    recommends = [o for o in during if o.kind == "recommend"]
    views = [o for o in during if o.kind == "view"]
    assert recommends and all(o.ok and o.degraded == ("history",) for o in recommends)
    assert views and all(o.code == "UNAVAILABLE" for o in views), "a view is never acknowledged without Redis"
    assert max(o.seconds for o in during) < running.settings.request_timeout_s, "answered within the request budget"
    last_failure = max(o.ended for o in outcomes if not o.ok or o.degraded)
    recovery_s = max(0.0, last_failure - up)
    print(f"Redis down {back - down:.1f} s: {len(recommends)} degraded recommendations, {len(views)} refused views; "
          f"restart took {up - back:.2f} s, the gateway recovered {recovery_s:.2f} s after")
    assert recovery_s < RECOVERY_BOUND_S
    assert [o for o in outcomes if o.started > last_failure], "requests succeed again after the last failure"


async def test_triton_stopped_fails_image_queries_fast_flips_health_and_recovers_without_a_restart(
        channel, running, own_triton, photo):
    stub = recommender(channel)
    await stub.RecordView(pb.RecordViewRequest(user_id="u-triton", product_id=PRODUCT), timeout=5)
    stopping = time.monotonic()
    await asyncio.to_thread(own_triton.stop)
    stop_s = time.monotonic() - stopping
    image_query = await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=10))
    assert image_query.code == "UNAVAILABLE", image_query
    assert image_query.seconds < running.settings.embed_timeout_s, "it fails without waiting out its budget"
    await wait_for_health(channel, NOT_SERVING, timeout_s=10)
    not_serving_s = time.monotonic() - stopping
    by_product = await stub.Recommend(pb.RecommendRequest(product_id=PRODUCT, limit=5), timeout=5)
    by_history = await stub.Recommend(pb.RecommendRequest(user_id="u-triton", limit=5), timeout=5)
    assert len(by_product.items) == 5 and len(by_history.items) == 5
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Recommend(pb.RecommendRequest(image=photo), timeout=10)
    assert "Triton" in (error.value.details() or "")

    started = time.monotonic()
    await asyncio.to_thread(own_triton.start)
    restart_s = time.monotonic() - started
    recovery_s = await until_ok(lambda: timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=5)))
    serving_s = await wait_for_health(channel, SERVING)
    print(f"Triton stopped (SIGTERM, {stop_s:.1f} s): image query failed in {image_query.seconds * 1000:.0f} ms, "
          f"health NOT_SERVING {not_serving_s:.1f} s after the stop began; Triton restart {restart_s:.1f} s, "
          f"image queries back {recovery_s:.2f} s and "
          f"health SERVING {serving_s:.2f} s after it was ready")


async def test_a_hung_redis_costs_recommend_its_history_budget_only_and_record_view_fails_fast(
        channel, running, own_redis, photo):
    stub = recommender(channel)
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        recommend = await timed("recommend", stub.Recommend(pb.RecommendRequest(image=photo, user_id="u-slow"),
                                                            timeout=5))
        view = await timed("view", stub.RecordView(pb.RecordViewRequest(user_id="u-slow", product_id=PRODUCT),
                                                   timeout=5))
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    request_budget_s = running.settings.request_timeout_s
    assert recommend.ok and recommend.degraded == ("history",) and recommend.seconds < request_budget_s, recommend
    assert view.code == "UNAVAILABLE" and view.seconds < request_budget_s, view
    await until_ok(lambda: timed("view", stub.RecordView(pb.RecordViewRequest(user_id="u-slow", product_id=PRODUCT),
                                                         timeout=5)))


async def test_a_hung_triton_is_bounded_by_the_callers_deadline_and_cancellation_frees_the_work(
        channel, running, own_triton, photo):
    stub = recommender(channel)
    in_flight = {"work": "image queries"}
    embed_timeout_s, request_timeout_s = running.settings.embed_timeout_s, running.settings.request_timeout_s
    os.kill(own_triton.pid, signal.SIGSTOP)
    try:
        short = await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=0.5))
        capped = await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=30))
        calls = [stub.Recommend(pb.RecommendRequest(image=photo), timeout=30) for _ in range(4)]
        await eventually(lambda: running.sample("recsys_in_flight", in_flight) == 4, embed_timeout_s,
                         "four image queries in progress")
        for call in calls:
            call.cancel()
        await eventually(lambda: running.sample("recsys_in_flight", in_flight) == 0, embed_timeout_s,
                         "cancelled calls stopping their work")
        assert running.sample("recsys_requests_total", {"method": "Recommend", "code": "CANCELLED"}) >= 4
    finally:
        os.kill(own_triton.pid, signal.SIGCONT)
    assert short.code == "DEADLINE_EXCEEDED" and short.seconds < embed_timeout_s, "the caller's deadline, not ours"
    assert capped.code == "DEADLINE_EXCEEDED" and embed_timeout_s <= capped.seconds < request_timeout_s, capped
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
            settings = Settings(qdrant_url=url, data_dir=tmp_path, search_timeout_s=1)
            store = Components(settings).catalog_store("products")
            started = time.monotonic()
            with pytest.raises(Unavailable, match=r"Qdrant cannot be reached .check QDRANT_URL"):
                await store.open(model)
            assert time.monotonic() - started < settings.request_timeout_s, "the search budget bounds it"
            await store.close()


async def test_graceful_shutdown_under_load_finishes_in_flight_refuses_new_and_flips_health_first(
        tiny_triton, redis_server, tmp_path, photo):
    """In flight means started by the server. A request the client has sent but the server has not yet
    taken up (on a busy machine gRPC can hold a few) is cancelled by gRPC's shutdown before it reaches
    the gateway: the server's own count of requests shows that none it started was cut off."""
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path)
    async with in_process(settings, TINY_CATALOG_SIZE) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            await wait_for_health(channel, SERVING)
            statuses: list[tuple[float, int]] = []

            async def watch() -> None:
                async for answer in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                    statuses.append((time.monotonic(), answer.status))

            watcher = asyncio.create_task(watch())
            stub = recommender(channel)
            outcomes: list[Outcome] = []

            async def send(number: int) -> Outcome:
                outcomes.append(await timed("image", stub.Recommend(pb.RecommendRequest(image=photo), timeout=10)))
                return outcomes[-1]

            done = asyncio.Event()
            load = asyncio.create_task(closed_loop(send, workers=8, seconds=3 * PHASE_TIMEOUT_S, stop=done))
            try:
                await eventually(lambda: sum(o.ok for o in outcomes) >= 8, PHASE_TIMEOUT_S, "image queries answered")
                in_progress = 0.0

                def requests_in_progress() -> bool:
                    nonlocal in_progress
                    in_progress = running.sample("recsys_in_flight", {"work": "requests"})
                    return in_progress > 0

                await eventually(requests_in_progress, PHASE_TIMEOUT_S, "requests in progress")  # stop then
                stop_called = time.monotonic()
                await running.gateway.stop(grace_s=5)
                stopped = time.monotonic()
                await eventually(lambda: any(o.started >= stop_called for o in outcomes), PHASE_TIMEOUT_S,
                                 "a request sent after the stop")
            finally:
                done.set()
                await load
                watcher.cancel()

    served = {code: running.sample("recsys_requests_total", {"method": "Recommend", "code": code})
              for code in ("OK", "CANCELLED")}
    flipped = min(at for at, status in statuses if status == NOT_SERVING)
    finished = [o for o in outcomes if o.ok and o.ended > stop_called]
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
