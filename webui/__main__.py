"""Serves the web page against a running gateway: python -m webui [--gateway localhost:50051].

Listens on WEBUI_HOST:WEBUI_PORT (default 127.0.0.1:8080) unless --host/--port say otherwise, and calls the
gateway with the bearer token WEBUI_TOKEN when it is set; stops on SIGINT or SIGTERM.
"""

import argparse
import asyncio
import logging
import signal

from .server import WebUISettings, start_webui


async def serve(gateway_target: str, host: str, port: int, token: str) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    webui = await start_webui(gateway_target, host, port, token=token)
    try:
        await stop.wait()
    finally:
        await webui.stop()


def main() -> None:
    settings = WebUISettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="localhost:50051", help="gRPC address of the gateway")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.gateway, args.host, args.port, settings.token))


if __name__ == "__main__":
    main()
