"""Generates the Python gRPC stubs of protos/ into recsys_api/ with the pinned grpcio-tools, and checks them.

protoc writes ``recsys/v1/*_pb2*.py(i)`` for package ``recsys.v1``; they are placed in ``recsys_api/v1/`` with
the imports between them made package-relative, so the stubs import as ``recsys_api.v1`` wherever they are
installed. ``--check`` regenerates into a temporary folder and fails if the committed stubs differ, then lints the
protos with buf (protos/buf.yaml): generated code can never drift from the contract, nor the contract from its
style rules.
"""

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
STUBS_DIR = ROOT / "recsys_api"
PROTO_PACKAGE_DIR = Path("recsys")  # protoc's output folder of the proto package recsys.*
_ABSOLUTE_IMPORT = re.compile(r"^from recsys\.(\w+) import (\w+)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py of every proto under protos/ into out_dir/<version>/."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{Path(protoc.__file__).parent / '_proto'}",
                f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for source in sorted((Path(tmp) / PROTO_PACKAGE_DIR).rglob("*_pb2*")):
            target = out_dir / source.relative_to(Path(tmp) / PROTO_PACKAGE_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \2", source.read_text()))
            written.append(target)
    return written


def stale_stubs(out_dir: Path) -> list[Path]:
    """The generated files that are missing from out_dir or differ from what the protos give now."""
    with tempfile.TemporaryDirectory() as tmp:
        return [fresh.relative_to(tmp) for fresh in generate(Path(tmp))
                if not (out_dir / fresh.relative_to(tmp)).is_file()
                or not filecmp.cmp(fresh, out_dir / fresh.relative_to(tmp), shallow=False)]


def lint(module: Path = PROTO_ROOT) -> str:
    """buf's findings on a proto module (default protos/; empty when clean); buf-bin from the lock provides it."""
    buf = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if buf is None:
        raise SystemExit("buf not found: run 'make setup' (requirements.lock installs buf-bin)")
    result = subprocess.run([buf, "lint", str(module)], capture_output=True, text=True, cwd=module, check=False)
    return (result.stdout + result.stderr).strip() if result.returncode else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=STUBS_DIR, help="stub package folder (default: recsys_api/)")
    parser.add_argument("--check", action="store_true", help="compare with the stubs on disk and lint the protos")
    args = parser.parse_args()
    if not args.check:
        generate(args.out)
        return
    if stale := stale_stubs(args.out):
        sys.exit(f"generated stubs are out of date: {', '.join(map(str, stale))}; run 'make protos'")
    if findings := lint():
        sys.exit(f"buf lint (protos/buf.yaml) found:\n{findings}")
    print("stubs match protos/, and buf lint is clean")


if __name__ == "__main__":
    main()
