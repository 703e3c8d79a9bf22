"""Which model version and catalog collection answer requests, and the switch between them.

The servicers read ``Serving.pipeline`` / ``Serving.indexer`` once per call, so a switch sends new calls to
another embedder and collection at once while calls in flight finish on the pair they started with: a
request never embeds with one model version and searches the collection of another.

``AliasFollower`` drives the switch: it polls the catalog alias (``gateway.catalog.aliases``) and, when a
rollout or a rollback has moved it, opens the new collection and the model version recorded in it,
checks that Triton serves that version, and only then switches. Until the new pair is ready the current
one keeps serving, so a rollout has no downtime.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .catalog.aliases import CatalogAliases
from .config import Settings
from .domain import RecsysError, Unavailable
from .indexer import Indexer
from .pipeline import Pipeline

if TYPE_CHECKING:
    from .composition import Components

log = logging.getLogger(__name__)
ALIAS_POLL_S = 2.0


@dataclass
class Serving:
    """The pipeline and indexer that answer requests now."""

    pipeline: Pipeline
    indexer: Indexer

    @property
    def collection(self) -> str:
        """The catalog collection being served."""
        return self.pipeline.catalog.collection

    def switch(self, pipeline: Pipeline, indexer: Indexer) -> None:
        """Sends the calls that start from now on to ``pipeline`` and ``indexer``."""
        self.pipeline, self.indexer = pipeline, indexer


async def serving_target(aliases: CatalogAliases, settings: Settings, recreate: bool = False
                         ) -> tuple[str | None, str]:
    """(collection, model version) to serve for the catalog ``settings.collection``.

    With an alias: its target and the version that target was built with. Without one: the plain
    collection of that name if it exists (a catalog built before aliases), else None, meaning a new
    ``<name>-v<version>`` collection; both with ``settings.model_version`` (empty: Triton's latest).
    ``recreate`` (re-index from scratch) always means a new collection.
    """
    name = settings.collection
    if recreate:
        return None, settings.model_version
    target = await aliases.target(name)
    if target is not None:
        built_with = await aliases.built_with(target)
        if built_with is None:
            raise Unavailable(f"the catalog alias '{name}' points at '{target}', which does not exist or "
                              "records no embedding model; point it at a built collection (`make rollback`)")
        return target, built_with.version
    plain = name if await aliases.built_with(name) is not None else None
    return plain, settings.model_version


class AliasFollower:
    """Keeps ``serving`` on the target of the catalog alias ``settings.collection``.

    Pairs it opens are closed ``drain_s`` after they stop serving (every request has finished by then) or
    when the follower stops. The pair it started with belongs to whoever opened it, and is reused when
    the alias moves back to it.
    """

    def __init__(self, serving: Serving, aliases: CatalogAliases, components: "Components",
                 poll_s: float = ALIAS_POLL_S, drain_s: float | None = None) -> None:
        settings = components.settings
        self._serving = serving
        self._aliases = aliases
        self._components = components
        self._settings = settings
        self._poll_s = poll_s
        self._drain_s = settings.request_timeout_s + 1.0 if drain_s is None else drain_s
        self._initial = (serving.pipeline, serving.indexer)
        self._closing: set[asyncio.Task[None]] = set()
        self._last_failure = ""

    async def run(self) -> None:
        """Checks the alias every ``poll_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._poll_s)
            await self.follow()

    async def follow(self) -> bool:
        """Switches to the alias's target if it moved; True if it switched.

        A failure (Triton does not serve the version yet, the collection cannot be opened) is logged once
        and retried at every poll while the current pair keeps serving.
        """
        try:
            target = await self._aliases.target(self._settings.collection)
            if target is None or target == self._serving.collection:
                return False
            pipeline, indexer = await self._open(target)
        except Exception as error:
            if str(error) != self._last_failure:
                self._last_failure = str(error)
                log.warning("catalog alias '%s' not followed yet: %s", self._settings.collection, error,
                            exc_info=not isinstance(error, RecsysError))
            return False
        self._last_failure = ""
        previous = self._serving.pipeline
        self._serving.switch(pipeline, indexer)
        log.info("now serving collection '%s' with model %s (was '%s' with %s)", target, pipeline.embedder.info,
                 previous.catalog.collection, previous.embedder.info)
        if previous is not self._initial[0]:
            task = asyncio.create_task(self._close_later(previous))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return True

    async def close(self) -> None:
        """Closes every pair this follower opened, the serving one included unless it is the initial one."""
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._serving.pipeline is not self._initial[0]:
            await _close(self._serving.pipeline)
            self._serving.switch(*self._initial)

    async def _open(self, collection: str) -> tuple[Pipeline, Indexer]:
        initial_pipeline, initial_indexer = self._initial
        if collection == initial_pipeline.catalog.collection:
            return initial_pipeline, initial_indexer
        built_with = await self._aliases.built_with(collection)
        if built_with is None:
            raise Unavailable(f"collection '{collection}' does not exist or records no embedding model")
        embedder = await self._components.embedder(built_with.version, built_with.name)
        try:
            if not await embedder.ready():
                raise Unavailable(f"Triton does not serve {embedder.info} yet")
            catalog = await self._components.open_collection(collection, embedder)
        except BaseException:
            await embedder.close()
            raise
        return (initial_pipeline.with_backends(embedder, catalog),
                initial_indexer.with_backends(embedder, catalog))

    async def _close_later(self, pipeline: Pipeline) -> None:
        try:
            await asyncio.sleep(self._drain_s)
        finally:
            await _close(pipeline)


async def _close(pipeline: Pipeline) -> None:
    await pipeline.catalog.close()
    await pipeline.embedder.close()


@contextlib.asynccontextmanager
async def follow_alias(serving: Serving, components: "Components", poll_s: float = ALIAS_POLL_S
                       ) -> AsyncIterator[AliasFollower]:
    """Runs an AliasFollower over ``serving`` until the block exits, then closes what it opened."""
    aliases = components.catalog_aliases()
    follower = AliasFollower(serving, aliases, components, poll_s)
    task = asyncio.create_task(follower.run())
    try:
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await follower.close()
        await aliases.close()
