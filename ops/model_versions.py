"""`make model-load` and `make model-unload`: which versions of the model Triton serves, through its repository API.

Triton in explicit model-control mode (deploy/k8s/triton.yaml; ``stack.triton.TritonServer(explicit=True)``)
serves what its config's version policy picked at start, then what the repository API asks for. Both commands
read the model's served config from Triton, replace its version policy by the exact versions to serve (a config
override with a ``specific`` policy) and ask Triton to load the model with it: the versions added are loaded
while the others keep serving, and those left out are unloaded once loading has succeeded. Their files must be
in Triton's repository (deploy/k8s: the model-repository image of Triton's init container).

Every address of TRITON_URL's host is asked in turn: behind a headless Service (``triton-headless:8001`` in
deploy/k8s), every Triton pod. ``unload`` refuses to stop serving the model version of the collection that the
catalog alias points at (QDRANT_URL, else the embedded catalog under DATA_DIR): gateways embed with it.

A new version N+1 reaches a cluster in three steps (docs/operations.md): ``make model-load VERSION=N+1``,
``make rollout VERSION=N+1``, then ``make model-unload VERSION=N``.
"""

import argparse
import asyncio
import json
import logging
import socket
from collections.abc import Iterable

from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.composition import Components
from gateway.config import Settings

log = logging.getLogger(__name__)
LOAD_TIMEOUT_S = 600.0  # loading a version on every instance; a GPU pod takes seconds, a busy CPU much longer


async def addresses(url: str) -> list[str]:
    """``host:port`` for every IPv4 address of the URL's host: each pod behind a headless Service."""
    host, _, port = url.rpartition(":")
    found = await asyncio.get_running_loop().getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return sorted({f"{sockaddr[0]}:{port}" for *_, sockaddr in found})


async def served_versions(client: InferenceServerClient, name: str) -> list[str]:
    """The versions of model ``name`` that Triton has loaded and ready, oldest first."""
    index = await client.get_model_repository_index()
    return sorted((model.version for model in index.models if model.name == name and model.state == "READY"),
                  key=int)


async def serve_versions(client: InferenceServerClient, name: str, versions: Iterable[str]) -> None:
    """Has Triton serve exactly ``versions`` of model ``name``: its served config with a ``specific`` policy."""
    config = (await client.get_model_config(name, as_json=True))["config"]
    config["version_policy"] = {"specific": {"versions": sorted(int(version) for version in versions)}}
    await client.load_model(name, config=json.dumps(config), client_timeout=LOAD_TIMEOUT_S)


async def change(url: str, name: str, load: str = "", unload: str = "") -> dict[str, list[str]]:
    """Adds version ``load`` to, or removes ``unload`` from, what every Triton at the URL's addresses serves;
    returns the versions each serves afterwards."""
    served: dict[str, list[str]] = {}
    for address in await addresses(url):
        async with InferenceServerClient(address) as client:
            try:
                before = await served_versions(client, name)
                wanted = sorted(set(before) - {unload} | ({load} if load else set()), key=int)
                if not wanted:
                    raise SystemExit(f"error: Triton at {address} would serve no version of '{name}'")
                if wanted != before:
                    await serve_versions(client, name, wanted)
                served[address] = await served_versions(client, name)
            except InferenceServerException as error:
                raise SystemExit(f"error: Triton at {address}: {error.message()}") from None
        log.info("Triton at %s serves %s versions %s (before: %s)", address, name, ", ".join(served[address]),
                 ", ".join(before))
    return served


async def catalog_version(settings: Settings) -> str | None:
    """The model version of the collection the catalog alias points at; None without an alias."""
    aliases = Components(settings).catalog_aliases()
    try:
        target = await aliases.target(settings.collection)
        built_with = await aliases.built_with(target) if target else None
    finally:
        await aliases.close()
    return built_with.version if built_with else None


async def load_version(settings: Settings, version: str) -> dict[str, list[str]]:
    """Every Triton at TRITON_URL's addresses serves ``version`` too."""
    return await change(triton_url(settings), settings.model_name, load=version)


async def unload_version(settings: Settings, version: str) -> dict[str, list[str]]:
    """Every Triton at TRITON_URL's addresses stops serving ``version``, unless the catalog alias needs it."""
    if await catalog_version(settings) == version:
        raise SystemExit(f"error: the catalog alias '{settings.collection}' serves model version {version}: "
                         "roll out another version first (make rollout)")
    return await change(triton_url(settings), settings.model_name, unload=version)


def triton_url(settings: Settings) -> str:
    if not settings.triton_url:
        raise SystemExit("error: set TRITON_URL to the Triton to change (deploy/k8s: triton-headless:8001)")
    return settings.triton_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["load", "unload"])
    parser.add_argument("version", help="model version, e.g. 2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = load_version if args.command == "load" else unload_version
    asyncio.run(command(Settings.from_env(), args.version))


if __name__ == "__main__":
    main()
