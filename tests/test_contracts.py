"""The contracts' own checks: buf format/lint pass, buf breaking holds them to the
committed baseline, the google protos a client needs are vendored, and stale stubs
are caught."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import generate_protos

BUF = Path(sys.executable).parent / "buf"


def _buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_buf_lint_and_format_pass() -> None:
    lint = _buf("lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _buf("format", "--diff", "--exit-code")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_buf_lint_fails_on_a_nonstandard_contract(tmp_path: Path) -> None:
    shutil.copy(REPO / "buf.yaml", tmp_path)
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    (tmp_path / "protos/packetbus/v1/bad.proto").write_text(
        'syntax = "proto3";\npackage packetbus.v1;\nenum color { RED = 0; }\n'
    )
    lint = _buf("lint", cwd=tmp_path)
    assert lint.returncode != 0
    assert "bad.proto" in lint.stdout


def _copy_contracts(tmp_path: Path) -> Path:
    # Only buf.yaml and protos/: no .git, as in a fresh shallow clone with no tags.
    shutil.copy(REPO / "buf.yaml", tmp_path)
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    return tmp_path


def test_buf_breaking_passes_against_the_committed_baseline(tmp_path: Path) -> None:
    breaking = _buf("breaking", "--against", "protos/baseline.binpb", cwd=_copy_contracts(tmp_path))
    assert (breaking.returncode, breaking.stdout, breaking.stderr) == (0, "", "")


def test_buf_breaking_fails_on_a_removed_field(tmp_path: Path) -> None:
    root = _copy_contracts(tmp_path)
    packet = root / "protos/packetbus/v1/packet.proto"
    text = packet.read_text()
    assert "\n  string protocol = 12;\n" in text
    packet.write_text(text.replace("\n  string protocol = 12;\n", "\n"))
    breaking = _buf("breaking", "--against", "protos/baseline.binpb", cwd=root)
    # buf exits 100 when it finds breaking changes (1 would be a usage error).
    assert breaking.returncode == 100, breaking.stdout + breaking.stderr
    # One line, "<file>:<line>:<column>:<message>", the line that of message Packet.
    [line] = breaking.stdout.splitlines()
    path, _line, _column, message = line.split(":", 3)
    assert (path, message) == (
        "protos/packetbus/v1/packet.proto",
        'Previously present field "12" with name "protocol" on message "Packet" was deleted.',
    )
    # The README quotes it as the example of a breaking change.
    assert f"`{message}`" in (REPO / "README.md").read_text()


def test_ci_runs_buf_breaking_unconditionally() -> None:
    lines = (REPO / ".ci/run").read_text().splitlines()
    assert ".venv/bin/buf breaking --against protos/baseline.binpb" in lines


def test_vendored_google_protos_match_googleapis_common_protos() -> None:
    import google.rpc

    installed = Path(next(iter(google.rpc.__path__)))
    vendored = sorted(p.name for p in (REPO / "protos/google/rpc").glob("*.proto"))
    # status.proto: the per-packet results and the status-details trailer;
    # error_details.proto: the ErrorInfo and BadRequest details the server packs;
    # code.proto: the enum that Status.code holds.
    assert vendored == ["code.proto", "error_details.proto", "status.proto"]
    for name in vendored:
        assert (REPO / "protos/google/rpc" / name).read_text() == (installed / name).read_text()


# A stand-in for protoc-gen-es/go/go-grpc: it writes what buf handed it (the files
# to generate, their go_package, the plugin's options) as JSON, one file a call.
_RECORDING_PLUGIN = """#!{python}
import json, sys
from google.protobuf.compiler import plugin_pb2
request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
wanted = set(request.file_to_generate)
seen = {{
    f.name: f.options.go_package for f in request.proto_file if f.name in wanted
}}
response = plugin_pb2.CodeGeneratorResponse(
    supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
)
out = response.file.add()
plugin = sys.argv[0].rsplit("/", 1)[-1]
out.name = plugin + "." + request.file_to_generate[0].rsplit("/", 1)[0].replace("/", "_") + ".json"
out.content = json.dumps({{"parameter": request.parameter, "files": seen}})
sys.stdout.buffer.write(response.SerializeToString())
"""


def _recorded(out: Path) -> dict[str, tuple[str, dict[str, str]]]:
    recorded = {}
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        recorded[path.stem] = (data["parameter"], data["files"])
    return recorded


def test_buf_gen_yaml_generates_typescript_and_go_with_local_plugins(tmp_path: Path) -> None:
    root = _copy_contracts(tmp_path)
    shutil.copy(REPO / "buf.gen.yaml", root)
    plugin = _RECORDING_PLUGIN.format(python=sys.executable)
    bin_dir = root / "bin"
    es = root / "clients/typescript/node_modules/.bin/protoc-gen-es"
    for exe in (es, bin_dir / "protoc-gen-go", bin_dir / "protoc-gen-go-grpc"):
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text(plugin)
        exe.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    generate = subprocess.run(
        [str(BUF), "generate"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert generate.returncode == 0, generate.stdout + generate.stderr

    ours = sorted(p.name for p in (REPO / "protos/packetbus/v1").glob("*.proto"))
    go_package = "github.com/packetbus/packetbus/gen/go/packetbus/v1;packetbusv1"
    ts = _recorded(root / "clients/typescript/src/gen")
    assert ts["protoc-gen-es.packetbus_v1"] == (
        "target=ts,import_extension=js",
        {f"packetbus/v1/{name}": go_package for name in ours},
    )
    # TypeScript gets the google.rpc status details; the WKTs are not generated.
    assert ts["protoc-gen-es.google_rpc"] == (
        "target=ts,import_extension=js",
        {
            "google/rpc/code.proto": "google.golang.org/genproto/googleapis/rpc/code;code",
            "google/rpc/error_details.proto": (
                "google.golang.org/genproto/googleapis/rpc/errdetails;errdetails"
            ),
            "google/rpc/status.proto": "google.golang.org/genproto/googleapis/rpc/status;status",
        },
    )
    assert sorted(ts) == ["protoc-gen-es.google_rpc", "protoc-gen-es.packetbus_v1"]
    # Go: managed mode's go_package on every packetbus file, google.rpc left to genproto.
    go_files = {f"packetbus/v1/{name}": go_package for name in ours}
    assert _recorded(root / "gen/go") == {
        "protoc-gen-go.packetbus_v1": ("paths=source_relative", go_files),
        "protoc-gen-go-grpc.packetbus_v1": ("paths=source_relative", go_files),
    }


def test_committed_stubs_are_fresh() -> None:
    assert generate_protos.stale_files(generate_protos.PROTO_ROOT, generate_protos.COMMITTED) == []


def test_a_contract_change_makes_the_stubs_stale(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos", protos)
    packet = protos / "packetbus/v1/packet.proto"
    packet.write_text(packet.read_text().replace("string protocol = 12;", "string protocol = 19;"))
    assert generate_protos.stale_files(protos, generate_protos.COMMITTED) == ["packet_pb2.py"]


@pytest.mark.parametrize(
    "script", sorted((REPO / "server/packetbus_server/scripts").glob("*.lua")), ids=lambda p: p.name
)
def test_every_lua_script_documents_keys_and_argv(script: Path) -> None:
    header = script.read_text().split("\nlocal ", 1)[0]
    assert "KEYS[1]" in header
