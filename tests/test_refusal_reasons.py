"""Every FAILED_PRECONDITION and ALREADY_EXISTS the server sends carries a
google.rpc.ErrorInfo reason (one code covers refusals a client handles
differently), and the README's table lists each reason.

The rule is read off the server's source (a site added without a reason fails
here); each site's reason is tested end to end in test_refusal_reason_sites.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server" / "packetbus_server"
CODES = {"FAILED_PRECONDITION", "ALREADY_EXISTS"}
# The calls that put an ErrorInfo on a status: (function name, the reason's position).
WITH_REASON = {
    "abort_with_reason": 3,
    "with_reason": 2,
    "error_info_trailer": 2,
    "refused": 3,  # _settle_requests: a settlement refused with its reason
    "_decision_status": 1,
}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "TEXT" assignments."""
    found: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found[node.targets[0].id] = node.value.value
    return found


def _sites() -> tuple[dict[str, set[str]], list[str]]:
    """The reasons the server sends with the two codes ({reason: {code}}), and the
    places that send either code without one."""
    reasons: dict[str, set[str]] = {}
    bare: list[str] = []
    for path in sorted(SERVER.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = _constants(tree)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr in CODES):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            call = parents.get(node)
            while call is not None and not isinstance(call, ast.Call):
                call = parents.get(call)
            position = WITH_REASON.get(_name(call.func)) if call is not None else None
            if call is None or position is None or len(call.args) <= position:
                bare.append(where)
                continue
            arg = call.args[position]
            reason = (
                arg.value
                if isinstance(arg, ast.Constant)
                else constants.get(arg.id)
                if isinstance(arg, ast.Name)
                else None
            )
            if not isinstance(reason, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", reason):
                bare.append(f"{where} (reason not a constant UPPER_SNAKE string)")
                continue
            reasons.setdefault(reason, set()).add(node.attr)
    return reasons, bare


def test_every_failed_precondition_and_already_exists_carries_a_reason() -> None:
    reasons, bare = _sites()
    assert bare == []
    # The rule found the sites (a refactor that hides them from it fails here).
    assert len(reasons) >= 20


def test_the_readme_table_lists_every_reason_with_its_code() -> None:
    reasons, _ = _sites()
    rows = set(
        re.findall(
            r"^\s*\| `(FAILED_PRECONDITION|ALREADY_EXISTS)` \| `([A-Z_]+)` \|",
            (ROOT / "README.md").read_text(),
            re.MULTILINE,
        )
    )
    sent = {(code, reason) for reason, codes in reasons.items() for code in codes}
    assert sent == rows
