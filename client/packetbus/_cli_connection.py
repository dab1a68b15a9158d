"""The CLI's connection flags (TLS, mTLS, bearer token), global like --target.

Each flag falls back to its environment variable (see `_security`). There is no
flag for the token itself: a secret on a command line is visible to every user
of the machine (`ps`); it comes from --token-file, PACKETBUS_TOKEN_FILE or
PACKETBUS_TOKEN.
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._config import ClientConfig
from ._security import (
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TLS_SERVER_NAME_ENV,
    TOKEN_FILE_ENV,
    TlsSettings,
    TokenFile,
    token_from_env,
)

# (flag, env, dest, help). The dests are the client's own ("connect_*"): `serve`
# has TLS flags of its own (its certificate), which must not overwrite these.
_TLS_FLAGS = (
    (
        "--tls-ca",
        TLS_CA_ENV,
        "connect_tls_ca",
        "CA file (PEM) the server's certificate must chain to",
    ),
    ("--tls-cert", TLS_CERT_ENV, "connect_tls_cert", "client certificate (PEM), for mutual TLS"),
    ("--tls-key", TLS_KEY_ENV, "connect_tls_key", "the client certificate's private key (PEM)"),
    (
        "--tls-server-name",
        TLS_SERVER_NAME_ENV,
        "connect_tls_server_name",
        "name the server's certificate must carry, when not the target's host",
    ),
)


class _NoTokenValue(argparse.Action):
    """`--token VALUE` refused, its value never repeated (without this, argparse would
    take --token as short for --token-file and name the secret as a missing file)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "no --token: a token on the command line is visible to every user of the "
            "machine (ps); use --token-file FILE or env PACKETBUS_TOKEN"
        )


def add_connection_flags(parser: argparse.ArgumentParser, *, after: bool = False) -> None:
    """--tls-ca, --tls-cert, --tls-key, --tls-server-name and --token-file on `parser`.

    `after`: on a subcommand's parser, with no defaults of their own (given there,
    they stand for the global ones; not given, the global ones stay). A --token
    is refused (unless the parser has its own: tasks complete's fencing token).
    """
    default = argparse.SUPPRESS if after else None
    group = parser.add_argument_group("connection security (any --tls-* flag turns TLS on)")
    for flag, env, dest, text in _TLS_FLAGS:
        metavar = "NAME" if flag == "--tls-server-name" else "FILE"  # a host name, no file
        group.add_argument(
            flag, dest=dest, metavar=metavar, default=default, help=f"{text} (env {env})"
        )
    group.add_argument(
        "--token-file",
        dest="connect_token_file",
        metavar="FILE",
        default=default,
        help=f"file holding a bearer token (JWT), re-read when it changes (env {TOKEN_FILE_ENV}; "
        "or the token itself in env PACKETBUS_TOKEN)",
    )
    if "--token" in parser._option_string_actions:
        return  # a subcommand's own --token (tasks complete's fencing token) stays
    # Its own dest and no default, so it sets nothing when not given.
    parser.add_argument(
        "--token",
        action=_NoTokenValue,
        dest="connect_token_refused",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def add_to_subcommands(parser: argparse.ArgumentParser, *, skip: frozenset[str]) -> None:
    """The connection flags also after every subcommand that talks to a server
    (`packetbus health --tls-ca ca.pem` as well as `packetbus --tls-ca ca.pem health`):
    on each leaf parser under `parser`, except the commands named in `skip` (serve:
    its --tls-* flags are its own certificate)."""
    seen: set[int] = set()
    for action in parser._actions:  # argparse keeps its subparsers only here
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            if name in skip or id(sub) in seen:  # aliases share a parser
                continue
            seen.add(id(sub))
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                add_to_subcommands(sub, skip=frozenset())
            else:
                add_connection_flags(sub, after=True)


def connection_config(args: argparse.Namespace) -> ClientConfig:
    """The ClientConfig of a command: target, TLS and token from flags, else env."""
    ca, cert, key, name = (
        getattr(args, dest) or os.environ.get(env) or None for _, env, dest, _ in _TLS_FLAGS
    )
    tls = (
        None
        if ca is None and cert is None and key is None and name is None
        else TlsSettings(ca_file=ca, cert_file=cert, key_file=key, server_name=name)
    )
    token = TokenFile(args.connect_token_file) if args.connect_token_file else token_from_env()
    return ClientConfig(target=args.target, tls=tls, token=token)


# serve's store over TLS: (flag, env, redis-py's rediss:// query parameter).
_STORE_TLS_FLAGS = (
    ("--redis-tls-ca", "PACKETBUS_REDIS_TLS_CA", "ssl_ca_certs"),
    ("--redis-tls-cert", "PACKETBUS_REDIS_TLS_CERT", "ssl_certfile"),
    ("--redis-tls-key", "PACKETBUS_REDIS_TLS_KEY", "ssl_keyfile"),
)
_STORE_TLS_HELP = {
    "ssl_ca_certs": "CA file (PEM) the store's certificate must chain to",
    "ssl_certfile": "certificate (PEM) to present to a store that requires client "
    "certificates (tls-auth-clients yes)",
    "ssl_keyfile": "that certificate's private key (PEM)",
}


def add_store_tls_flags(serve: argparse.ArgumentParser) -> None:
    """--redis-tls-ca, --redis-tls-cert, --redis-tls-key on `serve` (for a rediss:// URL)."""
    for flag, env, param in _STORE_TLS_FLAGS:
        serve.add_argument(
            flag,
            dest=param,
            metavar="FILE",
            default=os.environ.get(env) or None,
            help=f"with a rediss:// --redis-url: {_STORE_TLS_HELP[param]} (env {env})",
        )


def store_url(args: argparse.Namespace) -> str | None:
    """serve's --redis-url with the --redis-tls-* files added as its query parameters
    (redis-py reads ssl_ca_certs, ssl_certfile, ssl_keyfile there), so every
    connection the server makes to the store (workers included) uses them.

    Raises ValueError for a TLS file with no rediss:// URL, or a file that is missing.
    """
    url: str | None = args.redis_url
    given = [(flag, param, getattr(args, param)) for flag, _, param in _STORE_TLS_FLAGS]
    given = [(flag, param, value) for flag, param, value in given if value]
    if not given:
        return url
    if url is None or urlsplit(url).scheme != "rediss":
        flags = ", ".join(flag for flag, _, _ in given)
        raise ValueError(f"{flags} need a rediss:// --redis-url (the store over TLS)")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    for flag, param, value in given:
        if not os.path.isfile(value):
            raise ValueError(f"{flag} {value}: no such file")
        query = [(k, v) for k, v in query if k != param] + [(param, os.path.abspath(value))]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))
