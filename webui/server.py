"""The page's HTTP adapter: static files, example photos, and endpoints that call the gateway over gRPC.

Product pictures come from the gateway (Catalog.GetProductImage: what the catalog stored at ingestion).

Every gateway error becomes a JSON ``{"error": message}`` with a matching HTTP status;
the page shows the message. Anything unexpected is logged here and answered with a generic message.
"""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import grpc
from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog_sources.fashion_mnist import CLASS_NAMES
from recsys_api.v1 import recsys_pb2 as pb
from recsys_client import RecsysClient

from .examples import FashionMnistImages

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # the gateway's gRPC message limit; the gateway itself refuses images over 10 MiB
RPC_TIMEOUT_S = 10.0
DEFAULT_LIMIT = 12
MAX_LIMIT = 100
REASON_TEXTS = {pb.REASON_KIND_VISUALLY_SIMILAR: "looks like the photo", pb.REASON_KIND_VIEWED_CATEGORY:
                "in a category you viewed", pb.REASON_KIND_POPULAR: "popular with shoppers",
                pb.REASON_KIND_DIVERSITY: "for variety"}

HTTP_STATUS_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
EXPLANATION_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: "The gateway refused the request",
    grpc.StatusCode.UNAUTHENTICATED: "The gateway wants a token: start the page with WEBUI_TOKEN",
    grpc.StatusCode.PERMISSION_DENIED: "The page's token lacks the 'read' scope",
    grpc.StatusCode.NOT_FOUND: "Not found",
    grpc.StatusCode.FAILED_PRECONDITION: "The catalog cannot be served",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "The recommendation service is overloaded",
    grpc.StatusCode.UNAVAILABLE: "The recommendation service is unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The recommendation service did not answer in time",
}

CLIENT = web.AppKey("client", RecsysClient)
EXAMPLES = web.AppKey("examples", FashionMnistImages)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A request the adapter itself refuses before calling the gateway."""


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every failure of an /api/ request into a JSON message the page can show."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        explanation = EXPLANATION_OF.get(code, f"The recommendation service failed ({code.name})")
        return error_response(HTTP_STATUS_OF.get(code, 502), f"{explanation}: {error.details()}")
    except BadRequest as error:
        return error_response(400, str(error))
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"The photo is too large: the limit is {MAX_UPLOAD_BYTES // 2**20} MiB.")
    except web.HTTPException as error:
        return error_response(error.status, error.reason)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "The web page's server failed; its log has the details.")


class WebUISettings(BaseSettings):
    """Where the page listens (WEBUI_HOST, WEBUI_PORT) and its bearer token for the gateway (WEBUI_TOKEN)."""

    model_config = SettingsConfigDict(env_prefix="WEBUI_", env_ignore_empty=True, frozen=True)

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    token: str = Field("", repr=False)


def image_url(product_id: str) -> str:
    return f"/images/{quote(product_id, safe='')}"


def example_url(example_id: str) -> str:
    return f"/examples/{quote(example_id, safe='')}"


def parse_limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"The number of results must be a whole number from 1 to {MAX_LIMIT}.")
    return int(value)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def options(request: web.Request) -> web.Response:
    """What the form offers: category names, example query images, limits."""
    try:
        examples = await request.app[EXAMPLES].examples()
    except (FileNotFoundError, ValueError) as error:
        log.warning("no example images: %s", error)
        examples = []
    return web.json_response({
        "categories": list(CLASS_NAMES),
        "examples": [{"product_id": product_id, "category": category, "image_url": example_url(product_id)}
                     for product_id, category in examples],
        "default_limit": DEFAULT_LIMIT,
        "max_limit": MAX_LIMIT,
    })


async def recommend(request: web.Request) -> web.Response:
    """Multipart form: image (file), user_id, limit, category (repeatable; none means every category)."""
    form = await request.post()
    upload = form.get("image")
    if not isinstance(upload, web.FileField):
        raise BadRequest("Upload a photo or pick an example first.")
    categories = [str(name).strip() for name in form.getall("category", []) if str(name).strip()]
    response = await request.app[CLIENT].recommend(
        image=upload.file.read(), user_id=str(form.get("user_id", "")).strip(),
        limit=parse_limit(str(form.get("limit", DEFAULT_LIMIT))), categories=categories)
    return web.json_response({
        "model": response.model,
        "degraded": list(response.degraded),
        "items": [{"product_id": item.product_id, "category": item.category, "score": item.score,
                   "visual_score": item.visual_score, "history_score": item.history_score,
                   "category_score": item.category_score, "popularity_score": item.popularity_score,
                   "attributes": dict(item.attributes), "reasons": [reason_text(reason) for reason in item.reasons],
                   "image_url": image_url(item.product_id)}
                  for item in response.items],
    })


def reason_text(reason: pb.Reason) -> str:
    """A reason code as the page shows it."""
    if reason.kind == pb.REASON_KIND_SIMILAR_TO_VIEWED:
        return f"looks like {reason.product_id}, which you viewed"
    if reason.kind == pb.REASON_KIND_BOOSTED:
        return f"boosted by rule {reason.rule}"
    return REASON_TEXTS.get(reason.kind, "")


async def record_view(request: web.Request) -> web.Response:
    """JSON body {user_id, product_id}."""
    try:
        body = await request.json()
        user_id, product_id = str(body["user_id"]).strip(), str(body["product_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise BadRequest("Send a JSON object with user_id and product_id.") from error
    await request.app[CLIENT].record_view(user_id, product_id)
    return web.json_response({})


async def history(request: web.Request) -> web.Response:
    """The user's recent views, newest first (query parameter user_id)."""
    views = (await request.app[CLIENT].history(request.query.get("user_id", "").strip())).views
    return web.json_response({"views": [
        {"product_id": view.product_id, "viewed_at_ms": view.viewed_at_ms, "image_url": image_url(view.product_id)}
        for view in views]})


