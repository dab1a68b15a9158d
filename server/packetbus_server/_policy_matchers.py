"""A rule's match keys compiled into checks: globs over origin and topic, speech act
names, content types (a contents kind, a record kind, or a raw media type glob).

Apart from the parser (_policy_parse) because these are what judging runs for every
packet, and the content fields' own checks (_policy_fields) use the same globs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence

from packetbus.v1 import packet_pb2, speech_act_pb2

from ._policy import Check, PolicyError

RECORD_KINDS = ("session_summary", "swarm_registry", "remediation_scan")
CONTENT_TYPES = ("task", "finding", "context", "data", "raw", "none", *RECORD_KINDS, "record")
_SPEECH_PREFIX = "SPEECH_ACT_"


def string_list(value: object, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{where}: must be a non-empty string or a list of them")
    return values  # type: ignore[return-value]


def glob_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    literal = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    globs = [p for p in patterns if p not in literal]
    if not globs:
        return literal.__contains__
    regex = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))
    return lambda value: value in literal or regex.match(value) is not None


def speech_act_value(name: str) -> int | None:
    """The enum value of "REQUEST", "request", "query-if" or "SPEECH_ACT_REQUEST"."""
    key = name.strip().upper().replace("-", "_")
    if not key.startswith(_SPEECH_PREFIX):
        key = _SPEECH_PREFIX + key
    if key == "SPEECH_ACT_UNSPECIFIED" or key not in speech_act_pb2.SpeechAct.keys():  # noqa: SIM118
        return None
    return speech_act_pb2.SpeechAct.Value(key)


def speech_act_check(raw: object, where: str) -> Check:
    values = set()
    for name in string_list(raw, f"{where}: speech_act"):
        value = speech_act_value(name)
        if value is None:
            raise PolicyError(
                f"{where}: speech_act {name!r} is not a speech act (e.g. REQUEST, INFORM)"
            )
        values.add(value)
    accepted = frozenset(values)
    return lambda p: p.speech_act in accepted


def content_type_check(raw: object, where: str) -> Check:
    kinds: set[str] = set()
    media: list[str] = []
    for value in string_list(raw, f"{where}: content_type"):
        if "/" in value:
            media.append(value.lower())
        elif value == "record":  # a swarm record of any kind (RecordService.PutRecord)
            kinds.update(RECORD_KINDS)
        elif value in CONTENT_TYPES:
            kinds.add(value)
        else:
            raise PolicyError(
                f"{where}: content_type {value!r} is not one of {list(CONTENT_TYPES)} "
                "nor a media type like application/json"
            )
    media_match = glob_matcher(media) if media else None

    def check(packet: packet_pb2.Packet) -> bool:
        kind = packet.WhichOneof("contents") or "none"
        if kind in kinds:
            return True
        return (
            media_match is not None
            and kind == "raw"
            and media_match(packet.raw.content_type.lower())
        )

    return check
