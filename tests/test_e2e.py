"""End to end over a real gRPC server: real tritonserver, real redis-server, embedded Qdrant engine."""

import asyncio
import gc
import io
import json
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from catalog_sources.fashion_mnist import load_split
from gateway.composition import Components
from gateway.config import Settings
from gateway.domain import Feedback, InvalidArgument, ModelInfo, ShopperRecord, Unavailable, View
from gateway.experiments import Arm, Experiments
from gateway.history import RedisHistory
from gateway.pipeline import Pipeline, RecommendQuery
from gateway.ports import Search
from gateway.serving import Serving
from harness.gateway import RunningGateway, in_process, over
from harness.health import eventually
from ranker import Boost, Rules
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from stack.net import free_port
from tests.triton_fixtures import PATIENT_TIMEOUTS

CATALOG_SIZE = 2000
HEALTH_TIMEOUT_S = 30.0  # the first backend check runs at start; the bound only keeps a failure from hanging
QUERIES = 100
pytestmark = pytest.mark.slow


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def test_split():
    return load_split("test")


@pytest.fixture(scope="module")
def catalog_ids_by_category():
    train = load_split("train")
    ids: dict[str, list[str]] = {}
    for index in range(CATALOG_SIZE):
        ids.setdefault(train.category(index), []).append(train.product_id(index))
    return ids


@pytest.fixture(scope="module")
async def stack(triton_server, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url,
                        data_dir=tmp_path_factory.mktemp("data"), **PATIENT_TIMEOUTS)
    async with in_process(settings, CATALOG_SIZE, grace_s=1) as running:
        yield running


