"""Fuzzing, for a bounded time: image decoding in process, and request parsing through the real gRPC
server. Nothing may crash or hang, and every answer is one of the documented statuses.

Each target runs for FUZZ_SECONDS (default 8) of fresh random examples; `make fuzz` runs them for
longer (FUZZ_SECONDS=300 unless given). Hypothesis shrinks any failure to a minimal example.
"""

import asyncio
import io
import os
import struct
import time
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.domain import InvalidArgument
from gateway.images import IMAGE_SIZE, preprocess
from harness.gateway import RunningGateway, in_process
from harness.health import SERVING, wait_for_health
from recsys_api.v1 import recsys_pb2 as pb
from tests.triton_fixtures import TINY_CATALOG_SIZE, tiny_settings

FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "8"))
EXAMPLE_DEADLINE_MS = 5000
FUZZ = settings(max_examples=100, deadline=EXAMPLE_DEADLINE_MS, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def encoded(image: Image.Image, image_format: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **params)
    return out.getvalue()


def seed_images() -> list[bytes]:
    """Small valid files of every format and many modes: the starting points of mutation."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    frames = [rgb, rgb.rotate(90)]
    return [
        encoded(rgb, "PNG"), encoded(rgb.convert("L"), "PNG"), encoded(rgb.convert("P"), "PNG", transparency=0),
        encoded(Image.fromarray(rng.integers(0, 65535, (24, 32), dtype=np.uint16)), "PNG"),
        encoded(rgb.convert("LA"), "PNG"), encoded(rgb, "JPEG"), encoded(rgb, "JPEG", progressive=True),
        encoded(rgb.convert("CMYK"), "JPEG"), encoded(rgb, "GIF"), encoded(rgb, "GIF", save_all=True,
                                                                           append_images=frames),
        encoded(rgb, "WEBP"), encoded(rgb, "WEBP", lossless=True), encoded(rgb, "BMP"),
        encoded(rgb.convert("1"), "BMP"), encoded(rgb, "PNG", save_all=True, append_images=frames),
    ]


SEEDS = seed_images()
INTERESTING = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)

mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4096), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 4096), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 4096), st.integers(1, 256)),
    st.tuples(st.just("number"), st.integers(0, 64), st.sampled_from(INTERESTING)),
    st.tuples(st.just("truncate"), st.integers(0, 4096), st.just(0)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, bytes | int]]) -> bytes:
    """Applies byte edits; `number` writes an interesting 32-bit value where headers keep their sizes."""
    out = bytearray(data)
    for kind, position, value in mutations:
        at = position % max(1, len(out))
        if kind == "set":
            assert isinstance(value, bytes)
            out[at:at + len(value)] = value
        elif kind == "insert":
            assert isinstance(value, bytes)
            out[at:at] = value
        elif kind == "delete":
            assert isinstance(value, int)
            del out[at:at + value]
        elif kind == "number":
            out[at:at + 4] = struct.pack(">I" if position % 2 else "<I", value)
        else:
            del out[at:]
    return bytes(out)


damaged_images = st.builds(mutate, st.sampled_from(SEEDS), st.lists(mutation, max_size=4))
any_image = st.one_of(damaged_images, st.binary(max_size=512))


def run_for(seconds: float, target: Callable[[], None]) -> None:
    """Runs a Hypothesis test over and over (fresh random examples each time) until time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        target()


def test_image_decoding_only_ever_returns_model_input_or_refuses():
    examples = []

    @FUZZ
    @given(data=any_image)
    def decode(data: bytes) -> None:
        examples.append(len(data))
        try:
            pixels = preprocess(data)
        except InvalidArgument as refusal:
            assert str(refusal)
            return
        assert pixels.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and pixels.dtype == np.uint8

    run_for(FUZZ_SECONDS, decode)
    print(f"image decoding: {len(examples)} inputs in {FUZZ_SECONDS:g} s")


@pytest.fixture(scope="module")
async def running(tiny_triton, redis_server, tmp_path_factory) -> AsyncIterator[RunningGateway]:
    async with in_process(tiny_settings(tiny_triton.grpc_url, redis_server.url, tmp_path_factory.mktemp("data")),
                          TINY_CATALOG_SIZE) as running:
        yield running


ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
REQUEST_TYPES = {
    "/recsys.v1.Recommender/Recommend": pb.RecommendRequest,
    "/recsys.v1.Recommender/RecordView": pb.RecordViewRequest,
    "/recsys.v1.Recommender/GetHistory": pb.GetHistoryRequest,
    "/recsys.v1.Recommender/ForgetUser": pb.ForgetUserRequest,
    "/recsys.v1.Catalog/DeleteProducts": pb.DeleteProductsRequest,
}
text = st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=300),
                 st.sampled_from(["fmnist-train-000001", "fmnist-train-000002", "Bag", "Coat", ""]))
recommend_requests = st.builds(
    lambda query, user, limit, categories: pb.RecommendRequest(**query, user_id=user, limit=limit,
                                                               filter=pb.Filter(categories=categories)),
    st.one_of(st.builds(lambda image: {"image": image}, any_image), st.builds(lambda pid: {"product_id": pid}, text),
              st.just({})),
    text, st.one_of(st.integers(0, 120), st.integers(0, 2**32 - 1)), st.lists(text, max_size=4))
valid_messages = st.one_of(
    st.tuples(st.just("/recsys.v1.Recommender/Recommend"), recommend_requests),
    st.tuples(st.just("/recsys.v1.Recommender/RecordView"), st.builds(pb.RecordViewRequest, user_id=text,
                                                                      product_id=text)),
    st.tuples(st.just("/recsys.v1.Recommender/GetHistory"), st.builds(pb.GetHistoryRequest, user_id=text)),
    st.tuples(st.just("/recsys.v1.Catalog/DeleteProducts"),
              st.builds(pb.DeleteProductsRequest, product_ids=st.lists(text.filter(lambda t: "fmnist" not in t),
                                                                       max_size=5))),
)
raw_requests = st.one_of(
    st.builds(lambda pair, mutations: (pair[0], mutate(pair[1].SerializeToString(), mutations)),
              valid_messages, st.lists(mutation, max_size=3)),
    st.tuples(st.sampled_from(sorted(REQUEST_TYPES)), st.binary(max_size=256)),
)


async def test_request_parsing_through_the_server_answers_only_documented_statuses(running):
    """A sync client in a worker thread, so that the server keeps this event loop."""
    seen: dict[str, int] = {}

    def fuzz_in_thread() -> None:
        with grpc.insecure_channel(running.target) as channel:
            @FUZZ
            @given(request=raw_requests)
            def answer(request: tuple[str, bytes]) -> None:
                method, body = request
                try:
                    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)  # bytes as they are
                    call(body, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
                    assert error.details()
                seen[code.name] = seen.get(code.name, 0) + 1
                assert code in ANSWERS, (code, method, body[:200])

            run_for(FUZZ_SECONDS, answer)

    await asyncio.to_thread(fuzz_in_thread)
    print(f"request parsing: {sum(seen.values())} requests in {FUZZ_SECONDS:g} s, answers {seen}")
    async with grpc.aio.insecure_channel(running.target) as channel:
        await wait_for_health(channel, SERVING, timeout_s=10)
    assert not [code for code in ("INTERNAL", "UNKNOWN")
                if running.sample("recsys_requests_total", {"method": "Recommend", "code": code})]
