"""The policy file's [authorization] section: parsing, errors that say where, matching
(_access.authorization), and the policy watch that hands it to the gate."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packetbus_server._access import Permission, Principal
from packetbus_server._access.authorization import (
    MAX_CACHED_DECISIONS,
    MAX_GRANTS,
    MAX_PATTERN_LENGTH,
    MAX_PRINCIPAL_ENTRIES,
    MAX_ROLES,
    Authorization,
    AuthorizationError,
    compile_section,
    escape_glob,
    glob_matcher,
)
from packetbus_server._access.gate import ALLOW_ALL, Gate
from packetbus_server._policy import PolicyError
from packetbus_server._policy_parse import parse
from packetbus_server._policy_watch import AUTHORIZATION_WITHOUT_AUTHENTICATION, PolicyWatch

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

COORDINATOR = "spiffe://example.org/agent/coordinator"
# The preamble's example, as operators will copy it.
EXAMPLE = b"""
[authorization]

[[authorization.principals]]
match = "spiffe://example.org/agent/coordinator"
roles = ["coordinator"]
agent_id = "coordinator"

[[authorization.principals]]
match = "spiffe://example.org/agent/worker-*"
roles = ["worker"]

[authorization.roles.coordinator]
grants = [
  { permissions = ["topics.publish", "tasks.post"], resources = ["jobs.*"] },
  { permissions = ["agents.act_for"], resources = ["worker-*"] },
  { permissions = ["memory.*"], resources = ["{agent}"] },
]

[authorization.roles.worker]
grants = [
  { permissions = ["tasks.claim"], resources = ["jobs.*"] },
  { permissions = ["memory.write"], resources = ["{agent}", "shared.{agent}.*"] },
]
"""


def section(text: str) -> Authorization:
    policy = parse(text.encode())
    assert policy.authorization is not None
    return policy.authorization


def who(name: str, agent_id: str | None = None) -> Principal:
    if agent_id is None:
        agent_id = name.rpartition("/")[2]
    return Principal(name, "mtls", agent_id)


def grants(*lines: str) -> str:
    """A policy whose principal "p" (agent id "p") has role "r" with these grants."""
    body = ",\n".join(lines)
    return (
        '[authorization]\n[[authorization.principals]]\nmatch = "p"\nroles = ["r"]\n'
        f"[authorization.roles.r]\ngrants = [\n{body}\n]\n"
    )


P = who("p", "p")


def test_the_example_grants_what_it_says_and_denies_the_rest() -> None:
    policy = parse(EXAMPLE)
    authz = policy.authorization
    assert authz is not None
    assert authz.enabled
    coordinator = who(COORDINATOR)
    assert authz.allows(coordinator, Permission.TOPICS_PUBLISH, "jobs.build")
    assert authz.allows(coordinator, Permission.TASKS_POST, "jobs.x.y")
    assert not authz.allows(coordinator, Permission.TOPICS_PUBLISH, "ops.build")
    assert not authz.allows(coordinator, Permission.TOPICS_SUBSCRIBE, "jobs.build")
    assert authz.allows(coordinator, Permission.AGENTS_ACT_FOR, "worker-7")
    assert not authz.allows(coordinator, Permission.AGENTS_ACT_FOR, "guardian-1")
    assert authz.allows(coordinator, Permission.MEMORY_READ, "coordinator")
    assert not authz.allows(coordinator, Permission.MEMORY_READ, "worker-7")
    worker = who("spiffe://example.org/agent/worker-7")
    assert authz.allows(worker, Permission.TASKS_CLAIM, "jobs.a")
    assert authz.allows(worker, Permission.MEMORY_WRITE, "worker-7")
    assert authz.allows(worker, Permission.MEMORY_WRITE, "shared.worker-7.notes")
    assert not authz.allows(worker, Permission.MEMORY_WRITE, "shared.worker-8.notes")
    assert not authz.allows(worker, Permission.MEMORY_READ, "worker-7")
    assert authz.agent_id(COORDINATOR) == "coordinator"
    assert authz.agent_id("spiffe://example.org/agent/worker-7") is None  # its default
    # Its default would be "coordinator", which the policy gives to COORDINATOR only:
    # it has no agent id (test_agent_id_claims), not the coordinator's.
    assert authz.agent_id("spiffe://other.org/agent/coordinator") == ""


def test_no_section_is_no_authorization() -> None:
    assert parse(b'default = "allow"\n').authorization is None


_EMPTY = section("[authorization]\n")
_EXAMPLE = section(EXAMPLE.decode())


@settings(max_examples=200, deadline=None)
@given(
    permission=st.sampled_from(list(Permission)),
    resource=st.text(max_size=40),
    name=st.text(min_size=1, max_size=40),
)
def test_deny_by_default(permission: Permission, resource: str, name: str) -> None:
    # The section alone: no principal has a role, nothing is allowed.
    assert not _EMPTY.allows(Principal(name, "jwt", name), permission, resource)
    # A principal with roles is denied what none of them grants.
    authz = _EXAMPLE
    if permission not in (Permission.TASKS_CLAIM, Permission.MEMORY_WRITE):
        assert not authz.allows(who("spiffe://example.org/agent/worker-1"), permission, resource)


def test_roles_are_the_union_of_every_matching_entry_and_the_first_agent_id_wins() -> None:
    authz = section(
        """
