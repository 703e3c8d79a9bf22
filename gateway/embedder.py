"""Image embedder over Triton's async gRPC client: uint8 NHWC images in, float32 vectors out.

``TritonEmbedder.connect`` reads the served model's metadata and config once and refuses a model
whose signature is not one uint8 [-1, 224, 224, 3] input and one float32 [-1, D] output, so shapes
and names are never hard-coded. Requests are pinned to the version resolved at start, so the
vectors never silently change model under a running gateway. Triton and transport failures become
the domain's Unavailable / DeadlineExceeded / ResourceExhausted with messages a caller can act on.
"""

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, model_config_pb2, service_pb2
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.domain import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelInfo,
    RecsysError,
    ResourceExhausted,
    Unavailable,
)
from gateway.images import IMAGE_SIZE, ImageLimits

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # gRPC's default cap of 4 MB is below a batch of 32 images
REQUEST_OVERHEAD_BYTES = 64 * 1024  # tensor names, shapes and parameters around the pixels
# While Triton is down, calls fail at once (UNAVAILABLE); the channel retries the connection with
# exponential backoff, capped here at 1 s (gRPC's default cap of 120 s would delay recovery by minutes).
RECONNECT_BACKOFF = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 1000)]

# The python-backend model that decodes encoded images in Triton and runs the embedder version each request names
# (model_export.image_model writes it; IMAGE_PREPROCESSING=triton sends it the photos).
IMAGE_MODEL = "image_embedder"
IMAGE_INPUT = "image"
IMAGE_OUTPUT = "embeddings"

T = TypeVar("T")


def domain_error(error: InferenceServerException, action: str, timeout_s: float) -> RecsysError:
    """Maps a Triton client error to the domain error a caller can act on."""
    message = error.message() or str(error)
    status = (error.status() or "").removeprefix("StatusCode.")
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"{action}: Triton did not answer within {timeout_s:.3g} s")
    if status == "INVALID_ARGUMENT":  # only the image model refuses what a caller sent (a photo it cannot use)
        return InvalidArgument(message)
    if status == "RESOURCE_EXHAUSTED" or "maximum queue size" in message:
        return ResourceExhausted(f"{action}: Triton is overloaded ({message}); retry later")
    return Unavailable(f"{action}: Triton failed ({status or 'error'}: {message}); retry later")


async def _checked(call: Awaitable[T], action: str, timeout_s: float) -> T:
    try:
        return await call
    except InferenceServerException as error:
        raise domain_error(error, action, timeout_s) from None


def _describe(tensors: list[service_pb2.ModelMetadataResponse.TensorMetadata]) -> str:
    return ", ".join(f"{tensor.name} {tensor.datatype} {list(tensor.shape)}" for tensor in tensors) or "nothing"


def check_model(metadata: service_pb2.ModelMetadataResponse, config: model_config_pb2.ModelConfig,
                version: str) -> ModelInfo:
    """The model's identity, or FailedPrecondition when it is not an image embedder the gateway can feed."""
    name = metadata.name
    expected_input = [-1, *IMAGE_SHAPE]
    if len(metadata.inputs) != 1 or metadata.inputs[0].datatype != "UINT8" \
            or list(metadata.inputs[0].shape) != expected_input:
        raise FailedPrecondition(f"Triton model '{name}' takes {_describe(list(metadata.inputs))}; the gateway "
                                 f"sends one UINT8 input of shape {expected_input}: serve an exported embedder")
    outputs = metadata.outputs
    if len(outputs) != 1 or outputs[0].datatype != "FP32" or len(outputs[0].shape) != 2 \
            or outputs[0].shape[0] != -1 or outputs[0].shape[1] < 1:
        raise FailedPrecondition(f"Triton model '{name}' returns {_describe(list(outputs))}; the gateway "
                                 "expects one FP32 output of shape [-1, D]: serve an exported embedder")
    if "backbone" not in config.parameters:
        raise FailedPrecondition(f"Triton model '{name}' has no 'backbone' parameter in its config.pbtxt; "
                                 "serve an exported embedder")
    version = version or max(metadata.versions, key=int, default="")
    if not version:
        raise FailedPrecondition(f"Triton model '{name}' has no served version")
    return ModelInfo(name=name, version=version, backbone=config.parameters["backbone"].string_value,
                     dim=int(outputs[0].shape[1]))


def check_image_model(metadata: service_pb2.ModelMetadataResponse, dim: int) -> None:
    """FailedPrecondition unless the model takes encoded images and returns vectors of `dim` numbers."""
    inputs, outputs = list(metadata.inputs), list(metadata.outputs)
    if [(tensor.name, tensor.datatype, list(tensor.shape)) for tensor in inputs] != [(IMAGE_INPUT, "BYTES", [-1, 1])] \
            or [(tensor.name, tensor.datatype, list(tensor.shape)) for tensor in outputs] != \
            [(IMAGE_OUTPUT, "FP32", [-1, dim])]:
        raise FailedPrecondition(f"Triton model '{metadata.name}' takes {_describe(inputs)} and returns "
                                 f"{_describe(outputs)}; IMAGE_PREPROCESSING=triton needs the image model that "
                                 f"`make model` writes (encoded images in, FP32 [-1, {dim}] out)")


