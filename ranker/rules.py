"""Business rules of a request: boosts (or buries) of products by category or attribute value, and a recency decay
on a date attribute. Pure: a product's category and attributes in, each rule's addition to its score out.

A :class:`Boost` adds its weight to every product it matches. A :class:`RecencyDecay` adds
``weight * 0.5 ** (age_days / half_life_days)``, the age counted from the ranking time (0 for a date in the future).
The caller checks the rules' values (names, finite weights, a positive half-life).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

DAY_S = 86_400.0
# The key of a boost (or a diversity group) that means the product's category rather than an attribute.
CATEGORY_KEY = "category"


@dataclass(frozen=True)
class Boost:
    """Adds `weight` to the score of the products whose `key` (CATEGORY_KEY or an attribute name) has one of
    `values`; a negative weight buries them."""

    rule: str
    key: str
    values: frozenset[str]
    weight: float


@dataclass(frozen=True)
class RecencyDecay:
    """Adds ``weight * 0.5 ** (age_days / half_life_days)`` to each product dated by its attribute `attribute`
    (ISO 8601; UTC without an offset); a product without a readable date gains nothing."""

    rule: str
    attribute: str
    half_life_days: float
    weight: float


@dataclass(frozen=True)
class RuleScore:
    """What one rule adds to a product's score (negative: it buries the product)."""

    rule: str
    contribution: float


@dataclass(frozen=True)
class Rules:
    """The business rules of a request."""

    boosts: tuple[Boost, ...] = ()
    recency_decay: RecencyDecay | None = None

    def __bool__(self) -> bool:
        return bool(self.boosts or self.recency_decay)

    def scores(self, category: str, attributes: Mapping[str, str], now_s: float) -> tuple[RuleScore, ...]:
        """The additions of the rules that apply to a product with this category and attributes, ranked at Unix time
        `now_s`."""
        scores = [RuleScore(boost.rule, boost.weight) for boost in self.boosts
                  if key_value(boost.key, category, attributes) in boost.values]
        decay = self.recency_decay
        dated = parse_date(attributes.get(decay.attribute, "")) if decay else None
        if decay and dated is not None:
            age_days = max(0.0, now_s - dated) / DAY_S
            scores.append(RuleScore(decay.rule, decay.weight * 0.5 ** (age_days / decay.half_life_days)))
        return tuple(scores)


NO_RULES = Rules()


def key_value(key: str, category: str, attributes: Mapping[str, str]) -> str | None:
    """The product's value of `key`: its category for CATEGORY_KEY, else the attribute (None when it has none)."""
    return category if key == CATEGORY_KEY else attributes.get(key)


def parse_date(value: str) -> float | None:
    """The Unix time of an ISO 8601 date or date and time (UTC without an offset), None if it is not one."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
