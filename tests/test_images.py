"""Image preprocessing: formats and colour modes, orientation, resize policy, limits, fuzzing."""

import io
import struct
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.domain import InvalidArgument
from gateway.images import (
    IMAGE_SIZE,
    ImageLimits,
    encode_png,
    preprocess,
    preprocess_batch,
    to_model_input,
)

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def blank_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A complete 1-bit PNG of the given size, small in bytes however many pixels it has.

    With ``rows`` the image data stops after that many rows (a truncated file).
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed pixels
    row_count = height if rows is None else rows
    pixel_data = b"".join(compressor.compress(row * 1000) for _ in range(row_count // 1000))
    pixel_data += compressor.compress(row * (row_count % 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    end = b"" if rows is not None else chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel_data) + end


def palette_with_transparent_index() -> bytes:
    image = Image.new("P", (40, 30), 0)
    image.putpalette([0, 0, 0, 255, 0, 0])
    return encode(image, "PNG", transparency=0)


def sixteen_bit_grey(value: int) -> bytes:
    image = Image.fromarray(np.full((30, 40), value, dtype=np.uint16))
    assert image.mode == "I;16"
    return encode(image, "PNG")


def still_mpo() -> bytes:
    second = Image.new("RGB", (40, 30), (0, 0, 255))
    return encode(Image.new("RGB", (40, 30), RED), "MPO", save_all=True, append_images=[second])


FORMATS: dict[str, tuple[Callable[[], bytes], tuple[int, int, int], int]] = {
    "jpeg": (lambda: encode(Image.new("RGB", (40, 30), RED), "JPEG"), RED, 8),
    "png": (lambda: encode(Image.new("RGB", (40, 30), RED), "PNG"), RED, 0),
    "webp": (lambda: encode(Image.new("RGB", (40, 30), RED), "WEBP"), RED, 8),
    "gif": (lambda: encode(Image.new("RGB", (40, 30), RED), "GIF"), RED, 0),
    "bmp": (lambda: encode(Image.new("RGB", (40, 30), RED), "BMP"), RED, 0),
    "greyscale png": (lambda: encode(Image.new("L", (40, 30), 100), "PNG"), (100, 100, 100), 0),
    "greyscale jpeg": (lambda: encode(Image.new("L", (40, 30), 100), "JPEG"), (100, 100, 100), 2),
    "1-bit bmp": (lambda: encode(Image.new("1", (40, 30), 1), "BMP"), WHITE, 0),
    "16-bit greyscale png": (lambda: sixteen_bit_grey(100 * 256), (100, 100, 100), 0),
    "transparent greyscale": (lambda: encode(Image.new("LA", (40, 30), (0, 0)), "PNG"), WHITE, 0),
    "half transparent rgba": (
        lambda: encode(Image.new("RGBA", (40, 30), (255, 0, 0, 128)), "PNG"), (255, 127, 127), 1
    ),
    "transparent webp": (
        lambda: encode(Image.new("RGBA", (40, 30), (0, 0, 0, 0)), "WEBP", lossless=True), WHITE, 0
    ),
    "palette with transparency": (palette_with_transparent_index, WHITE, 0),
    "gif with transparency": (
        lambda: encode(Image.new("P", (40, 30), 0), "GIF", transparency=0), WHITE, 0
    ),
    "cmyk jpeg": (lambda: encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), RED, 8),
    "mpo (primary picture)": (still_mpo, RED, 8),
}


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_and_mode_becomes_upright_rgb_of_the_model_size(name: str) -> None:
    build, colour, tolerance = FORMATS[name]
    output = preprocess(build())
    assert output.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert output.dtype == np.uint8
    assert output.flags.c_contiguous
    assert np.abs(output.astype(int) - colour).max() <= tolerance


def test_sixteen_bit_samples_are_scaled_not_clipped() -> None:
    samples = np.repeat(np.linspace(0, 65535, 40, dtype=np.uint16)[None, :], 40, axis=0)
    output = preprocess(encode(Image.fromarray(samples), "PNG"))
    assert output[IMAGE_SIZE // 2, 0, 0] < 10
    assert 100 < output[IMAGE_SIZE // 2, IMAGE_SIZE // 2, 0] < 156
    assert output[IMAGE_SIZE // 2, -1, 0] > 245


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste(RED, (0, 0, 40, 40))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    output = preprocess(encode(image, "JPEG", exif=exif.tobytes())).astype(int)
    # Upright the picture is 40x80 (tall), the stored left half on top.
    centre = IMAGE_SIZE // 2
    top, bottom = output[IMAGE_SIZE // 4, centre], output[3 * IMAGE_SIZE // 4, centre]
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_a_wide_product_on_white_keeps_its_aspect_and_is_padded_white() -> None:
    image = Image.new("RGB", (200, 100), WHITE)
    image.paste((0, 0, 0), (80, 30, 120, 70))  # a 40x40 square product
    output = preprocess(encode(image, "PNG"))
    padding = IMAGE_SIZE // 4  # 224 - 112 content rows, split evenly
    assert (output[:padding] == 255).all() and (output[-padding:] == 255).all()
    dark_rows, dark_columns = np.nonzero(output[..., 0] < 128)
    height = dark_rows.max() - dark_rows.min() + 1
    width = dark_columns.max() - dark_columns.min() + 1
    assert abs(height - width) <= 1
    assert abs(width - 40 * IMAGE_SIZE / 200) <= 1
    assert abs((dark_rows.min() + dark_rows.max()) / 2 - (IMAGE_SIZE - 1) / 2) <= 1


def test_a_tall_image_on_black_is_padded_black_at_the_sides() -> None:
    image = Image.new("RGB", (100, 200), (0, 0, 0))
    image.paste(WHITE, (30, 60, 70, 140))
    output = preprocess(encode(image, "PNG"))
    padding = IMAGE_SIZE // 4
    assert (output[:, :padding] == 0).all() and (output[:, -padding:] == 0).all()
    assert (output[IMAGE_SIZE // 2, IMAGE_SIZE // 2] == 255).all()


def test_padding_takes_the_median_colour_of_the_border() -> None:
    image = Image.new("RGB", (100, 50), (128, 128, 128))
    image.paste(RED, (0, 0, 30, 3))  # a red mark on part of the top edge
    output = preprocess(encode(image, "PNG"))
    assert (output[0] == 128).all() and (output[-1] == 128).all()


def test_nothing_is_cropped() -> None:
    image = Image.new("RGB", (300, 100), WHITE)
    corners = [(0, 0), (290, 0), (0, 90), (290, 90)]
    for left, top in corners:
        image.paste(RED, (left, top, left + 10, top + 10))
    output = preprocess(encode(image, "PNG")).astype(int)
    scale = IMAGE_SIZE / 300
    offset = (IMAGE_SIZE - round(100 * scale)) // 2
    for left, top in corners:
        row, column = offset + round((top + 5) * scale), round((left + 5) * scale)
        assert tuple(output[row, column]) == pytest.approx(RED, abs=40)


def test_small_images_are_enlarged_to_fill() -> None:
    output = preprocess(encode(Image.new("RGB", (28, 28), (10, 200, 30)), "PNG"))
    assert (output == (10, 200, 30)).all()


def test_a_batch_is_the_stack_of_single_images() -> None:
    blobs = [encode(noise(64, 48, seed), "PNG") for seed in range(3)]
    batch = preprocess_batch(blobs)
    assert batch.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert batch.dtype == np.uint8 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, np.stack([preprocess(blob) for blob in blobs]))
    assert preprocess_batch([]).shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_a_refused_image_in_a_batch_is_named_by_position() -> None:
    blobs = [encode(noise(16, 16), "PNG"), b""]
    with pytest.raises(InvalidArgument, match=r"^image 1: image is empty;"):
        preprocess_batch(blobs)


def test_decoded_images_take_the_same_path() -> None:
    output = to_model_input(Image.new("L", (28, 28), 77))
    assert output.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and (output == 77).all()


def test_png_encoding_round_trips() -> None:
    array = np.asarray(noise(IMAGE_SIZE, IMAGE_SIZE))
    np.testing.assert_array_equal(preprocess(encode_png(array)), array)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


REFUSALS: dict[str, tuple[Callable[[], bytes], ImageLimits, str]] = {
    "empty": (
        lambda: b"",
        ImageLimits(),
        "image is empty; send the bytes of a JPEG, PNG, WebP, GIF or BMP file",
    ),
    "too many bytes": (
        lambda: bytes(2000),
        ImageLimits(max_bytes=1000),
        "image is 2000 bytes; the limit is 1000 bytes",
    ),
    "garbage": (
        lambda: b"this is not an image" * 10,
        ImageLimits(),
        "image could not be decoded: the data is not a JPEG, PNG, WebP, GIF or BMP file, "
        "or its header is damaged",
    ),
    "unsupported format (TIFF)": (
        lambda: encode(noise(16, 16), "TIFF"),
        ImageLimits(),
        "image could not be decoded: the data is not a JPEG, PNG, WebP, GIF or BMP file, "
        "or its header is damaged",
    ),
    "truncated png": (
        lambda: truncated(encode(noise(64, 64), "PNG")),
        ImageLimits(),
        "image could not be decoded: the data is corrupt or truncated; send the complete file",
    ),
    "truncated jpeg": (
        lambda: truncated(encode(noise(64, 64), "JPEG")),
        ImageLimits(),
        "image could not be decoded: the data is corrupt or truncated; send the complete file",
    ),
    "more pixels than the limit": (
        lambda: blank_png(7000, 7000),
        ImageLimits(),
        "image is 7000x7000 pixels; the limit is 40000000 pixels",
    ),
    "too many pixels, header only (checked before decoding)": (
        lambda: blank_png(7000, 7000, rows=10),
        ImageLimits(),
        "image is 7000x7000 pixels; the limit is 40000000 pixels",
    ),
    "decompression bomb beyond PIL's own guard": (
        lambda: blank_png(20000, 20000),
        ImageLimits(),
        "image has too many pixels; the limit is 40000000 pixels",
    ),
    "side over the limit": (
        lambda: blank_png(12001, 10),
        ImageLimits(),
        "image is 12001x10 pixels; the longer side may be at most 12000 pixels",
    ),
    "animated gif": (
        lambda: encode(noise(16, 16), "GIF", save_all=True, append_images=[noise(16, 16, 1)]),
        ImageLimits(),
        "GIF image is animated (it has more than one frame); send a single still image",
    ),
    "animated png": (
        lambda: encode(noise(16, 16), "PNG", save_all=True, append_images=[noise(16, 16, 1)]),
        ImageLimits(),
        "PNG image is animated (it has more than one frame); send a single still image",
    ),
    "animated webp": (
        lambda: encode(noise(16, 16), "WEBP", save_all=True, append_images=[noise(16, 16, 1)]),
        ImageLimits(),
        "WEBP image is animated (it has more than one frame); send a single still image",
    ),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_refusals_say_what_is_wrong(name: str) -> None:
    build, limits, message = REFUSALS[name]
    with pytest.raises(InvalidArgument) as refusal:
        preprocess(build(), limits)
    assert str(refusal.value) == message


def test_pil_bomb_warning_raised_as_an_error_is_a_refusal_too() -> None:
    data = blank_png(10000, 10000)  # over PIL's warning threshold, under its error threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InvalidArgument, match="too many pixels; the limit is 40000000 pixels"):
            preprocess(data)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ImageLimits(max_side=0)


SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBPVP8 "]
SEEDS = [encode(noise(16, 12), name) for name in ("PNG", "JPEG", "GIF", "BMP", "WEBP")]


def decodes_or_refuses(data: bytes) -> None:
    try:
        output = preprocess(data)
    except InvalidArgument:
        return
    assert output.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and output.dtype == np.uint8


@settings(max_examples=150, deadline=None)
@given(signature=st.sampled_from(SIGNATURES), body=st.binary(max_size=300))
def test_random_bytes_only_ever_raise_invalid_argument(signature: bytes, body: bytes) -> None:
    decodes_or_refuses(signature + body)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    keep=st.floats(0.05, 1.0),
)
def test_damaged_images_only_ever_raise_invalid_argument(
    seed: bytes, edits: list[tuple[int, int]], keep: float
) -> None:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    decodes_or_refuses(bytes(data[: max(1, round(len(data) * keep))]))
