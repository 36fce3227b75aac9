"""Regenerate the committed gRPC/protobuf code in riveg/v1 from protos/ with grpcio-tools.

Usage: python scripts/gen_protos.py [--out DIR]   (default: the repository root)
tests/test_protos.py fails when the committed code drifts from the .proto files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Compile every protos/riveg/v1/*.proto into out_dir/riveg/v1; return the written files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.glob("riveg/v1/*.proto"))
    (out_dir / "riveg" / "v1").mkdir(parents=True, exist_ok=True)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return sorted((out_dir / "riveg" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    written = generate(parser.parse_args().out)
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
