"""RecsysClient: one long-lived gRPC channel to the gateway, with optional TLS and bearer token.

Idempotent calls (Recommend, GetHistory, ForgetUser, GetProductImage, DeleteProducts) are retried by gRPC itself
when the gateway answers UNAVAILABLE, as the service config below says: up to `max_attempts` attempts with
exponential backoff, throttled so that retries stop adding load while most calls fail. RecordView (a retry could
count a view twice) and the UpsertProducts stream are never retried. A failed call raises grpc.aio.AioRpcError,
whose code() and details() say what went wrong (the proto lists the codes per rpc).
"""

import json
from collections.abc import AsyncIterable, Iterable, Sequence
from types import TracebackType
from typing import TypedDict

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the gateway's limit: an image query may carry up to 10 MiB
# (service, method) of the calls that may be sent again: repeating them changes nothing.
IDEMPOTENT_METHODS = (("recsys.v1.Recommender", "Recommend"), ("recsys.v1.Recommender", "GetHistory"),
                      ("recsys.v1.Recommender", "ForgetUser"), ("recsys.v1.Catalog", "GetProductImage"),
                      ("recsys.v1.Catalog", "DeleteProducts"))


class CallOptions(TypedDict):
    """The keyword arguments of every call: its deadline and metadata."""

    timeout: float
    metadata: tuple[tuple[str, str], ...]


def service_config(max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
    """The channel's gRPC service config (JSON): retries of the idempotent methods on UNAVAILABLE."""
    retry = {"maxAttempts": max_attempts, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
             "retryableStatusCodes": ["UNAVAILABLE"]}
    return json.dumps({
        "methodConfig": [{"name": [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS],
                          "retryPolicy": retry}],
        # Retries stop while more than half the recent calls failed, so a struggling gateway is not sent more.
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    })


class RecsysClient:
    """An async client of the recommendation gateway at `target` (host:port); use it as an async context manager
    or call `close()`.

    TLS is on when `root_certificates` (PEM of the CA that signed the gateway's certificate) or `tls=True` (the
    system's roots) is given; `private_key` and `certificate_chain` (PEM) authenticate this client for mutual
    TLS. `token` is sent as "authorization: Bearer <token>" with every call. Every call has a deadline of
    `timeout_s` seconds unless it gives its own.
    """

    def __init__(self, target: str, *, token: str = "", tls: bool = False, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        options: list[tuple[str, str | int]] = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.enable_retries", int(max_attempts > 1))]
        if max_attempts > 1:
            options.append(("grpc.service_config", service_config(max_attempts)))
        if tls or root_certificates or certificate_chain:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout_s = timeout_s
        self._recommender = pb_grpc.RecommenderStub(self._channel)
        self._catalog = pb_grpc.CatalogStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def recommend(self, *, image: bytes | None = None, product_id: str | None = None, user_id: str = "",
                        limit: int = 0, categories: Sequence[str] = (), filter: pb.Filter | None = None,
                        diversity: pb.Diversity | None = None, boosts: Sequence[pb.Boost] = (),
                        recency_decay: pb.RecencyDecay | None = None, experiment: str = "",
                        timeout_s: float | None = None) -> pb.RecommendResponse:
        """Products like `image` (encoded bytes) or like catalog product `product_id`, or (neither) from the
        user's history alone; personalised for `user_id`; `limit` 0 means the server's default (10). `categories`
        (added to `filter`'s) and `filter` restrict the products; `diversity`, `boosts`, `recency_decay` and
        `experiment` shape the ranking (unset: the server's defaults; see the proto)."""
        if image is not None and product_id is not None:
            raise ValueError("send an image or a product_id, not both")
        restriction = pb.Filter()
        if filter is not None:
            restriction.CopyFrom(filter)
        restriction.categories.extend(categories)
        request = pb.RecommendRequest(user_id=user_id, limit=limit, filter=restriction, diversity=diversity,
                                      boosts=boosts, recency_decay=recency_decay, experiment=experiment)
        if image is not None:
            request.image = image
        elif product_id is not None:
            request.product_id = product_id
        return await self._recommender.Recommend(request, **self._call(timeout_s))

    async def record_view(self, user_id: str, product_id: str, timeout_s: float | None = None) -> None:
        """Records that `user_id` viewed catalog product `product_id`."""
        await self._recommender.RecordView(pb.RecordViewRequest(user_id=user_id, product_id=product_id),
                                           **self._call(timeout_s))

    async def record_feedback(self, user_id: str, product_id: str, kind: pb.FeedbackKind,
                              timeout_s: float | None = None) -> None:
        """Records that `user_id` viewed, dismissed or bought catalog product `product_id` (pb.FEEDBACK_KIND_*)."""
        await self._recommender.RecordFeedback(
            pb.RecordFeedbackRequest(user_id=user_id, product_id=product_id, kind=kind), **self._call(timeout_s))

    async def history(self, user_id: str, timeout_s: float | None = None) -> pb.GetHistoryResponse:
        """The user's recent views and dismissals, newest first."""
        return await self._recommender.GetHistory(pb.GetHistoryRequest(user_id=user_id), **self._call(timeout_s))

    async def forget_user(self, user_id: str, timeout_s: float | None = None) -> None:
        """Removes everything stored about the user (needs the write scope)."""
        await self._recommender.ForgetUser(pb.ForgetUserRequest(user_id=user_id), **self._call(timeout_s))

    async def product_image(self, product_id: str, timeout_s: float | None = None) -> pb.ProductImage:
        """The product's picture as the catalog stored it at ingestion."""
        return await self._catalog.GetProductImage(pb.GetProductImageRequest(product_id=product_id),
                                                   **self._call(timeout_s))

    async def upsert_products(self, products: Iterable[pb.Product] | AsyncIterable[pb.Product],
                              timeout_s: float | None = None) -> int:
        """Streams products into the catalog (needs the write scope); returns how many were stored."""
        response = await self._catalog.UpsertProducts(products, **self._call(timeout_s))
        return response.upserted

    async def delete_products(self, product_ids: Sequence[str], timeout_s: float | None = None) -> int:
        """Deletes products by id (needs the write scope); returns how many existed."""
        response = await self._catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=list(product_ids)),
                                                      **self._call(timeout_s))
        return response.deleted

    async def serving(self, service: str = "", timeout_s: float | None = None) -> bool:
        """Whether the gateway's standard health check says SERVING (for `service`; "" is the whole server)."""
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                            timeout=timeout_s or self._timeout_s)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def _call(self, timeout_s: float | None) -> "CallOptions":
        return {"timeout": timeout_s or self._timeout_s, "metadata": self._metadata}

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "RecsysClient":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()
