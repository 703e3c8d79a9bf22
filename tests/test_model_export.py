"""The exported embedding model: its signature, its weights, the CLI and the files it writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tritonclient.grpc import model_config_pb2

from model_export.efficientnet_lite import EfficientNetLite0, same_conv2d, same_padding
from model_export.embedding import (
    RESNET50_WEIGHTS_ENV,
    MissingWeightsError,
    build_embedding_model,
    find_efficientnet_lite0_weights,
    read_checkpoint,
    resnet50_architecture,
)
from model_export.export import export_model, probe_images, to_torchscript, write_atomically
from model_export.triton_config import (
    CPU_PROFILE,
    GPU_PROFILE,
    INPUT_NAME,
    OUTPUT_NAME,
    TritonProfile,
    local_config,
    parse_config,
    render_config,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
    pytest.mark.usefixtures("two_torch_threads"),
]

ROOT = Path(__file__).resolve().parent.parent
LITE0_DIM = 1280
RESNET50_DIM = 2048


def run_python(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python <args>`` from the repository root with the project importable, output captured."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300, check=False)


def export_cli(repository: Path, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(["-m", "model_export", "--name", "product_embedder", "--repository", str(repository),
                       *options], **env)


@pytest.fixture
def no_resnet50_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Neither $RESNET50_WEIGHTS nor a torchvision cache; returns the same as environment overrides."""
    monkeypatch.delenv(RESNET50_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return {"TORCH_HOME": str(tmp_path / "torch_home")}


@pytest.fixture(scope="module")
def lite0_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default backbone exported by the CLI as version 3: (repository, log)."""
    repository = tmp_path_factory.mktemp("repository")
    result = export_cli(repository, "--version", "3")
    assert result.returncode == 0, result.stderr
    return repository, result.stderr


@pytest.fixture(scope="module")
def lite0_file(lite0_export: tuple[Path, str]) -> torch.jit.ScriptModule:
    repository, _ = lite0_export
    return torch.jit.load(str(repository / "product_embedder" / "3" / "model.pt"))


def test_cli_writes_model_config_and_log(lite0_export: tuple[Path, str]) -> None:
    repository, log = lite0_export
    model_dir = repository / "product_embedder"
    assert sorted(path.name for path in (model_dir / "3").iterdir()) == ["model.pt"]
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert config.name == "product_embedder" and config.platform == "pytorch_libtorch"
    assert list(config.output[0].dims) == [LITE0_DIM]
    assert config.parameters["backbone"].string_value == "efficientnet_lite0"
    assert config.max_batch_size == GPU_PROFILE.max_batch_size, "the production repository serves the GPU profile"
    assert str(find_efficientnet_lite0_weights()) in log
    assert f"D={LITE0_DIM}" in log


def test_embeddings_are_unit_rows_of_float32(lite0_file: torch.jit.ScriptModule) -> None:
    with torch.no_grad():
        embeddings = lite0_file(probe_images(2))
    assert embeddings.shape == (2, LITE0_DIM)
    assert embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1], atol=1e-3)


def test_saved_file_reproduces_the_model(lite0_file: torch.jit.ScriptModule) -> None:
    model = build_embedding_model("efficientnet_lite0")
    images = probe_images(2)
    with torch.no_grad():
        eager, scripted, reloaded = model(images), to_torchscript(model)(images), lite0_file(images)
    assert torch.equal(reloaded, scripted)
    assert torch.allclose(reloaded, eager, atol=1e-5)


@pytest.mark.parametrize(("images", "message"), [
    (torch.zeros(1, 224, 224, 3), "uint8"),
    (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), r"\[N, 224, 224, 3\] \(NHWC\), got \[1, 3, 224, 224\]"),
    (torch.zeros(1, 112, 112, 3, dtype=torch.uint8), r"got \[1, 112, 112, 3\]"),
    (torch.zeros(224, 224, 3, dtype=torch.uint8), r"got \[224, 224, 3\]"),
])
def test_malformed_images_are_refused(lite0_file: torch.jit.ScriptModule, images: torch.Tensor,
                                      message: str) -> None:
    with pytest.raises(torch.jit.Error, match=message):
        lite0_file(images)


def test_efficientnet_checkpoint_loads_strictly() -> None:
    checkpoint = read_checkpoint(find_efficientnet_lite0_weights())
    result = EfficientNetLite0(224).load_state_dict(checkpoint, strict=True)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    trunk = build_embedding_model("efficientnet_lite0").trunk
    assert torch.equal(trunk.get_parameter("_blocks.15._project_conv.weight"),
                       checkpoint["_blocks.15._project_conv.weight"])


@pytest.mark.parametrize(("size", "kernel", "stride", "padding"), [
    (224, 3, 2, (0, 1)), (56, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (14, 5, 1, (2, 2)), (7, 1, 1, (0, 0)),
])
def test_same_padding_follows_tensorflow(size: int, kernel: int, stride: int, padding: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == padding


@pytest.mark.parametrize(("size", "kernel", "stride"),
                         [(224, 3, 2), (56, 5, 2), (7, 5, 2), (14, 5, 1), (8, 3, 1), (7, 1, 1)])
def test_same_conv_equals_explicit_tensorflow_padding(size: int, kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = same_conv2d(4, 6, kernel, size, stride=stride)
    images = torch.randn(2, 4, size, size)
    before, after = same_padding(size, kernel, stride)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(images, (before, after, before, after)),
                                          conv.weight, stride=stride)
    with torch.no_grad():
        assert torch.allclose(conv(images), expected, atol=1e-6)


def test_export_copies_no_activations_into_padded_tensors(lite0_file: torch.jit.ScriptModule) -> None:
    """Padding is the convolutions' own, the asymmetric kind through a widened constant kernel: an explicit pad
    copies the activations (13 % of the forward time at batch 4 for the five asymmetric ones)."""
    kinds = {node.kind() for node in lite0_file.inlined_graph.nodes()}
    assert not kinds & {"aten::pad", "aten::constant_pad_nd", "aten::batch_norm"}


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of efficientnet_lite0, resnet50"):
        build_embedding_model("vgg16")


def test_resnet50_without_weights_is_a_clear_error(no_resnet50_weights: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=f"set {RESNET50_WEIGHTS_ENV} .* or pass --random-weights"):
        export_model(tmp_path / "repository", "product_embedder", "resnet50")
    assert not (tmp_path / "repository").exists()


def test_cli_without_resnet50_weights_exits_with_the_error(no_resnet50_weights: dict[str, str],
                                                         tmp_path: Path) -> None:
    result = export_cli(tmp_path / "repository", "--backbone", "resnet50", **no_resnet50_weights)
    assert result.returncode != 0
    assert "error: no ImageNet weights for resnet50" in result.stderr
    assert "--random-weights" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "repository").exists()


def test_resnet50_weights_named_by_the_environment_are_loaded(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    state = resnet50_architecture().state_dict()
    weights = tmp_path / "resnet50-test.pth"
    torch.save(state, weights)
    monkeypatch.setenv(RESNET50_WEIGHTS_ENV, str(weights))
    trunk = build_embedding_model("resnet50").trunk
    assert torch.equal(trunk.get_parameter("0.weight"), state["conv1.weight"])
    assert torch.equal(trunk.get_buffer("7.2.bn3.running_var"), state["layer4.2.bn3.running_var"])


def test_resnet50_weights_variable_naming_no_file_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv(RESNET50_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(MissingWeightsError, match=r"missing.pth is not a file"):
        build_embedding_model("resnet50")


def test_resnet50_random_weights_export_loads_with_torch_alone(tmp_path: Path) -> None:
    path = export_model(tmp_path, "product_embedder", "resnet50", random_weights=True)
    config = parse_config((tmp_path / "product_embedder" / "config.pbtxt").read_text())
    assert config.parameters["backbone"].string_value == "resnet50-random"
    assert list(config.output[0].dims) == [RESNET50_DIM]
    check = (
        "import json, sys, torch\n"
        "images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)\n"
        f"embeddings = torch.jit.load({str(path)!r})(images)\n"
        "print(json.dumps({'torchvision': 'torchvision' in sys.modules, 'shape': list(embeddings.shape),\n"
        "                  'dtype': str(embeddings.dtype), 'norms': embeddings.norm(dim=1).tolist()}))\n"
    )
    result = run_python(["-c", check])
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["torchvision"] is False
    assert (loaded["shape"], loaded["dtype"]) == ([2, RESNET50_DIM], "torch.float32")
    assert loaded["norms"] == pytest.approx([1, 1], abs=1e-5)


def test_write_atomically_replaces_or_leaves_the_target(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_text("old")

    def fail_halfway(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_halfway)
    assert [path.name for path in tmp_path.iterdir()] == ["model.pt"]
    assert target.read_text() == "old"
    write_atomically(target, lambda path: path.write_text("new"))
    assert [path.name for path in tmp_path.iterdir()] == ["model.pt"]
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644


def signature(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """What every profile of a model shares: its name, input and output, version policy and parameters other
    than the CPU thread counts."""
    shared = model_config_pb2.ModelConfig(name=config.name)
    shared.input.extend(config.input)
    shared.output.extend(config.output)
    shared.version_policy.CopyFrom(config.version_policy)
    for key, value in config.parameters.items():
        if "THREAD_COUNT" not in key:
            shared.parameters[key].CopyFrom(value)
    return shared


def serving(config: model_config_pb2.ModelConfig) -> TritonProfile:
    """The serving profile a parsed config carries."""
    threads = config.parameters.get("INTRA_OP_THREAD_COUNT")
    return TritonProfile(config.max_batch_size, tuple(config.dynamic_batching.preferred_batch_size),
                         config.dynamic_batching.max_queue_delay_microseconds,
                         sum(group.count for group in config.instance_group), config.instance_group[0].kind,
                         config.dynamic_batching.default_queue_policy.max_queue_size,
                         int(threads.string_value) if threads else None)


def test_the_gpu_and_cpu_profiles_are_valid_triton_configs_of_one_signature() -> None:
    production = parse_config(render_config("product_embedder", "efficientnet_lite0", LITE0_DIM))
    local = parse_config(local_config(render_config("product_embedder", "efficientnet_lite0", LITE0_DIM)))
    assert (production.platform, production.backend) == ("pytorch_libtorch", "")
    assert (local.platform, local.backend) == ("", "python")
    assert signature(local) == signature(production)
    assert [tensor.name for tensor in production.input] == [INPUT_NAME]
    assert [tensor.name for tensor in production.output] == [OUTPUT_NAME]
    assert production.version_policy.latest.num_versions == 2
    assert production.parameters["backbone"].string_value == "efficientnet_lite0"
    assert (serving(production), serving(local)) == (GPU_PROFILE, CPU_PROFILE)


def test_the_gpu_profile_batches_dynamically_on_gpus_and_the_cpu_profile_keeps_the_measured_values() -> None:
    assert GPU_PROFILE.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and GPU_PROFILE.cpu_threads is None
    assert GPU_PROFILE.max_batch_size >= 32 and GPU_PROFILE.max_queue_delay_us > 0
    assert max(GPU_PROFILE.preferred_batch_sizes) <= GPU_PROFILE.max_batch_size
    measured_on_two_cores = TritonProfile(max_batch_size=4, preferred_batch_sizes=(4,), max_queue_delay_us=2000,
                                          instances=2, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU,
                                          max_queue_size=64, cpu_threads=1)
    assert measured_on_two_cores == CPU_PROFILE


def test_a_local_config_is_derived_from_production_configs_only() -> None:
    with pytest.raises(ValueError, match="not a pytorch_libtorch config"):
        local_config(local_config(render_config("m", "tiny", 8)))
