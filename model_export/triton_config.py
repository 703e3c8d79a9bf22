"""Triton model configuration: the production config (NGC image, PyTorch backend) is the one source.

The local variant served by the bundled tritonserver (python backend only) is derived from it by
``local_config``, so the two can never disagree on names, shapes, batching or parameters.
"""

INPUT_NAME = "images__0"
OUTPUT_NAME = "embeddings__0"
IMAGE_SIZE = 224


def render_config(name: str, backbone: str, dim: int, max_batch_size: int = 32,
                  preferred_batch_sizes: tuple[int, ...] = (4, 8, 16), max_queue_delay_us: int = 2000,
                  threads: int = 2, max_queue_size: int = 64) -> str:
    """Production config.pbtxt for Triton's PyTorch (libtorch) backend.

    The dynamic batcher's queue holds at most max_queue_size requests; Triton refuses the excess at
    once ("Exceeds maximum queue size"), which the gateway answers as RESOURCE_EXHAUSTED.
    """
    preferred = ", ".join(str(size) for size in preferred_batch_sizes)
    return f'''name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: {max_batch_size}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    format: FORMAT_NHWC
    dims: [ {IMAGE_SIZE}, {IMAGE_SIZE}, 3 ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {dim} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
  default_queue_policy {{ max_queue_size: {max_queue_size} }}
}}
instance_group [ {{ count: 1, kind: KIND_AUTO }} ]
parameters: {{ key: "backbone", value: {{ string_value: "{backbone}" }} }}
parameters: {{ key: "INTRA_OP_THREAD_COUNT", value: {{ string_value: "{threads}" }} }}
parameters: {{ key: "INTER_OP_THREAD_COUNT", value: {{ string_value: "1" }} }}
'''


def local_config(production: str) -> str:
    """The same config for the python backend, which runs the same model.pt with torch.jit.load."""
    platform_line = 'platform: "pytorch_libtorch"'
    if platform_line not in production:
        raise ValueError("not a pytorch_libtorch config")
    return production.replace(platform_line, 'backend: "python"')
