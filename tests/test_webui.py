"""The web page over a real gateway (real tritonserver, redis-server, embedded Qdrant), through HTTP and in a
real headless Chromium driven by Playwright."""

import contextlib
import io
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image
from playwright.async_api import Browser, Page, async_playwright, expect
from prometheus_client import CollectorRegistry

from catalog_sources.fashion_mnist import CLASS_NAMES, FashionMnistSplit, load_split
from gateway.config import Settings
from gateway.history import RedisHistory
from gateway.images import encode_png
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.serving import Serving
from harness.gateway import RunningGateway, in_process, over
from recsys_api.v1 import recsys_pb2 as pb
from stack.net import free_port
from tests.triton_fixtures import PATIENT_TIMEOUTS
from webui import WebUI, WebUISettings, local_target, start_webui
from webui.examples import PRODUCT_ID, FashionMnistImages
from webui.server import MAX_UPLOAD_BYTES, reason_text

CATALOG_SIZE = 240
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000
SCREENSHOTS = Path(__file__).resolve().parent.parent / "reports" / "webui"
FOOTWEAR = {"Sandal", "Sneaker", "Ankle boot"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_split() -> FashionMnistSplit:
    return load_split("test")


@pytest.fixture(scope="module")
async def served(triton_server, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    """A gateway over the first CATALOG_SIZE Fashion-MNIST training images."""
    settings = Settings(triton_url=triton_server.grpc_url, redis_url=redis_server.url,
                        data_dir=tmp_path_factory.mktemp("data"), **PATIENT_TIMEOUTS)
    async with in_process(settings, CATALOG_SIZE, metrics_endpoint=True, grace_s=1) as served:
        yield served


@contextlib.asynccontextmanager
async def serving(target: str, images: FashionMnistImages | None = None) -> AsyncIterator[WebUI]:
    """The page on a free loopback port, talking to the gateway at target."""
    webui = await start_webui(target, "127.0.0.1", 0, images)
    try:
        yield webui
    finally:
        await webui.stop()


@pytest.fixture(scope="module")
async def webui(served) -> AsyncIterator[WebUI]:
    async with serving(served.target) as running:
        yield running


@pytest.fixture(scope="module")
async def webui_without_gateway() -> AsyncIterator[WebUI]:
    """The page pointed at a port where no gateway listens."""
    async with serving(f"127.0.0.1:{free_port()}") as running:
        yield running


@pytest.fixture(scope="module")
async def webui_without_redis(served) -> AsyncIterator[WebUI]:
    """The page over a second gateway whose history store (Redis) does not answer."""
    dead_redis = RedisHistory.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    metrics = Metrics(CollectorRegistry())
    first = served.gateway
    with ThreadPoolExecutor(1) as decode_pool:
        pipeline = Pipeline(first.pipeline.embedder, first.pipeline.catalog, dead_redis, Settings(), metrics,
                            decode_pool)
        async with over(Serving(pipeline, first.indexer), Settings(), metrics) as second, \
                serving(second.target) as running:
            yield running
    await dead_redis.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def png_of(split: FashionMnistSplit, index: int) -> bytes:
    return encode_png(split.images[index])


async def post_recommend(http: aiohttp.ClientSession, webui: WebUI, image: bytes, **fields: str
                         ) -> tuple[int, dict]:
    form = aiohttp.FormData(fields)
    form.add_field("image", image, filename="query.png", content_type="image/png")
    async with http.post(f"{webui.url}api/recommend", data=form) as response:
        return response.status, await response.json()


async def test_the_page_and_its_assets_are_local(http, webui):
    for path, kind in (("", "text/html"), ("static/app.js", "javascript"), ("static/style.css", "text/css")):
        async with http.get(webui.url + path) as response:
            assert response.status == 200
            assert kind in response.content_type
            text = await response.text()
        assert "http://" not in text and "https://" not in text, f"{path} refers to an outside address"
    assert webui.url.startswith("http://127.0.0.1:")


async def test_product_pictures_come_from_the_gateway_by_product_id(http, webui):
    train = load_split("train")
    async with http.get(f"{webui.url}images/fmnist-train-000007") as response:
        assert response.status == 200 and response.content_type == "image/jpeg"
        picture = Image.open(io.BytesIO(await response.read())).convert("L").resize((28, 28), Image.Resampling.BOX)
    assert np.abs(np.asarray(picture, dtype=np.float32) - train.images[7]).mean() < 12
    for unknown in ("fmnist-train-999999", "fmnist-test-000001", "new-1", "..%2Fetc%2Fpasswd"):
        async with http.get(f"{webui.url}images/{unknown}") as response:
            assert response.status == 404, unknown
            assert "not in the catalog" in await response.text()


async def test_example_photos_are_held_out_test_images(http, webui, test_split):
    async with http.get(f"{webui.url}examples/fmnist-test-000007") as response:
        assert response.status == 200 and response.content_type == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(await response.read())))
    assert np.array_equal(pixels, test_split.images[7])
    async with http.get(f"{webui.url}examples/fmnist-test-999999") as response:
        assert response.status == 404


