"""Generate the Python bindings for proto/zapflow/v1/*.proto.

    uv run python proto/generate.py            # writes services/zapflow/v1/
    uv run python proto/generate.py --check    # exits 1 when the committed bindings are stale

protoc comes from grpcio-tools (a locked dev dependency), the .pyi stubs from mypy-protobuf,
so every machine generates byte-identical files.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUTPUT_ROOT = ROOT / "services"
PACKAGE_DIR = Path("zapflow") / "v1"


def generate(output_root: Path) -> list[Path]:
    """Run protoc into output_root; return the generated files relative to it."""
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE_DIR).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={output_root}",
        f"--mypy_out={output_root}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = output_root / PACKAGE_DIR
    (package / "__init__.py").write_text('"""Generated protobuf bindings: see proto/generate.py."""\n')
    return sorted(p.relative_to(output_root) for p in package.iterdir() if p.is_file())


def stale_files() -> list[str]:
    """Names of bindings that differ from what protoc makes of the .proto files now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = {p.relative_to(OUTPUT_ROOT) for p in (OUTPUT_ROOT / PACKAGE_DIR).glob("*") if p.is_file()}
        stale = [
            str(p)
            for p in fresh
            if p not in committed or not filecmp.cmp(Path(tmp) / p, OUTPUT_ROOT / p, shallow=False)
        ]
        stale += [str(p) for p in committed - set(fresh)]
    return sorted(stale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale bindings")
    if parser.parse_args().check:
        stale = stale_files()
        if stale:
            print("stale protobuf bindings, run `uv run python proto/generate.py`:", *stale, sep="\n  ")
            sys.exit(1)
        print("protobuf bindings are up to date")
        return
    target = OUTPUT_ROOT / PACKAGE_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in generate(OUTPUT_ROOT):
        print("wrote", OUTPUT_ROOT / path)


if __name__ == "__main__":
    main()
