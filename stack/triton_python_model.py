"""Triton python-backend model that serves the TorchScript ``model.pt`` lying next to it.

Copied as ``<model>/<version>/model.py`` into the local repository by ``stack.triton``. It mirrors
Triton's PyTorch backend: input and output names come from the model config, torch threads from
its INTRA_OP_THREAD_COUNT / INTER_OP_THREAD_COUNT parameters, and the requests of one dynamic
batch run as a single forward pass whose rows are split back per request.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by the python backend's stub


def _thread_count(config: dict[str, Any], key: str) -> int | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return int(value) if value else None


class TritonPythonModel:
    """Loads ``model.pt`` with torch.jit.load and runs it under torch.inference_mode."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        intra_op_threads = _thread_count(config, "INTRA_OP_THREAD_COUNT")
        inter_op_threads = _thread_count(config, "INTER_OP_THREAD_COUNT")
        if intra_op_threads:
            torch.set_num_threads(intra_op_threads)
        if inter_op_threads:
            torch.set_num_interop_threads(inter_op_threads)
        weights = Path(__file__).resolve().parent / "model.pt"
        if not weights.exists():
            raise FileNotFoundError(f"{args['model_name']}: no TorchScript file at {weights}; run 'make model'")
        self.model_name = args["model_name"]
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.module = torch.jit.load(str(weights), map_location="cpu").eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        """One forward pass over all requests; on failure every request gets the error."""
        try:
            batches = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
            with torch.inference_mode():
                embeddings = self.module(torch.from_numpy(np.concatenate(batches))).float().numpy()
            split_at = np.cumsum([len(batch) for batch in batches])[:-1]
            return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)])
                    for rows in np.split(embeddings, split_at)]
        except Exception as error:
            message = f"{self.model_name} failed: {type(error).__name__}: {error}"
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
                    for _ in requests]
