"""`make run`: the local stack around the production entry point, until Ctrl-C.

Without TRITON_URL a local tritonserver serves ``model_repository/`` (and loads versions exported while it runs);
without REDIS_URL a local redis-server keeps the history under ``$DATA_DIR/redis`` (append-only); without
QDRANT_URL the gateway embeds the Qdrant engine under ``$DATA_DIR/qdrant``. The first DEMO_CATALOG_SIZE
Fashion-MNIST training images are indexed (resuming an earlier run), then `python -m gateway` serves in a process
of its own with those settings, and the web page (WEBUI_HOST:WEBUI_PORT) is served here against it. Ctrl-C or
SIGTERM stops the gateway (it drains first), the page and every server that was started.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog_sources import products as sources
from gateway.config import Settings, SettingsError
from gateway.domain import FailedPrecondition
from harness.gateway import spawned
from ops.index import run_index
from stack.local import local_redis, local_triton
from webui import WebUISettings, local_target, start_webui

log = logging.getLogger("stack")
TRITON_POLL_S = 5
GATEWAY_START_TIMEOUT_S = 300.0


class StackSettings(BaseSettings):
    """The local stack's own setting: how many Fashion-MNIST images to index before serving (DEMO_CATALOG_SIZE)."""

    model_config = SettingsConfigDict(env_ignore_empty=True, frozen=True)

    demo_catalog_size: int = Field(6000, ge=0)


async def index_demo_catalog(settings: Settings, size: int) -> None:
    """The first `size` Fashion-MNIST training images in the catalog; a catalog that cannot be served is reported
    (the gateway then says why to every caller) rather than stopping the stack."""
    try:
        await run_index(settings, sources.fashion_mnist("train", limit=size), settings.ingest_batch_size)
    except FailedPrecondition as refusal:
        log.error("demo catalog not indexed: %s", refusal)


async def serve(settings: Settings, webui: WebUISettings) -> None:
    """The gateway in its own process (its log on this one's output) and the page here, until SIGINT or SIGTERM or
    the gateway exits."""
    environment = {**os.environ, "TRITON_URL": settings.triton_url or "", "REDIS_URL": settings.redis_url or ""}
    target = local_target(settings.grpc_address)
    log.info("starting the gateway: python -m gateway")
    async with spawned([sys.executable, "-m", "gateway"], target, environment,
                       timeout_s=GATEWAY_START_TIMEOUT_S) as gateway:
        page = await start_webui(target, webui.host, webui.port, token=webui.token)
        log.info("serving: gRPC %s, metrics :%d, web page %s; Ctrl-C stops", target, settings.metrics_port, page.url)
        stopped = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stopped.set)
        try:
            while not stopped.is_set() and gateway.poll() is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), timeout=1.0)
        finally:
            await page.stop()
    if not stopped.is_set():
        raise SystemExit(f"the gateway exited with status {gateway.returncode}")


def _interrupt(signum: int, frame: object) -> None:
    """Turns SIGTERM into the same orderly stop as Ctrl-C, so that the servers started here are stopped too."""
    raise KeyboardInterrupt


def main() -> None:
    stack_settings = StackSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-size", type=int, default=stack_settings.demo_catalog_size,
                        help="Fashion-MNIST training images indexed before serving (0: none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        sys.exit(f"error: {error}")
    webui = WebUISettings()
    signal.signal(signal.SIGTERM, _interrupt)
    with local_triton(settings, settings.data_dir / "triton", TRITON_POLL_S) as settings, \
            local_redis(settings) as settings:
        try:
            if args.demo_size:
                asyncio.run(index_demo_catalog(settings, args.demo_size))
            asyncio.run(serve(settings, webui))
        except KeyboardInterrupt:
            pass
    log.info("stopped")


if __name__ == "__main__":
    main()
