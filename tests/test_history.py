"""RedisHistory and the redis-server launcher, against real redis-server processes."""

import asyncio
import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.domain import Feedback, InvalidArgument, ShopperRecord, Unavailable, View
from gateway.history import RedisHistory
from stack.net import free_port
from stack.redis import RedisServer
from tests.redis_fixtures import HistoryFactory, keys_in, user_keys_in

REPO_ROOT = Path(__file__).resolve().parent.parent
UNAVAILABLE = r"^history store \(Redis\) unavailable: "


@pytest.fixture
async def own_redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop, pause or restart."""
    server = RedisServer(tmp_path / "redis")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


async def test_recent_is_newest_first_and_honours_limit(history_factory: HistoryFactory) -> None:
    history = history_factory()
    for offset, product_id in enumerate(["shoe", "bag", "hat"]):
        await history.record("u1", product_id, 1_000 + offset)

    assert await history.recent("u1") == [View("hat", 1_002), View("bag", 1_001), View("shoe", 1_000)]
    assert await history.recent("u1", limit=2) == [View("hat", 1_002), View("bag", 1_001)]
    assert await history.recent("nobody") == []


async def test_history_is_capped_at_max_views(history_factory: HistoryFactory, redis_client: Redis) -> None:
    history = history_factory(max_views=3)
    for index in range(5):
        await history.record("u1", f"p{index}", index)

    assert [view.product_id for view in await history.recent("u1", limit=10)] == ["p4", "p3", "p2"]
    [key] = await user_keys_in(redis_client, history.namespace)
    assert await redis_client.llen(key) == 3


async def test_every_view_sets_and_renews_the_ttl(history_factory: HistoryFactory, redis_client: Redis) -> None:
    history = history_factory(ttl_s=1_000)
    await history.record("u1", "p1", 1)
    [key] = await user_keys_in(redis_client, history.namespace)
    assert 990 <= await redis_client.ttl(key) <= 1_000

    await redis_client.expire(key, 5)  # as if the history had aged
    await history.record("u1", "p2", 2)
    assert 990 <= await redis_client.ttl(key) <= 1_000


async def test_record_is_one_transaction(history_factory: HistoryFactory, redis_client: Redis) -> None:
    history = history_factory(max_views=7, ttl_s=1_234)
    await history.ping()  # connects, so that no handshake shows up below
    seen: list[str] = []
    async with redis_client.monitor() as monitor:
        await history.ping()
        await history.record("u1", "p1", 5)
        await redis_client.echo("end of record")
        ping = await asyncio.wait_for(monitor.next_command(), 5)
        assert ping["command"] == "PING"
        while (event := await asyncio.wait_for(monitor.next_command(), 5))["command"] != "ECHO end of record":
            if event["client_port"] == ping["client_port"]:
                seen.append(event["command"])

    [key] = [key.decode() for key in await user_keys_in(redis_client, history.namespace)]
    assert seen == ["MULTI", f"LPUSH {key} 5:p1", f"LTRIM {key} 0 6", f"EXPIRE {key} 1234",
                    f"ZINCRBY {history.namespace}:popularity 1 p1", "EXEC"]


async def test_popularity_is_the_log_scaled_view_count_of_all_shoppers(history_factory: HistoryFactory) -> None:
    history = history_factory()
    assert await history.popularity(["p1", "never-viewed"]) == [0.0, 0.0]
    views = {"p1": 8, "p2": 2, "p3": 1}
    for product_id, count in views.items():
        for user in range(count):
            await history.record(f"u{user}", product_id, user)

    shares = await history.popularity(["p3", "never-viewed", "p1", "p2"])
    assert shares == pytest.approx([math.log(2) / math.log(9), 0.0, 1.0, math.log(3) / math.log(9)])
    assert await history.popularity([]) == []


async def test_a_purchase_is_kept_as_a_view_and_weighs_more_in_popularity(history_factory: HistoryFactory) -> None:
    history = history_factory()
    await history.record("u1", "bought", 1, Feedback.PURCHASE)
    for user in range(int(history.purchase_weight)):
        await history.record(f"viewer-{user}", "viewed", 2)
    await history.record("u2", "viewed-once", 3)

    assert await history.recent("u1") == [View("bought", 1)]
    bought, viewed, once = await history.popularity(["bought", "viewed", "viewed-once"])
    assert bought == viewed == 1.0 and once < viewed, "a purchase counts as purchase_weight views"


async def test_dismissals_are_kept_apart_capped_and_read_with_the_views(history_factory: HistoryFactory) -> None:
    history = history_factory()
    await history.record("u1", "seen", 1)
    for index in range(history.max_dismissals + 2):
        await history.record("u1", f"not-for-me-{index}", 10 + index, Feedback.DISMISS)

    record = await history.shopper("u1")
    assert record.views == [View("seen", 1)] and await history.recent("u1") == [View("seen", 1)]
    assert len(record.dismissals) == history.max_dismissals
    assert record.dismissals[0] == View(f"not-for-me-{history.max_dismissals + 1}", 11 + history.max_dismissals)
    assert await history.popularity(["not-for-me-0"]) == [0.0], "a dismissal is no interest"
    assert await history.shopper("nobody") == ShopperRecord([], [])


async def test_forgetting_a_user_keeps_the_anonymous_view_counts(history_factory: HistoryFactory,
                                                                redis_client: Redis) -> None:
    history = history_factory()
    await history.record("leaving", "p1", 1)
    await history.record("staying", "p2", 2)
    await history.forget("leaving")

    assert await history.popularity(["p1", "p2"]) == [1.0, 1.0]
    assert len(await user_keys_in(redis_client, history.namespace)) == 1


async def test_forget_leaves_nothing_for_the_user(history_factory: HistoryFactory, redis_client: Redis) -> None:
    history = history_factory()
    await history.record("leaving", "p1", 1)
    await history.record("leaving", "p3", 2, Feedback.DISMISS)
    await history.record("staying", "p2", 2)
    keys_before = set(await keys_in(redis_client, history.namespace)) - {f"{history.namespace}:popularity".encode()}

    await history.forget("leaving")
    await history.forget("never-seen")

    keys_after = set(await keys_in(redis_client, history.namespace)) - {f"{history.namespace}:popularity".encode()}
    assert len(keys_before) == 3 and len(keys_after) == 1 and keys_after < keys_before
    assert await history.shopper("leaving") == ShopperRecord([], [])
    assert await history.recent("staying") == [View("p2", 2)]


async def test_namespaces_do_not_see_each_other(history_factory: HistoryFactory, redis_client: Redis) -> None:
    shop_a, shop_b = history_factory(), history_factory()
    await shop_a.record("u1", "p1", 1)

    assert await shop_b.recent("u1") == []
    await shop_b.forget("u1")
    assert await shop_a.recent("u1") == [View("p1", 1)]
    assert len(await user_keys_in(redis_client, shop_a.namespace)) == 1
    assert await user_keys_in(redis_client, shop_b.namespace) == []


async def test_user_id_is_stored_nowhere_in_clear(history_factory: HistoryFactory, redis_client: Redis,
                                                  redis_server: RedisServer) -> None:
    user_id = "alice@example.com"
    history = history_factory()
    await history.record(user_id, "product-on-disk", 1)

    [key] = await user_keys_in(redis_client, history.namespace)
    digest = hashlib.sha256(user_id.encode()).hexdigest()
    assert key.decode() == f"{history.namespace}:history:{digest}"
    on_disk = b"".join(path.read_bytes() for path in redis_server.data_dir.rglob("*") if path.is_file())
    assert b"product-on-disk" in on_disk  # the append-only file holds the write...
    assert user_id.encode() not in on_disk  # ...but not the user id


@pytest.mark.parametrize("product_id", ["a:b", "17:00:x", ":", "::", "12", "tab\tnew\nline", "nul\x00byte",
                                         " padded ", "ünïcödé", "日本語", "🙂👟", "\\", "\"quoted\""])
async def test_odd_product_ids_round_trip(history_factory: HistoryFactory, product_id: str) -> None:
    history = history_factory()
    await history.record("u1", product_id, 2**53)
    await history.record("u1", "plain", 0)

    assert await history.recent("u1") == [View("plain", 0), View(product_id, 2**53)]


@pytest.mark.parametrize("call", [
    lambda history: history.record("", "p1", 1),
    lambda history: history.record("u1", "", 1),
    lambda history: history.record("u1", "\ud800", 1),
    lambda history: history.record("u1", "p1", -1),
    lambda history: history.recent("", None),
    lambda history: history.recent("u1", 0),
    lambda history: history.forget(""),
], ids=["empty user", "empty product", "lone surrogate", "negative time", "recent empty user", "zero limit",
        "forget empty user"])
async def test_invalid_arguments_are_rejected(history_factory: HistoryFactory,
                                              call: Callable[[RedisHistory], Awaitable[object]]) -> None:
    with pytest.raises(InvalidArgument):
        await call(history_factory())


async def test_unavailable_at_once_when_redis_is_stopped(own_redis_server: RedisServer) -> None:
    """A refused connection fails the call without waiting out the history's timeout (a long one here)."""
    timeout_s = 10.0
    history = RedisHistory.from_url(own_redis_server.url, timeout_s=timeout_s)
    try:
        await history.record("u1", "p1", 1)
        await asyncio.to_thread(own_redis_server.stop)
        for call in (history.ping, lambda: history.record("u1", "p2", 2), lambda: history.recent("u1"),
                     lambda: history.forget("u1")):
            started = time.monotonic()
            with pytest.raises(Unavailable, match=UNAVAILABLE):
                await call()
            assert time.monotonic() - started < timeout_s
    finally:
        await history.close()


