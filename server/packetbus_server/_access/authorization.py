"""The policy file's `[authorization]` section: who is who, and what each role may do.

    [authorization]                       # present: authorization is on, deny by default

    [[authorization.principals]]          # any number; every entry whose glob matches counts
    match = "spiffe://example.org/agent/coordinator"   # glob(s) over principal names
    roles = ["coordinator"]               # the principal's roles: the union over its entries
    agent_id = "coordinator"              # optional: the agent id this principal IS (the
                                          # first matching entry that sets one decides)
                                          # and no unmapped principal's default is

    [authorization.roles.coordinator]
    grants = [
      { permissions = ["topics.publish", "tasks.post"], resources = ["jobs.*"] },
      { permissions = ["agents.act_for"], resources = ["worker-*"] },
      { permissions = ["memory.*"], resources = ["{agent}"] },   # the caller's own agent id
    ]

Globs are fnmatch's, case-sensitive (``*``, ``?``, ``[seq]``, ``[!seq]``; ``*`` crosses
``/`` and ``.``). Permission patterns are globs over `Permission` values; resource
patterns over the bare resource `permissions.RULES` names (a topic, a queue, an agent
id...; ``*`` matches the empty resource of a listing over everything). ``{agent}`` in a
resource pattern is the caller's agent id, matched literally (its ``*``, ``?`` and
``[`` are not globs); a caller with no agent id, or one longer than an agent id may be
(255), matches no such pattern.

An agent id an entry sets belongs to the principals that entry matches: a principal
no entry maps, whose default agent id (a SPIFFE ID's last segment, else its name)
is one the policy gives to others (``spiffe://example.org/team-b/coordinator``,
beside ``agent_id = "coordinator"`` for the real coordinator), has no agent id: it
acts as no agent and matches no ``{agent}`` pattern, rather than as that agent.

`compile_section` raises AuthorizationError naming where
(``authorization.roles.x.grants[2].permissions: ...``); `_policy_parse.parse` reports it as
a PolicyError, like the rest of the policy file's errors.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .permissions import Permission
from .principal import Principal, default_agent_id

MAX_PRINCIPAL_ENTRIES = 1000
MAX_ROLES = 1000
MAX_GRANTS = 1000  # over all roles
MAX_PATTERNS = 100  # in one list: match, roles, permissions, resources
MAX_PATTERN_LENGTH = 512
MAX_AGENT_ID_LENGTH = 255  # as a packet's origin (_validation)
# Decisions and principals' roles remembered per policy (dropped with it on reload;
# emptied when full). Keys longer than MAX_CACHED_KEY_LENGTH are judged every time,
# never remembered (the gate asks before a request's fields are validated: a
# resource may be megabytes), so the memory stays under ~25 MiB whatever callers send.
MAX_CACHED_DECISIONS = 16_384
MAX_CACHED_NAMES = 4096
MAX_CACHED_AGENTS = 1024  # per grant with {agent} patterns
MAX_CACHED_KEY_LENGTH = 1024

AGENT_PLACEHOLDER = "{agent}"
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_GLOB_CHARS = re.compile(r"([*?\[])")
_SECTION_KEYS = ("principals", "roles")
_PRINCIPAL_KEYS = ("match", "roles", "agent_id")
_ROLE_KEYS = ("grants",)
_GRANT_KEYS = ("permissions", "resources")

Matcher = Callable[[str], bool]


class AuthorizationError(ValueError):
    """The `[authorization]` section is not valid (_policy re-raises it as a
    PolicyError); the message says where and why."""


def escape_glob(text: str) -> str:
    """`text` as a glob that matches exactly `text`: ``*``, ``?`` and ``[`` each in a
    one-character class (``a*b`` is ``a[*]b``)."""
    return _GLOB_CHARS.sub(r"[\1]", text)


def glob_matcher(patterns: Sequence[str]) -> Matcher:
    """One compiled test for "matches any of `patterns`" (fnmatch, case-sensitive);
    literal patterns are a set lookup."""
    literal = frozenset(p for p in patterns if not _GLOB_CHARS.search(p))
    globs = [p for p in patterns if p not in literal]
    if not globs:
        return literal.__contains__
    regex = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))
    return lambda value: value in literal or regex.match(value) is not None


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant of a role, as written (`permissions`, `resources`: the patterns) and
    compiled (`granted`: the permissions its patterns name)."""

    permissions: tuple[str, ...]
    resources: tuple[str, ...]
    granted: frozenset[Permission]
    _fixed: Matcher = field(repr=False, compare=False)
    # Each {agent} pattern as the regexes of the globs between its placeholders.
    _per_agent: tuple[tuple[str, ...], ...] = field(repr=False, compare=False)
    # agent id -> its {agent} patterns compiled (at most MAX_CACHED_AGENTS).
    _by_agent: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False, compare=False)

    def covers(self, resource: str, agent_id: str) -> bool:
        """Whether a resource pattern matches `resource` (``{agent}``: `agent_id`,
        literally; no agent id, or one longer than any agent id may be: no match)."""
        if self._fixed(resource):
            return True
        if not self._per_agent or not 0 < len(agent_id) <= MAX_AGENT_ID_LENGTH:
            return False
        compiled = self._by_agent.get(agent_id)
        if compiled is None:
            # The agent id between the globs as a literal: the globs are translated
            # apart, so its characters can neither glob nor close a bracket of theirs.
            literal = re.escape(agent_id)
            compiled = re.compile(
                "|".join(f"(?:{literal.join(parts)})" for parts in self._per_agent),
                re.DOTALL,
            )
            if len(self._by_agent) >= MAX_CACHED_AGENTS:
                self._by_agent.clear()
            self._by_agent[agent_id] = compiled
        return compiled.fullmatch(resource) is not None


