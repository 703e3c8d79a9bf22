"""Triton model configuration: one function renders every profile, so they cannot drift.

The model's signature (name, input and output, version policy, the ``backbone`` parameter) is written once by
``render_config``; how Triton serves it comes from a ``TritonProfile`` applied by ``apply_profile``:

- ``GPU_PROFILE``, the production config that ``make model`` writes into ``model_repository/`` for the NGC
  image's PyTorch (libtorch) backend, which deploy/compose and deploy/k8s serve;
- ``CPU_PROFILE``, the python-backend twin that ``local_config`` derives from the production config for the
  tritonserver of the local stack (``stack.triton``), with the values measured on 2 cores.

GPU settings to measure first when a GPU is available (none was for these figures): they are starting points,
not measurements. Sweep, with one Triton replica and image queries only (deploy/README.md, Capacity):

- ``max_queue_delay_microseconds`` (1,000): the latency a request may wait for others to fill a batch; try 0,
  500, 2,000 and keep the smallest that lets Triton's mean batch size reach the preferred sizes under load;
- ``preferred_batch_size`` (16, 32) within ``max_batch_size`` (32): the batch sizes at which the GPU's
  images/s flatten out; keep the smallest that reaches the plateau;
- ``instance_group`` count per GPU (2): a second instance overlaps one batch's host-side work (uint8 copy in,
  embeddings out) with another's compute; try 1 and 3;
- ``max_queue_size`` (256): requests queued beyond it are refused at once (RESOURCE_EXHAUSTED); keep the queue
  shorter than what the instances can drain within the gateway's embed timeout (3 s).
"""

from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.images import IMAGE_SIZE

INPUT_NAME = "images__0"
OUTPUT_NAME = "embeddings__0"
SERVED_VERSIONS = 2
PRODUCTION_PLATFORM = "pytorch_libtorch"
LOCAL_BACKEND = "python"
THREAD_PARAMETERS = ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")
# glibc allocator settings for the process that runs the model (tritonserver, and the python backend's stub,
# which inherits its environment). glibc maps large blocks afresh and gives freed memory back to the system
# (its thresholds adapt, but not to a forward pass's mix of activation sizes), so the served model faulted its
# activations in page by page: 2,400 page faults per request. Serving blocks up to 32 MiB (glibc's maximum)
# from the heap and keeping up to 512 MiB of freed heap removes them: Triton alone at concurrency 1, one
# core, p50 37 instead of 44 ms (15 page faults per request). In-process (`make bench` layer 1) glibc's
# defaults fault less (500-1,000 per image) and the settings change the time within the noise.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(512 * 2**20)}


@dataclass(frozen=True)
class TritonProfile:
    """How Triton serves the model: dynamic batching, model instances, and torch threads on CPU.

    The dynamic batcher's queue holds at most ``max_queue_size`` requests; Triton refuses the excess at once
    ("Exceeds maximum queue size"), which the gateway answers as RESOURCE_EXHAUSTED. ``cpu_threads`` sets
    torch's intra-op threads per instance (inter-op: 1); None leaves the backend's defaults.
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instances: int
    kind: int  # model_config_pb2.ModelInstanceGroup.KIND_GPU or KIND_CPU
    max_queue_size: int
    cpu_threads: int | None = None


# Production, on one GPU per Triton pod (the module docstring says what to measure first).
GPU_PROFILE = TritonProfile(max_batch_size=32, preferred_batch_sizes=(16, 32), max_queue_delay_us=1000, instances=2,
                            kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, max_queue_size=256)
# The local stack, chosen with `make bench` on 2 cores (docs/performance.md): one torch thread per model instance
# and one instance per core, at batches of at most 4 images. Two threads in one instance stall on their thread
# pool's barriers whenever other work runs on the cores: 2-2.4 images/s where two one-thread instances served
# 11-12. On one thread, images/s fall with the batch (larger batches outgrow the caches): batch 16 ran at half
# and batch 32 at 37 % of the rate of batch 1.
CPU_PROFILE = TritonProfile(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_us=2000, instances=2,
                            kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, max_queue_size=64, cpu_threads=1)


def apply_profile(config: model_config_pb2.ModelConfig, profile: TritonProfile) -> None:
    """Replaces the serving settings of ``config`` (batching, instances, thread parameters) by the profile's."""
    config.max_batch_size = profile.max_batch_size
    config.dynamic_batching.Clear()
    config.dynamic_batching.preferred_batch_size.extend(profile.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = profile.max_queue_delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = profile.max_queue_size
    del config.instance_group[:]
    config.instance_group.add(count=profile.instances, kind=profile.kind)
    for key in THREAD_PARAMETERS:
        config.parameters.pop(key, None)
    if profile.cpu_threads is not None:
        config.parameters["INTRA_OP_THREAD_COUNT"].string_value = str(profile.cpu_threads)
        config.parameters["INTER_OP_THREAD_COUNT"].string_value = "1"


def render_config(name: str, backbone: str, dim: int, profile: TritonProfile = GPU_PROFILE) -> str:
    """config.pbtxt for Triton's PyTorch (libtorch) backend, served with ``profile`` (production: the GPU one).

    Every version folder of the model shares this config, so all versions take the same input and return
    embeddings of the same dimension. The newest SERVED_VERSIONS versions are loaded: the one a rollout moves
    to and the one a rollback returns to.
    """
    config = model_config_pb2.ModelConfig(name=name, platform=PRODUCTION_PLATFORM)
    config.version_policy.latest.num_versions = SERVED_VERSIONS
    config.input.add(name=INPUT_NAME, data_type=model_config_pb2.TYPE_UINT8,
                     format=model_config_pb2.ModelInput.FORMAT_NHWC, dims=[IMAGE_SIZE, IMAGE_SIZE, 3])
    config.output.add(name=OUTPUT_NAME, data_type=model_config_pb2.TYPE_FP32, dims=[dim])
    config.parameters["backbone"].string_value = backbone
    apply_profile(config, profile)
    return text_format.MessageToString(config)


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as its protobuf."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def local_config(production: str, profile: TritonProfile = CPU_PROFILE) -> str:
    """The production config for the python backend, which runs the same model.pt with torch.jit.load, served
    with ``profile`` (the CPU one unless a test or a benchmark asks for another)."""
    config = parse_config(production)
    if config.platform != PRODUCTION_PLATFORM:
        raise ValueError(f"not a {PRODUCTION_PLATFORM} config")
    config.ClearField("platform")
    config.backend = LOCAL_BACKEND
    apply_profile(config, profile)
    return text_format.MessageToString(config)
