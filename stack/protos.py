"""Generates the Python gRPC stubs from protos/ with the pinned grpcio-tools.

Imports between generated modules are rewritten to be package-relative so the stubs work as a
sub-package (``gateway.api.recsys.v1``). ``--check`` regenerates into a temporary folder and fails
if the stubs on disk differ, so generated code can never drift from the contract.
"""

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
_ABSOLUTE_IMPORT = re.compile(r"^from recsys\.v1 import (\w+)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under protos/ into out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = sorted(p for p in out_dir.rglob("*_pb2*") if p.suffix in (".py", ".pyi"))  # not __pycache__
    for path in generated:
        path.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text()))
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        generate(args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [p.relative_to(tmp) for p in fresh
                 if not (args.out / p.relative_to(tmp)).is_file()
                 or not filecmp.cmp(p, args.out / p.relative_to(tmp), shallow=False)]
    if stale:
        sys.exit(f"generated stubs are out of date: {', '.join(map(str, stale))}; run 'make protos'")
    print("stubs match protos/")


if __name__ == "__main__":
    main()