def _glob_regex(glob: str) -> str:
    """fnmatch's regex for `glob`, unanchored (fnmatch.translate wraps it as
    ``(?s:...)\\Z``), to be joined with others."""
    translated = fnmatch.translate(glob)
    inner = re.fullmatch(r"\(\?s:(.*)\)\\[Zz]", translated, re.DOTALL)
    if inner is None:  # pragma: no cover - a Python whose fnmatch wraps differently
        raise RuntimeError(f"unexpected fnmatch.translate output {translated!r}")
    return inner.group(1)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class PrincipalEntry:
    """One `[[authorization.principals]]` entry."""

    match: tuple[str, ...]
    roles: tuple[str, ...]
    agent_id: str | None
    _matches: Matcher = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Reason:
    """What allowed a call: `role`'s grant number `grant` (0-based, in file order)."""

    role: str
    grant: int
    granted: Grant


class Authorization:
    """A compiled `[authorization]` section: a `gate.Authorizer` that denies what no
    grant of the caller's roles allows.

    `allows` is on every call's path: decisions are remembered per (principal name,
    agent id, permission, resource), at most MAX_CACHED_DECISIONS of them (the
    memory is emptied when full), and forgotten with this object when the policy is
    reloaded."""

    enabled = True

    def __init__(self, principals: Sequence[PrincipalEntry], roles: Mapping[str, Role]) -> None:
        self.principals = tuple(principals)
        self.roles = dict(roles)
        # Per role: permission -> the grants of that role that give it, in file order.
        self._by_permission: dict[str, dict[Permission, tuple[tuple[int, Grant], ...]]] = {}
        for name, role in self.roles.items():
            index: dict[Permission, list[tuple[int, Grant]]] = {}
            for number, grant in enumerate(role.grants):
                for permission in grant.granted:
                    index.setdefault(permission, []).append((number, grant))
            self._by_permission[name] = {p: tuple(g) for p, g in index.items()}
        # The agent ids entries give: only the principals they match are those agents.
        self._assigned = frozenset(e.agent_id for e in self.principals if e.agent_id)
        self._decisions: dict[tuple[str, str, Permission, str], bool] = {}
        self._identities: dict[str, tuple[tuple[str, ...], str | None]] = {}

    def roles_of(self, name: str) -> tuple[str, ...]:
        """The roles of principal `name`: every matching entry's, in file order, once."""
        return self._identity(name)[0]

    def agent_id(self, name: str) -> str | None:
        """The agent id the first matching entry that sets one gives `name`; "" (no
        agent id) when none does and `name`'s default agent id is one an entry
        gives to other principals; else None (the default stands)."""
        return self._identity(name)[1]

    def _identity(self, name: str) -> tuple[tuple[str, ...], str | None]:
        found = self._identities.get(name)
        if found is None:
            roles: dict[str, None] = {}
            agent_id: str | None = None
            for entry in self.principals:
                if entry._matches(name):
                    roles.update(dict.fromkeys(entry.roles))
                    if agent_id is None:
                        agent_id = entry.agent_id
            if agent_id is None and default_agent_id(name) in self._assigned:
                agent_id = ""  # that agent id is another principal's (see the module)
            found = (tuple(roles), agent_id)
            if len(name) <= MAX_CACHED_KEY_LENGTH:
                if len(self._identities) >= MAX_CACHED_NAMES:
                    self._identities.clear()
                self._identities[name] = found
        return found

    def allows(self, principal: Principal, permission: Permission, resource: str) -> bool:
        key = (principal.name, principal.agent_id, permission, resource)
        decided = self._decisions.get(key)
        if decided is None:
            decided = self.reason(principal, permission, resource) is not None
            if len(principal.name) + len(resource) <= MAX_CACHED_KEY_LENGTH:
                if len(self._decisions) >= MAX_CACHED_DECISIONS:
                    self._decisions.clear()
                self._decisions[key] = decided
        return decided

    def reason(self, principal: Principal, permission: Permission, resource: str) -> Reason | None:
        """The first grant (by the caller's roles in file order) that allows
        `permission` on `resource`; None: denied."""
        for role in self.roles_of(principal.name):
            for number, grant in self._by_permission[role].get(permission, ()):
                if grant.covers(resource, principal.agent_id):
                    return Reason(role, number, grant)
        return None


