"""What the CLI accepts and how it fails: one-line usage errors, numbers checked
while parsing (a bad one is a usage error, exit 2, instead of a protobuf range
error in the middle of building a request), and one line, never a traceback,
for whatever goes wrong after."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import grpc
from google.protobuf import json_format

from ._cli_listen import bind_problem
from ._cli_progress import BUG_CODE, FAILED_CODE, USAGE_CODE, error
from ._errors import PacketbusError

if TYPE_CHECKING:
    from packetbus_server import ServerConfig

UINT32 = 2**32 - 1
INT32 = 2**31 - 1
INT64 = 2**63 - 1
UINT64 = 2**64 - 1


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, every subcommand's) whose usage
    errors are one line on stderr, exit 2: the message, then where to read more."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes the argument it could not place ("ambiguous option:
        # --toke=VALUE could match --token-file, --token"): a token typed there must
        # not be repeated on stderr (a CI log), as `--token VALUE` never is.
        message = _TOKEN_LIKE_VALUE.sub(r"\1***", message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# An option spelled as a prefix of --token / --token-file (or longer) with "=VALUE".
_TOKEN_LIKE_VALUE = re.compile(r"(--to(?:k[\w-]*)?=)[^\s,]+")


def integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high, written in ASCII digits."""

    def parse(text: str) -> int:
        stripped = text.strip()
        digits = stripped.removeprefix("-").removeprefix("+")
        if not (digits.isascii() and digits.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        value = int(stripped)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    parse.__name__ = "integer"  # what argparse names in "invalid integer value"
    return parse


def number(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite decimal number in low..high."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            shown = f"{low:g}.." + ("" if math.isinf(high) else f"{high:g}")
            raise argparse.ArgumentTypeError(f"{text} is not in {shown}")
        return value

    parse.__name__ = "number"
    return parse


COUNT = integer(0, INT32)  # --count / --limit: 0 means no limit
SECONDS = integer(0, UINT32)  # uint32 durations (TTLs, leases, deadlines)
ATTEMPTS = integer(0, UINT32)


def one_line(text: str) -> str:
    """`text` on one line (protobuf's parse errors, for one, span several)."""
    return " ".join(text.split())


def fail(
    message: str, code: int = 1, *, status: str | None = None, reason: str | None = None
) -> int:
    """Say what went wrong on one stderr line (with --json, one JSON object: see
    `_cli_progress.error_line`); the exit code to return. `status`: the failed
    call's gRPC status name; None for the command's own failure (named by `code`:
    2 INVALID_ARGUMENT, else FAILED_PRECONDITION). `reason`: the server's ErrorInfo
    reason, if it sent one."""
    name = status or (USAGE_CODE if code == 2 else FAILED_CODE)
    error(one_line(message), code=name, reason=reason)
    return code


def fail_call(exc: PacketbusError, message: str) -> int:
    """`fail` for a failed call: exit 1, its status and reason named."""
    reason = exc.error_info.reason if exc.error_info else None
    return fail(message, status=exc.code.name, reason=reason or None)


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def guarded(run: Callable[[], int], describe: Callable[[PacketbusError], str]) -> int:
    """`run()`, its failures each one line on stderr and an exit code, never a
    traceback: 1 for a failed call or file, 2 for input that cannot be used, 130 on
    Ctrl-C, 141 (as SIGPIPE would) when stdout's reader went away (`| head`).
    PACKETBUS_TRACEBACK=1 lets an unexpected error (a bug) show its traceback."""
    try:
        return run()
    except PacketbusError as exc:
        return fail_call(exc, describe(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whatever is still buffered for stdout cannot go anywhere: point it at
        # /dev/null, or the interpreter's last flush reports the broken pipe again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a file that is missing, unreadable, a directory...
        return fail(_os_message(exc))
    except (ValueError, json_format.ParseError) as exc:  # input that cannot be used
        return fail(str(exc), 2)
    except Exception as exc:
        if os.environ.get("PACKETBUS_TRACEBACK") == "1":
            raise
        return fail(f"unexpected error ({type(exc).__name__}): {exc}", status=BUG_CODE)


def serve_preflight(
    listen: str, policy: Path | None, *, durability: str = "everysec"
) -> str | None:
    """Why `packetbus serve` cannot start with these settings, or None. Checked before
    the server starts, so the answer is one line, not gRPC's bind log or the policy
    loader's ERROR record followed by it.

    A port another process listens on is refused: two servers on one port would
    split the clients between them at random (only the workers of one server,
    --workers, share a port, with SO_REUSEPORT)."""
    if durability not in ("everysec", "always"):
        return f"--durability {durability!r} is not everysec or always"
    if not listen.startswith("unix"):  # a socket path: gRPC reports its own problems
        host, sep, port = listen.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            return f"--listen {listen!r} is not HOST:PORT"
        problem = bind_problem(
            host,
            int(port),
            in_use_hint="another server listens there; only the workers of one server "
            "(--workers) share a port",
        )
        if problem:
            return f"cannot listen on {listen}: {problem}"
    if policy is not None:
        # The server's own parser: what it would refuse to load.
        from packetbus_server._policy import PolicyError
        from packetbus_server._policy_parse import parse

        try:
            parse(policy.read_bytes())
        except OSError as exc:
            return f"policy {policy}: {exc.strerror or exc}"
        except PolicyError as exc:
            return f"policy {policy}: {exc}"
    return None


def authorization_preflight(policy: Path | None, *, authenticated: bool) -> str | None:
    """Why a policy that turns authorization on cannot be served, or None: the
    server authenticates no one (`authenticated` False: no client CA, JWT keys or
    trusted sidecar header), so every call would be the local principal, which no
    grant restricts. A file that does not load is serve_preflight's to report."""
    if policy is None or authenticated:
        return None
    from packetbus_server._policy import PolicyError
    from packetbus_server._policy_parse import parse
    from packetbus_server._policy_watch import AUTHORIZATION_WITHOUT_AUTHENTICATION

    try:
        loaded = parse(policy.read_bytes())
    except (OSError, PolicyError):
        return None
    if loaded.authorization is None:
        return None
    return f"policy {policy}: {AUTHORIZATION_WITHOUT_AUTHENTICATION}"


def serve_jwt_preflight(
    jwks: Path | None, public_keys: Sequence[Path], issuer: str | None, audience: str | None
) -> str | None:
    """Why `packetbus serve`'s bearer-token flags cannot be used, or None: keys
    without an issuer and an audience (a token any issuer signed for any service
    would do), an issuer or audience without keys, or a key file the server's own
    loader refuses (unreadable, not a JWKS or PEM public key, no usable key). A
    usage error: exit 2, before anything starts."""
    if jwks is None and not public_keys:
        if issuer or audience:
            return "--jwt-issuer and --jwt-audience need --jwt-jwks or --jwt-public-key"
        return None
    missing = [
        flag
        for flag, value in (("--jwt-issuer", issuer), ("--jwt-audience", audience))
        if not value
    ]
    if missing:
        return f"JWT keys need {' and '.join(missing)}"
    from packetbus_server._access.jwt_keys import KeyFileError, KeyFiles

    # The keys a JWKS holds that are skipped are warned about when the server loads
    # them, in its log's format: not here too, before it, as a second stderr line.
    quiet = logging.getLogger("packetbus.server.access")
    quiet.disabled = True
    try:
        KeyFiles.load(jwks, public_keys)
    except KeyFileError as exc:
        return str(exc)
    finally:
        quiet.disabled = False
    return None


def security_preflight(config: ServerConfig) -> tuple[str | None, int]:
    """Why `config` must not serve, and the exit code: 2 for settings that do not go
    together or that would serve anyone beyond loopback (see the server's
    _exposure), 1 for TLS files that are missing, unreadable, not PEM or a key that
    is not the certificate's; (None, 0) when it may."""
    from packetbus_server._exposure import exposure_problem, tls_settings_problem
    from packetbus_server._tls import TlsFilesError, TlsPaths, load_tls_files

    problem = tls_settings_problem(config) or exposure_problem(config)
    if problem:
        return problem, 2
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        try:
            load_tls_files(
                TlsPaths(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
            )
        except TlsFilesError as exc:
            return f"TLS {exc}", 1
    return None, 0


def describe(error: PacketbusError) -> str:
    """One line for a failed call: its code, and the refusal, field violations or
    message, saying when it may have taken effect anyway."""
    if error.code in _REFUSALS:
        # The server's message names the principal, the permission and the resource.
        return f"{_REFUSALS[error.code]}: {error.message}"
    if error.field_violations:
        fields = "; ".join(str(v) for v in error.field_violations)
        return f"{error.code.name}: {fields}"
    if error.outcome_unknown:
        return f"{error.code.name}: {error.message} (it may have taken effect: check first)"
    return f"{error.code.name}: {error.message}"


_REFUSALS = {
    grpc.StatusCode.PERMISSION_DENIED: "permission denied",
    grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
}
