"""recsys_client against a real gateway: every call, the bearer token, and retries by the service config."""

from collections.abc import AsyncIterator

import grpc
import pytest

from catalog_sources.fashion_mnist import load_split
from gateway.images import encode_png
from harness.gateway import RunningGateway, in_process
from harness.health import eventually
from recsys_api.v1 import recsys_pb2 as pb
from recsys_client import RecsysClient
from stack.net import free_port
from tests.triton_fixtures import tiny_settings

pytestmark = pytest.mark.slow
CATALOG_SIZE = 16
PRODUCT = "fmnist-train-000002"
OTHER_PRODUCT = "fmnist-train-000005"
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
async def running(tiny_triton, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path_factory.mktemp("data"))
    async with in_process(settings, CATALOG_SIZE) as running:
        yield running


@pytest.fixture(scope="module")
async def without_history(tiny_triton, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    """A gateway whose Redis never answers: history calls fail with UNAVAILABLE, which a client may retry."""
    settings = tiny_settings(tiny_triton.grpc_url, f"redis://127.0.0.1:{free_port()}/0",
                             tmp_path_factory.mktemp("data"), history_timeout_s=0.2)
    async with in_process(settings, CATALOG_SIZE) as running:
        yield running


def png(index: int) -> bytes:
    return encode_png(load_split("test").images[index])


async def test_every_call_of_the_api(running: RunningGateway):
    async with RecsysClient(running.target) as client:
        await eventually(client.serving, 30, "SERVING")  # after the gateway's first check of its backends
        by_image = await client.recommend(image=png(0), limit=3)
        by_product = await client.recommend(product_id=PRODUCT, limit=3, categories=["Pullover", "T-shirt/top"])
        await client.record_view("client-user", PRODUCT)
        await client.record_feedback("client-user", OTHER_PRODUCT, pb.FEEDBACK_KIND_DISMISS)
        history = await client.history("client-user")
        assert [view.product_id for view in history.views] == [PRODUCT]
        assert [dismissal.product_id for dismissal in history.dismissals] == [OTHER_PRODUCT]
        personal = await client.recommend(user_id="client-user", limit=3)
        ruled = await client.recommend(image=png(0), limit=3, filter=pb.Filter(categories=["Pullover"]),
                                       categories=["T-shirt/top"],
                                       boosts=[pb.Boost(rule="tops", key="category", values=["T-shirt/top"], weight=5)],
                                       diversity=pb.Diversity(mmr_lambda=0.9))
        picture = await client.product_image(PRODUCT)
        new = [pb.Product(product_id=f"client-{n}", category="Bag", image=png(n)) for n in range(2)]
        assert await client.upsert_products(new) == 2
        assert await client.delete_products(["client-0", "client-1", "never-there"]) == 2
        await client.forget_user("client-user")
        history = await client.history("client-user")
        assert not history.views and not history.dismissals
    assert len(by_image.items) == 3 and by_image.model.startswith("tiny_embedder/1")
    assert PRODUCT not in {item.product_id for item in by_product.items}
    assert {item.category for item in by_product.items} <= {"Pullover", "T-shirt/top"}
    assert len(personal.items) == 3
    assert [(item.category, item.rules_score) for item in ruled.items] == [("T-shirt/top", 5.0)] * 3
    assert picture.content_type == "image/jpeg" and picture.data[:2] == b"\xff\xd8"


async def test_a_failed_call_raises_the_gateways_status_and_message(running: RunningGateway):
    async with RecsysClient(running.target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.recommend(product_id="no-such-product")
        with pytest.raises(ValueError, match="not both"):
            await client.recommend(image=png(0), product_id=PRODUCT)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-product" in (refused.value.details() or "")


def attempts(running: RunningGateway, method: str) -> float:
    return running.sample("recsys_requests_total", {"method": method, "code": "UNAVAILABLE"})


async def test_idempotent_calls_are_retried_on_unavailable_and_a_view_never(without_history: RunningGateway):
    before = attempts(without_history, "Recommend"), attempts(without_history, "RecordView")
    async with RecsysClient(without_history.target, max_attempts=MAX_ATTEMPTS) as client:
        with pytest.raises(grpc.aio.AioRpcError) as history_only:
            await client.recommend(user_id="someone")  # nothing to recommend from without the history
        with pytest.raises(grpc.aio.AioRpcError) as view:
            await client.record_view("someone", PRODUCT)
    assert history_only.value.code() == view.value.code() == grpc.StatusCode.UNAVAILABLE
    assert attempts(without_history, "Recommend") - before[0] == MAX_ATTEMPTS
    assert attempts(without_history, "RecordView") - before[1] == 1, "a retried view could count twice"
    async with RecsysClient(without_history.target, max_attempts=1) as client:
        with pytest.raises(grpc.aio.AioRpcError):
            await client.recommend(user_id="someone")
    assert attempts(without_history, "Recommend") - before[0] == MAX_ATTEMPTS + 1