def test_image_ids_parse_as_the_data_set_names_them(test_split):
    match = PRODUCT_ID.fullmatch(test_split.product_id(1234))
    assert match is not None and (match[1], int(match[2])) == ("test", 1234)


async def test_without_the_data_set_the_page_has_no_examples(http, tmp_path):
    async with serving(f"127.0.0.1:{free_port()}", FashionMnistImages(tmp_path)) as webui:
        async with http.get(f"{webui.url}api/options") as response:
            assert response.status == 200 and (await response.json())["examples"] == []
        async with http.get(f"{webui.url}examples/fmnist-test-000001") as response:
            assert response.status == 404
        async with http.get(f"{webui.url}images/fmnist-train-000001") as response:
            assert response.status == 503  # no gateway answers there


async def test_options_offer_every_category_and_one_held_out_example_of_each(http, webui):
    async with http.get(f"{webui.url}api/options") as response:
        options = await response.json()
    assert options["categories"] == list(CLASS_NAMES)
    assert sorted(example["category"] for example in options["examples"]) == sorted(CLASS_NAMES)
    assert all(example["product_id"].startswith("fmnist-test-") for example in options["examples"])


async def test_recommend_returns_filtered_items_with_score_parts_and_image_urls(http, webui, test_split):
    status, result = await post_recommend(http, webui, png_of(test_split, 0), limit="6",
                                          category="Sneaker")
    assert status == 200, result
    assert len(result["items"]) == 6
    assert {item["category"] for item in result["items"]} == {"Sneaker"}
    assert result["model"].startswith("product_embedder/")
    first = result["items"][0]
    assert first["score"] == pytest.approx(first["visual_score"])  # anonymous: no history parts
    assert first["popularity_score"] == 0.0
    async with http.get(webui.url + first["image_url"].lstrip("/")) as response:
        assert response.status == 200 and response.content_type == "image/jpeg"


async def test_a_recorded_view_shows_in_the_history_and_changes_the_next_list(http, webui, test_split):
    query = png_of(test_split, 1)
    _, before = await post_recommend(http, webui, query, user_id="adapter-shopper", limit="10")
    viewed = before["items"][4]["product_id"]
    async with http.post(f"{webui.url}api/views", json={"user_id": "adapter-shopper", "product_id": viewed}) as r:
        assert r.status == 200
    async with http.get(f"{webui.url}api/history", params={"user_id": "adapter-shopper"}) as response:
        assert [view["product_id"] for view in (await response.json())["views"]] == [viewed]
    _, after = await post_recommend(http, webui, query, user_id="adapter-shopper", limit="10")
    assert viewed not in {item["product_id"] for item in after["items"]}
    assert all(item["history_score"] != 0 for item in after["items"])
    assert all(item["reasons"][0] == "looks like the photo" for item in [*before["items"], *after["items"]])
    viewed_reasons = {reason for item in after["items"] for reason in item["reasons"]
                      if reason.endswith("which you viewed")}
    assert viewed_reasons <= {f"looks like {viewed}, which you viewed"}


@pytest.mark.parametrize("fields, image, status, words", [
    ({}, b"this is not an image", 400, "could not be decoded"),
    ({"limit": "lots"}, None, 400, "whole number"),
    ({"limit": "101"}, None, 400, "from 1 to 100"),
    ({"user_id": "bad\x01user"}, None, 400, "user_id contains control"),
])
async def test_bad_requests_get_a_readable_message(http, webui, test_split, fields, image, status, words):
    code, body = await post_recommend(http, webui, image or png_of(test_split, 2), **fields)
    assert code == status
    assert words in body["error"] and "Traceback" not in body["error"]


async def test_requests_the_adapter_cannot_forward_get_a_readable_message(http, webui):
    async with http.post(f"{webui.url}api/recommend", data={"user_id": "u"}) as response:
        assert response.status == 400
        assert "Upload a photo" in (await response.json())["error"]
    async with http.post(f"{webui.url}api/views", json={"user_id": "u", "product_id": "nope"}) as response:
        assert response.status == 404
        assert "nope" in (await response.json())["error"]
    async with http.post(f"{webui.url}api/views", data=b"{") as response:
        assert response.status == 400
    too_large = aiohttp.FormData()
    too_large.add_field("image", b"\0" * (MAX_UPLOAD_BYTES + 1), filename="big.png")
    async with http.post(f"{webui.url}api/recommend", data=too_large) as response:
        assert response.status == 413
        assert "too large" in (await response.json())["error"]


async def test_an_unreachable_gateway_is_a_503_with_a_message(http, webui_without_gateway, test_split):
    status, body = await post_recommend(http, webui_without_gateway, png_of(test_split, 0))
    assert status == 503
    assert body["error"].startswith("The recommendation service is unavailable")


