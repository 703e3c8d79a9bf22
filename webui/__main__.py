"""Serves the web page against a running gateway: python -m webui [--gateway localhost:50051].

Listens on WEBUI_HOST:WEBUI_PORT (default 127.0.0.1:8080) unless --host/--port say otherwise; stops on
SIGINT or SIGTERM.
"""

import argparse
import asyncio
import logging
import os
import signal

from .server import listen_address, start_webui


async def serve(gateway_target: str, host: str, port: int) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    webui = await start_webui(gateway_target, host, port, token=os.environ.get("WEBUI_TOKEN", ""))
    try:
        await stop.wait()
    finally:
        await webui.stop()


def main() -> None:
    host, port = listen_address(os.environ)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="localhost:50051", help="gRPC address of the gateway")
    parser.add_argument("--host", default=host)
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.gateway, args.host, args.port))


if __name__ == "__main__":
    main()
