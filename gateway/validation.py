"""Checks on identifiers, and lists of them, that arrive from callers."""

import math
from collections.abc import Collection, Mapping, Sequence

from ranker import Rules
from ranker.rules import CATEGORY_KEY

from .domain import InvalidArgument, ProductFilter

MAX_ID_LENGTH = 256
MAX_IDS_PER_REQUEST = 1000
MAX_FILTER_CATEGORIES = 100
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE_LENGTH = 1024
# Per request: attribute conditions of a filter (each kind), boosts, and values of one condition or boost.
MAX_CONDITIONS = 16
MAX_VALUES = 100
# The largest size of a rule's weight: ten times the whole range of the visual similarity.
MAX_RULE_WEIGHT = 10.0


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


def check_filter(where: ProductFilter) -> None:
    """Raises InvalidArgument unless the filter's categories, attribute values and numeric ranges are usable."""
    check_categories(where.categories)
    for kind, conditions in (("filter.attributes", where.attributes), ("filter.ranges", where.ranges)):
        check_id_count(kind, [condition.name for condition in conditions], MAX_CONDITIONS)
    for number, condition in enumerate(where.attributes):
        check_attribute_name(f"filter.attributes[{number}].name", condition.name)
        check_values(f"filter.attributes[{number}].values", condition.values)
    for number, bounds in enumerate(where.ranges):
        kind = f"filter.ranges[{number}]"
        check_attribute_name(f"{kind}.name", bounds.name)
        given = [bound for bound in (bounds.minimum, bounds.maximum) if bound is not None]
        if not given:
            raise InvalidArgument(f"{kind} sets neither min nor max")
        if not all(math.isfinite(bound) for bound in given):
            raise InvalidArgument(f"{kind} has a bound that is not a finite number")
        if bounds.minimum is not None and bounds.maximum is not None and bounds.minimum > bounds.maximum:
            raise InvalidArgument(f"{kind}: min {bounds.minimum} is above max {bounds.maximum}")


def check_rules(rules: Rules) -> None:
    """Raises InvalidArgument unless the business rules have usable names, keys, values and weights."""
    check_id_count("boosts", [boost.rule for boost in rules.boosts], MAX_CONDITIONS)
    for number, boost in enumerate(rules.boosts):
        kind = f"boosts[{number}]"
        check_id(f"{kind}.rule", boost.rule)
        if boost.key != CATEGORY_KEY:
            check_id(f"{kind}.key", boost.key)
        check_values(f"{kind}.values", boost.values)
        check_rule_weight(f"{kind}.weight", boost.weight, -MAX_RULE_WEIGHT)
    decay = rules.recency_decay
    if decay:
        check_id("recency_decay.rule", decay.rule)
        check_id("recency_decay.attribute", decay.attribute)
        if not (math.isfinite(decay.half_life_days) and decay.half_life_days > 0):
            raise InvalidArgument(f"recency_decay.half_life_days is {decay.half_life_days}; it must be above 0")
        check_rule_weight("recency_decay.weight", decay.weight, 0.0)


def check_attribute_name(kind: str, name: str) -> None:
    """Raises InvalidArgument unless `name` is an attribute name the catalog engine can filter on."""
    check_id(kind, name)
    if '"' in name or "\\" in name:
        raise InvalidArgument(f"{kind} {name!r} contains a double quote or a backslash; such attributes cannot be "
                              "filtered on")


def check_values(kind: str, values: Collection[str]) -> None:
    """Raises InvalidArgument unless there are 1 to MAX_VALUES values, each of a usable length."""
    if not values:
        raise InvalidArgument(f"{kind} is empty; give at least one value")
    check_id_count(kind, list(values), MAX_VALUES)
    for value in values:
        if len(value) > MAX_ATTRIBUTE_VALUE_LENGTH:
            raise InvalidArgument(f"{kind} has a value {len(value)} characters long; "
                                  f"the limit is {MAX_ATTRIBUTE_VALUE_LENGTH}")


def check_rule_weight(kind: str, weight: float, lowest: float) -> None:
    """Raises InvalidArgument unless the weight is finite, not 0, and within lowest..MAX_RULE_WEIGHT."""
    if not (math.isfinite(weight) and weight != 0 and lowest <= weight <= MAX_RULE_WEIGHT):
        raise InvalidArgument(f"{kind} is {weight}; it must be a number other than 0 in "
                              f"{lowest:g}..{MAX_RULE_WEIGHT:g}")
