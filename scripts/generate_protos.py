"""Regenerate the committed Python stubs in client/packetbus/v1 from protos/.

Run from anywhere: ``python scripts/generate_protos.py``. CI runs it and fails
when the result differs from what is committed, so the stubs can never drift
from the contracts. Nothing under client/packetbus/v1 is edited by hand.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = PROTO_ROOT / "packetbus" / "v1"
OUT_ROOT = ROOT / "client"
OUT_DIR = OUT_ROOT / "packetbus" / "v1"

INIT = '"""Generated protobuf and gRPC stubs for packetbus.v1 (do not edit)."""\n'


def main() -> int:
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    if not protos:
        print(f"no .proto files under {PACKAGE_DIR}", file=sys.stderr)
        return 1
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir(parents=True)
    bundled = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={bundled}",
        f"--python_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        f"--mypy_out={OUT_ROOT}",
        f"--mypy_grpc_out={OUT_ROOT}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return int(code)
    for proto in protos:
        if "\nservice " not in proto.read_text():
            # protoc writes an empty gRPC module for every file; keep only real ones.
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                (OUT_DIR / f"{proto.stem}{suffix}").unlink()
    (OUT_DIR / "__init__.py").write_text(INIT)
    (OUT_DIR / "py.typed").write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
