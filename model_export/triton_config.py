"""Triton model configuration: the production config (NGC image, PyTorch backend) is the one source.

The local variant served by the bundled tritonserver (python backend only) is derived from it by
``local_config``, so the two can never disagree on names, shapes, batching or parameters.
"""

from gateway.images import IMAGE_SIZE

INPUT_NAME = "images__0"
OUTPUT_NAME = "embeddings__0"
SERVED_VERSIONS = 2
# Serving settings chosen with `make bench` on 2 cores (README, Performance): one torch thread per model
# instance and one instance per core, at batches of at most 4 images. Two threads in one instance stall
# on their thread pool's barriers whenever other work runs on the cores: 2-2.4 images/s where two
# one-thread instances served 11-12. On one thread, images/s fall with the batch (larger batches outgrow
# the caches): batch 16 ran at half and batch 32 at 37 % of the rate of batch 1.
MAX_BATCH_SIZE = 4
INSTANCES = 2
INTRA_OP_THREADS = 1
# glibc allocator settings for the process that runs the model (tritonserver, and the python backend's stub,
# which inherits its environment). glibc maps large blocks afresh and gives freed memory back to the system
# (its thresholds adapt, but not to a forward pass's mix of activation sizes), so the served model faulted its
# activations in page by page: 2,400 page faults per request. Serving blocks up to 32 MiB (glibc's maximum)
# from the heap and keeping up to 512 MiB of freed heap removes them: Triton alone at concurrency 1, one
# core, p50 37 instead of 44 ms (15 page faults per request). In-process (`make bench` layer 1) glibc's
# defaults fault less (500-1,000 per image) and the settings change the time within the noise.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(512 * 2**20)}


def render_config(name: str, backbone: str, dim: int, max_batch_size: int = MAX_BATCH_SIZE,
                  preferred_batch_sizes: tuple[int, ...] = (MAX_BATCH_SIZE,), max_queue_delay_us: int = 2000,
                  threads: int = INTRA_OP_THREADS, instances: int = INSTANCES, max_queue_size: int = 64) -> str:
    """Production config.pbtxt for Triton's PyTorch (libtorch) backend.

    Every version folder of the model shares this config, so all versions take the same input and
    return embeddings of the same dimension. The newest SERVED_VERSIONS versions are loaded: the one a
    rollout moves to and the one a rollback returns to. The dynamic batcher's queue holds at most
    max_queue_size requests; Triton refuses the excess at once ("Exceeds maximum queue size"), which the
    gateway answers as RESOURCE_EXHAUSTED.
    """
    preferred = ", ".join(str(size) for size in preferred_batch_sizes)
    return f'''name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: {max_batch_size}
version_policy: {{ latest: {{ num_versions: {SERVED_VERSIONS} }} }}
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
instance_group [ {{ count: {instances}, kind: KIND_AUTO }} ]
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