async def product_image(request: web.Request) -> web.Response:
    """A catalog product's picture as the gateway stored it; the gateway's status otherwise (404 if unknown)."""
    try:
        image = await request.app[CLIENT].product_image(request.match_info["product_id"])
    except grpc.aio.AioRpcError as error:
        return web.Response(status=HTTP_STATUS_OF.get(error.code(), 502), text=error.details())
    return web.Response(body=image.data, content_type=image.content_type, headers={"Cache-Control": "no-cache"})


async def example_image(request: web.Request) -> web.Response:
    """An example query photo as PNG; 404 for ids that are not Fashion-MNIST images."""
    try:
        png = await request.app[EXAMPLES].png(request.match_info["example_id"])
    except (FileNotFoundError, ValueError) as error:
        log.warning("example images are unavailable: %s", error)
        png = None
    if png is None:
        raise web.HTTPNotFound(text="no such example")
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


def create_app(gateway_target: str, examples: FashionMnistImages | None = None, token: str = ""
               ) -> web.Application:
    """The page's application; its gateway client opens at start-up and closes at clean-up.

    token: a bearer token with the `read` scope, for a gateway that requires tokens.
    """
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_UPLOAD_BYTES)
    app[EXAMPLES] = examples or FashionMnistImages()

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        async with RecsysClient(gateway_target, token=token, timeout_s=RPC_TIMEOUT_S) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(client_context)
    app.router.add_get("/", index)
    app.router.add_static("/static", STATIC_DIR)
    app.router.add_get("/images/{product_id}", product_image)
    app.router.add_get("/examples/{example_id}", example_image)
    app.router.add_get("/api/options", options)
    app.router.add_post("/api/recommend", recommend)
    app.router.add_post("/api/views", record_view)
    app.router.add_get("/api/history", history)
    return app


@dataclass
class WebUI:
    """A running page server; `stop()` closes it and its gRPC channel."""

    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_webui(gateway_target: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                      examples: FashionMnistImages | None = None, token: str = "") -> WebUI:
    """Serves the page on host:port (port 0 picks a free one), talking to the gateway at gateway_target."""
    runner = web.AppRunner(create_app(gateway_target, examples, token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/"
    log.info("web page: %s (gateway %s)", url, gateway_target)
    return WebUI(runner, url)


def local_target(listen_address: str) -> str:
    """A gRPC target on this machine for a listen address: "[::]:50051" and "0.0.0.0:50051" become
    "127.0.0.1:50051"; other hosts are kept."""
    host, _, port = listen_address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("", "[::]", "0.0.0.0") else listen_address