[authorization]
[[authorization.principals]]
match = "team-*"
roles = ["reader"]
[[authorization.principals]]
match = ["team-a?", "nobody"]
roles = ["writer", "reader"]
agent_id = "first"
[[authorization.principals]]
match = "team-a1"
roles = ["admin"]
agent_id = "second"
[authorization.roles.reader]
grants = [{ permissions = ["topics.subscribe"], resources = ["*"] }]
[authorization.roles.writer]
grants = [{ permissions = ["topics.publish"], resources = ["team.*"] }]
[authorization.roles.admin]
grants = [{ permissions = ["carcel.*"], resources = ["*"] }]
"""
    )
    assert authz.roles_of("team-a1") == ("reader", "writer", "admin")
    assert authz.roles_of("team-b") == ("reader",)
    assert authz.roles_of("other") == ()
    assert authz.agent_id("team-a1") == "first"
    assert authz.agent_id("team-b") is None
    a1 = who("team-a1")
    assert authz.allows(a1, Permission.TOPICS_PUBLISH, "team.x")
    assert authz.allows(a1, Permission.CARCEL_PURGE, "anything")
    assert authz.allows(a1, Permission.TOPICS_SUBSCRIBE, "")
    assert not authz.allows(who("team-b"), Permission.TOPICS_PUBLISH, "team.x")
    reason = authz.reason(a1, Permission.CARCEL_PURGE, "t")
    assert reason is not None
    assert (reason.role, reason.grant) == ("admin", 0)


def test_permission_patterns_are_globs_over_permission_names() -> None:
    authz = section(grants('{ permissions = ["tasks.*", "policy.read"], resources = ["*"] }'))
    granted = {p for p in Permission if authz.allows(P, p, "q")}
    assert granted == {
        Permission.TASKS_POST,
        Permission.TASKS_CLAIM,
        Permission.TASKS_READ,
        Permission.POLICY_READ,
    }
    everything = section(grants('{ permissions = ["*"], resources = ["*"] }'))
    assert all(everything.allows(P, p, "") for p in Permission)
    one_char = section(grants('{ permissions = ["topics.?ublish"], resources = ["*"] }'))
    assert {p for p in Permission if one_char.allows(P, p, "t")} == {Permission.TOPICS_PUBLISH}


def test_star_matches_the_empty_resource_of_a_listing_and_literals_match_only_themselves() -> None:
    authz = section(
        grants(
            '{ permissions = ["agents.read"], resources = ["*"] }',
            '{ permissions = ["groups.read"], resources = ["jobs"] }',
        )
    )
    assert authz.allows(P, Permission.AGENTS_READ, "")
    assert authz.allows(P, Permission.GROUPS_READ, "jobs")
    assert not authz.allows(P, Permission.GROUPS_READ, "jobs2")
    assert not authz.allows(P, Permission.GROUPS_READ, "")
    assert not authz.allows(P, Permission.GROUPS_READ, "JOBS")  # case-sensitive


# Agent ids may hold glob metacharacters (_validation allows any printable
# non-space): "{agent}" must match the caller's id as written, not as a glob.
_AGENT_CHARS = st.sampled_from([*list("ab*?[]!-.^$\\{}/"), "x"])
AGENT_IDS = st.text(_AGENT_CHARS, min_size=1, max_size=12)


_MEMORY = section(
    grants('{ permissions = ["memory.*"], resources = ["{agent}", "inbox/{agent}/*"] }')
)


@settings(max_examples=300, deadline=None)
@given(agent_id=AGENT_IDS, other=AGENT_IDS)
def test_agent_placeholder_matches_the_callers_agent_id_literally(
    agent_id: str, other: str
) -> None:
    authz = _MEMORY
    caller = Principal("p", "jwt", agent_id)
    assert authz.allows(caller, Permission.MEMORY_WRITE, agent_id)
    assert authz.allows(caller, Permission.MEMORY_READ, f"inbox/{agent_id}/x")
    if other != agent_id:
        assert not authz.allows(caller, Permission.MEMORY_WRITE, other)
    if not f"inbox/{other}/x".startswith(f"inbox/{agent_id}/"):  # "*" crosses "/"
        assert not authz.allows(caller, Permission.MEMORY_READ, f"inbox/{other}/x")


def test_a_star_in_an_agent_id_is_not_a_wildcard() -> None:
    authz = section(grants('{ permissions = ["memory.write"], resources = ["{agent}"] }'))
    star = Principal("p", "jwt", "*")
    assert authz.allows(star, Permission.MEMORY_WRITE, "*")
    assert not authz.allows(star, Permission.MEMORY_WRITE, "victim")
    brackets = Principal("p", "jwt", "[a-z]")
    assert authz.allows(brackets, Permission.MEMORY_WRITE, "[a-z]")
    assert not authz.allows(brackets, Permission.MEMORY_WRITE, "q")


def test_an_agent_id_cannot_close_a_bracket_of_the_pattern() -> None:
    # "x[{agent}" is "x[" then the agent id: the "[" is literal (it has no "]" of its
    # own), and an agent id "a]" does not make a class of it.
    authz = section(grants('{ permissions = ["memory.read"], resources = ["x[{agent}"] }'))
    caller = Principal("p", "jwt", "a]")
    assert authz.allows(caller, Permission.MEMORY_READ, "x[a]")
    assert not authz.allows(caller, Permission.MEMORY_READ, "xa")


def test_an_agent_id_longer_than_any_agent_id_matches_no_agent_pattern() -> None:
    authz = section(grants('{ permissions = ["memory.read"], resources = ["{agent}"] }'))
    long_id = "a" * 256
    assert not authz.allows(Principal("p", "jwt", long_id), Permission.MEMORY_READ, long_id)
    assert authz.allows(Principal("p", "jwt", long_id[:255]), Permission.MEMORY_READ, long_id[:255])


def test_a_caller_without_an_agent_id_matches_no_agent_pattern() -> None:
    authz = section(
        grants('{ permissions = ["memory.read"], resources = ["{agent}", "x{agent}"] }')
    )
    nameless = Principal("p", "jwt", "")
    assert not authz.allows(nameless, Permission.MEMORY_READ, "")
    assert not authz.allows(nameless, Permission.MEMORY_READ, "x")


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.text(st.sampled_from(list("ab.*?[]!-/")), min_size=1, max_size=10),
    value=st.text(st.sampled_from(list("ab.*?[]!-/")), max_size=10),
)
def test_globs_are_fnmatchs_case_sensitive_globs(pattern: str, value: str) -> None:
    assert glob_matcher([pattern])(value) == fnmatch.fnmatchcase(value, pattern)
    assert fnmatch.fnmatchcase(value, escape_glob(value))
    if value != pattern:
        assert not fnmatch.fnmatchcase(value, escape_glob(pattern))


def test_huge_resources_and_names_are_judged_but_not_remembered() -> None:
    authz = section(grants('{ permissions = ["topics.publish"], resources = ["t.*"] }'))
    huge = "t." + "x" * 4_000_000  # the gate asks before a request is validated
    assert authz.allows(P, Permission.TOPICS_PUBLISH, huge)
    assert not authz.allows(Principal("p" * 5000, "jwt", "p"), Permission.TOPICS_PUBLISH, "t.1")
    assert authz._decisions == {}
    assert set(authz._identities) == {"p"}


def test_decisions_are_remembered_within_bounds() -> None:
    authz = section(grants('{ permissions = ["topics.publish"], resources = ["t.*"] }'))
    for i in range(MAX_CACHED_DECISIONS + 10):
        assert authz.allows(P, Permission.TOPICS_PUBLISH, f"t.{i}")
    assert 0 < len(authz._decisions) <= MAX_CACHED_DECISIONS
    assert not authz.allows(P, Permission.TOPICS_PUBLISH, "u")
    assert authz._decisions[("p", "p", Permission.TOPICS_PUBLISH, "u")] is False


# -- errors say where ---------------------------------------------------------------


def _role_with(grant: str) -> str:
    return grants(grant)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("authorization = 3\n", r"^authorization must be a table, not int$"),
        ("[authorization]\nroles_ = 1\n", r"^authorization: unknown key\(s\) \['roles_'\]"),
        (
            "[authorization]\nprincipals = 1\n",
            r"^authorization\.principals must be an array of tables",
        ),
        (
            '[[authorization.principals]]\nroles = ["r"]\n',
            r"^authorization\.principals\[0\]: match is required",
        ),
        (
            '[[authorization.principals]]\nmatch = "x"\n',
            r"^authorization\.principals\[0\]: roles is required",
        ),
        (
            '[[authorization.principals]]\nmatch = "x"\nroles = []\n',
            r"^authorization\.principals\[0\]\.roles: must be a non-empty string or a non-empty",
        ),
        (
            '[[authorization.principals]]\nmatch = ["x", 3]\nroles = ["r"]\n',
            r"^authorization\.principals\[0\]\.match: must be a non-empty string",
        ),
        (
            '[[authorization.principals]]\nmatch = "x"\nroles = ["ghost"]\n',
            r"^authorization\.principals\[0\]\.roles: role 'ghost' is not defined "
            r"\(no \[authorization\.roles\.ghost\] table\)$",
        ),
        (
            '[[authorization.principals]]\nmatch = "x"\nroles = ["r"]\nteam = "a"\n',
            r"^authorization\.principals\[0\]: unknown key\(s\) \['team'\]",
        ),
        (
            '[[authorization.principals]]\nmatch = "x"\nroles = ["r"]\nagent_id = "a b"\n',
            r"^authorization\.principals\[0\]\.agent_id: must be an agent id",
        ),
        (
            '[[authorization.principals]]\nmatch = "x"\nroles = ["r"]\nagent_id = 7\n',
            r"^authorization\.principals\[0\]\.agent_id: must be an agent id",
        ),
        ("[authorization.roles.r]\n", r"^authorization\.roles\.r: grants is required"),
        ("[authorization.roles.r]\ngrants = []\n", r"^authorization\.roles\.r: grants is required"),
        (
            "[authorization.roles.r]\ngrants = [{}]\nextra = 1\n",
            r"^authorization\.roles\.r: unknown key\(s\) \['extra'\]",
        ),
        (
            '[authorization.roles."bad name"]\ngrants = [{}]\n',
            r"^authorization\.roles\.bad name: a role name is 1-64 characters",
        ),
        ("[authorization]\nroles = 2\n", r"^authorization\.roles must be a table, not int$"),
        ("[authorization.roles]\nr = 2\n", r"^authorization\.roles\.r must be a table, not int$"),
    ],
)
def test_section_errors_say_where(text: str, message: str) -> None:
    if "[authorization.roles.r]" not in text and 'roles = ["r"]' in text:
        text += '[authorization.roles.r]\ngrants = [{ permissions = ["*"], resources = ["*"] }]\n'
    with pytest.raises(PolicyError, match=message):
        parse(text.encode())


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        (
            '{ permissions = ["tasks.nope"], resources = ["*"] }',
            r"^authorization\.roles\.r\.grants\[0\]\.permissions: 'tasks\.nope' names no "
            r"permission; the permissions are topics\.publish, topics\.subscribe, .*, "
            r"audit\.export$",
        ),
        (
            '{ permissions = ["topics.publish"] }',
            r"^authorization\.roles\.r\.grants\[0\]: resources is required$",
        ),
        (
            '{ resources = ["*"] }',
            r"^authorization\.roles\.r\.grants\[0\]: permissions is required$",
        ),
        (
            '{ permissions = [], resources = ["*"] }',
            r"^authorization\.roles\.r\.grants\[0\]\.permissions: must be a non-empty",
        ),
        (
            '{ permissions = ["*"], resources = [""] }',
            r"^authorization\.roles\.r\.grants\[0\]\.resources: must be a non-empty",
        ),
        (
            '{ permissions = ["*"], resources = "*", topics = ["x"] }',
            r"^authorization\.roles\.r\.grants\[0\]: unknown key\(s\) \['topics'\]",
        ),
        (
            '{ permissions = ["*"], resources = ["{agent_id}"] }',
            r"^authorization\.roles\.r\.grants\[0\]\.resources: '\{agent_id\}': unknown "
            r"placeholder \{agent_id\}; the only one is \{agent\}",
        ),
        ('"topics.publish"', r"^authorization\.roles\.r\.grants\[0\] must be a table, not str$"),
        (
            '{ permissions = ["*"], resources = ["' + "x" * (MAX_PATTERN_LENGTH + 1) + '"] }',
            rf"^authorization\.roles\.r\.grants\[0\]\.resources: 'x+'\.\.\. is "
            rf"{MAX_PATTERN_LENGTH + 1} characters; at most {MAX_PATTERN_LENGTH}$",
        ),
    ],
)
def test_grant_errors_say_where(grant: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse(_role_with(grant).encode())


# What tomllib can hand the section: tables, arrays, strings, numbers, booleans.
_TOML = st.recursive(
    st.none().map(lambda _: "") | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "principals",
                    "roles",
                    "grants",
                    "permissions",
                    "resources",
                    "match",
                    "agent_id",
                    "r",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(raw=_TOML)
def test_any_shape_is_compiled_or_refused_as_a_policy_error(raw: object) -> None:
    try:
        compile_section(raw)
    except AuthorizationError as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("authorization")  # says where


def test_a_brace_that_is_not_a_placeholder_may_be_written_as_a_class() -> None:
    authz = section(grants('{ permissions = ["context.read"], resources = ["[{]agent}"] }'))
    assert authz.allows(P, Permission.CONTEXT_READ, "{agent}")
    assert not authz.allows(P, Permission.CONTEXT_READ, "p")


def test_sizes_are_bounded() -> None:
    entry = '[[authorization.principals]]\nmatch = "x"\nroles = ["r"]\n'
    role = '[authorization.roles.r]\ngrants = [{ permissions = ["*"], resources = ["*"] }]\n'
    with pytest.raises(
        PolicyError,
        match=rf"^authorization\.principals: {MAX_PRINCIPAL_ENTRIES + 1} entries; "
        rf"at most {MAX_PRINCIPAL_ENTRIES}$",
    ):
        parse((entry * (MAX_PRINCIPAL_ENTRIES + 1) + role).encode())
    roles = "".join(
        f'[authorization.roles.r{i}]\ngrants = [{{ permissions = ["*"], resources = ["*"] }}]\n'
        for i in range(MAX_ROLES + 1)
    )
    with pytest.raises(
        PolicyError, match=rf"^authorization\.roles: {MAX_ROLES + 1} roles; at most {MAX_ROLES}$"
    ):
        parse(roles.encode())
    many = ", ".join(['{ permissions = ["*"], resources = ["*"] }'] * 600)
    two = (
        f"[authorization.roles.a]\ngrants = [{many}]\n[authorization.roles.b]\ngrants = [{many}]\n"
    )
    with pytest.raises(
        PolicyError, match=rf"^authorization\.roles: more than {MAX_GRANTS} grants over all roles$"
    ):
        parse(two.encode())
    patterns = ", ".join(f'"t{i}"' for i in range(101))
    with pytest.raises(
        PolicyError,
        match=r"^authorization\.roles\.r\.grants\[0\]\.resources: 101 entries; at most 100$",
    ):
        parse(grants(f'{{ permissions = ["*"], resources = [{patterns}] }}').encode())


def test_a_section_error_is_a_policy_error_and_the_rest_of_the_file_still_checks() -> None:
    with pytest.raises(PolicyError, match=r"unknown top-level key\(s\) \['authorisation'\]"):
        parse(b"[authorisation]\n")
    policy = parse(b'default = "reject"\n' + EXAMPLE)
    assert policy.default.value == "reject"
    assert policy.authorization is not None


# -- the watch and the gate ----------------------------------------------------------


def test_the_watch_refuses_authorization_when_nothing_authenticates(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(EXAMPLE)
    with pytest.raises(ValueError, match=re.escape(AUTHORIZATION_WITHOUT_AUTHENTICATION)):
        PolicyWatch.load(path, interval=60)
    watch = PolicyWatch.load(path, interval=60, authenticated=True)
    assert watch.authorizer() is watch.policy.authorization  # type: ignore[union-attr]


def test_a_reload_that_turns_authorization_on_unauthenticated_keeps_the_old_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b'default = "allow"\n')
    watch = PolicyWatch.load(path, interval=60)
    before = watch.policy
    assert before is not None
    assert watch.authorizer() is ALLOW_ALL
    path.write_bytes(EXAMPLE)
    watch.reload_now()
    assert watch.policy is before
    assert watch.authorizer() is ALLOW_ALL
    assert watch.failure is not None
    assert watch.failure.message == AUTHORIZATION_WITHOUT_AUTHENTICATION
    assert "the previous policy stays in force" in caplog.text


def test_the_gate_follows_the_watch_and_a_reload_forgets_old_decisions(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(grants('{ permissions = ["topics.publish"], resources = ["a.*"] }').encode())
    watch = PolicyWatch.load(path, interval=60, authenticated=True)
    gate = Gate(authorizer=watch.authorizer)
    assert gate.permits(P, Permission.TOPICS_PUBLISH, "a.1")
    assert not gate.permits(P, Permission.TOPICS_PUBLISH, "b.1")
    first = watch.authorizer()
    path.write_bytes(grants('{ permissions = ["topics.publish"], resources = ["b.*"] }').encode())
    os.utime(path, ns=(1, 1))
    watch.reload_now()
    assert watch.authorizer() is not first
    assert gate.permits(P, Permission.TOPICS_PUBLISH, "b.1")
    assert not gate.permits(P, Permission.TOPICS_PUBLISH, "a.1")
    path.write_bytes(b'default = "allow"\n')  # the section removed: authorization off
    watch.reload_now()
    assert gate.authorizer is ALLOW_ALL
    assert gate.permits(P, Permission.TOPICS_PUBLISH, "a.1")
