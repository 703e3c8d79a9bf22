"""Checks on identifiers, and lists of them, that arrive from callers."""

from collections.abc import Mapping, Sequence

from .domain import InvalidArgument

MAX_ID_LENGTH = 256
MAX_IDS_PER_REQUEST = 1000
MAX_FILTER_CATEGORIES = 100
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE_LENGTH = 1024


def check_id(kind: str, value: str) -> str:
    """Returns value if it is a usable identifier, else raises InvalidArgument naming the problem."""
    if not value:
        raise InvalidArgument(f"{kind} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{kind} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if not value.isprintable():
        raise InvalidArgument(f"{kind} contains control or non-printable characters")
    return value


def check_id_count(kind: str, values: Sequence[str], limit: int = MAX_IDS_PER_REQUEST) -> None:
    """Raises InvalidArgument when a request lists more than `limit` values."""
    if len(values) > limit:
        raise InvalidArgument(f"{kind} lists {len(values)} values; the limit is {limit} per request")


def check_categories(categories: Sequence[str]) -> None:
    """Raises InvalidArgument unless `categories` is a short list of usable category names."""
    check_id_count("filter.categories", categories, MAX_FILTER_CATEGORIES)
    for category in categories:
        check_id("filter category", category)


def check_attributes(attributes: Mapping[str, str]) -> None:
    """Raises InvalidArgument unless a product's attributes are few, with usable names and short values."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"the product has {len(attributes)} attributes; the limit is {MAX_ATTRIBUTES}")
    for name, value in attributes.items():
        check_id("attribute name", name)
        if len(value) > MAX_ATTRIBUTE_VALUE_LENGTH:
            raise InvalidArgument(f"attribute {name!r} is {len(value)} characters long; "
                                  f"the limit is {MAX_ATTRIBUTE_VALUE_LENGTH}")
