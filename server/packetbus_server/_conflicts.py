"""When two findings of a task conflict: the one rule, for posting and for on-demand checks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_SPACE = re.compile(r"\s+")


def subject_of(claim: str, subject: str) -> str:
    """What a finding is about: its subject, or else its claim with case and spacing ignored."""
    return subject or _SPACE.sub(" ", claim.strip()).casefold()


@dataclass(frozen=True, slots=True)
class Fact:
    """What conflict detection knows of a finding."""

    finding_id: str
    fingerprint: str
    refutes: bool
    confidence: float
    subject: str

    def line(self) -> str:
        """As stored (scripts/finding_post.lua): the subject last, since it may hold spaces."""
        return f"{self.fingerprint} {int(self.refutes)} {self.confidence!r} {self.subject}"

    @classmethod
    def parse(cls, finding_id: str, line: str) -> Fact:
        fingerprint, refutes, confidence, subject = line.split(" ", 3)
        return cls(finding_id, fingerprint, refutes == "1", float(confidence), subject)


@dataclass(frozen=True, slots=True)
class Conflict:
    first: Fact
    second: Fact
    reason: str


def confidence_reason(first: float, second: float, threshold: float) -> str:
    """Why two findings of one subject conflict, by confidence (in [0, 1])."""
    return f"confidences {first:.2f} and {second:.2f} differ by more than {threshold:.2f}"


def conflicts_with(new: Fact, earlier: Sequence[Fact], threshold: float) -> list[Conflict]:
    """The earlier findings `new` conflicts with: same subject, and opposite claims or
    confidences further apart than `threshold`."""
    out = []
    for old in earlier:
        if old.subject != new.subject:
            continue
        if old.refutes != new.refutes:
            out.append(Conflict(old, new, "opposite claims"))
        elif abs(old.confidence - new.confidence) > threshold:
            out.append(
                Conflict(old, new, confidence_reason(old.confidence, new.confidence, threshold))
            )
    return out


def all_conflicts(facts: Sequence[Fact], threshold: float) -> list[Conflict]:
    """Every conflicting pair among `facts` (in posting order), earlier one first."""
    return [c for i, f in enumerate(facts) for c in conflicts_with(f, facts[:i], threshold)]
