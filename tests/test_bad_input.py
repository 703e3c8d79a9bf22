"""Bad input through the real gRPC server: every case gets its status and a message a caller can act on,
and the server keeps serving with bounded memory."""

import ctypes
import itertools
import math
import statistics
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image, PngImagePlugin

from gateway.images import ImageLimits
from gateway.validation import MAX_ATTRIBUTES, MAX_FILTER_CATEGORIES, MAX_ID_LENGTH, MAX_IDS_PER_REQUEST
from harness.gateway import RunningGateway, in_process
from harness.health import SERVING, wait_for_health
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc
from tests.test_images import FORMATS, REFUSALS, encode, noise
from tests.triton_fixtures import TINY_CATALOG_SIZE, tiny_settings

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
KNOWN_PRODUCT = "fmnist-train-000001"
MiB = 1024 * 1024
WARM_UP_ROUNDS = 6
MEASURED_ROUNDS = 16
LEAK_PER_ROUND_MIB = 5.0  # half the 10 MiB payload a round sends


@pytest.fixture(scope="module")
async def running(tiny_triton, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    async with in_process(tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path_factory.mktemp("data")),
                          TINY_CATALOG_SIZE) as running:
        yield running


@pytest.fixture(scope="module")
async def channel(running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(running.target, options=[("grpc.max_send_message_length", 64 * MiB)]
                                         ) as channel:
        yield channel


def chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_with_header(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def red(image_format: str, size: tuple[int, int] = (40, 30)) -> bytes:
    return encode(Image.new("RGB", size, (255, 0, 0)), image_format)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims width x height."""
    data = red("JPEG")
    start_of_frame = data.index(b"\xff\xc0")
    return patched(data, start_of_frame + 5, struct.pack(">HH", height, width))


def text_bomb_png() -> bytes:
    """A 40x30 PNG with a compressed text chunk that inflates to 64 MiB."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * (64 * MiB), zip=True)
    return encode(Image.new("RGB", (40, 30)), "PNG", pnginfo=info)


def bad_crc_png() -> bytes:
    data = red("PNG")
    return patched(data, 29, bytes([data[29] ^ 0xFF]))


@dataclass(frozen=True)
class Case:
    """One bad request: how to send it, the status it must get, and a phrase its message must hold."""

    send: Callable[[grpc.aio.Channel], Awaitable[object]]
    code: grpc.StatusCode
    says: str


def recommend(**fields: Any) -> Callable[[grpc.aio.Channel], Awaitable[pb.RecommendResponse]]:
    """A Recommend call with the fields given (None leaves a field unset)."""
    request = pb.RecommendRequest(**fields)
    return lambda channel: pb_grpc.RecommenderStub(channel).Recommend(request, timeout=10)


def ranked(**fields: Any) -> Callable[[grpc.aio.Channel], Awaitable[pb.RecommendResponse]]:
    """A Recommend of a known product with the fields given: what its diversity, filter and rules may hold."""
    return recommend(product_id=KNOWN_PRODUCT, **fields)


def boost(rule: str = "promo", key: str = "category", values: Sequence[str] = ("Bag",), weight: float = 0.5
          ) -> pb.Boost:
    return pb.Boost(rule=rule, key=key, values=values, weight=weight)


def decay(attribute: str = "released", half_life_days: float = 30, weight: float = 0.5) -> pb.RecencyDecay:
    return pb.RecencyDecay(rule="new-in", attribute=attribute, half_life_days=half_life_days, weight=weight)


def in_range(name: str = "price", **bounds: float) -> pb.Filter:
    return pb.Filter(ranges=[pb.AttributeRange(name=name, **bounds)])


def image(data: bytes) -> Callable[[grpc.aio.Channel], Awaitable[pb.RecommendResponse]]:
    return recommend(image=data)


def record_view(user_id: str, product_id: str) -> Callable[[grpc.aio.Channel], Awaitable[object]]:
    return lambda channel: pb_grpc.RecommenderStub(channel).RecordView(
        pb.RecordViewRequest(user_id=user_id, product_id=product_id), timeout=10)


def record_feedback(kind: int, product_id: str = KNOWN_PRODUCT) -> Callable[[grpc.aio.Channel], Awaitable[object]]:
    return lambda channel: pb_grpc.RecommenderStub(channel).RecordFeedback(
        pb.RecordFeedbackRequest(user_id="u1", product_id=product_id, kind=kind), timeout=10)  # type: ignore[arg-type]


def raw(method: str, data: bytes) -> Callable[[grpc.aio.Channel], Awaitable[object]]:
    """Sends bytes that need not be a valid message of the method's request type."""
    def send(channel: grpc.aio.Channel) -> Awaitable[bytes]:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)  # bytes as they are
        return call(data, timeout=10)

    return send


def upsert(*products: pb.Product | bytes) -> Callable[[grpc.aio.Channel], Awaitable[pb.UpsertProductsResponse]]:
    """A client stream of products; raw bytes go out as they are."""
    async def stream() -> AsyncIterator[bytes]:
        for product in products:
            yield product if isinstance(product, bytes) else product.SerializeToString()

    def send(channel: grpc.aio.Channel) -> Awaitable[pb.UpsertProductsResponse]:
        call: grpc.aio.StreamUnaryMultiCallable[bytes, pb.UpsertProductsResponse] = channel.stream_unary(
            "/recsys.v1.Catalog/UpsertProducts", response_deserializer=pb.UpsertProductsResponse.FromString)
        return call(stream(), timeout=30)

    return send


def product(product_id: str = "new-product", data: bytes | None = None, category: str = "Bag",
            attributes: dict[str, str] | None = None) -> pb.Product:
    return pb.Product(product_id=product_id, image=red("PNG") if data is None else data, category=category,
                      attributes=attributes)


IMAGE_REFUSALS = {f"image: {name}": Case(image(build()), INVALID, message)
                  for name, (build, limits, message) in REFUSALS.items() if limits == ImageLimits()}
CASES: dict[str, Case] = {
    **IMAGE_REFUSALS,
    "image: html": Case(image(b"<!doctype html><html><body>hi</body></html>"), INVALID, "could not be decoded"),
    "image: svg": Case(image(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'), INVALID,
                       "not a JPEG, PNG, WebP, GIF or BMP file"),
    "image: pdf": Case(image(b"%PDF-1.4\n1 0 obj << >> endobj\n"), INVALID, "could not be decoded"),
    "image: ico": Case(image(encode(noise(32, 32), "ICO")), INVALID, "could not be decoded"),
    "image: png signature only": Case(image(red("PNG")[:8]), INVALID, "header is damaged"),
    "image: png with a damaged header checksum": Case(image(bad_crc_png()), INVALID, "could not be decoded"),
    "image: png of zero width": Case(image(png_with_header(0, 10)), INVALID, "could not be decoded"),
    "image: png text chunk inflating to 64 MiB": Case(image(text_bomb_png()), INVALID, "could not be decoded"),
    "image: truncated gif": Case(image(red("GIF")[:40]), INVALID, "corrupt or truncated"),
    "image: truncated webp": Case(image(red("WEBP")[:30]), INVALID, "corrupt or truncated"),
    "image: truncated bmp": Case(image(red("BMP")[:1000]), INVALID, "corrupt or truncated"),
    "image: jpeg claiming 65500x65500": Case(image(jpeg_claiming(65500, 65500)), INVALID, "too many pixels"),
    "image: jpeg claiming 0x0": Case(image(jpeg_claiming(0, 0)), INVALID, "could not be decoded"),
    "image: gif claiming 65535x65535": Case(image(patched(red("GIF"), 6, struct.pack("<HH", 65535, 65535))),
                                            INVALID, "too many pixels"),
    "image: bmp claiming 100000x100000": Case(image(patched(red("BMP"), 18, struct.pack("<ii", 100000, 100000))),
                                              INVALID, "too many pixels"),
    "image: bmp claiming 6000x6000 without the pixels": Case(
        image(patched(red("BMP"), 18, struct.pack("<ii", 6000, 6000))), INVALID, "corrupt or truncated"),
    "image: png 1x12001": Case(image(png_with_header(1, 12001)), INVALID, "longer side may be at most"),
    "image: over the 10 MiB image limit": Case(image(red("PNG") + bytes(10 * MiB)), INVALID,
                                               "the limit is 10485760 bytes"),
    "image: over the 16 MiB message limit": Case(image(bytes(17 * MiB)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                 "larger than max"),
    "limit: 101": Case(recommend(product_id=KNOWN_PRODUCT, limit=101), INVALID, "the maximum is 100"),
    "limit: 2**32 - 1": Case(recommend(product_id=KNOWN_PRODUCT, limit=2**32 - 1), INVALID, "the maximum is 100"),
    "product_id: unknown": Case(recommend(product_id="no-such-product"), NOT_FOUND, "not in the catalog"),
    "product_id: unknown, non-ASCII": Case(recommend(product_id="商品-🙂"), NOT_FOUND, "not in the catalog"),
    "product_id: empty": Case(recommend(product_id=""), INVALID, "product_id is empty"),
    "product_id: overlong": Case(recommend(product_id="p" * (MAX_ID_LENGTH + 1)), INVALID, "the limit is 256"),
    "product_id: NUL": Case(recommend(product_id="bad\x00id"), INVALID, "non-printable"),
    "product_id: newline": Case(recommend(product_id="bad\nid"), INVALID, "non-printable"),
    "product_id: right-to-left override": Case(recommend(product_id="di\u202edab"), INVALID, "non-printable"),
    "product_id: zero-width space": Case(recommend(product_id="fmnist\u200b-train-000001"), INVALID,
                                         "non-printable"),
    "user_id: overlong": Case(recommend(product_id=KNOWN_PRODUCT, user_id="u" * 10_000), INVALID,
                              "user_id is 10000 characters"),
    "user_id: tab": Case(recommend(product_id=KNOWN_PRODUCT, user_id="a\tb"), INVALID, "non-printable"),
    "user_id: no history and no query": Case(recommend(user_id="nobody-at-all"), INVALID, "nothing to recommend"),
    "filter: unknown category": Case(recommend(product_id=KNOWN_PRODUCT, filter=pb.Filter(categories=["Spaceship"])),
                                     INVALID, "no catalog product is in 'Spaceship'"),
    "filter: one known, one unknown category": Case(
        recommend(product_id=KNOWN_PRODUCT, filter=pb.Filter(categories=["Bag", "Bgs"])), INVALID, "'Bgs'"),
    "filter: empty category": Case(recommend(product_id=KNOWN_PRODUCT, filter=pb.Filter(categories=[""])),
                                   INVALID, "filter category is empty"),
    "filter: too many categories": Case(
        recommend(product_id=KNOWN_PRODUCT, filter=pb.Filter(categories=["Bag"] * (MAX_FILTER_CATEGORIES + 1))),
        INVALID, "the limit is 100"),
    "diversity: mmr_lambda 0": Case(ranked(diversity=pb.Diversity(mmr_lambda=0)), INVALID,
                                    "diversity.mmr_lambda is 0.0; it must be in 0..1, 0 excluded"),
    "diversity: mmr_lambda 1.5": Case(ranked(diversity=pb.Diversity(mmr_lambda=1.5)), INVALID, "it must be in 0..1"),
    "diversity: mmr_lambda NaN": Case(ranked(diversity=pb.Diversity(mmr_lambda=math.nan)), INVALID,
                                      "it must be in 0..1"),
    "diversity: max_per_group without group_by": Case(ranked(diversity=pb.Diversity(max_per_group=2)), INVALID,
                                                      "max_per_group needs diversity.group_by"),
    "diversity: max_per_group 101": Case(ranked(diversity=pb.Diversity(group_by="category", max_per_group=101)),
                                         INVALID, "max_per_group is 101; the maximum is 100"),
    "diversity: group_by with a NUL": Case(ranked(diversity=pb.Diversity(group_by="col\x00our")), INVALID,
                                           "diversity.group_by contains control or non-printable"),
    "filter: attribute without values": Case(
        ranked(filter=pb.Filter(attributes=[pb.AttributeValues(name="in_stock")])), INVALID,
        "filter.attributes[0].values is empty"),
    "filter: attribute name with a double quote": Case(
        ranked(filter=pb.Filter(attributes=[pb.AttributeValues(name='a"b', values=["x"])])), INVALID,
        "contains a double quote or a backslash"),
    "filter: 17 attribute conditions": Case(
        ranked(filter=pb.Filter(attributes=[pb.AttributeValues(name=f"a{i}", values=["x"]) for i in range(17)])),
        INVALID, "filter.attributes lists 17 values; the limit is 16"),
    "filter: attribute value over 1024 characters": Case(
        ranked(filter=pb.Filter(attributes=[pb.AttributeValues(name="colour", values=["x" * 1025])])), INVALID,
        "filter.attributes[0].values has a value 1025 characters long"),
    "filter: range without bounds": Case(ranked(filter=in_range()), INVALID,
                                         "filter.ranges[0] sets neither min nor max"),
    "filter: range with min above max": Case(ranked(filter=in_range(min=50, max=10)), INVALID,
                                             "min 50.0 is above max 10.0"),
    "filter: range to infinity": Case(ranked(filter=in_range(max=math.inf)), INVALID, "not a finite number"),
    "filter: range of an empty name": Case(ranked(filter=in_range("", min=1)), INVALID,
                                           "filter.ranges[0].name is empty"),
    "boosts: weight 0": Case(ranked(boosts=[boost(weight=0)]), INVALID, "boosts[0].weight is 0.0"),
    "boosts: weight 11": Case(ranked(boosts=[boost(), boost(weight=11)]), INVALID,
                              "boosts[1].weight is 11.0; it must be a number other than 0 in -10..10"),
    "boosts: NaN weight": Case(ranked(boosts=[boost(weight=math.nan)]), INVALID, "boosts[0].weight is nan"),
    "boosts: empty rule name": Case(ranked(boosts=[boost(rule="")]), INVALID, "boosts[0].rule is empty"),
    "boosts: empty key": Case(ranked(boosts=[boost(key="")]), INVALID, "boosts[0].key is empty"),
    "boosts: no values": Case(ranked(boosts=[boost(values=())]), INVALID, "boosts[0].values is empty"),
    "boosts: 17 rules": Case(ranked(boosts=[boost(f"r{i}") for i in range(17)]), INVALID,
                             "boosts lists 17 values; the limit is 16"),
    "recency_decay: half-life 0": Case(ranked(recency_decay=decay(half_life_days=0)), INVALID,
                                       "recency_decay.half_life_days is 0.0; it must be above 0"),
    "recency_decay: negative weight": Case(ranked(recency_decay=decay(weight=-1)), INVALID,
                                           "recency_decay.weight is -1.0; it must be a number other than 0 in 0..10"),
    "recency_decay: empty attribute": Case(ranked(recency_decay=decay(attribute="")), INVALID,
                                           "recency_decay.attribute is empty"),
    "experiment: not configured": Case(ranked(experiment="b"), INVALID,
                                       "experiment 'b' is not configured; the arms are none"),
    "RecordView: unknown product": Case(record_view("u1", "no-such-product"), NOT_FOUND, "not in the catalog"),
    "RecordView: empty product_id": Case(record_view("u1", ""), INVALID, "product_id is empty"),
    "RecordView: empty user_id": Case(record_view("", KNOWN_PRODUCT), INVALID, "user_id is empty"),
    "RecordFeedback: unspecified kind": Case(record_feedback(pb.FEEDBACK_KIND_UNSPECIFIED), INVALID,
                                             "kind must be FEEDBACK_KIND_VIEW"),
    "RecordFeedback: unknown kind": Case(record_feedback(99), INVALID, "kind must be FEEDBACK_KIND_VIEW"),
    "RecordFeedback: unknown product": Case(record_feedback(pb.FEEDBACK_KIND_DISMISS, "no-such-product"), NOT_FOUND,
                                            "not in the catalog"),
    "GetHistory: empty user_id": Case(
        lambda channel: pb_grpc.RecommenderStub(channel).GetHistory(pb.GetHistoryRequest(), timeout=10),
        INVALID, "user_id is empty"),
    "ForgetUser: control characters": Case(
        lambda channel: pb_grpc.RecommenderStub(channel).ForgetUser(pb.ForgetUserRequest(user_id="\x1b[2J"),
                                                                    timeout=10), INVALID, "non-printable"),
    "DeleteProducts: too many ids": Case(
        lambda channel: pb_grpc.CatalogStub(channel).DeleteProducts(
            pb.DeleteProductsRequest(product_ids=[f"p{i}" for i in range(MAX_IDS_PER_REQUEST + 1)]), timeout=10),
        INVALID, "the limit is 1000"),
    "DeleteProducts: an id with a NUL": Case(
        lambda channel: pb_grpc.CatalogStub(channel).DeleteProducts(
            pb.DeleteProductsRequest(product_ids=["ok", "bad\x00"]), timeout=10), INVALID, "non-printable"),
    "raw: Recommend bytes that are no message": Case(raw("/recsys.v1.Recommender/Recommend", b"\xff\xff\xff"),
                                                     INVALID, "not a valid protobuf message"),
    "raw: RecordView user_id of invalid UTF-8": Case(raw("/recsys.v1.Recommender/RecordView", b"\x0a\x02\xff\xfe"),
                                                     INVALID, "not a valid protobuf message"),
    "raw: GetHistory with a truncated field": Case(raw("/recsys.v1.Recommender/GetHistory", b"\x0a\x09abc"),
                                                   INVALID, "not a valid protobuf message"),
    "upsert: a product without an image": Case(upsert(product(data=b"")), INVALID, "has no image"),
    "upsert: an empty product_id": Case(upsert(product(product_id="")), INVALID, "product_id is empty"),
    "upsert: an empty category": Case(upsert(product(category="")), INVALID, "category is empty"),
    "upsert: a corrupt image after a good one": Case(
        upsert(product("good-one"), product("broken-one", data=red("PNG")[:60])), INVALID, "'broken-one'"),
    "upsert: too many attributes": Case(
        upsert(product(attributes={f"a{i}": "x" for i in range(MAX_ATTRIBUTES + 1)})), INVALID, "the limit is 64"),
    "upsert: an overlong attribute value": Case(upsert(product(attributes={"colour": "x" * 5000})), INVALID,
                                                "'colour' is 5000 characters"),
    "upsert: a message that is no Product": Case(upsert(product("fine"), b"\x12\x05ab"), INVALID,
                                                 "not a valid protobuf message"),
}
ODD_BUT_VALID = {name: build for name, (build, _, _) in FORMATS.items()} | {
    "1x1 pixel": lambda: red("PNG", (1, 1)),
    "12000x1 pixels (the longest side allowed)": lambda: encode(Image.new("1", (12000, 1)), "PNG"),
}


def test_the_table_has_at_least_forty_bad_inputs():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", CASES)
async def test_bad_input_gets_its_status_and_an_actionable_message(channel, name):
    case = CASES[name]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await case.send(channel)
    assert error.value.code() == case.code, error.value.details()
    assert case.says.lower() in (error.value.details() or "").lower()


@pytest.mark.parametrize("name", ODD_BUT_VALID)
async def test_unusual_but_valid_images_are_served(channel, name):
    response = await image(ODD_BUT_VALID[name]())(channel)
    assert len(response.items) == 10


async def test_empty_and_repeated_upsert_streams_are_fine(channel):
    assert (await upsert()(channel)).upserted == 0
    assert (await upsert(product("twice"), product("twice"))(channel)).upserted == 2
    response = await recommend(product_id="twice", limit=100)(channel)
    assert "twice" not in {item.product_id for item in response.items}  # stored once, itself excluded


def resident_mib() -> float:
    """This process's resident memory after the C allocator has returned its free pages to the system."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_the_server_keeps_serving_with_bounded_memory_after_rounds_of_bad_input(channel, running):
    """A leak adds about the same amount with every round; the allocator's cache of freed buffers grows
    in steps that stop once its arenas hold enough (by how much depends on the threads and on what else
    ran, so it differs from run to run). The median growth per round ignores those steps and is moved
    by a leak: a refused 10 MiB payload kept alive would add 10 MiB to every round."""
    async def one_round() -> float:
        for case in CASES.values():
            with pytest.raises(grpc.aio.AioRpcError):
                await case.send(channel)
        return resident_mib()

    for _ in range(WARM_UP_ROUNDS):
        await one_round()
    resident = [resident_mib()] + [await one_round() for _ in range(MEASURED_ROUNDS)]
    growth = [after - before for before, after in itertools.pairwise(resident)]
    print(f"resident memory over {MEASURED_ROUNDS} rounds of {len(CASES)} bad inputs after warm-up: "
          f"{resident[0]:.0f} -> {resident[-1]:.0f} MiB, growth per round {[round(g, 1) for g in growth]} MiB")
    assert statistics.median(growth) < LEAK_PER_ROUND_MIB
    await wait_for_health(channel, SERVING, timeout_s=5)
    assert len((await image(red("JPEG"))(channel)).items) == 10
    assert running.sample("recsys_requests_total", {"method": "Recommend", "code": "INTERNAL"}) == 0
    assert running.sample("recsys_requests_total", {"method": "Recommend", "code": "UNKNOWN"}) == 0
