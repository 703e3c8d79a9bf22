"""Fixtures over a real redis-server: one server for the session, clients and histories per test."""

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import pytest
from redis.asyncio import Redis

from gateway.history import DEFAULT_MAX_VIEWS, DEFAULT_TTL_S, RedisHistory
from stack.redis import RedisServer


class HistoryFactory(Protocol):
    def __call__(self, *, max_views: int = DEFAULT_MAX_VIEWS, ttl_s: int = DEFAULT_TTL_S,
                 namespace: str | None = None) -> RedisHistory: ...


async def keys_in(client: Redis, namespace: str) -> list[bytes]:
    """Every key under the namespace, found with SCAN."""
    return [key async for key in client.scan_iter(match=f"{namespace}:*")]


async def user_keys_in(client: Redis, namespace: str) -> list[bytes]:
    """The keys of users' histories under the namespace."""
    return await keys_in(client, f"{namespace}:history")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session, on a free port with its data in a temporary folder."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client of the session server, to look at what a test stored."""
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def history_factory(redis_server: RedisServer, redis_client: Redis) -> AsyncIterator[HistoryFactory]:
    """Makes RedisHistory instances on the session server, each in a fresh namespace unless one is
    given; closes them and deletes every key of their namespaces afterwards."""
    made: list[RedisHistory] = []

    def make(*, max_views: int = DEFAULT_MAX_VIEWS, ttl_s: int = DEFAULT_TTL_S,
             namespace: str | None = None) -> RedisHistory:
        history = RedisHistory.from_url(redis_server.url, max_views=max_views, ttl_s=ttl_s,
                                        namespace=namespace or f"test-{uuid.uuid4().hex}")
        made.append(history)
        return history

    yield make
    for history in made:
        await history.close()
    for namespace in {history.namespace for history in made}:
        if keys := await keys_in(redis_client, namespace):
            await redis_client.delete(*keys)
