"""Durability: no acknowledged view is lost when redis-server is killed, and catalog ingestion that is
killed mid-run and resumed ends with exactly the right set of products."""

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from catalog_sources.fashion_mnist import load_split
from gateway.config import Settings
from gateway.embedder import TritonEmbedder
from gateway.images import encode_png
from harness.gateway import RunningGateway, in_process, served_catalog
from harness.health import eventually
from harness.load import Outcome, closed_loop, timed
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.redis import RedisServer
from tests.triton_fixtures import TINY_MODEL, tiny_settings

pytestmark = pytest.mark.slow
CATALOG = 64
VIEWS_PER_USER = 50  # the history cap
INGEST_LIMIT = 400
VIEWS_IN_EACH_PHASE = 20  # acknowledged before the kill, and again after the restart
PHASE_TIMEOUT_S = 60.0  # a bound for each phase of the load, far above what it takes


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
async def running(tiny_triton, own_redis, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    # Patient stage budgets: on a loaded machine a slow catalog lookup or fsync must not refuse views
    # here; this suite is about what happens to acknowledged ones.
    settings = tiny_settings(tiny_triton.grpc_url, own_redis.url, tmp_path_factory.mktemp("data"),
                             search_timeout_s=5.0, history_timeout_s=2.0)
    async with in_process(settings, CATALOG) as running:
        yield running


async def test_no_acknowledged_view_is_lost_when_redis_server_is_killed(running, own_redis):
    """Every view goes to a distinct (user, product) pair, at most 50 per user (the history cap), so
    every acknowledged one must be found afterwards. SIGKILL gives Redis no chance to flush at exit.
    Refused views use up pairs too, and fast, so the pairs never run out: a new user every 50."""
    train = load_split("train")
    products = [train.product_id(index) for index in range(VIEWS_PER_USER)]
    pairs = ((f"durable-user-{n // VIEWS_PER_USER}", products[n % VIEWS_PER_USER]) for n in itertools.count())
    acknowledged: list[tuple[str, str]] = []
    outcomes: list[Outcome] = []

    async with grpc.aio.insecure_channel(running.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        async def record(number: int) -> Outcome:
            user, product = next(pairs)
            outcome = await timed("view", stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=product),
                                                          timeout=5))
            if outcome.ok:
                acknowledged.append((user, product))
            outcomes.append(outcome)
            return outcome

        def answered_since(at: float, code: str) -> list[Outcome]:
            return [outcome for outcome in outcomes if outcome.started > at and outcome.code == code]

        done = asyncio.Event()
        load = asyncio.create_task(closed_loop(record, workers=4, seconds=3 * PHASE_TIMEOUT_S, stop=done))
        try:
            await eventually(lambda: len(acknowledged) >= VIEWS_IN_EACH_PHASE, PHASE_TIMEOUT_S, "views acknowledged")
            os.kill(own_redis.pid, signal.SIGKILL)
            await asyncio.to_thread(own_redis.stop)
            killed = time.monotonic()
            await eventually(lambda: bool(answered_since(killed, "UNAVAILABLE")), PHASE_TIMEOUT_S, "a view refused")
            await asyncio.to_thread(own_redis.start)
            restarted = time.monotonic()
            await eventually(lambda: len(answered_since(restarted, "OK")) >= VIEWS_IN_EACH_PHASE, PHASE_TIMEOUT_S,
                             "views acknowledged after the restart")
        finally:
            done.set()
            await load
        after_restart = [outcome for outcome in outcomes if outcome.started > restarted]
        stored = set()
        for user in {user for user, _ in acknowledged}:
            history = await stub.GetHistory(pb.GetHistoryRequest(user_id=user), timeout=5)
            stored |= {(user, view.product_id) for view in history.views}
    lost = set(acknowledged) - stored
    refused = sum(o.code == "UNAVAILABLE" for o in outcomes)
    recovered = sum(o.ok for o in after_restart)
    print(f"redis-server killed under load: {len(acknowledged)} views acknowledged, {refused} refused while it "
          f"was down, {recovered} of {len(after_restart)} acknowledged after the restart, {len(lost)} lost")
    assert {o.code for o in outcomes} <= {"OK", "UNAVAILABLE"}
    assert recovered > len(after_restart) / 2, "views are acknowledged again once Redis is back"
    assert not lost


