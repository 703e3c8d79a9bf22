"""The NGC Triton release that deploy/k8s and deploy/compose run (through deploy/docker/triton.Dockerfile), against
the PyTorch NVIDIA publishes for each release (deploy/triton/ngc-support-matrix.json) and the torch that exports
model.pt (requirements.lock); and what that image adds for the image model."""

import json
import re
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from tests.lock import lock_pins

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "deploy" / "triton" / "ngc-support-matrix.json"
DOCKERFILE = ROOT / "deploy" / "docker" / "triton.Dockerfile"
NGC_IMAGE = re.compile(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3")
# The image built from DOCKERFILE, tagged with the release it is built on.
BUILT_IMAGE = re.compile(r"(?:^|/)(?:recsys-)?triton:(\d\d\.\d\d)-py3$")
NVIDIA_SOURCES = ("https://docs.nvidia.com/", "https://github.com/triton-inference-server/")


def releases() -> dict[str, dict[str, str]]:
    return json.loads(MATRIX.read_text())["releases"]


def can_serve(pytorch: str, exporter: Version) -> bool:
    """The matrix's rule: the release's PyTorch is the exporter's or newer, a pre-release counting as older."""
    return Version(pytorch) >= exporter


def deployed_images() -> list[str]:
    """The images the Kubernetes Deployment and the compose service run Triton from."""
    manifests = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "triton.yaml").read_text())
    deployment = next(doc for doc in manifests if doc["kind"] == "Deployment")
    images = [container["image"] for container in deployment["spec"]["template"]["spec"]["containers"]]
    return [*images, yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
            ["services"]["triton"]["image"]]


def deployed_releases() -> set[str]:
    """The Triton releases deploy/docker/triton.Dockerfile builds on and the deployed images are tagged with."""
    base = NGC_IMAGE.search(DOCKERFILE.read_text())
    found = [BUILT_IMAGE.search(image) for image in deployed_images()]
    assert base and all(found), deployed_images()
    return {base.group(1), *(match.group(1) for match in found if match)}


def test_every_release_records_its_pytorch_with_an_nvidia_source() -> None:
    assert releases()
    for release, entry in releases().items():
        assert re.fullmatch(r"\d\d\.\d\d", release)
        assert Version(entry["pytorch"]).release >= (2,), release
        assert entry["source"].startswith(NVIDIA_SOURCES), release


def test_the_deployed_release_is_the_one_with_the_newest_published_pytorch() -> None:
    newest = max(releases(), key=lambda release: Version(releases()[release]["pytorch"]))
    assert deployed_releases() == {newest}


def test_the_rule_counts_an_ngc_snapshot_of_a_release_as_older_than_that_release() -> None:
    assert can_serve("2.13.0", Version("2.13.0")) and can_serve("2.14.0a0+0123abcdef", Version("2.13.0"))
    assert not can_serve("2.13.0a0+0123abcdef", Version("2.13.0"))
    assert not can_serve("2.12.1", Version("2.13.0"))


@pytest.mark.xfail(strict=True, reason="no NVIDIA source consulted names a Triton release whose PyTorch is the "
                                       "pinned torch or newer (deploy/triton/ngc-support-matrix.json): serving "
                                       "model.pt on NGC is unproven until one does or the export uses an older torch")
def test_the_deployed_release_serves_torchscript_saved_by_the_pinned_torch() -> None:
    (release,) = deployed_releases()
    assert can_serve(releases()[release]["pytorch"], Version(lock_pins()["torch"]))


def test_the_triton_image_adds_the_image_models_imports_at_the_gateways_versions() -> None:
    """The image model decodes with the gateway's code: the same numpy and Pillow give the same pixels."""
    text = DOCKERFILE.read_text()
    installed = dict(re.findall(r"\b(numpy|pillow)==([\w.]+)", text))
    assert {name: Version(version) for name, version in installed.items()} == {
        name: Version(lock_pins()[name]) for name in ("numpy", "pillow")}
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yml").read_text())
    build = compose["services"]["triton"]["build"]
    assert (ROOT / "deploy" / "compose" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
