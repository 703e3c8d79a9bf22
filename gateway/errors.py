"""The one place where domain errors become gRPC status codes, and where RPCs are counted."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from . import domain
from .metrics import Metrics

log = logging.getLogger(__name__)

STATUS_OF: dict[type[domain.RecsysError], grpc.StatusCode] = {
    domain.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    domain.NotFound: grpc.StatusCode.NOT_FOUND,
    domain.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    domain.Unavailable: grpc.StatusCode.UNAVAILABLE,
    domain.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    domain.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(error: domain.RecsysError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (its most specific registered class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes, hides unknown errors behind INTERNAL, counts every RPC.

    Only unary-response methods of our own services are wrapped; health and reflection pass through.
    """

    def __init__(self, metrics: Metrics, services: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._services = services

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service not in self._services:
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(method, handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(method, handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return handler

    def _wrap(self, method: str, behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
              ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except domain.RecsysError as error:
                code = status_of(error)
                await context.abort(code, str(error))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                await context.abort(code, "internal error; the server logged the details")
            finally:
                self._metrics.requests.labels(method, code.name).inc()
                self._metrics.request_seconds.labels(method).observe(time.perf_counter() - start)

        return handle
