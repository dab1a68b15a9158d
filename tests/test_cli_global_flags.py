"""The global flags (--target, --token-file, --tls-*...) do not claim a subcommand's
own flags by prefix: argparse classifies every argument against the top-level
parser, so with abbreviations on, `dispatch --to AGENT` was an ambiguous
--token/--token-file and a subcommand flag that prefixed one global flag was taken
as it."""

from __future__ import annotations

import argparse

import pytest

from packetbus._cli import _parser
from packetbus._cli_progress import leaf_parsers


def _collisions() -> list[tuple[str, str]]:
    """(command, flag) for every subcommand flag that is a proper prefix of a global one."""
    top = _parser()
    global_flags = [f for f in top._option_string_actions if f.startswith("--")]
    return sorted(
        (name, flag)
        for name, leaf in leaf_parsers(top)
        for flag in leaf._option_string_actions
        if flag.startswith("--")
        and flag not in global_flags  # the same flag (a connection flag repeated)
        and any(g.startswith(flag) for g in global_flags)
    )


def test_dispatch_to_an_inbox_parses() -> None:
    args = _parser().parse_args(["dispatch", "--to", "worker-7", "--origin", "a"])
    assert args.to == "worker-7"
    assert ("dispatch", "--to") in _collisions()


@pytest.mark.parametrize(("command", "flag"), _collisions())
def test_no_global_flag_claims_a_subcommand_flag_by_prefix(
    command: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flag reaches the subcommand's parser: any refusal is that parser's
    (a missing required argument), never the top level's."""
    top = _parser()
    action = dict(leaf_parsers(top))[command]._option_string_actions[flag]
    argv = [*command.split(), flag, *(["1"] if action.nargs != 0 else [])]
    try:
        args = top.parse_args(argv)
    except SystemExit:
        refusal = capsys.readouterr().err
        assert refusal.startswith(f"packetbus {command}: error: "), refusal
        assert "ambiguous" not in refusal
        assert flag not in refusal.partition("error: ")[2].partition(" (see")[0] or (
            "required" in refusal
        )
    else:
        assert getattr(args, action.dest) not in (None, argparse.SUPPRESS)
