"""Triton python-backend model ``image_embedder``: encoded product photos in, embeddings out.

Served beside the embedder so that the gateway can send image bytes instead of decoding them
(IMAGE_PREPROCESSING=triton). ``model_export.image_model`` copies this file as ``image_embedder/1/model.py`` with
the gateway's own decoding (``gateway/images.py`` and what it imports) next to it, so both paths make the same
pixels. Each request carries one image per row and names, in its parameters, the embedder version to run
(``model_version``: the gateway pins one, and a rollout switches it per request, which an ensemble's fixed steps
could not) and the gateway's image limits. The decoded images of all requests that name the same version go to the
embedder as one request (business logic scripting); a refused image fails its own request with INVALID_ARGUMENT
and the gateway's message, and the others go on.
"""

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by the python backend's stub

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gateway's decoding, shipped next to this file
from gateway.domain import InvalidArgument
from gateway.images import ImageLimits, preprocess_batch

LIMIT_PARAMETERS = {"image_max_bytes": "max_bytes", "image_max_pixels": "max_pixels", "image_max_side": "max_side"}


def _refused(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[],
                                      error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def _request_settings(request: Any) -> tuple[int, ImageLimits]:
    """The embedder version a request names and its image limits (the defaults where it names none)."""
    parameters = json.loads(request.parameters() or "{}")
    if "model_version" not in parameters:
        raise InvalidArgument("the request names no model_version parameter (the embedder version to run)")
    limits = {field: int(parameters[name]) for name, field in LIMIT_PARAMETERS.items() if name in parameters}
    return int(parameters["model_version"]), ImageLimits(**limits)


class TritonPythonModel:
    """Decodes each request's images, then embeds them with the version the request names."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        self.embedder = parameters["EMBEDDER"]["string_value"]
        self.embedder_input = parameters["EMBEDDER_INPUT"]["string_value"]
        self.embedder_output = parameters["EMBEDDER_OUTPUT"]["string_value"]
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        by_version: dict[int, list[tuple[int, np.ndarray]]] = {}
        for index, request in enumerate(requests):
            try:
                version, limits = _request_settings(request)
                blobs = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
                pixels = preprocess_batch([bytes(blob) for blob in blobs], limits)
            except InvalidArgument as error:
                responses[index] = _refused(str(error).removeprefix("image 0: "))  # as the gateway says it
                continue
            by_version.setdefault(version, []).append((index, pixels))
        for version, decoded in by_version.items():
            for index, response in zip((index for index, _ in decoded), self._embed(version, decoded), strict=True):
                responses[index] = response
        return responses

    def _embed(self, version: int, decoded: list[tuple[int, np.ndarray]]) -> list[Any]:
        """One embedder request for the decoded images of several requests, split back per request."""
        batch = np.concatenate([pixels for _, pixels in decoded])
        answer = pb_utils.InferenceRequest(
            model_name=self.embedder, model_version=version, requested_output_names=[self.embedder_output],
            inputs=[pb_utils.Tensor(self.embedder_input, batch)]).exec()
        if answer.has_error():
            message = f"{self.embedder} version {version} failed: {answer.error().message()}"
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                    for _ in decoded]
        embeddings = pb_utils.get_output_tensor_by_name(answer, self.embedder_output).as_numpy()
        rows = np.split(embeddings, np.cumsum([len(pixels) for _, pixels in decoded])[:-1])
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]) for part in rows]
