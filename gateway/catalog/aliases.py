"""Catalog aliases: the catalog name the gateway serves points at one collection per model version.

A rollout builds ``<alias>-v<version>`` with the new model while the current collection serves, then
moves the alias in one atomic step; the gateway follows the alias and embeds with the model version the
collection records. A name without an alias is a plain collection (catalogs built before aliases).

The embedded engine keeps each alias in ``<path>/aliases/<alias>.json``, replaced atomically; a Qdrant
server keeps real aliases, moved by one ``update_collection_aliases`` request.
"""

from pathlib import Path
from typing import Protocol

from qdrant_client import AsyncQdrantClient, models

from gateway.catalog.edge import MODEL_FILE
from gateway.catalog.server import MODEL_METADATA_KEY
from gateway.catalog.store import model_from_record, read_json, write_json_atomically
from gateway.domain import ModelInfo

ALIASES_DIR = "aliases"


def versioned_collection(alias: str, version: str) -> str:
    """The collection that holds the catalog `alias` embedded by model version `version`."""
    return f"{alias}-v{version}"


class CatalogAliases(Protocol):
    """Where catalog aliases point, and which model each collection was built with."""

    async def target(self, alias: str) -> str | None:
        """The collection `alias` points at, or None when there is no such alias."""

    async def point(self, alias: str, collection: str) -> None:
        """Make `alias` point at `collection` in one atomic step (creating the alias if needed)."""

    async def built_with(self, collection: str) -> ModelInfo | None:
        """The model `collection` records, or None when it does not exist or records none."""

    async def close(self) -> None:
        """Release the resources."""


class EdgeAliases:
    """Aliases of the embedded engine's collections under `path` (the EdgeCatalog's path)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def target(self, alias: str) -> str | None:
        record = read_json(self._alias_file(alias))
        return record.get("collection") if isinstance(record, dict) else None

    async def point(self, alias: str, collection: str) -> None:
        self._alias_file(alias).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self._alias_file(alias), {"collection": collection})

    async def built_with(self, collection: str) -> ModelInfo | None:
        return model_from_record(read_json(self._path / collection / MODEL_FILE))

    async def close(self) -> None:
        pass

    def _alias_file(self, alias: str) -> Path:
        return self._path / ALIASES_DIR / f"{alias}.json"


class ServerAliases:
    """Aliases of a Qdrant server (or qdrant-client's local mode) reached through `client`."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self._client = client

    async def target(self, alias: str) -> str | None:
        aliases = (await self._client.get_aliases()).aliases
        return next((entry.collection_name for entry in aliases if entry.alias_name == alias), None)

    async def point(self, alias: str, collection: str) -> None:
        operations: list[models.AliasOperations] = []
        if await self.target(alias) is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)))
        await self._client.update_collection_aliases(change_aliases_operations=operations)

    async def built_with(self, collection: str) -> ModelInfo | None:
        if not await self._client.collection_exists(collection):
            return None
        metadata = (await self._client.get_collection(collection)).config.metadata or {}
        return model_from_record(metadata.get(MODEL_METADATA_KEY))

    async def close(self) -> None:
        await self._client.close()
