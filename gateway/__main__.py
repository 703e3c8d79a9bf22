"""The production entry point: `python -m gateway` (or the `recsys-gateway` command) serves the gateway alone.

Everything comes from environment variables (docs/configuration.md); TRITON_URL and REDIS_URL name the servers
it needs, QDRANT_URL a Qdrant server (unset: the engine embedded in this process, under DATA_DIR). With
GATEWAY_WORKERS > 1 it supervises that many gateway processes on one port (`gateway.workers`). It stops on
SIGINT or SIGTERM after draining. Exit status 2 means the configuration is unusable; the message says why.
"""

import asyncio
import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONFIGURATION_ERROR = 2


def main() -> None:
    # Before numpy loads: its OpenBLAS would otherwise keep a worker thread per core spinning after each of the
    # gateway's small matrix products (a third of a core under load, docs/performance.md). The environment wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from gateway.config import Settings, SettingsError
    from gateway.server import serve
    from gateway.workers import run_workers

    try:
        settings = Settings.from_env()
        logging.basicConfig(level=settings.log_level_number, format=LOG_FORMAT)
        if settings.gateway_workers > 1:
            sys.exit(run_workers(settings))
        asyncio.run(serve(settings))
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(CONFIGURATION_ERROR)


if __name__ == "__main__":
    main()
