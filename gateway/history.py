"""The shopper's recent product views and dismissals, kept in Redis.

Each user's history is one Redis list at ``{namespace}:history:{sha256(user_id) hex}``, newest view
first (a purchase is kept as a view), and their dismissals ("not interested") another at
``{namespace}:dismissed:{sha256(user_id) hex}``. Keys carry a hash of the user id, never the id itself, so
neither keys, the AOF nor errors show it (a pseudonym: whoever can guess an id can still check it against the
hash). These two lists are all that is stored per user, so deleting them forgets the user; deleted entries
stay in the append-only file until Redis next rewrites it (BGREWRITEAOF).

An entry is ``b"<at_ms>:<product id as UTF-8>"``. The decimal timestamp holds no colon, so splitting at the
first colon is unambiguous whatever characters the product id contains.

Every view adds one to its product's count in the sorted set ``{namespace}:popularity``, and every purchase
``purchase_weight``: the interest of all shoppers, with no user in it, so forgetting a user leaves the counts
as they are. A dismissal does not count.
"""

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Self, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.domain import Feedback, InvalidArgument, ShopperRecord, Unavailable, View

DEFAULT_MAX_VIEWS = 50
DEFAULT_MAX_DISMISSALS = 50
DEFAULT_PURCHASE_WEIGHT = 5.0
DEFAULT_TTL_S = 30 * 24 * 3600
DEFAULT_TIMEOUT_S = 0.5
DEFAULT_NAMESPACE = "recsys"