async def test_without_redis_the_list_is_visual_and_recording_views_is_a_503(http, webui_without_redis,
                                                                              test_split):
    status, result = await post_recommend(http, webui_without_redis, png_of(test_split, 0), user_id="u")
    assert status == 200 and result["degraded"] == ["history"] and result["items"]
    async with http.post(f"{webui_without_redis.url}api/views",
                         json={"user_id": "u", "product_id": result["items"][0]["product_id"]}) as response:
        assert response.status == 503
        assert "unavailable" in (await response.json())["error"]


class BrokenImages(FashionMnistImages):
    """Example images with a bug: the page must answer a generic message without leaking the details."""

    async def examples(self) -> list[tuple[str, str]]:
        raise RuntimeError("secret internal detail")


async def test_unexpected_adapter_errors_are_a_generic_500(http):
    broken = serving(f"127.0.0.1:{free_port()}", BrokenImages())
    async with broken as webui, http.get(f"{webui.url}api/options") as response:
        assert response.status == 500
        body = await response.json()
    assert "log has the details" in body["error"] and "secret" not in body["error"]


@pytest.mark.parametrize("listen, target", [("[::]:50051", "127.0.0.1:50051"), ("0.0.0.0:7", "127.0.0.1:7"),
                                            ("gateway.internal:50051", "gateway.internal:50051")])
def test_local_target_dials_this_machine_for_wildcard_listen_addresses(listen, target):
    assert local_target(listen) == target


def test_the_page_listens_on_localhost_8080_unless_configured(monkeypatch):
    assert (WebUISettings().host, WebUISettings().port) == ("127.0.0.1", 8080)
    for name, value in {"WEBUI_HOST": "0.0.0.0", "WEBUI_PORT": "9000", "WEBUI_TOKEN": "t" * 20}.items():
        monkeypatch.setenv(name, value)
    settings = WebUISettings()
    assert (settings.host, settings.port, settings.token) == ("0.0.0.0", 9000, "t" * 20)
    assert "t" * 20 not in repr(settings)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium (`apt-get install chromium`), driven by Playwright, with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        expect.set_options(timeout=TIMEOUT_MS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    await context.close()


async def result_ids(page: Page) -> list[str]:
    return await page.locator("#results .result").evaluate_all("cards => cards.map(c => c.dataset.productId)")


async def test_in_a_browser_an_upload_shows_results_and_a_click_changes_the_next_ones(page, webui, test_split,
                                                                                        tmp_path):
    photo = tmp_path / "ankle-boot.png"
    photo.write_bytes(png_of(test_split, 0))  # a held-out Ankle boot
    await page.goto(webui.url)
    await page.fill("#user-id", "browser-shopper")
    await page.set_input_files("#photo", photo)
    cards = page.locator("#results .result")
    await expect(cards).to_have_count(12)
    await expect(page.locator("#results-panel")).to_have_attribute("aria-busy", "false")
    await expect(page.locator("#query-image")).to_be_visible()
    images_loaded = "imgs => imgs.every(i => i.complete && i.naturalWidth === 160)"
    await page.wait_for_function(f"({images_loaded})(Array.from(document.querySelectorAll('#results img')))")
    categories = await page.locator("#results .category").all_text_contents()
    assert sum(category in FOOTWEAR for category in categories) >= 9, categories
    assert await page.locator("#message").is_hidden()
    before = await result_ids(page)

    await cards.nth(2).click()
    await expect(page.locator("#history li")).to_have_count(1)
    await expect(page.locator("#history li")).to_have_attribute("data-product-id", before[2])
    await expect(page.locator(f'#results [data-product-id="{before[2]}"]')).to_have_count(0)
    await expect(page.locator("#message")).to_contain_text(f"Recorded a view of {before[2]}")
    after = await result_ids(page)
    assert len(after) == 12 and after != before
    history_scores = await cards.evaluate_all("cards => cards.map(c => Number(c.dataset.historyScore))")
    assert all(score != 0 for score in history_scores), "every list item is scored against the view"
    reasons = await page.locator("#results .reasons").all_text_contents()
    assert len(reasons) == 12 and all(text.startswith("looks like the photo") for text in reasons), reasons
    assert any(await page.locator("#results .change").all_text_contents()), "moves are marked"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "recommendations.png", full_page=True)


async def test_in_a_browser_gateway_errors_are_readable_messages(page, webui, webui_without_gateway, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"shopping list: shoes, bag")
    await page.goto(webui.url)
    await page.set_input_files("#photo", not_an_image)
    message = page.locator("#message")
    await expect(message).to_contain_text("The gateway refused the request: image could not be decoded")
    await expect(page.locator("#results .result")).to_have_count(0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / "bad-image.png")

    await page.goto(webui_without_gateway.url)
    await page.locator("#examples .example").first.click()
    await expect(message).to_contain_text("The recommendation service is unavailable")
    assert "Traceback" not in await message.inner_text()


def test_every_reason_kind_reads_as_text():
    kinds = [value.name for value in pb.ReasonKind.DESCRIPTOR.values if value.number]
    assert all(reason_text(pb.Reason(kind=kind, product_id="p1", rule="summer")) for kind in kinds)
    assert reason_text(pb.Reason(kind=pb.REASON_KIND_BOOSTED, rule="summer")) == "boosted by rule summer"
