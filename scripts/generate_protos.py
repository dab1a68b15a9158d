"""Regenerate the committed Python stubs in client/packetbus/v1 from protos/.

    python scripts/generate_protos.py            # rewrite client/packetbus/v1
    python scripts/generate_protos.py --check    # exit 1 if the committed stubs are stale

CI runs ``--check``, so the stubs can never drift from the contracts. Nothing
under client/packetbus/v1 is edited by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("packetbus") / "v1"
COMMITTED = ROOT / "client" / PACKAGE

INIT = '"""Generated protobuf and gRPC stubs for packetbus.v1 (do not edit)."""\n'


def _plugin(name: str) -> str:
    # mypy-protobuf installs its plugins beside this interpreter; PATH may not
    # include that directory when the venv is not activated.
    beside = Path(sys.executable).parent / f"protoc-gen-{name}"
    found = str(beside) if beside.exists() else shutil.which(f"protoc-gen-{name}")
    if found is None:
        raise SystemExit(f"protoc-gen-{name} not found: pip install mypy-protobuf")
    return found


def generate(proto_root: Path, out_root: Path) -> None:
    """Write the stubs for proto_root/packetbus/v1/*.proto under out_root/packetbus/v1."""
    protos = sorted((proto_root / PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root / PACKAGE}")
    out_dir = out_root / PACKAGE
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    bundled = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        *(f"--plugin=protoc-gen-{name}={_plugin(name)}" for name in ("mypy", "mypy_grpc")),
        f"--proto_path={proto_root}",
        f"--proto_path={bundled}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *(str(p.relative_to(proto_root)) for p in protos),
    ]
    # The mypy-protobuf plugins announce every file they write on the inherited
    # stderr; keep that quiet and show it only when generation fails.
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            code = protoc.main(args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if code != 0:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise SystemExit(f"protoc failed with exit code {code}")
    for proto in protos:
        if "\nservice " not in proto.read_text():
            # protoc writes an empty gRPC module for every file; keep only real ones.
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                (out_dir / f"{proto.stem}{suffix}").unlink()
    (out_dir / "__init__.py").write_text(INIT)
    (out_dir / "py.typed").write_text("")


def stale_files(proto_root: Path, committed: Path) -> list[str]:
    """Names of stub files that differ between a fresh generation and `committed`."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(proto_root, Path(tmp))
        fresh = Path(tmp) / PACKAGE
        names = {p.name for p in fresh.iterdir()} | (
            {p.name for p in committed.iterdir() if p.is_file()} if committed.is_dir() else set()
        )
        return sorted(
            name
            for name in names
            if not (fresh / name).is_file()
            or not (committed / name).is_file()
            or not filecmp.cmp(fresh / name, committed / name, shallow=False)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args()
    if args.check:
        stale = stale_files(PROTO_ROOT, COMMITTED)
        if stale:
            print(
                "generated stubs are stale; run `python scripts/generate_protos.py`:\n  "
                + "\n  ".join(stale),
                file=sys.stderr,
            )
            return 1
        print("generated stubs are up to date")
        return 0
    # Generate aside first, so a failing protoc leaves the committed stubs alone.
    with tempfile.TemporaryDirectory() as tmp:
        generate(PROTO_ROOT, Path(tmp))
        shutil.rmtree(COMMITTED, ignore_errors=True)
        shutil.copytree(Path(tmp) / PACKAGE, COMMITTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
