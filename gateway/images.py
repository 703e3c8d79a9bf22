"""Turn encoded product photos into the embedding model's input: uint8 RGB, HWC, 224x224.

Decoding accepts JPEG, PNG, WebP, GIF and BMP in any colour mode: greyscale (8- and 16-bit, the
latter scaled to 8 bits), palette, CMYK, and images with an alpha channel or a transparent colour,
which are composited on white. The EXIF orientation is applied, so photos come out upright. An MPO
(a JPEG with extra pictures, as some cameras write) counts as its primary picture.

Resize policy: keep the aspect ratio and scale the image so that its longer side is 224 pixels
(smaller images are enlarged), centre it, and pad the shorter side to a square with the image's
own border colour, the per-channel median of its outermost ring of pixels. Product shots on white
and catalog images on dark backgrounds are thus padded invisibly, and the product is never cropped.

Untrusted input is bounded by ``ImageLimits``; every way an image can be refused raises
``InvalidArgument`` with a message that says what was wrong and what the limit is.
"""

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gateway.domain import InvalidArgument

# The side of the square model input every served embedder takes (uint8 [N, IMAGE_SIZE, IMAGE_SIZE, 3]).
IMAGE_SIZE = 224
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF or BMP"
_WHITE = (255, 255, 255)
# Catalog thumbnails: 160 px fill a result tile of the web page; about 2-6 KB each as JPEG.
THUMBNAIL_SIZE = 160
THUMBNAIL_TYPE = "image/jpeg"


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on an untrusted image, checked before any pixel is decoded.

    max_bytes: size of the encoded payload (default 10 MiB).
    max_pixels: width * height read from the header (default 40 megapixels). PIL's own
        decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) still applies on top of it.
    max_side: the longer of width and height (default 12000 pixels).
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 12_000

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_side) <= 0:
            raise ValueError(f"image limits must be positive, got {self}")


def preprocess(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode one encoded image into a C-contiguous uint8 array [224, 224, 3].

    CPU-bound and blocking: call it from an executor, not from the event loop.
    """
    output = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    _decode_into(data, limits, output)
    return output


def preprocess_batch(blobs: Sequence[bytes], limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode encoded images into one uint8 array [N, 224, 224, 3], each written in place.

    A refused image raises ``InvalidArgument`` naming its position in ``blobs``.
    """
    output = np.empty((len(blobs), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for index, data in enumerate(blobs):
        try:
            _decode_into(data, limits, output[index])
        except InvalidArgument as exc:
            raise InvalidArgument(f"image {index}: {exc}") from exc
    return output


def to_model_input(image: Image.Image) -> np.ndarray:
    """Convert an already decoded (trusted) image of any mode into a uint8 array [224, 224, 3]."""
    output = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    _fit_into(_to_rgb(image), output)
    return output


def encode_thumbnail(pixels: np.ndarray) -> bytes:
    """The picture the catalog keeps of a product: its model input [224, 224, 3] as a small JPEG."""
    buffer = io.BytesIO()
    thumbnail = Image.fromarray(pixels).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    thumbnail.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 array, [H, W, 3] RGB or [H, W] greyscale, as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_into(data: bytes, limits: ImageLimits, output: np.ndarray) -> None:
    """Check, decode and fit one untrusted image into output [224, 224, 3]."""
    if not data:
        raise InvalidArgument(f"image is empty; send the bytes of a {_FORMAT_NAMES} file")
    if len(data) > limits.max_bytes:
        raise InvalidArgument(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    with _refusing_malformed_data(limits):
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    with image:
        _check_dimensions(image.size, limits)
        with _refusing_malformed_data(limits):
            animated = image.format != "MPO" and bool(getattr(image, "is_animated", False))
        if animated:
            raise InvalidArgument(
                f"{image.format} image is animated (it has more than one frame); "
                "send a single still image"
            )
        with _refusing_malformed_data(limits):
            image.draft(None, _fitted_size(image.size))  # JPEG only: decode at a reduced scale
            ImageOps.exif_transpose(image, in_place=True)
        _fit_into(_to_rgb(image), output)


@contextmanager
def _refusing_malformed_data(limits: ImageLimits) -> Iterator[None]:
    """Map whatever PIL raises on malformed input (many exception types) to InvalidArgument."""
    try:
        yield
    except UnidentifiedImageError as exc:
        raise InvalidArgument(
            f"image could not be decoded: the data is not a {_FORMAT_NAMES} file, "
            "or its header is damaged"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidArgument(
            f"image has too many pixels; the limit is {limits.max_pixels} pixels"
        ) from exc
    except Exception as exc:
        raise InvalidArgument(
            "image could not be decoded: the data is corrupt or truncated; send the complete file"
        ) from exc


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise InvalidArgument(
            f"image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels"
        )
    if max(width, height) > limits.max_side:
        raise InvalidArgument(
            f"image is {width}x{height} pixels; the longer side may be at most "
            f"{limits.max_side} pixels"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any mode: 16-bit greyscale scaled to 8 bits, transparency on white."""
    if image.mode.startswith("I"):
        samples = np.clip(np.asarray(image), 0, 65535) >> 8
        image = Image.fromarray(samples.astype(np.uint8))
    if not image.has_transparency_data:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGB", image.size, _WHITE)
    canvas.paste(rgba, mask=rgba)
    return canvas


def _fitted_size(size: tuple[int, int]) -> tuple[int, int]:
    """Width and height with the longer side scaled to IMAGE_SIZE and the aspect ratio kept."""
    width, height = size
    scale = IMAGE_SIZE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fit_into(image: Image.Image, output: np.ndarray) -> None:
    """Resize an RGB image by the module's policy and write it into output [224, 224, 3]."""
    width, height = _fitted_size(image.size)
    content = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        output[...] = _border_colour(content)
    top, left = (IMAGE_SIZE - height) // 2, (IMAGE_SIZE - width) // 2
    output[top : top + height, left : left + width] = content


def _border_colour(content: np.ndarray) -> np.ndarray:
    """Per-channel median of the outermost ring of pixels of an [H, W, 3] image."""
    ring = np.concatenate((content[0], content[-1], content[1:-1, 0], content[1:-1, -1]))
    return np.median(ring, axis=0).round().astype(np.uint8)
