"""The cache of viewed products' catalog items: freshness, size bound, invalidation."""

import numpy as np
import pytest

from gateway.domain import CatalogItem
from gateway.item_cache import ItemCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def item(product_id: str, value: float = 1.0) -> CatalogItem:
    return CatalogItem(product_id=product_id, category="Bag", vector=np.full(4, value, dtype=np.float32))


def test_items_are_served_until_their_time_is_up() -> None:
    clock = Clock()
    cache = ItemCache(max_items=10, ttl_s=30, clock=clock)
    cache.put([item("a"), item("b")])
    clock.now += 29.9
    assert sorted(cache.get(["a", "b", "c"])) == ["a", "b"]
    cache.put([item("b", 2.0)])  # a fresh read restarts its time and replaces the copy
    clock.now += 0.1
    found = cache.get(["a", "b"])
    assert list(found) == ["b"]
    assert found["b"].vector[0] == 2.0


def test_the_oldest_items_go_first_past_the_size_bound() -> None:
    cache = ItemCache(max_items=2, ttl_s=30, clock=Clock())
    cache.put([item("a"), item("b")])
    cache.put([item("a"), item("c")])  # "a" is stored again, so "b" is now the oldest
    assert sorted(cache.get(["a", "b", "c"])) == ["a", "c"]


def test_dropped_items_are_read_again() -> None:
    cache = ItemCache(max_items=10, ttl_s=30, clock=Clock())
    cache.put([item("a"), item("b")])
    cache.drop(["a", "never-stored"])
    assert list(cache.get(["a", "b"])) == ["b"]


@pytest.mark.parametrize("max_items, ttl_s", [(0, 30), (10, 0)])
def test_a_zero_size_or_time_turns_the_cache_off(max_items: int, ttl_s: float) -> None:
    cache = ItemCache(max_items=max_items, ttl_s=ttl_s, clock=Clock())
    cache.put([item("a")])
    assert cache.get(["a"]) == {}


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_items >= 0"):
        ItemCache(max_items=-1, ttl_s=30)