def compile_section(raw: object) -> Authorization:
    """Compile the `[authorization]` table `raw` (as tomllib parsed it); raises
    AuthorizationError naming the entry at fault."""
    where = "authorization"
    table = _table(raw, where)
    _known_keys(table, _SECTION_KEYS, where)
    raw_roles = _table(table.get("roles", {}), f"{where}.roles")
    if len(raw_roles) > MAX_ROLES:
        raise AuthorizationError(f"{where}.roles: {len(raw_roles)} roles; at most {MAX_ROLES}")
    roles: dict[str, Role] = {}
    grants_seen = 0
    for name, body in raw_roles.items():
        role = _role(name, body)
        grants_seen += len(role.grants)
        if grants_seen > MAX_GRANTS:
            raise AuthorizationError(f"{where}.roles: more than {MAX_GRANTS} grants over all roles")
        roles[name] = role
    raw_principals = table.get("principals", [])
    if not isinstance(raw_principals, list):
        raise AuthorizationError(
            f"{where}.principals must be an array of tables ([[authorization.principals]])"
        )
    if len(raw_principals) > MAX_PRINCIPAL_ENTRIES:
        raise AuthorizationError(
            f"{where}.principals: {len(raw_principals)} entries; at most {MAX_PRINCIPAL_ENTRIES}"
        )
    principals = [_principal(index, body, roles) for index, body in enumerate(raw_principals)]
    return Authorization(principals, roles)


def _table(raw: object, where: str) -> dict[str, object]:
    if not isinstance(raw, dict):
        raise AuthorizationError(f"{where} must be a table, not {type(raw).__name__}")
    return raw