@pytest.fixture(scope="module")
async def channel(stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def recommender(channel) -> pb_grpc.RecommenderStub:
    return pb_grpc.RecommenderStub(channel)


async def recommend(stub: pb_grpc.RecommenderStub, **fields) -> pb.RecommendResponse:
    return await stub.Recommend(pb.RecommendRequest(**fields), timeout=10)


async def test_image_query_returns_limit_items_from_the_catalog_best_first(recommender, test_split):
    response = await recommend(recommender, image=png(test_split.images[0]), limit=7)
    assert len(response.items) == 7
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    for item in response.items:
        assert item.product_id.startswith("fmnist-train-") and int(item.product_id[-6:]) < CATALOG_SIZE
    assert response.model.startswith("product_embedder/1 (efficientnet_lite0")
    assert list(response.degraded) == []


async def test_precision_at_10_on_held_out_test_images(recommender, test_split):
    hits = []
    for index in range(QUERIES):
        response = await recommend(recommender, image=png(test_split.images[index]), limit=10)
        hits.append(np.mean([item.category == test_split.category(index) for item in response.items]))
    precision = float(np.mean(hits))
    print(f"precision@10 over {QUERIES} test images against {CATALOG_SIZE} catalog products: {precision:.3f}")
    assert precision >= 0.70


async def test_views_of_one_category_move_it_up_for_that_user_only(recommender, test_split,
                                                                  catalog_ids_by_category):
    query = png(test_split.images[1])  # a Pullover
    before = await recommend(recommender, image=query, user_id="shopper-a", limit=50)
    bags = catalog_ids_by_category["Bag"][:5]
    for product_id in bags:
        await recommender.RecordView(pb.RecordViewRequest(user_id="shopper-a", product_id=product_id), timeout=5)
    after = await recommend(recommender, image=query, user_id="shopper-a", limit=50)
    other = await recommend(recommender, image=query, user_id="shopper-b", limit=50)

    def bag_share(response: pb.RecommendResponse) -> float:
        return float(np.mean([item.category == "Bag" for item in response.items[:20]]))

    assert bag_share(after) > bag_share(before)
    assert bag_share(other) == bag_share(before)
    assert not {item.product_id for item in after.items} & set(bags), "viewed items are excluded"
    history_scores = {category: [item.history_score for item in after.items if (item.category == "Bag") == category]
                      for category in (True, False)}
    assert min(history_scores[True]) > max(history_scores[False]), "bags are closer to the views than the rest"
    assert {item.history_score for item in other.items} == {0.0}


async def test_history_only_and_product_id_queries(recommender, catalog_ids_by_category):
    await recommender.ForgetUser(pb.ForgetUserRequest(user_id="shopper-c"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await recommend(recommender, user_id="shopper-c")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sneakers = catalog_ids_by_category["Sneaker"][:3]
    for product_id in sneakers:
        await recommender.RecordView(pb.RecordViewRequest(user_id="shopper-c", product_id=product_id), timeout=5)
    from_history = await recommend(recommender, user_id="shopper-c", limit=10)
    assert len(from_history.items) == 10
    assert np.mean([item.category == "Sneaker" for item in from_history.items]) >= 0.5
    assert not {item.product_id for item in from_history.items} & set(sneakers)

    neighbours = await recommend(recommender, product_id=sneakers[0], limit=10)
    assert sneakers[0] not in {item.product_id for item in neighbours.items}
    assert np.mean([item.category in ("Sneaker", "Sandal", "Ankle boot") for item in neighbours.items]) >= 0.8
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await recommend(recommender, product_id="no-such-product")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-product" in (error.value.details() or "")


async def test_a_product_many_shoppers_view_moves_up_for_a_shopper_with_views(recommender,
                                                                            catalog_ids_by_category):
    query, seen = catalog_ids_by_category["Sneaker"][10:12]
    anonymous = await recommend(recommender, product_id=query, limit=20)
    popular = anonymous.items[9].product_id
    for shopper in range(30):
        await recommender.RecordView(pb.RecordViewRequest(user_id=f"crowd-{shopper}", product_id=popular), timeout=5)
    await recommender.RecordView(pb.RecordViewRequest(user_id="shopper-p", product_id=seen), timeout=5)

    personal = await recommend(recommender, product_id=query, user_id="shopper-p", limit=20)
    scores = {item.product_id: item.popularity_score for item in personal.items}
    assert scores[popular] == pytest.approx(1.0)
    assert [item.product_id for item in personal.items].index(popular) < 9
    assert [item.popularity_score for item in (await recommend(recommender, product_id=query, limit=20)).items] \
        == [0.0] * 20, "an anonymous list is the visual order"


async def test_category_filter_is_honoured(recommender, test_split):
    response = await recommend(recommender, image=png(test_split.images[0]), limit=20,
                               filter=pb.Filter(categories=["Coat", "Shirt"]))
    assert len(response.items) == 20
    assert {item.category for item in response.items} <= {"Coat", "Shirt"}


async def test_upsert_and_delete_are_visible_at_once(stack, channel, recommender, test_split):
    catalog = pb_grpc.CatalogStub(channel)
    image = png(test_split.images[5])
    products = [pb.Product(product_id="new-1", image=image, category="Trouser", attributes={"brand": "acme"}),
                pb.Product(product_id="new-2", image=png(255 - test_split.images[6]), category="Shirt")]

    async def stream():
        for product in products:
            yield product

    assert (await catalog.UpsertProducts(stream(), timeout=30)).upserted == 2
    found = await recommend(recommender, image=image, limit=1)
    assert found.items[0].product_id == "new-1"
    assert found.items[0].visual_score == pytest.approx(1.0, abs=1e-4)
    assert dict(found.items[0].attributes) == {"brand": "acme"}
    stored = await stack.gateway.pipeline.catalog.retrieve(["new-1", "new-2"], with_vectors=False)
    assert all(0 < item.neighbour_similarity <= 1 for item in stored.values()), "set as they are stored"
    deleted = await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["new-1", "new-2", "never"]),
                                           timeout=5)
    assert deleted.deleted == 2
    after = await recommend(recommender, image=image, limit=10)
    assert "new-1" not in {item.product_id for item in after.items}


async def test_a_viewed_product_changed_through_the_gateway_shapes_recommendations_at_once(
        channel, recommender, test_split):
    catalog = pb_grpc.CatalogStub(channel)

    async def upsert(image: np.ndarray) -> int:
        async def stream():
            yield pb.Product(product_id="viewed-then-changed", image=png(image), category="Bag")
        return (await catalog.UpsertProducts(stream(), timeout=30)).upserted

    async def from_history() -> set[str]:
        return {item.product_id for item in (await recommend(recommender, user_id="shopper-of-changed", limit=5)).items}

    assert await upsert(test_split.images[7]) == 1
    await recommender.ForgetUser(pb.ForgetUserRequest(user_id="shopper-of-changed"), timeout=5)
    await recommender.RecordView(pb.RecordViewRequest(user_id="shopper-of-changed", product_id="viewed-then-changed"),
                                 timeout=5)
    before = await from_history()
    assert len(before) == 5
    assert await upsert(255 - test_split.images[7]) == 1  # the same product with another picture
    assert await from_history() != before
    await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["viewed-then-changed"]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as error:  # the only view is gone: nothing to recommend from
        await from_history()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_every_product_has_the_picture_it_was_ingested_with(channel, test_split):
    catalog = pb_grpc.CatalogStub(channel)
    photo = np.zeros((90, 60, 3), dtype=np.uint8)
    photo[...] = (200, 30, 40)  # a red product shot, taller than wide

    async def stream():
        yield pb.Product(product_id="red-dress", image=png(photo), category="Dress")

    assert (await catalog.UpsertProducts(stream(), timeout=30)).upserted == 1
    for product_id, expected in (("red-dress", (200, 30, 40)), ("fmnist-train-000000", None)):
        image = await catalog.GetProductImage(pb.GetProductImageRequest(product_id=product_id), timeout=10)
        assert image.product_id == product_id and image.content_type == "image/jpeg"
        pixels = np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"), dtype=np.float32)
        assert pixels.shape == (160, 160, 3)
        if expected is not None:  # the centre is the product, whatever the padding
            np.testing.assert_allclose(pixels[60:100, 60:100].mean(axis=(0, 1)), expected, atol=8)
    await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["red-dress"]), timeout=5)
    for product_id, code in (("red-dress", grpc.StatusCode.NOT_FOUND), ("", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await catalog.GetProductImage(pb.GetProductImageRequest(product_id=product_id), timeout=10)
        assert error.value.code() == code


async def test_upsert_of_a_bad_image_is_refused_with_the_product_named(channel):
    catalog = pb_grpc.CatalogStub(channel)

    async def stream():
        yield pb.Product(product_id="broken", image=b"not an image", category="Bag")

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await catalog.UpsertProducts(stream(), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "broken" in (error.value.details() or "")


async def test_history_is_newest_first_and_forget_user_empties_it(recommender):
    for product_id in ("fmnist-train-000001", "fmnist-train-000002"):
        await recommender.RecordView(pb.RecordViewRequest(user_id="shopper-d", product_id=product_id), timeout=5)
    history = await recommender.GetHistory(pb.GetHistoryRequest(user_id="shopper-d"), timeout=5)
    assert [view.product_id for view in history.views] == ["fmnist-train-000002", "fmnist-train-000001"]
    await recommender.ForgetUser(pb.ForgetUserRequest(user_id="shopper-d"), timeout=5)
    assert not (await recommender.GetHistory(pb.GetHistoryRequest(user_id="shopper-d"), timeout=5)).views


async def test_a_dismissed_product_is_never_recommended_again_to_that_shopper(recommender, test_split):
    query = {"image": png(test_split.images[5]), "limit": 5}
    first = (await recommend(recommender, user_id="shopper-g", **query)).items
    dismissed = first[0].product_id
    await recommender.RecordFeedback(pb.RecordFeedbackRequest(user_id="shopper-g", product_id=dismissed,
                                                              kind=pb.FEEDBACK_KIND_DISMISS), timeout=5)
    after = [item.product_id for item in (await recommend(recommender, user_id="shopper-g", **query)).items]
    others = [item.product_id for item in (await recommend(recommender, user_id="shopper-h", **query)).items]
    assert dismissed not in after and dismissed in others
    history = await recommender.GetHistory(pb.GetHistoryRequest(user_id="shopper-g"), timeout=5)
    assert [d.product_id for d in history.dismissals] == [dismissed] and not history.views
    await recommender.ForgetUser(pb.ForgetUserRequest(user_id="shopper-g"), timeout=5)
    assert dismissed in [item.product_id for item in (await recommend(recommender, user_id="shopper-g", **query)).items]


async def test_near_duplicates_of_a_dismissed_product_move_down_for_that_shopper(recommender, test_split):
    query = {"image": png(test_split.images[5]), "limit": 20}
    before = (await recommend(recommender, user_id="shopper-m", **query)).items
    dismissed = before[0].product_id
    await recommender.RecordFeedback(pb.RecordFeedbackRequest(user_id="shopper-m", product_id=dismissed,
                                                              kind=pb.FEEDBACK_KIND_DISMISS), timeout=5)
    after = list((await recommend(recommender, user_id="shopper-m", **query)).items)
    demoted = [item for item in after if item.dismissal_score > 0]
    assert demoted, "the top results of one query include near duplicates of each other"
    for item in demoted:
        assert item.score == pytest.approx(item.visual_score - item.dismissal_score, abs=1e-5)
    nearest = max(demoted, key=lambda item: item.dismissal_score)
    visual_order = sorted(after, key=lambda item: -item.visual_score)
    assert after.index(nearest) > visual_order.index(nearest), (nearest, "ranks below its visual place")
    assert all(item.dismissal_score == 0 for item in before)


async def test_every_item_says_why_it_is_there(recommender, catalog_ids_by_category):
    viewed = catalog_ids_by_category["Sandal"][:3]
    for product_id in viewed:
        await recommender.RecordView(pb.RecordViewRequest(user_id="shopper-n", product_id=product_id), timeout=5)
    anonymous = (await recommend(recommender, product_id=viewed[-1], limit=10)).items
    assert all([reason.kind for reason in item.reasons] == [pb.REASON_KIND_VISUALLY_SIMILAR] for item in anonymous)
    personal = (await recommend(recommender, product_id=viewed[-1], user_id="shopper-n", limit=10)).items
    for item in personal:
        contributions = [reason.contribution for reason in item.reasons]
        assert contributions == sorted(contributions, reverse=True) and min(contributions[1:], default=1) >= 0.05
        assert pb.REASON_KIND_VISUALLY_SIMILAR in [reason.kind for reason in item.reasons]
        for reason in item.reasons:
            if reason.kind == pb.REASON_KIND_SIMILAR_TO_VIEWED:
                assert reason.product_id in viewed
                assert reason.contribution == pytest.approx(item.history_score, abs=1e-5)
    kinds = {reason.kind for item in personal for reason in item.reasons}
    assert pb.REASON_KIND_VIEWED_CATEGORY in kinds, "three sandals viewed: the sandals say so"


RULE_PRODUCTS = 8
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
async def dated_products(channel, test_split) -> AsyncIterator[dict[str, dict[str, str]]]:
    """Products of their own category whose attributes the filters and rules read: stock, price and a date."""
    catalog = pb_grpc.CatalogStub(channel)
    attributes = {f"ruled-{number}": {"in_stock": "true" if number % 2 else "false", "price": f"{5 + 10 * number}",
                                      "released": (NOW - timedelta(days=30 * number)).isoformat()}
                  for number in range(RULE_PRODUCTS)}
    attributes["ruled-7"] = {"in_stock": "true", "price": "n/a"}

    async def stream():
        for number, (product_id, values) in enumerate(attributes.items()):
            yield pb.Product(product_id=product_id, image=png(test_split.images[40 + number]), category="Ruled",
                             attributes=values)

    assert (await catalog.UpsertProducts(stream(), timeout=30)).upserted == RULE_PRODUCTS
    yield attributes
    await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=list(attributes)), timeout=5)


async def test_attribute_and_range_filters_keep_only_the_products_that_pass(recommender, test_split, dated_products):
    where = pb.Filter(categories=["Ruled"], attributes=[pb.AttributeValues(name="in_stock", values=["true"])],
                      ranges=[pb.AttributeRange(name="price", min=10, max=60)])
    response = await recommend(recommender, image=png(test_split.images[40]), limit=20, filter=where)
    assert {item.product_id for item in response.items} == {"ruled-1", "ruled-3", "ruled-5"}, \
        "in stock (odd numbers), priced 10 to 60"
    assert "ruled-1" in dated_products
    above = await recommend(recommender, image=png(test_split.images[40]), limit=20,
                            filter=pb.Filter(categories=["Ruled"], ranges=[pb.AttributeRange(name="price", min=50)]))
    assert {item.product_id for item in above.items} == {"ruled-5", "ruled-6"}, "an open range; 'n/a' is no number"


async def test_a_boost_lifts_its_products_with_a_reason_and_a_bury_sinks_them(recommender, test_split):
    query = png(test_split.images[0])
    plain = (await recommend(recommender, image=query, limit=10)).items
    category = plain[0].category
    other = next(c for c in ("Bag", "Sandal", "Coat") if c != category)
    boost = pb.Boost(rule="promote-" + other.lower(), key="category", values=[other], weight=2)
    boosted = (await recommend(recommender, image=query, limit=10, boosts=[boost])).items
    assert {item.category for item in boosted} == {other}
    for item in boosted:
        assert item.rules_score == pytest.approx(2.0)
        assert item.score == pytest.approx(item.visual_score + 2.0, abs=1e-5)
        assert (pb.REASON_KIND_BOOSTED, boost.rule) in [(reason.kind, reason.rule) for reason in item.reasons]
    bury = pb.Boost(rule="bury", key="category", values=[category], weight=-2)
    buried = (await recommend(recommender, image=query, limit=10, boosts=[bury])).items
    assert category not in {item.category for item in buried}
    assert all(reason.kind != pb.REASON_KIND_BOOSTED for item in buried for reason in item.reasons)


async def test_a_recency_decay_lifts_recent_products_by_their_age(recommender, test_split, dated_products):
    decay = pb.RecencyDecay(rule="new-in", attribute="released", half_life_days=30, weight=0.5)
    items = (await recommend(recommender, image=png(test_split.images[40]), limit=RULE_PRODUCTS,
                             filter=pb.Filter(categories=["Ruled"]), recency_decay=decay)).items
    assert len(items) == RULE_PRODUCTS
    for item in items:
        released = dated_products[item.product_id].get("released")
        age_days = (datetime.now(UTC) - datetime.fromisoformat(released)).total_seconds() / 86400 if released else None
        expected = 0.5 * 0.5 ** (age_days / 30) if age_days is not None else 0.0
        assert item.rules_score == pytest.approx(expected, abs=1e-3), item.product_id
        assert (pb.REASON_KIND_BOOSTED in [reason.kind for reason in item.reasons]) == (expected >= 0.05)


async def test_diversity_caps_each_group_and_mmr_spreads_the_list(recommender, test_split):
    query = png(test_split.images[1])
    capped = (await recommend(recommender, image=query, limit=10,
                              diversity=pb.Diversity(group_by="category", max_per_group=2))).items
    assert len(capped) == 10
    assert max(Counter(item.category for item in capped).values()) <= 2
    plain = (await recommend(recommender, image=query, limit=10)).items
    spread = (await recommend(recommender, image=query, limit=10, diversity=pb.Diversity(mmr_lambda=0.3))).items
    assert spread[0].product_id == plain[0].product_id, "the best item stays first"
    assert [item.product_id for item in spread] != [item.product_id for item in plain]
    assert any(reason.kind == pb.REASON_KIND_DIVERSITY for item in spread for reason in item.reasons)
    by_attribute = (await recommend(recommender, image=query, limit=10,
                                    diversity=pb.Diversity(group_by="no-such-attribute"))).items
    assert [item.product_id for item in by_attribute] == [item.product_id for item in plain], \
        "without the attribute each product is a group of its own"


async def test_experiment_arms_rank_their_share_of_shoppers_and_are_counted(stack, catalog_ids_by_category):
    arms = Experiments([Arm("visual", 50, replace(stack.settings.weights, history=0.0, category=0.0, popularity=0.0)),
                        Arm("personal", 50, replace(stack.settings.weights, history=3.0))], salt="e2e")
    gateway = stack.gateway
    async with over(Serving(gateway.pipeline.with_experiments(arms), gateway.indexer), stack.settings, stack.metrics,
                    grace_s=1) as running, grpc.aio.insecure_channel(running.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        viewed = catalog_ids_by_category["Sneaker"][:3]
        users = [f"arm-shopper-{number}" for number in range(8)]
        for user in users:
            for product_id in viewed:
                await stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=product_id), timeout=5)
        sample = stack.metrics.registry.get_sample_value
        before = {arm.name: sample("recsys_recommendations_total", {"experiment": arm.name}) or 0.0
                  for arm in arms.arms}
        query = catalog_ids_by_category["Bag"][0]
        served = {user: await recommend(stub, product_id=query, user_id=user) for user in users}
        assigned = {user: str(getattr(arms.assigned(user), "name", "")) for user in users}
        assert {response.experiment for response in served.values()} == {"visual", "personal"}, "both arms get users"
        for user, response in served.items():
            assert response.experiment == assigned[user]
            weights = next(arm.weights for arm in arms.arms if arm.name == assigned[user])
            for item in response.items:  # ranked with the arm's weights
                assert item.score == pytest.approx(
                    item.visual_score + weights.history * item.history_score + weights.category * item.category_score
                    + weights.popularity * item.popularity_score, abs=1e-5)
            assert (await recommend(stub, product_id=query, user_id=user)).experiment == assigned[user], "sticky"
        forced = await recommend(stub, product_id=query, user_id=users[0], experiment="personal")
        assert forced.experiment == "personal"
        assert [item.score for item in forced.items] == sorted((item.score for item in forced.items), reverse=True)
        assert (await recommend(stub, product_id=query)).experiment == "visual", "anonymous: the first arm"
        counted = Counter(assigned.values())
        for arm in arms.arms:
            assert sample("recsys_recommendations_total", {"experiment": arm.name}) - before[arm.name] \
                == 2 * counted[arm.name] + (arm.name == "personal") + (arm.name == "visual")
            assert sample("recsys_feedback_total", {"experiment": arm.name, "kind": "view"}) \
                >= 3 * counted[arm.name]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await recommend(stub, product_id=query, user_id=users[0], experiment="control")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'control' is not configured; the arms are 'visual', 'personal'" in str(error.value.details())


