"""Runs the tritonserver binary shipped in nvidia-pytriton over a locally derived model repository.

The production repository (``model_repository/``) is written for the NGC image's PyTorch backend on GPUs,
which the bundled server lacks. ``derive_local_repository`` turns it into a python-backend
repository that serves the very same ``model.pt`` files (linked, not copied) through
``stack/triton_python_model.py``; the configs come from ``model_export.triton_config.local_config``
with a CPU serving profile, so names, shapes, version policy and parameters cannot drift.

Two flags are chosen on purpose. ``--exit-on-error=true`` (Triton's default, set explicitly): a model
that fails to load stops the process, so a broken repository is reported at once with the errors
from the server's log instead of a server that listens but never becomes ready.
``--disable-auto-complete-config``: the configs are complete, so Triton serves them exactly as
written, and the python backend skips its extra auto-complete stub process per model (each stub
imports torch; on a small machine this halves the start-up time).
"""

import argparse
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from model_export.image_model import local_image_config
from model_export.triton_config import (
    ALLOCATOR_ENV,
    CPU_PROFILE,
    PRODUCTION_PLATFORM,
    TritonProfile,
    local_config,
    parse_config,
)
from stack.net import free_port

log = logging.getLogger(__name__)
PYTHON_MODEL_SOURCE = Path(__file__).resolve().parent / "triton_python_model.py"
LOG_EXCERPT_LINES = 40
ERROR_LINE = re.compile(r"^E\d{4} ")  # Triton's error-severity log lines, e.g. "E1125 18:20:23.182 ..."


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message ends with the errors from its log."""


def pytriton_dir() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed; run 'make setup'")
    return Path(spec.submodule_search_locations[0]) / "tritonserver"


def derive_local_repository(production: Path, local: Path, profile: TritonProfile = CPU_PROFILE) -> list[str]:
    """Rebuilds ``local`` as the python-backend twin of ``production``, served with ``profile``; returns the
    names of its models.

    Each ``<model>/config.pbtxt`` becomes its ``local_config``; each numeric version folder gets
    ``model.py`` and a symlink to the production ``model.pt`` (when it exists; otherwise the model
    fails to load and the server says why).
    """
    model_dirs = sorted(path.parent for path in production.glob("*/config.pbtxt"))
    if not model_dirs:
        raise FileNotFoundError(f"no <model>/config.pbtxt under {production}; run 'make model'")
    shutil.rmtree(local, ignore_errors=True)
    for model_dir in model_dirs:
        target = local / model_dir.name
        if not is_embedder(model_dir):  # the image model runs here as written, batching as the embedder does
            shutil.copytree(model_dir, target)
            config = target / "config.pbtxt"
            config.write_text(local_image_config(config.read_text(), profile))
            continue
        target.mkdir(parents=True)
        (target / "config.pbtxt").write_text(local_config((model_dir / "config.pbtxt").read_text(), profile))
        for version_dir in _version_dirs(model_dir):
            _derive_version(version_dir, target / version_dir.name)
    return [model_dir.name for model_dir in model_dirs]


def is_embedder(model_dir: Path) -> bool:
    """Whether the model in `model_dir` is an exported TorchScript embedder (rather than a python-backend model)."""
    return parse_config((model_dir / "config.pbtxt").read_text()).platform == PRODUCTION_PLATFORM


def with_versions(repository: Path, target: Path, versions: tuple[str, ...]) -> Path:
    """``target`` as a repository of the models in ``repository`` with only ``versions`` of the embedders (linked,
    not copied); other models (the image model) keep theirs."""
    for config in repository.glob("*/config.pbtxt"):
        model_dir = target / config.parent.name
        model_dir.mkdir(parents=True)
        (model_dir / "config.pbtxt").symlink_to(config.resolve())
        kept = versions if is_embedder(config.parent) else [path.name for path in _version_dirs(config.parent)]
        for version in kept:
            if (config.parent / version).is_dir():
                (model_dir / version).symlink_to((config.parent / version).resolve())
    return target


def add_new_versions(production: Path, local: Path) -> list[Path]:
    """Derives the version folders exported into ``production`` since ``local`` was derived; returns them.

    Each appears whole (built aside, then renamed), and only once its model.pt exists, so a server
    polling ``local`` loads it like a production Triton polling ``production``.
    """
    added = []
    for target in (path for path in local.iterdir() if path.is_dir()):
        for version_dir in _version_dirs(production / target.name):
            if (version_dir / "model.pt").exists() and not (target / version_dir.name).exists():
                partial = target / f".{version_dir.name}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                _derive_version(version_dir, partial)
                os.replace(partial, target / version_dir.name)
                added.append(target / version_dir.name)
    return added


def _version_dirs(model_dir: Path) -> list[Path]:
    return [path for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()]


def _derive_version(version_dir: Path, target: Path) -> None:
    """``model.py`` and a symlink to the production ``model.pt`` (when it exists; otherwise the model
    fails to load and the server says why)."""
    target.mkdir()
    shutil.copyfile(PYTHON_MODEL_SOURCE, target / "model.py")
    weights = version_dir / "model.pt"
    if weights.exists():
        (target / "model.pt").symlink_to(weights.resolve())


def _prepare_backends(work_dir: Path) -> Path:
    """Copies the python backend out of the wheel with the Python 3.11 stub next to it."""
    source = pytriton_dir()
    backends = work_dir / "backends"
    shutil.rmtree(backends, ignore_errors=True)
    shutil.copytree(source / "backends", backends)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy2(stub, backends / "python" / stub.name)
    return backends


def _server_environment() -> dict[str, str]:
    """The serving allocator settings (the environment's own win), and the interpreter's own libpython first
    (the stub embeds it), then the wheel's libraries."""
    env = {**ALLOCATOR_ENV, **os.environ}
    libraries = [str(sysconfig.get_config_var("LIBDIR")), str(pytriton_dir().parent.parent / "nvidia_pytriton.libs"),
                 env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, libraries))
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH", "")]))
    return env


