"""The gate of our RPCs: authentication, admission, request parsing, domain errors to status codes, counting."""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from . import domain
from .admission import Admission
from .auth import Authenticator
from .metrics import Metrics

log = logging.getLogger(__name__)

# What the aio server calls for a unary-response method: a coroutine function of the request and an aio context.
AioBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

STATUS_OF: dict[type[domain.RecsysError], grpc.StatusCode] = {
    domain.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    domain.NotFound: grpc.StatusCode.NOT_FOUND,
    domain.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    domain.Unavailable: grpc.StatusCode.UNAVAILABLE,
    domain.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    domain.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    domain.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    domain.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(error: domain.RecsysError) -> grpc.StatusCode:
    """The gRPC status code of a domain error (its most specific registered class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """The gate of every RPC of our own services: authenticates, admits, parses, maps errors, counts.

    In that order: a caller without a valid token is refused before its message is read; past the
    admission bound the RPC is refused with RESOURCE_EXHAUSTED before any work; a message that does
    not parse is INVALID_ARGUMENT (gRPC itself would answer UNKNOWN). Domain errors become their status
    codes, unknown errors INTERNAL with a generic message and a logged traceback. Only unary-response
    methods of our own services are wrapped; health and reflection pass through.
    """

    def __init__(self, metrics: Metrics, services: tuple[str, ...], admission: Admission | None = None,
                 authenticator: Authenticator | None = None) -> None:
        self._metrics = metrics
        self._services = services
        self._admission = admission
        self._authenticator = authenticator

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or path.lstrip("/").partition("/")[0] not in self._services:
            return handler
        deserializer = handler.request_deserializer
        # grpc's stubs type a handler's behaviours as the sync server calls them; the aio server's are AioBehaviours.
        if handler.unary_unary:
            behaviour = cast(AioBehaviour, handler.unary_unary)
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(path, behaviour, functools.partial(_parse, deserializer)),
                None, handler.response_serializer)
        if handler.stream_unary:
            behaviour = cast(AioBehaviour, handler.stream_unary)
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(path, behaviour, functools.partial(_parsed_stream, deserializer)),
                None, handler.response_serializer)
        return handler

    def _wrap(self, path: str, behaviour: AioBehaviour, parse: Callable[[Any], Any]) -> AioBehaviour:
        method = path.rpartition("/")[2]

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if self._authenticator:
                    self._authenticator.check(path, context.invocation_metadata() or ())
                with self._admission.slot() if self._admission else contextlib.nullcontext():
                    return await behaviour(parse(request), context)
            except domain.RecsysError as error:
                code, message = status_of(error), str(error)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code, message = grpc.StatusCode.INTERNAL, "internal error; the server logged the details"
                log.exception("unhandled error in %s", method)
            finally:
                self._metrics.requests.labels(method, code.name).inc()
                self._metrics.request_seconds.labels(method).observe(time.perf_counter() - start)
            # Outside the except blocks, so that the abort does not chain the error, whose traceback
            # would keep the failed request (up to the message size limit) alive until a full GC.
            del request
            await context.abort(code, message)

        return handle


def _parse(deserializer: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    """The request message of raw bytes; InvalidArgument when they are not one."""
    try:
        return deserializer(raw) if deserializer else raw
    except DecodeError as error:
        raise domain.InvalidArgument(f"the request is not a valid protobuf message for this method: {error}") from None


async def _parsed_stream(deserializer: Callable[[bytes], Any] | None, raw_messages: AsyncIterator[bytes]
                         ) -> AsyncIterator[Any]:
    async for raw in raw_messages:
        yield _parse(deserializer, raw)