async def test_a_purchase_is_a_view_of_the_shopper(recommender):
    await recommender.RecordFeedback(pb.RecordFeedbackRequest(user_id="shopper-i", product_id="fmnist-train-000007",
                                                              kind=pb.FEEDBACK_KIND_PURCHASE), timeout=5)
    history = await recommender.GetHistory(pb.GetHistoryRequest(user_id="shopper-i"), timeout=5)
    assert [view.product_id for view in history.views] == ["fmnist-train-000007"]


@pytest.mark.parametrize("request_fields, code", [
    ({"image": b"\x89PNG garbage"}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"product_id": "fmnist-train-000001", "limit": 1000}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"product_id": "bad\x00id"}, grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_bad_requests_get_a_clear_status(recommender, request_fields, code):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await recommend(recommender, **request_fields)
    assert error.value.code() == code
    assert error.value.details()


async def test_record_view_of_an_unknown_product_is_not_found(recommender):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await recommender.RecordView(pb.RecordViewRequest(user_id="u", product_id="nope"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_is_serving_and_reflection_lists_both_services(channel):
    health = health_pb2_grpc.HealthStub(channel)

    async def serving() -> bool:
        status = (await health.Check(health_pb2.HealthCheckRequest(service="recsys.v1.Recommender"))).status
        return status == health_pb2.HealthCheckResponse.SERVING

    await eventually(serving, HEALTH_TIMEOUT_S, "the Recommender service SERVING")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for answer in stub.ServerReflectionInfo(ask()):
        services = {s.name for s in answer.list_services_response.service}
    assert {"recsys.v1.Recommender", "recsys.v1.Catalog", "grpc.health.v1.Health"} <= services


async def test_grpcurl_calls_recommend_through_reflection(stack):
    grpcurl = Path(sys.executable).parent / "grpcurl"
    request = json.dumps({"product_id": "fmnist-train-000000", "limit": 3})
    result = await asyncio.to_thread(
        subprocess.run, [str(grpcurl), "-plaintext", "-d", request, stack.target,
                         "recsys.v1.Recommender/Recommend"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["items"]) == 3


async def test_metrics_record_stages_and_status_codes(stack, recommender, test_split, catalog_ids_by_category):
    metrics = stack.metrics
    viewed = pb.RecordViewRequest(user_id="shopper-e", product_id=catalog_ids_by_category["Bag"][0])
    await recommender.RecordView(viewed, timeout=5)
    await recommend(recommender, image=png(test_split.images[2]), user_id="shopper-e")
    sample = metrics.registry.get_sample_value
    for stage in ("decode", "embed", "search", "history", "popularity", "rerank", "total"):
        assert sample("recsys_stage_duration_seconds_count", {"stage": stage}) >= 1, stage
    assert sample("recsys_requests_total", {"method": "Recommend", "code": "OK"}) >= 1
    assert sample("recsys_requests_total", {"method": "Recommend", "code": "INVALID_ARGUMENT"}) >= 1




async def test_the_served_model_equals_in_process_torchscript(stack):
    import torch

    gateway = stack.gateway
    images = np.stack([np.asarray(Image.fromarray(load_split("test").images[i]).convert("RGB").resize((224, 224)))
                       for i in range(4)])
    served = await gateway.pipeline.embedder.embed(images, timeout_s=30)
    model = torch.jit.load("model_repository/product_embedder/1/model.pt")
    with torch.inference_mode():
        local = model(torch.from_numpy(images)).numpy()
    assert np.abs(served - local).max() <= 1e-5


async def test_without_redis_recommend_answers_visually_and_says_history_was_skipped(stack, test_split):
    pipeline = stack.gateway.pipeline
    dead_redis = RedisHistory.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    degraded = Pipeline(pipeline.embedder, pipeline.catalog, dead_redis, stack.settings, stack.metrics,
                        ThreadPoolExecutor(1))
    result = await degraded.recommend(RecommendQuery(user_id="shopper-f", image=png(test_split.images[3]), limit=5))
    assert result.degraded == ("history",)
    assert len(result.items) == 5
    with pytest.raises(Unavailable):
        await degraded.record_feedback("shopper-f", result.items[0].product_id)
    await dead_redis.close()


async def test_a_readiness_check_cancelled_before_it_runs_leaves_no_coroutine_unawaited(stack):
    gateway = stack.gateway
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = asyncio.ensure_future(gateway.pipeline.ready())
        await asyncio.sleep(0)  # ready() has handed its checks to gather, which has not started them
        check.cancel()
        with pytest.raises(asyncio.CancelledError):
            await check
        gc.collect()
    assert [str(warning.message) for warning in caught if "never awaited" in str(warning.message)] == []
    assert await gateway.pipeline.ready()


class BrokenHistory:
    """A history store with a bug: the gateway must answer INTERNAL without leaking the details."""

    async def record(self, user_id: str, product_id: str, at_ms: int, feedback: Feedback = Feedback.VIEW) -> None:
        raise RuntimeError("secret internal detail")

    async def recent(self, user_id: str, limit: int | None = None) -> list[View]:
        raise RuntimeError("secret internal detail")

    async def shopper(self, user_id: str) -> ShopperRecord:
        raise RuntimeError("secret internal detail")

    async def popularity(self, product_ids: Sequence[str]) -> list[float]:
        raise RuntimeError("secret internal detail")

    async def forget(self, user_id: str) -> None:
        raise RuntimeError("secret internal detail")

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_unknown_errors_become_internal_with_a_generic_message(stack):
    gateway = stack.gateway
    pipeline = Pipeline(gateway.pipeline.embedder, gateway.pipeline.catalog, BrokenHistory(), stack.settings,
                        stack.metrics, ThreadPoolExecutor(1))
    async with over(Serving(pipeline, gateway.indexer), stack.settings, stack.metrics) as broken, \
            grpc.aio.insecure_channel(broken.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pb_grpc.RecommenderStub(channel).GetHistory(pb.GetHistoryRequest(user_id="u"), timeout=5)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.value.details() or "")


async def test_a_gateway_over_a_catalog_of_another_model_refuses_with_how_to_reindex(triton_server, redis_server,
                                                                                     tmp_path):
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url, data_dir=tmp_path)
    store = Components(settings).catalog_store(settings.collection)
    await store.open(ModelInfo("product_embedder", "7", "resnet50", 2048))
    await store.close()
    async with in_process(settings) as running, grpc.aio.insecure_channel(running.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await pb_grpc.RecommenderStub(channel).Recommend(
                pb.RecommendRequest(product_id="fmnist-train-000001"), timeout=5)
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.value.details() or ""
    assert "resnet50" in details and "make index RECREATE=1" in details
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


class CountingCatalog:
    """The catalog, recording the searches of each batch it is sent, and the size of each similarity batch."""

    def __init__(self, catalog: Any) -> None:
        self._catalog = catalog
        self.batches: list[list[Search]] = []
        self.similarity_batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    async def search_batch(self, searches: Sequence[Search]) -> list[list[Any]]:
        self.batches.append(list(searches))
        return await self._catalog.search_batch(searches)

    async def similarities(self, queries: Sequence[Any]) -> list[dict[str, float]]:
        self.similarity_batches.append(len(queries))
        return await self._catalog.similarities(queries)


async def test_the_searches_of_a_query_go_to_the_engine_in_one_batch_each(stack, catalog_ids_by_category):
    pipeline = stack.gateway.pipeline
    counting = CountingCatalog(pipeline.catalog)
    counted = pipeline.with_backends(pipeline.embedder, counting)
    viewed = catalog_ids_by_category["Shirt"][:4]
    for product_id in viewed:
        await counted.record_feedback("batched-shopper", product_id)
    boost = Boost("bags", "category", frozenset({"Bag"}), 0.5)
    counting.batches.clear()
    await counted.recommend(RecommendQuery(user_id="batched-shopper", product_id=viewed[0], rules=Rules((boost,))))
    shopper_batch, query_batch = counting.batches
    assert [search.limit for search in shopper_batch] == [stack.settings.rank_view_pool] * 3, "three recent views"
    assert [search.where.categories for search in query_batch] == [(), ("Bag",)], "the query, then the boost"
    counting.batches.clear()
    await counted.recommend(RecommendQuery(user_id="batched-shopper"))
    [history_only] = counting.batches
    assert len(history_only) == 1 + 3, "the taste vector and three recent views in one batch"


async def test_concurrent_requests_share_engine_batches_within_the_window_and_get_the_same_lists(
        stack, catalog_ids_by_category):
    gateway_pipeline = stack.gateway.pipeline
    counting = CountingCatalog(gateway_pipeline.catalog)
    shirts = catalog_ids_by_category["Shirt"]
    users = [f"window-shopper-{index}" for index in range(6)]
    for index, user in enumerate(users):
        await gateway_pipeline.record_feedback(user, shirts[index + 1])
    queries = [RecommendQuery(user_id=user, product_id=shirts[0], limit=5) for user in users]
    alone = [await gateway_pipeline.recommend(query) for query in queries]
    settings = stack.settings.model_copy(update={"search_batch_window_ms": 20.0})
    with ThreadPoolExecutor(1) as decode_pool:
        batching = Pipeline(gateway_pipeline.embedder, counting, gateway_pipeline.history, settings, stack.metrics,
                            decode_pool)
        together = await asyncio.gather(*(batching.recommend(query) for query in queries))
        assert [[item.product_id for item in result.items] for result in together] == \
               [[item.product_id for item in result.items] for result in alone]
        assert [item.score for item in together[0].items] == pytest.approx([item.score for item in alone[0].items])
        assert len(counting.batches) < 2 * len(queries), "each request alone sends a view batch and a query batch"
        assert sum(len(batch) for batch in counting.batches) == 2 * len(queries), "one view search, one query search"
        assert len(counting.similarity_batches) < len(queries)
        counting.batches.clear()
        assert (await batching.recommend(queries[0])).items == alone[0].items, "a request alone is answered too"
        assert len(counting.batches) == 2


async def test_photos_decoded_in_triton_get_the_lists_photos_decoded_here_get(stack, test_split):
    pipeline = stack.gateway.pipeline
    settings = stack.settings.model_copy(update={"image_preprocessing": "triton"})
    embedder = await Components(settings).embedder(pipeline.embedder.info.version)

    def decodes() -> float | None:
        return stack.metrics.registry.get_sample_value("recsys_stage_duration_seconds_count", {"stage": "decode"})
    try:
        decoding = pipeline.with_backends(embedder, pipeline.catalog)
        for index, user_id in ((0, ""), (1, "triton-decoding-shopper")):
            query = RecommendQuery(user_id=user_id, image=png(test_split.images[index]), limit=10)
            here = await pipeline.recommend(query)
            decoded_here = decodes()
            there = await decoding.recommend(query)
            assert decodes() == decoded_here, "the gateway decoded nothing"
            assert [item.product_id for item in there.items] == [item.product_id for item in here.items]
            assert [item.score for item in there.items] == pytest.approx([item.score for item in here.items], abs=1e-5)
        with pytest.raises(InvalidArgument, match="image could not be decoded"):
            await decoding.recommend(RecommendQuery(image=b"not a photo"))
    finally:
        await embedder.close()