def inferences(metrics_url: str) -> float:
    """Images Triton has embedded with the tiny model so far."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^nv_inference_count{{model="{TINY_MODEL}",version="1"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def index_command(limit: int) -> list[str]:
    return [sys.executable, "-m", "ops.index", "fashion-mnist", "--limit", str(limit)]


async def test_ingestion_killed_twice_and_resumed_stores_exactly_the_right_products(tiny_triton, tmp_path):
    env = dict(os.environ, TRITON_URL=tiny_triton.grpc_url, DATA_DIR=str(tmp_path), MODEL_NAME=TINY_MODEL,
               PYTHONPATH=str(Path.cwd()))
    for kill_after in (INGEST_LIMIT // 4, INGEST_LIMIT // 2):
        baseline = inferences(tiny_triton.metrics_url)
        process = subprocess.Popen(index_command(INGEST_LIMIT), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while inferences(tiny_triton.metrics_url) - baseline < kill_after:
            assert process.poll() is None and time.monotonic() < deadline, "ingestion ended before it was killed"
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    resumed = await asyncio.to_thread(subprocess.run, index_command(INGEST_LIMIT), env=env, capture_output=True,
                                      text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    indexed = re.search(r"indexed: (\d+) stored, (\d+) already present", resumed.stderr)
    assert indexed, resumed.stderr[-2000:]
    stored, present = map(int, indexed.groups())

    async with await TritonEmbedder.connect(tiny_triton.grpc_url, TINY_MODEL) as embedder:
        catalog = await served_catalog(Settings(data_dir=tmp_path))
        await catalog.open(embedder.info)
        try:
            train = load_split("train")
            expected = [train.product_id(index) for index in range(INGEST_LIMIT)]
            found = await catalog.retrieve(expected, with_vectors=False)
            count = await catalog.count()
        finally:
            await catalog.close()
    print(f"ingestion killed at ~{INGEST_LIMIT // 4} and ~{INGEST_LIMIT // 2} images, resumed: {present} already "
          f"present, {stored} stored; catalog holds {count} of {INGEST_LIMIT}")
    assert present >= INGEST_LIMIT // 4 and present + stored == INGEST_LIMIT
    assert set(found) == set(expected) and count == INGEST_LIMIT, "none missing, none duplicated, nothing else"


async def test_an_interrupted_upsert_stream_sent_again_stores_each_product_once(running):
    images = load_split("test").images
    products = [pb.Product(product_id=f"stream-{n}", image=encode_png(images[n]), category="Bag") for n in range(40)]
    before = await running.gateway.pipeline.catalog.count()

    async def first_half_then_stall():
        for product in products[:20]:
            yield product
        await asyncio.sleep(60)

    async with grpc.aio.insecure_channel(running.target) as channel:
        catalog = pb_grpc.CatalogStub(channel)
        interrupted = catalog.UpsertProducts(first_half_then_stall(), timeout=60)
        stored_batch = before + running.settings.ingest_batch_size  # the first batch of the stream is stored
        await eventually(lambda: _count_reaches(running, stored_batch), PHASE_TIMEOUT_S, "the first batch stored")
        interrupted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await interrupted

        async def everything():
            for product in products:
                yield product

        assert (await catalog.UpsertProducts(everything(), timeout=60)).upserted == len(products)
    found = await running.gateway.pipeline.catalog.retrieve([p.product_id for p in products], with_vectors=False)
    assert set(found) == {p.product_id for p in products}
    assert await running.gateway.pipeline.catalog.count() == before + len(products)


async def _count_reaches(running: RunningGateway, count: int) -> bool:
    return await running.gateway.pipeline.catalog.count() >= count
