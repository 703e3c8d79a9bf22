"""A short-lived cache of catalog items with their vectors, for the products shoppers viewed.

Every history-aware recommendation reads the vectors of the shopper's recent views, and turning stored vectors
into arrays is the costly part of that read (about 0.1 ms per view here, up to 50 views per shopper). Views
repeat from one request to the next, so a few seconds of reuse saves most of it. An entry lives at most
`ttl_s` seconds, so a product re-ingested or deleted through another gateway replica shows within that time.
"""

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from .domain import CatalogItem


class ItemCache:
    """Catalog items by product id, each kept `ttl_s` seconds, at most `max_items` (the oldest go first)."""

    def __init__(self, max_items: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 0 or ttl_s < 0:
            raise ValueError(f"need max_items >= 0 and ttl_s >= 0, got {max_items} and {ttl_s}")
        self._max_items = max_items
        self._ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, CatalogItem]] = OrderedDict()

    def get(self, product_ids: Sequence[str]) -> dict[str, CatalogItem]:
        """The cached items among `product_ids` that are still fresh, by id."""
        now = self._clock()
        found = {}
        for product_id in product_ids:
            entry = self._items.get(product_id)
            if entry is None:
                continue
            stored_at, item = entry
            if now - stored_at < self._ttl_s:
                found[product_id] = item
            else:
                del self._items[product_id]
        return found

    def put(self, items: Iterable[CatalogItem]) -> None:
        """Caches items read from the catalog with their vectors, replacing older copies."""
        if not (self._max_items and self._ttl_s):
            return
        now = self._clock()
        for item in items:
            self._items.pop(item.product_id, None)
            self._items[item.product_id] = (now, item)
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)

    def drop(self, product_ids: Iterable[str]) -> None:
        """Forgets products that changed (deleted or re-ingested)."""
        for product_id in product_ids:
            self._items.pop(product_id, None)