class TritonServer:
    """A tritonserver process on 127.0.0.1; use as a context manager or call ``start``/``stop``.

    ``work_dir`` holds the derived repository, the backend copy and ``tritonserver.log``; without
    one a temporary folder is used and removed on ``stop``. Ports left at 0 are picked free. The models
    are served with ``profile`` (the CPU one; tests and benchmarks ask for others).
    With ``poll_s``, model versions exported into ``repository`` while the server runs are derived every
    ``poll_s`` seconds. The server then loads them itself, as a production Triton polling its repository does
    (``--model-control-mode=poll``; the version policy decides which stay loaded), or, with ``explicit``, when
    the repository API asks (``--model-control-mode=explicit``, every model loaded at start), as the Triton of
    deploy/k8s does: an operator loads and unloads versions with ``ops.model_versions``.
    """

    def __init__(self, repository: Path, work_dir: Path | None = None, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, ready_timeout_s: float = 120.0, poll_s: int | None = None,
                 explicit: bool = False, profile: TritonProfile = CPU_PROFILE) -> None:
        self.repository = repository
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.explicit = explicit
        self.profile = profile
        self._stop_polling = threading.Event()
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="triton-")) if work_dir is None else work_dir
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = self.work_dir / "tritonserver.log"
        self.local_repository = self.work_dir / "repository"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "TritonServer":
        """Derives the repository, starts the server and returns once it is ready."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        models = derive_local_repository(self.repository, self.local_repository, self.profile)
        backends = _prepare_backends(self.work_dir)
        command = [str(pytriton_dir() / "bin" / "tritonserver"),
                   f"--model-repository={self.local_repository}", f"--backend-directory={backends}",
                   "--exit-on-error=true", "--disable-auto-complete-config",
                   "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                   "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                   "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}"]
        if self.explicit:
            command += ["--model-control-mode=explicit", *(f"--load-model={model}" for model in models)]
        elif self.poll_s:
            command += ["--model-control-mode=poll", f"--repository-poll-secs={self.poll_s}"]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_server_environment(),
                                             start_new_session=True)
        try:
            self._wait_until_ready(self._process)
        except BaseException:
            self.stop()
            raise
        if self.poll_s:
            self._stop_polling.clear()
            threading.Thread(target=self._add_new_versions, name="triton-versions", daemon=True).start()
        return self

    def _add_new_versions(self) -> None:
        while not self._stop_polling.wait(self.poll_s):
            try:
                for added in add_new_versions(self.repository, self.local_repository):
                    log.info("new model version for tritonserver: %s/%s", added.parent.name, added.name)
            except OSError as error:  # e.g. an export still being written; retried at the next poll
                log.warning("model versions not derived yet: %s", error)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (tests pause it with SIGSTOP to play a hung backend)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def _wait_until_ready(self, process: "subprocess.Popen[bytes]") -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with code {process.returncode} while starting "
                                       f"over {self.repository}:\n{self.log_excerpt()}")
            if self._is_ready():
                return
            time.sleep(0.1)
        raise TritonStartError(f"tritonserver was not ready after {self.ready_timeout_s:.0f} s "
                               f"over {self.repository}:\n{self.log_excerpt()}")

    def _is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:  # refused, reset, timed out, or HTTP 503 (URLError and HTTPError are OSErrors)
            return False

    def log_excerpt(self, lines: int = LOG_EXCERPT_LINES) -> str:
        """The server's error lines, or the end of its log when it logged no error."""
        log = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        errors = [line for line in log if ERROR_LINE.match(line)]
        return "\n".join((errors or log)[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``grace_s``; idempotent."""
        self._stop_polling.set()
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--work-dir", type=Path, default=Path("build/triton"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--poll-s", type=int, help="derive the model versions exported while it runs every N "
                                                    "seconds (and, without --explicit, load them)")
    parser.add_argument("--explicit", action="store_true",
                        help="explicit model control, as deploy/k8s runs Triton: versions load and unload through "
                             "the repository API (make model-load, make model-unload)")
    args = parser.parse_args()
    server = TritonServer(args.repository, args.work_dir, args.http_port, args.grpc_port, args.metrics_port,
                          poll_s=args.poll_s, explicit=args.explicit)
    try:
        server.start()
    except (TritonStartError, FileNotFoundError) as error:
        sys.exit(str(error))
    print(f"Triton ready: grpc {server.grpc_url}, http {server.http_url}, metrics {server.metrics_url}; "
          f"log {server.log_path}; Ctrl-C stops it", flush=True)
    try:
        while server.running:
            time.sleep(1.0)
        sys.exit(f"tritonserver exited:\n{server.log_excerpt()}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
