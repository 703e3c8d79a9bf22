"""Checks on identifiers that arrive from callers."""

from .domain import InvalidArgument

MAX_ID_LENGTH = 256


def check_id(kind: str, value: str) -> str:
    """Returns value if it is a usable identifier, else raises InvalidArgument naming the problem."""
    if not value:
        raise InvalidArgument(f"{kind} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{kind} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}")
    if not value.isprintable():
        raise InvalidArgument(f"{kind} contains control or non-printable characters")
    return value
