"""What the CLI says besides its output: progress bars, informational lines and
errors, as the global --json and --quiet flags ask.

- A progress bar (tqdm) goes to stderr only when a person can see it: stderr is a
  terminal, --quiet is off, and stdout is not JSON for a machine (--json to a pipe
  or file). Otherwise every bar is a no-op.
- An informational line ("wrote 20000 packets ...") goes to stderr unless --quiet.
- An error always goes to stderr: one line ``packetbus: MESSAGE``, or with --json one
  JSON object ``{"code": ..., "message": ..., "reason": ...}`` (see `error_line`).

The settings are the process's: one CLI run is one command (`configure` is called
once per `main`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

# Codes of a failure that is the command's own, not a call's (whose code is its gRPC
# status): named as gRPC names them, so a script reads one vocabulary.
USAGE_CODE = "INVALID_ARGUMENT"  # exit 2: input that cannot be used
FAILED_CODE = "FAILED_PRECONDITION"  # exit 1: a file missing or unreadable, a check that failed
BUG_CODE = "INTERNAL"  # an unexpected error in the CLI itself


@dataclass
class _Settings:
    json: bool = False
    quiet: bool = False


_settings = _Settings()


def configure(*, json_output: bool, quiet: bool) -> None:
    """Set the run's --json and --quiet (both False until called)."""
    _settings.json = json_output
    _settings.quiet = quiet


def json_output() -> bool:
    """Whether the command was asked for --json."""
    return _settings.json


def bars_shown(*, beside_output: bool = False) -> bool:
    """Whether progress bars are drawn: stderr a terminal, no --quiet, and stdout not
    --json for a machine (a pipe or file). `beside_output`: the command prints its
    lines as the bar moves (a listing), so only when stdout is not the terminal too
    (`carcel list t > entries.jsonl`): lines and a bar on one screen would mangle both."""
    if _settings.quiet or not _isatty(sys.stderr):
        return False
    if beside_output and _isatty(sys.stdout):
        return False
    return not (_settings.json and not _isatty(sys.stdout))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by a test, or closed
        return False


@contextmanager
def bar(
    description: str, *, unit: str, total: int | None = None, beside_output: bool = False
) -> Iterator[tqdm[Any]]:
    """A progress bar on stderr for `description` counting `unit`s ("packets", or
    "B" for bytes, shown scaled in KiB/MiB) out of `total` (None: unknown, a count
    and a rate only). Disabled (updates do nothing) unless `bars_shown(beside_output)`;
    closed when the block ends, successful or not."""
    in_bytes = unit == "B"
    progress: tqdm[Any] = tqdm(
        total=total,
        desc=description,
        unit=unit if in_bytes else f" {unit}",  # "3 packets", "12.5 packets/s"; "4.2MB"
        unit_scale=in_bytes,
        unit_divisor=1024 if in_bytes else 1000,
        file=sys.stderr,
        disable=not bars_shown(beside_output=beside_output),
        dynamic_ncols=True,
        leave=False,  # the result line (or the error) says how it ended
    )
    try:
        yield progress
    finally:
        progress.close()


async def counted(chunks: AsyncIterator[bytes], progress: tqdm[Any]) -> AsyncIterator[bytes]:
    """`chunks` as they are, each one's length added to `progress`."""
    async for chunk in chunks:
        yield chunk
        progress.update(len(chunk))


def info(message: str) -> None:
    """An informational line on stderr (``packetbus: MESSAGE``), unless --quiet."""
    if not _settings.quiet:
        print(f"packetbus: {message}", file=sys.stderr, flush=True)


def error_line(message: str, *, code: str, reason: str | None = None) -> str:
    """What `error` prints: ``packetbus: MESSAGE``, or with --json
    ``{"code": CODE, "message": MESSAGE, "reason": REASON}`` on one line. `code` is the
    failed call's gRPC status name (NOT_FOUND, PERMISSION_DENIED, ...), or for the
    command's own failure INVALID_ARGUMENT (exit 2), FAILED_PRECONDITION (exit 1) or
    INTERNAL (a bug); `reason` the server's ErrorInfo reason, else null. Usage
    errors found while parsing the command line (exit 2) are argparse's text line."""
    if _settings.json:
        # The human line's "NOT_FOUND: ..." prefix is the code field here.
        fields = {"code": code, "message": message.removeprefix(f"{code}: "), "reason": reason}
        return json.dumps(fields, separators=(",", ":"))
    return f"packetbus: {message}"


def error(message: str, *, code: str, reason: str | None = None) -> None:
    """Print `error_line` to stderr; --quiet never silences it."""
    print(error_line(message, code=code, reason=reason), file=sys.stderr, flush=True)


# The commands whose --json output is JSON Lines, one object per item as it comes
# (a listing or a stream); every other command prints one JSON document.
JSON_LINES = frozenset(
    {
        "tail",
        "consume",
        "inbox",
        "groups list",
        "carcel list",
        "tasks list",
        "tasks watch",
        "findings list",
        "findings conflicts",
        "findings escalations",
        "agents list",
        "agents watch",
        "context list",
        "context watch",
        "context memory list",
        "context trace list",
        "records list",
        "policy held",
    }
)
# Leaves whose own --json is an input (the packet's contents): their
# output is JSON already; `packetbus --json COMMAND` asks for JSON errors too.
JSON_IS_INPUT = frozenset({"dispatch"})
# No --json or --quiet: serve prints no result, only its log.
NO_OUTPUT_FLAGS = frozenset({"serve"})
_GLOBAL_JSON_HELP = (
    "machine output on stdout: one JSON document, or JSON Lines for a listing or a "
    "stream (each command's --help says which); errors as one JSON object on stderr "
    '({"code", "message", "reason"}); no progress bars when stdout is not a terminal'
)
_QUIET_HELP = "no progress bars and no informational lines on stderr; errors still"


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """The global --json and --quiet on `parser`, and again after every leaf command
    (`packetbus tasks list --json` as well as `packetbus --json tasks list`), there with
    no default of their own so the global one stays when not given."""
    parser.add_argument("--json", action="store_true", help=_GLOBAL_JSON_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=_QUIET_HELP)
    for name, leaf in leaf_parsers(parser):
        if name in NO_OUTPUT_FLAGS:
            continue
        if name not in JSON_IS_INPUT:
            shape = "JSON Lines, one object per item" if name in JSON_LINES else "one JSON document"
            leaf.add_argument(
                "--json",
                action="store_true",
                default=argparse.SUPPRESS,
                help=f"print {shape}; errors as a JSON object on stderr",
            )
        leaf.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=_QUIET_HELP
        )


def leaf_parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser under `parser` that has no subcommands, with its name
    ("tasks list"), each once (aliases share a parser)."""
    found: list[tuple[str, argparse.ArgumentParser]] = []
    seen: set[int] = set()

    def walk(node: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append((" ".join(path), node))
            return
        for action in subs:  # argparse keeps its subparsers only here
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    walk(sub, (*path, name))

    walk(parser, ())
    return found
