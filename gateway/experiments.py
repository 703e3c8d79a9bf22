"""Experiments: sets of ranker weights (arms), each serving a share of the shoppers, chosen by a hash of their user id
so that a shopper stays in one arm; the metrics count lists and feedback per arm, so arms compare on live traffic."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ranker import Weights

from .domain import InvalidArgument

BUCKETS = 100


@dataclass(frozen=True)
class Arm:
    """An experiment arm: its name, the percentage of shoppers it serves, and the ranker weights it ranks with."""

    name: str
    share: int
    weights: Weights


class Experiments:
    """The configured arms (none: no experiment); their shares add up to 100, in the order given."""

    def __init__(self, arms: Sequence[Arm] = (), salt: str = "") -> None:
        if arms and sum(arm.share for arm in arms) != BUCKETS:
            raise ValueError(f"experiment shares add up to {sum(arm.share for arm in arms)}; they must add up to 100")
        if len({arm.name for arm in arms}) != len(arms):
            raise ValueError("experiment arm names must be unique")
        self.arms = tuple(arms)
        self._salt = salt
        self._by_name = {arm.name: arm for arm in arms}

    def __bool__(self) -> bool:
        return bool(self.arms)

    def assigned(self, user_id: str) -> Arm | None:
        """The user's arm: the one whose share holds the hash of the salt and user id (the first arm for an anonymous
        user); None without experiments."""
        if not self.arms:
            return None
        if not user_id:
            return self.arms[0]
        digest = hashlib.sha256(f"{self._salt}\0{user_id}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") % BUCKETS
        for arm in self.arms:
            if bucket < arm.share:
                return arm
            bucket -= arm.share
        raise AssertionError("shares add up to BUCKETS")

    def arm(self, user_id: str, requested: str) -> Arm | None:
        """The arm a request asked for by name, else the user's; InvalidArgument for a name that is not an arm."""
        if not requested:
            return self.assigned(user_id)
        if requested not in self._by_name:
            configured = ", ".join(map(repr, self._by_name)) or "none: this server runs no experiment"
            raise InvalidArgument(f"experiment {requested!r} is not configured; the arms are {configured}")
        return self._by_name[requested]


def label_of(arm: Arm | None) -> str:
    """The arm's metrics label: its name, or "none" without experiments."""
    return arm.name if arm else "none"
