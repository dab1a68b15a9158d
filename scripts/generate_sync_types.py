"""Write client/packetbus/_sync_calls.pyi: the types of SyncClient's calls, from Client's.

SyncClient's calls are made at import from Client's (packetbus._sync); this stub
tells a type checker what they take and return, without a copy kept by hand.
Each call takes Client's parameters (plus `timeout=`, which every blocking call
accepts) and returns what the Client call's await gives, except that an object
with async calls (a stream, consumer, queue, inbox, agent) is a SyncProxy.
Run it after changing Client's public calls; tests/test_sync_client.py checks
that the stub is current (--check).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

from google.protobuf.message import Message

import packetbus._client as client_module
from packetbus._client import Client

OUT = Path(__file__).resolve().parent.parent / "client" / "packetbus" / "_sync_calls.pyi"
# A name not after a dot (a module's attribute is its module's business).
_NAME = re.compile(r"(?<![.\w])([A-Za-z_]\w*)")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
_PLAIN = {"None", "str", "int", "float", "bool", "bytes", "list", "dict", "tuple", "set"}
_DATA_MODULES = ("builtins", "typing", "collections.abc", "datetime")


def _declaring(alias: str) -> str:
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("packetbus.") or module_name.startswith("packetbus.v1"):
            continue
        if re.search(rf"^{alias}\s*(:[^=]*)?=", inspect.getsource(module), re.M):
            return module_name
    raise SystemExit(f"cannot find where {alias!r} is declared")


def _is_async_object(value: object) -> bool:
    return (
        isinstance(value, type)
        and not issubclass(value, Message)
        and value.__module__ not in _DATA_MODULES
    )


class _Imports:
    def __init__(self) -> None:
        self.lines: set[tuple[str, str]] = set()

    def use(self, annotation: str, namespace: dict[str, object]) -> None:
        for name in _NAME.findall(_QUOTED.sub("", annotation)):
            if name in _PLAIN or name == "SyncProxy":
                continue
            value = namespace.get(name)
            if value is None:
                raise SystemExit(f"cannot resolve {name!r} in {annotation!r}")
            if isinstance(value, types.ModuleType):
                package, _, module = value.__name__.rpartition(".")
                self.lines.add((package, module))
            elif getattr(value, "__name__", None) == name:  # a class, or typing's Literal
                self.lines.add((value.__module__, name))
            else:  # a type alias: from the module that declares it
                self.lines.add((_declaring(name), name))


def _namespace(member: object) -> dict[str, object]:
    """The names an annotation of `member` may use: its own module's (Client's calls
    live in several modules of packetbus._client), then the package's."""
    module = sys.modules.get(getattr(member, "__module__", ""), client_module)
    return {**vars(client_module), **vars(module)}


def _sync_return(function: object, annotation: str, namespace: dict[str, object]) -> str:
    if inspect.isasyncgenfunction(function) or "AsyncIterator" in annotation:
        return "SyncProxy"

    def swap(match: re.Match[str]) -> str:
        value = namespace.get(match.group(1))
        return "SyncProxy" if _is_async_object(value) else match.group(1)

    return _NAME.sub(swap, annotation)


def _parameters(
    signature: inspect.Signature, imports: _Imports, namespace: dict[str, object]
) -> str:
    rendered: list[str] = []
    star = False
    names = set(signature.parameters)
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not star:
            rendered.append("*")
            star = True
        text = parameter.name
        if parameter.kind is parameter.VAR_POSITIONAL:
            text, star = "*" + text, True
        elif parameter.kind is parameter.VAR_KEYWORD:
            text = "**" + text
        if parameter.annotation is not parameter.empty:
            imports.use(parameter.annotation, namespace)
            text += f": {parameter.annotation}"
        if parameter.default is not parameter.empty:
            text += " = ..."
        rendered.append(text)
        if parameter.kind is parameter.POSITIONAL_ONLY:
            rendered.append("/")
    if "timeout" not in names:
        rendered.extend(([] if star else ["*"]) + ["timeout: float | None = ..."])
    return ", ".join(rendered)


def render() -> str:
    """The stub's text."""
    imports = _Imports()
    body: list[str] = []
    for name, _ in sorted(inspect.getmembers(Client)):
        if name.startswith("_") or name in {"connect", "close"}:
            continue
        member = inspect.getattr_static(Client, name)
        if isinstance(member, property):
            annotation = inspect.signature(member.fget).return_annotation  # type: ignore[arg-type]
            imports.use(annotation, _namespace(member.fget))
            body.append(f"    @property\n    def {name}(self) -> {annotation}: ...")
            continue
        function = getattr(Client, name)
        signature = inspect.signature(function)
        namespace = _namespace(function)
        returns = _sync_return(function, signature.return_annotation, namespace)
        imports.use(returns, namespace)
        parameters = _parameters(signature, imports, namespace)
        body.append(f"    def {name}({parameters}) -> {returns}: ...")
    header = [
        "# Generated by scripts/generate_sync_types.py from packetbus._client.Client: do not edit.",
        "",
        *sorted(f"from {module} import {name}" for module, name in imports.lines),
        "from packetbus._sync_proxy import SyncProxy",
        "",
        "class SyncCalls:",
        '    """The blocking calls of SyncClient, one for each public call of Client."""',
        "",
    ]
    return "\n".join(header + body) + "\n"


def formatted() -> str:
    """The stub's text as `ruff format` and `ruff check --fix` leave it (the repo's config)."""
    ruff = str(Path(sys.executable).parent / "ruff")
    text = render()
    for command in (["check", "--fix-only", "--exit-zero"], ["format"]):
        text = subprocess.run(
            [ruff, *command, "--stdin-filename", str(OUT), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=OUT.parent,
        ).stdout
    return text


def main() -> None:
    """Write the stub; with --check, only exit 1 if the stub written differs."""
    text = formatted()
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            raise SystemExit(f"{OUT} is out of date: run {Path(__file__).name}")
        return
    OUT.write_text(text)
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
