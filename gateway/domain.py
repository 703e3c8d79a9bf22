"""Domain objects and errors shared by the pipeline and its adapters (no protobuf, no gRPC)."""

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """The embedding model that produced a vector: Triton name and version, backbone, dimension."""

    name: str
    version: str
    backbone: str
    dim: int

    def __str__(self) -> str:
        return f"{self.name}/{self.version} ({self.backbone})"


@dataclass(frozen=True)
class CatalogItem:
    """A catalog product with its embedding; `thumbnail` (JPEG) is set when storing, not when searching;
    `neighbour_similarity` (its mean cosine similarity to its nearest catalog neighbours) is read, never written
    with the product: 0 until it is set."""

    product_id: str
    category: str
    vector: np.ndarray
    attributes: Mapping[str, str] = field(default_factory=dict)
    thumbnail: bytes = b""
    neighbour_similarity: float = 0.0


@dataclass(frozen=True)
class AttributeValues:
    """Products whose attribute `name` equals one of `values`."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class AttributeRange:
    """Products whose attribute `name`, read as a number, is within minimum..maximum (None: unbounded)."""

    name: str
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class ProductFilter:
    """Which products a search may return: those in one of `categories` (any when empty) that pass every condition
    of `attributes` and `ranges`, and are in none of `excluded_categories` and match none of `excluded_attributes`."""

    categories: tuple[str, ...] = ()
    attributes: tuple[AttributeValues, ...] = ()
    ranges: tuple[AttributeRange, ...] = ()
    excluded_categories: tuple[str, ...] = ()
    excluded_attributes: tuple[AttributeValues, ...] = ()


EVERY_PRODUCT = ProductFilter()


@dataclass(frozen=True)
class Neighbour:
    """A search hit: a catalog product, its vector and its cosine similarity to the query."""

    item: CatalogItem
    score: float


@dataclass(frozen=True)
class View:
    """One product view of a user (or a dismissal, in a list of dismissals)."""

    product_id: str
    viewed_at_ms: int


class Feedback(enum.Enum):
    """What a shopper did with a product: viewed it, dismissed it ("not interested"), or bought it."""

    VIEW = "view"
    DISMISS = "dismiss"
    PURCHASE = "purchase"


@dataclass(frozen=True)
class ShopperRecord:
    """What is stored of a shopper: recent views (purchases included) and dismissals, each newest first."""

    views: list[View]
    dismissals: list[View]


class RecsysError(Exception):
    """Base of errors a caller can act on; the message is shown to the caller as is."""


class InvalidArgument(RecsysError):
    """The request is malformed (bad image, bad id, out-of-range value)."""


class NotFound(RecsysError):
    """A referenced product does not exist."""


class FailedPrecondition(RecsysError):
    """The system is not in a state to serve this request (e.g. catalog built with another model)."""


class Unavailable(RecsysError):
    """A backend (Triton, Qdrant, Redis) cannot be reached or failed; retrying may succeed."""


class ResourceExhausted(RecsysError):
    """Too much concurrent work; retry later."""


class Unauthenticated(RecsysError):
    """The caller sent no valid credentials."""


class PermissionDenied(RecsysError):
    """The caller's credentials do not allow this method."""


class DeadlineExceeded(RecsysError):
    """A stage ran out of its time budget."""
