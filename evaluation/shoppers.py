"""A seeded simulator of shoppers with hidden preferences who browse the catalog.

The hidden structure never uses the embedding models, so it favours neither model version:

- **Look**: each product's 28x28 pixels, projected on the catalog's first 32 principal components.
  Two products "look alike" when they are near in this space and share a category.
- **Popularity**: each product has a hidden appeal drawn from a log-normal distribution (sigma 1).
- **Tastes**: a shopper likes 1 to 3 styles. A style is a prototype product (drawn by appeal) and its
  ``style_size`` nearest look-alikes in the same category, so it is a category and a visual style at
  once. The shopper weighs the styles with Dirichlet(1) weights.

A session starts with a product of one of the shopper's styles; each next view is, with probability
``p_look_alike``, one of the ``look_alikes`` nearest look-alikes of the product just viewed (browsing
"more like this"), with probability ``p_taste`` a product of one of the shopper's styles (by weight),
and otherwise any product (exploring). Within each choice products are drawn by appeal, and a shopper
never views a product twice. The rankers see the views only: never the styles, the weights or the
appeal.
"""

from dataclasses import dataclass

import numpy as np

LOOK_COMPONENTS = 32


@dataclass(frozen=True)
class ShopperConfig:
    """The simulator's parameters, fixed before any ranker was evaluated."""

    style_size: int = 30
    look_alikes: int = 10
    p_look_alike: float = 0.5
    p_taste: float = 0.4
    min_views: int = 8
    max_views: int = 16
    max_styles: int = 3
    appeal_sigma: float = 1.0


@dataclass(frozen=True)
class Shopper:
    """A simulated shopper: hidden styles (product indices) with their weights, and the session."""

    styles: tuple[np.ndarray, ...]
    weights: np.ndarray
    views: tuple[int, ...]


class Catalog:
    """The hidden structure of a catalog of products (pixels and category labels), built once."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, config: ShopperConfig, seed: int) -> None:
        self.labels = np.asarray(labels)
        self.config = config
        rng = np.random.default_rng(seed)
        self.appeal = rng.lognormal(0.0, config.appeal_sigma, size=len(self.labels))
        look = looks(pixels)
        self._neighbours = same_category_neighbours(look, self.labels, max(config.style_size, config.look_alikes))

    def style(self, prototype: int) -> np.ndarray:
        """The prototype and its nearest same-category look-alikes."""
        return np.concatenate(([prototype], self._neighbours[prototype, :self.config.style_size - 1]))

    def look_alikes(self, product: int) -> np.ndarray:
        return self._neighbours[product, :self.config.look_alikes]

    def pick(self, rng: np.random.Generator, candidates: np.ndarray, seen: list[int]) -> int:
        """A product among ``candidates`` not in ``seen`` (else among all products), drawn by appeal."""
        fresh = candidates[~np.isin(candidates, seen)]
        if len(fresh) == 0:
            fresh = np.setdiff1d(np.arange(len(self.labels)), seen)
        weights = self.appeal[fresh]
        return int(rng.choice(fresh, p=weights / weights.sum()))


def looks(pixels: np.ndarray) -> np.ndarray:
    """Products' pixels [N, H, W] projected on their first LOOK_COMPONENTS principal components."""
    flat = np.asarray(pixels, dtype=np.float64).reshape(len(pixels), -1) / 255.0
    centred = flat - flat.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:LOOK_COMPONENTS].T


def same_category_neighbours(look: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """[N, count]: each product's nearest other products of its category in look space, nearest first."""
    neighbours = np.zeros((len(look), count), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) <= count:
            raise ValueError(f"category {label} has {len(members)} products; need more than {count}")
        points = look[members]
        squared = (points ** 2).sum(axis=1)
        distances = squared[:, None] + squared[None, :] - 2 * points @ points.T
        np.fill_diagonal(distances, np.inf)
        neighbours[members] = members[np.argsort(distances, axis=1)[:, :count]]
    return neighbours


def simulate(catalog: Catalog, count: int, seed: int) -> list[Shopper]:
    """``count`` shoppers with their sessions; the same catalog, count and seed give the same shoppers."""
    rng = np.random.default_rng(seed)
    config = catalog.config
    everything = np.arange(len(catalog.labels))
    shoppers = []
    for _ in range(count):
        prototypes = rng.choice(everything, size=rng.integers(1, config.max_styles + 1), replace=False,
                                p=catalog.appeal / catalog.appeal.sum())
        styles = tuple(catalog.style(int(prototype)) for prototype in prototypes)
        weights = rng.dirichlet(np.ones(len(styles)))
        length = int(rng.integers(config.min_views, config.max_views + 1))
        views: list[int] = []
        while len(views) < length:
            draw = rng.random()
            if views and draw < config.p_look_alike:
                candidates = catalog.look_alikes(views[-1])
            elif not views or draw < config.p_look_alike + config.p_taste:
                candidates = styles[rng.choice(len(styles), p=weights)]
            else:
                candidates = everything
            views.append(catalog.pick(rng, candidates, views))
        shoppers.append(Shopper(styles, weights, tuple(views)))
    return shoppers
