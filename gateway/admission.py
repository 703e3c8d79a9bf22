"""Admission control: a bound on concurrent work that refuses the excess at once instead of queueing it.

A queue in front of a saturated backend only adds waiting time to every request; refusing what is
over the bound keeps the latency of admitted requests within budget and tells callers to back off.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from .domain import ResourceExhausted


class Admission:
    """At most `limit` holders of a slot at a time; `slot()` raises ResourceExhausted when all are taken.

    Not thread-safe: use it from one event loop, where checking and taking a slot cannot interleave.
    """

    def __init__(self, work: str, limit: int, in_flight: Gauge) -> None:
        if limit < 1:
            raise ValueError(f"the limit of concurrent {work} must be >= 1, got {limit}")
        self.work = work
        self.limit = limit
        self.in_flight = 0
        self._gauge = in_flight.labels(work)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Holds one slot for the enclosed block."""
        if self.in_flight >= self.limit:
            raise ResourceExhausted(f"the gateway is at its limit of {self.limit} concurrent {self.work}; "
                                    "retry with backoff")
        self.in_flight += 1
        self._gauge.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._gauge.set(self.in_flight)