class RedisHistory:
    """The HistoryStore over Redis: per user a capped list of recent views with a TTL that every
    new view renews."""

    def __init__(self, client: Redis, *, max_views: int = DEFAULT_MAX_VIEWS,
                 ttl_s: int = DEFAULT_TTL_S, namespace: str = DEFAULT_NAMESPACE,
                 max_dismissals: int = DEFAULT_MAX_DISMISSALS, purchase_weight: float = DEFAULT_PURCHASE_WEIGHT
                 ) -> None:
        if max_views < 1 or ttl_s < 1 or not namespace or max_dismissals < 1 or not purchase_weight >= 1:
            raise ValueError(f"need max_views >= 1, ttl_s >= 1, a namespace, max_dismissals >= 1 and "
                             f"purchase_weight >= 1; got max_views={max_views}, ttl_s={ttl_s}, "
                             f"namespace={namespace!r}, max_dismissals={max_dismissals}, "
                             f"purchase_weight={purchase_weight}")
        self.max_views = max_views
        self.max_dismissals = max_dismissals
        self.purchase_weight = purchase_weight
        self.ttl_s = ttl_s
        self.namespace = namespace
        self._redis = client

    @classmethod
    def from_url(cls, url: str, *, max_views: int = DEFAULT_MAX_VIEWS, ttl_s: int = DEFAULT_TTL_S,
                 namespace: str = DEFAULT_NAMESPACE, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_dismissals: int = DEFAULT_MAX_DISMISSALS, purchase_weight: float = DEFAULT_PURCHASE_WEIGHT
                 ) -> Self:
        """A history over the Redis at url (e.g. ``redis://host:6379/0``). Connecting and every
        command give up after timeout_s, so a dead or hung Redis fails fast; a broken connection
        is retried once at once, which heals pooled connections after a Redis restart."""
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)))
        return cls(client, max_views=max_views, ttl_s=ttl_s, namespace=namespace, max_dismissals=max_dismissals,
                   purchase_weight=purchase_weight)

    async def record(self, user_id: str, product_id: str, at_ms: int, feedback: Feedback = Feedback.VIEW) -> None:
        """Records feedback in one MULTI/EXEC transaction: a view or a purchase is prepended to the history (trimmed
        to max_views) and counts for the product's popularity (a purchase ``purchase_weight`` times); a dismissal
        is prepended to the dismissals (trimmed to max_dismissals). The list's TTL is renewed."""
        if at_ms < 0:
            raise InvalidArgument(f"viewed_at_ms must be >= 0 (milliseconds since the epoch), got {at_ms}")
        product = _utf8("product_id", product_id)
        entry = str(at_ms).encode() + b":" + product
        key, cap = ((self._dismissed_key(user_id), self.max_dismissals) if feedback is Feedback.DISMISS
                    else (self._key(user_id), self.max_views))
        with _unavailable_on_redis_error():
            async with self._redis.pipeline(transaction=True) as transaction:
                transaction.lpush(key, entry)
                transaction.ltrim(key, 0, cap - 1)
                transaction.expire(key, self.ttl_s)
                if feedback is not Feedback.DISMISS:
                    weight = self.purchase_weight if feedback is Feedback.PURCHASE else 1
                    transaction.zincrby(self._popularity_key, weight, product)
                await transaction.execute()

    async def popularity(self, product_ids: Sequence[str]) -> list[float]:
        """Per product, ``log(1 + views) / log(1 + views of the most viewed product)``: 0..1, 0 if never viewed.

        The log keeps a few hits from drowning the rest: ten times the views is one step, not ten.
        """
        if not product_ids:
            return []
        members = [_utf8("product_id", product_id) for product_id in product_ids]
        with _unavailable_on_redis_error():
            async with self._redis.pipeline(transaction=False) as pipeline:
                # redis types zmscore's members as list[str]; like every member argument they may be bytes.
                pipeline.zmscore(self._popularity_key, members)  # type: ignore[arg-type]
                pipeline.zrange(self._popularity_key, 0, 0, desc=True, withscores=True)
                counts, top = await pipeline.execute()
        scale = math.log1p(top[0][1]) if top else 0.0
        return [math.log1p(count) / scale if count and scale else 0.0 for count in counts]

    async def recent(self, user_id: str, limit: int | None = None) -> list[View]:
        """Up to limit (default and at most max_views) of the user's views, newest first."""
        if limit is not None and limit < 1:
            raise InvalidArgument(f"limit must be >= 1, got {limit}")
        count = self.max_views if limit is None else min(limit, self.max_views)
        key = self._key(user_id)
        with _unavailable_on_redis_error():
            # Without decode_responses Redis answers bytes; redis types the answer for either setting.
            entries = cast(list[bytes], await self._redis.lrange(key, 0, count - 1))
        return [_decode_view(entry) for entry in entries]

    async def shopper(self, user_id: str) -> ShopperRecord:
        """The user's views (at most max_views) and dismissals (at most max_dismissals), newest first, read in one
        round trip."""
        with _unavailable_on_redis_error():
            async with self._redis.pipeline(transaction=False) as pipeline:
                pipeline.lrange(self._key(user_id), 0, self.max_views - 1)
                pipeline.lrange(self._dismissed_key(user_id), 0, self.max_dismissals - 1)
                views, dismissals = await pipeline.execute()
        return ShopperRecord([_decode_view(entry) for entry in views], [_decode_view(entry) for entry in dismissals])

    async def forget(self, user_id: str) -> None:
        """Deletes everything stored for the user (their history and their dismissals)."""
        with _unavailable_on_redis_error():
            await self._redis.delete(self._key(user_id), self._dismissed_key(user_id))

    async def ping(self) -> None:
        """Raises Unavailable unless Redis answers."""
        with _unavailable_on_redis_error():
            await self._redis.ping()

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._redis.aclose()

    @property
    def _popularity_key(self) -> str:
        return f"{self.namespace}:popularity"

    def _key(self, user_id: str) -> str:
        return f"{self.namespace}:history:{_pseudonym(user_id)}"

    def _dismissed_key(self, user_id: str) -> str:
        return f"{self.namespace}:dismissed:{_pseudonym(user_id)}"


def _pseudonym(user_id: str) -> str:
    return hashlib.sha256(_utf8("user_id", user_id)).hexdigest()


def _utf8(name: str, value: str) -> bytes:
    """A non-empty id as UTF-8; InvalidArgument otherwise (the value itself is never echoed)."""
    if not value:
        raise InvalidArgument(f"{name} must be a non-empty string")
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None


def _decode_view(entry: bytes) -> View:
    viewed_at_ms, _, product_id = entry.partition(b":")
    return View(product_id=product_id.decode(), viewed_at_ms=int(viewed_at_ms))


@contextmanager
def _unavailable_on_redis_error() -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise Unavailable(f"history store (Redis) unavailable: {exc or type(exc).__name__}") from exc