def _known_keys(table: Mapping[str, object], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise AuthorizationError(f"{where}: unknown key(s) {unknown}; expected {list(known)}")


def _patterns(raw: object, where: str) -> tuple[str, ...]:
    """A non-empty string or a non-empty list of them, each at most MAX_PATTERN_LENGTH."""
    items: list[object] = raw if isinstance(raw, list) else [raw]
    values = [v for v in items if isinstance(v, str) and v]
    if not values or len(values) != len(items):
        raise AuthorizationError(f"{where}: must be a non-empty string or a non-empty list of them")
    if len(values) > MAX_PATTERNS:
        raise AuthorizationError(f"{where}: {len(values)} entries; at most {MAX_PATTERNS}")
    for value in values:
        if len(value) > MAX_PATTERN_LENGTH:
            raise AuthorizationError(
                f"{where}: {value[:40]!r}... is {len(value)} characters; "
                f"at most {MAX_PATTERN_LENGTH}"
            )
    return tuple(values)


def _role(name: str, raw: object) -> Role:
    where = f"authorization.roles.{name}"
    if not ROLE_NAME.match(name):
        raise AuthorizationError(
            f"{where}: a role name is 1-64 characters of A-Z a-z 0-9 _ . : - "
            "(not starting with a symbol)"
        )
    body = _table(raw, where)
    _known_keys(body, _ROLE_KEYS, where)
    raw_grants = body.get("grants")
    if not isinstance(raw_grants, list) or not raw_grants:
        raise AuthorizationError(
            f"{where}: grants is required: a non-empty list of "
            "{ permissions = [...], resources = [...] }"
        )
    if len(raw_grants) > MAX_GRANTS:
        raise AuthorizationError(f"{where}: {len(raw_grants)} grants; at most {MAX_GRANTS}")
    return Role(
        name, tuple(_grant(item, f"{where}.grants[{i}]") for i, item in enumerate(raw_grants))
    )


def _grant(raw: object, where: str) -> Grant:
    body = _table(raw, where)
    _known_keys(body, _GRANT_KEYS, where)
    for key in _GRANT_KEYS:
        if key not in body:
            raise AuthorizationError(f"{where}: {key} is required")
    permissions = _patterns(body["permissions"], f"{where}.permissions")
    granted: set[Permission] = set()
    for pattern in permissions:
        named = {p for p in Permission if fnmatch.fnmatchcase(p.value, pattern)}
        if not named:
            raise AuthorizationError(f"{where}.permissions: {_no_permission(pattern)}")
        granted |= named
    resources = _patterns(body["resources"], f"{where}.resources")
    for pattern in resources:
        for placeholder in _PLACEHOLDER.findall(pattern):
            if placeholder != AGENT_PLACEHOLDER:
                raise AuthorizationError(
                    f"{where}.resources: {pattern!r}: unknown placeholder {placeholder}; "
                    f"the only one is {AGENT_PLACEHOLDER} (write [{{] for a literal brace)"
                )
    fixed = [p for p in resources if AGENT_PLACEHOLDER not in p]
    per_agent = tuple(
        tuple(_glob_regex(piece) for piece in p.split(AGENT_PLACEHOLDER))
        for p in resources
        if AGENT_PLACEHOLDER in p
    )
    return Grant(
        permissions=permissions,
        resources=resources,
        granted=frozenset(granted),
        _fixed=glob_matcher(fixed) if fixed else _never,
        _per_agent=per_agent,
    )


def _no_permission(pattern: str) -> str:
    """Why `pattern` is refused: the permission it was likely meant to be, else all."""
    names = [p.value for p in Permission]
    close = difflib.get_close_matches(pattern, names, n=1, cutoff=0.75)
    if close:
        return f"{pattern!r} names no permission; did you mean {close[0]!r}?"
    return f"{pattern!r} names no permission; the permissions are {', '.join(names)}"


def _never(value: str) -> bool:
    return False


def _principal(index: int, raw: object, roles: Mapping[str, Role]) -> PrincipalEntry:
    where = f"authorization.principals[{index}]"
    body = _table(raw, where)
    _known_keys(body, _PRINCIPAL_KEYS, where)
    if "match" not in body:
        raise AuthorizationError(f"{where}: match is required (a glob over principal names)")
    match = _patterns(body["match"], f"{where}.match")
    if "roles" not in body:
        raise AuthorizationError(f"{where}: roles is required (a non-empty list of role names)")
    role_names = _patterns(body["roles"], f"{where}.roles")
    for name in role_names:
        if name not in roles:
            raise AuthorizationError(
                f"{where}.roles: role {name!r} is not defined "
                f"(no [authorization.roles.{name}] table)"
            )
    agent_id = body.get("agent_id")
    if agent_id is not None and (
        not isinstance(agent_id, str)
        or not 1 <= len(agent_id) <= MAX_AGENT_ID_LENGTH
        or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in agent_id)
    ):
        raise AuthorizationError(
            f"{where}.agent_id: must be an agent id: 1-{MAX_AGENT_ID_LENGTH} characters, "
            "no spaces or control characters"
        )
    return PrincipalEntry(match, role_names, agent_id, glob_matcher(match))


__all__ = [
    "Authorization",
    "AuthorizationError",
    "Grant",
    "PrincipalEntry",
    "Reason",
    "Role",
    "compile_section",
    "escape_glob",
    "glob_matcher",
]