def _validate(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != IMAGE_SHAPE or len(images) == 0:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise InvalidArgument(f"images must be a non-empty uint8 array of shape [N, {', '.join(map(str, IMAGE_SHAPE))}]"
                              f" (RGB, NHWC); got {got}")


class TritonEmbedder:
    """One long-lived async client bound to one Triton model version; build it with ``connect``.

    ``max_batch_size`` is the most images one request carries: the model's max_batch_size, lowered
    when fewer images fit in the gRPC message-size limit.
    """

    def __init__(self, client: InferenceServerClient, url: str, info: ModelInfo, input_name: str,
                 output_name: str, max_batch_size: int, decodes: bool = False) -> None:
        self.info = info
        self.url = url
        self.max_batch_size = max_batch_size
        self.decodes = decodes
        self._client = client
        self._input_name = input_name
        self._output_name = output_name

    @classmethod
    async def connect(cls, url: str, model_name: str, model_version: str = "", timeout_s: float = 10.0,
                      max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, decodes: bool = False
                      ) -> "TritonEmbedder":
        """Checks the model served at ``url`` (latest version unless one is given) and returns its embedder; with
        ``decodes``, also Triton's image model, which `embed_encoded` sends photos to."""
        images_per_message = (max_message_bytes - REQUEST_OVERHEAD_BYTES) // IMAGE_BYTES
        if images_per_message < 1:
            raise ValueError(f"max_message_bytes={max_message_bytes} cannot hold one {IMAGE_BYTES}-byte image")
        client = InferenceServerClient(url, channel_args=[("grpc.max_send_message_length", max_message_bytes),
                                                          ("grpc.max_receive_message_length", max_message_bytes),
                                                          *RECONNECT_BACKOFF])
        action = f"reading model '{model_name}' from Triton at {url}"
        try:
            metadata = await _checked(client.get_model_metadata(model_name, model_version, client_timeout=timeout_s),
                                      action, timeout_s)
            config = await _checked(client.get_model_config(model_name, model_version, client_timeout=timeout_s),
                                    action, timeout_s)
            info = check_model(metadata, config.config, model_version)
            if decodes:
                try:
                    image_model = await _checked(client.get_model_metadata(IMAGE_MODEL, client_timeout=timeout_s),
                                                 action, timeout_s)
                except Unavailable as error:
                    raise FailedPrecondition(f"IMAGE_PREPROCESSING=triton needs Triton's model '{IMAGE_MODEL}', which "
                                             f"`make model` writes: {error}") from None
                check_image_model(image_model, info.dim)
        except BaseException:
            await client.close()
            raise
        return cls(client, url, info, metadata.inputs[0].name, metadata.outputs[0].name,
                   min(config.config.max_batch_size or images_per_message, images_per_message), decodes)

    async def embed(self, images: np.ndarray, timeout_s: float) -> np.ndarray:
        """L2-normalised float32 [N, D] embeddings of uint8 [N, 224, 224, 3] images, within ``timeout_s``.

        Batches above ``max_batch_size`` go as concurrent requests under the same deadline, so that every model
        instance works on them; the first failure cancels the rest.
        """
        _validate(images)
        if timeout_s <= 0:
            raise DeadlineExceeded(f"embedding {len(images)} images with {self.info} ran out of its "
                                   f"{timeout_s:.3g} s budget")
        if len(images) <= self.max_batch_size:  # one request, as every Recommend sends: no task to schedule
            return await self._infer(images, timeout_s)
        requests = [asyncio.ensure_future(self._infer(images[start:start + self.max_batch_size], timeout_s))
                    for start in range(0, len(images), self.max_batch_size)]
        try:
            return np.concatenate(await asyncio.gather(*requests))
        finally:
            for request in requests:
                request.cancel()  # no effect on those that finished

    async def _infer(self, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        request = InferInput(self._input_name, list(batch.shape), "UINT8")
        request.set_data_from_numpy(batch)
        result = await _checked(
            self._client.infer(self.info.name, [request], model_version=self.info.version,
                               outputs=[InferRequestedOutput(self._output_name)], client_timeout=timeout_s),
            f"embedding {len(batch)} images with {self.info} at {self.url}", timeout_s)
        vectors = result.as_numpy(self._output_name)
        if vectors is None or vectors.shape != (len(batch), self.info.dim):
            got = "nothing" if vectors is None else list(vectors.shape)
            raise Unavailable(f"{self.info} at {self.url} returned {got} for {len(batch)} images; "
                              f"expected [{len(batch)}, {self.info.dim}]")
        return vectors

    async def embed_encoded(self, data: bytes, limits: ImageLimits, timeout_s: float) -> np.ndarray:
        """The L2-normalised float32 [D] embedding of one encoded photo, decoded in Triton under `limits` (with the
        gateway's own code, so the vector is the one `embed` gives for its decoded pixels); a photo it refuses is
        InvalidArgument with the message the gateway's decoding gives."""
        if timeout_s <= 0:
            raise DeadlineExceeded(f"embedding an image with {self.info} ran out of its {timeout_s:.3g} s budget")
        request = InferInput(IMAGE_INPUT, [1, 1], "BYTES")
        request.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        parameters = {"model_version": self.info.version, "image_max_bytes": limits.max_bytes,
                      "image_max_pixels": limits.max_pixels, "image_max_side": limits.max_side}
        result = await _checked(
            self._client.infer(IMAGE_MODEL, [request], outputs=[InferRequestedOutput(IMAGE_OUTPUT)],
                               client_timeout=timeout_s, parameters=parameters),
            f"embedding an image with {self.info} at {self.url}", timeout_s)
        vectors = result.as_numpy(IMAGE_OUTPUT)
        if vectors is None or vectors.shape != (1, self.info.dim):
            got = "nothing" if vectors is None else list(vectors.shape)
            raise Unavailable(f"{IMAGE_MODEL} at {self.url} returned {got} for one image; "
                              f"expected [1, {self.info.dim}]")
        return vectors[0]

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """Whether Triton serves this model version now; never raises."""
        try:
            return bool(await self._client.is_model_ready(self.info.name, self.info.version,
                                                          client_timeout=timeout_s))
        except (InferenceServerException, grpc.aio.UsageError):
            return False

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "TritonEmbedder":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()
