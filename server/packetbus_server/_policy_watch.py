"""The policy in force: loaded from its file at start, reloaded when the file changes.

The file is looked at every `interval` seconds (its size, mtime and inode;
then its SHA-256, so touching it changes nothing) and at once on SIGHUP. A
file that does not parse leaves the previous policy in force: the error is
logged and published (PolicyService.GetPolicy) until a good file replaces it.

So does a file with an `[authorization]` section while the server authenticates no
one (no client CA, no JWT keys, no trusted sidecar header): every call would be
the local principal, which authorization does not restrict, so the section would
look in force and protect nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from packetbus._stopping import cancel_and_wait

from ._access.gate import ALLOW_ALL, Authorizer
from ._file_changes import FileTooLargeError, Mark, read_if_changed
from ._policy import Policy, PolicyError
from ._policy_parse import MAX_POLICY_BYTES, parse

log = logging.getLogger("packetbus.policy")

AUTHORIZATION_WITHOUT_AUTHENTICATION = (
    "the policy has an [authorization] section but the server authenticates no one: "
    "configure a client CA (mutual TLS), JWT keys or a trusted sidecar header, "
    "or remove the section"
)


@dataclass(frozen=True, slots=True)
class LoadFailure:
    message: str
    at_ms: int


class PolicyWatch:
    """Holds the policy in force (`policy`, None when there is none).

    `authenticated`: the server proves who calls; False refuses a policy that turns
    authorization on (see the module's docstring)."""

    def __init__(self, path: Path | None, *, interval: float, authenticated: bool = False) -> None:
        self.path = path
        self.authenticated = authenticated
        self.policy: Policy | None = None
        self.loaded_at_ms = 0
        self.failure: LoadFailure | None = None
        self._interval = interval
        self._seen: Mark | None = None
        self._digest = ""
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def load(
        cls, path: Path | None, *, interval: float, authenticated: bool = False
    ) -> PolicyWatch:
        """Load `path` now; a missing or invalid file fails the start (ValueError)."""
        watch = cls(path, interval=interval, authenticated=authenticated)
        if path is not None:
            watch.check()
            if watch.failure is not None:
                raise ValueError(f"policy {path}: {watch.failure.message}")
        return watch

    def check(self) -> bool:
        """Load the file if it changed; True when a new policy is now in force."""
        if self.path is None:
            return False
        try:
            found = read_if_changed(self.path, self._seen, MAX_POLICY_BYTES)
        except FileTooLargeError as exc:
            return self._failed(f"the policy file is {exc}", None)
        except OSError as exc:
            return self._failed(str(exc), None)
        if found is None:
            return False
        self._seen, data = found
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return False
        try:
            policy = parse(data)
        except PolicyError as exc:
            return self._failed(str(exc), digest)
        if policy.authorization is not None and not self.authenticated:
            return self._failed(AUTHORIZATION_WITHOUT_AUTHENTICATION, digest)
        self._digest = digest
        self.policy = policy
        self.loaded_at_ms = time.time_ns() // 1_000_000
        self.failure = None
        log.info(
            "policy %s loaded: version %s, %d rules, default %s, authorization %s",
            self.path,
            policy.version[:12],
            len(policy.rules),
            policy.default.value,
            "off"
            if policy.authorization is None
            else f"on ({len(policy.authorization.roles)} roles, "
            f"{len(policy.authorization.principals)} principal entries)",
        )
        return True

    def authorizer(self) -> Authorizer:
        """The authorization in force (the Gate asks at every call): the policy's
        `[authorization]` section, else ALLOW_ALL."""
        policy = self.policy
        if policy is None or policy.authorization is None:
            return ALLOW_ALL
        return policy.authorization

    def _failed(self, message: str, digest: str | None) -> bool:
        if self.failure is None or self.failure.message != message:
            log.error(
                "policy %s not loaded: %s; %s",
                self.path,
                message,
                "the previous policy stays in force" if self.policy else "no policy is in force",
            )
            self.failure = LoadFailure(message, time.time_ns() // 1_000_000)
        if digest is not None:
            # Not again until the file changes; a file that vanished is retried.
            self._digest = digest
        else:
            self._seen = None
        return False

    def reload_now(self) -> None:
        """SIGHUP: look at the file at once, even if it looks unchanged."""
        self._seen = None
        self.check()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.check()
            except Exception:  # never let the watch die: the policy in force stays
                log.exception("policy %s: reload failed", self.path)

    def start(self) -> None:
        if self.path is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="packetbus-policy-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
