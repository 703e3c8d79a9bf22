"""The local servers of the dev stack: a tritonserver over model_repository/ and a redis-server, each started only
where the settings name no server, and stopped on exit."""

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from gateway.config import Settings
from stack.redis import RedisServer
from stack.triton import TritonServer

log = logging.getLogger(__name__)
MODEL_REPOSITORY = Path("model_repository")


@contextlib.contextmanager
def local_triton(settings: Settings, work_dir: Path | None = None, poll_s: int | None = None) -> Iterator[Settings]:
    """`settings`, pointing at a local tritonserver over model_repository/ when TRITON_URL is not set.

    With `poll_s` it loads model versions exported while it runs (see stack.triton.TritonServer).
    """
    if settings.triton_url:
        yield settings
        return
    log.info("starting tritonserver over %s", MODEL_REPOSITORY)
    with TritonServer(MODEL_REPOSITORY, work_dir=work_dir, poll_s=poll_s) as triton:
        log.info("tritonserver ready: gRPC %s, metrics %s", triton.grpc_url, triton.metrics_url)
        yield settings.model_copy(update={"triton_url": triton.grpc_url})


@contextlib.contextmanager
def local_redis(settings: Settings) -> Iterator[Settings]:
    """`settings`, pointing at a local redis-server with its append-only file under DATA_DIR/redis when REDIS_URL
    is not set."""
    if settings.redis_url:
        yield settings
        return
    with RedisServer(settings.data_dir / "redis") as redis:
        log.info("redis-server ready: %s", redis.url)
        yield settings.model_copy(update={"redis_url": redis.url})