async def test_unavailable_after_timeout_when_redis_hangs(own_redis_server: RedisServer) -> None:
    """A hung server costs the call its timeout, then the call fails, long before the server would answer."""
    timeout_s, pause_s = 0.3, 10
    history = RedisHistory.from_url(own_redis_server.url, timeout_s=timeout_s)
    admin = Redis.from_url(own_redis_server.url)
    try:
        await history.ping()
        await admin.client_pause(pause_s * 1000)  # the server accepts commands but answers none
        started = time.monotonic()
        with pytest.raises(Unavailable, match=UNAVAILABLE + "Timeout"):
            await history.recent("u1")
        assert timeout_s * 0.9 < time.monotonic() - started < pause_s
    finally:
        await history.close()
        await admin.aclose()


async def test_acknowledged_view_survives_a_restart(own_redis_server: RedisServer) -> None:
    history = RedisHistory.from_url(own_redis_server.url)
    try:
        await history.record("u1", "p1", 1)
        await asyncio.to_thread(own_redis_server.stop)
        await asyncio.to_thread(own_redis_server.start)

        assert await history.recent("u1") == [View("p1", 1)]
    finally:
        await history.close()


def test_launcher_fails_fast_on_bad_config(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendfsync="sometimes")  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with status") as raised:
        server.start()
    assert time.monotonic() - started < 5
    assert "FATAL CONFIG FILE ERROR" in str(raised.value) and "appendfsync" in str(raised.value)


def test_launcher_fails_fast_when_the_port_is_taken(tmp_path: Path, redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="Address already in use"):
        RedisServer(tmp_path, port=redis_server.port).start()
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()


@pytest.mark.timeout(30)
def test_module_serves_in_the_foreground_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "stack.redis", "--data-dir", str(tmp_path), "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert process.stdout is not None
        assert f"redis://127.0.0.1:{port}/0" in process.stdout.readline()
        client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        assert client.ping()

        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        with pytest.raises(redis.ConnectionError):
            client.ping()
        assert "Redis is now ready to exit" in (tmp_path / "redis-server.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
