"""A broken validation rule, as every validator reports it (README "Errors": each is
a google.rpc.BadRequest field violation of the refusal's details)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: where (field path), which rule (stable id) and why."""

    field: str
    rule: str
    description: str
