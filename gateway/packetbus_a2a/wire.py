"""How A2A requests and an agent's answers travel as packetbus packets.

A request: a REQUEST packet to the agent's inbox, ``protocol`` ``a2a``,
``conversation_id`` the A2A context id, ``reply_with`` the A2A task id, origin
`reply_address(task id)`, and ``data`` ``{"text": <the message's text parts,
joined by newlines>, "message": <the A2A Message as proto JSON>}``.

An answer: a packet in reply to it (``in_reply_to`` = the task id, to the inbox
of the request's origin) whose ``data`` says what it is:

=====================  =========================================  =====================
speech act             data                                       A2A event
=====================  =========================================  =====================
INFORM                 ``{"a2a": "status", "text": T}``           status WORKING, T
INFORM                 ``{"a2a": "artifact", "name": N, "text": T}``  artifact N: T
INFORM                 ``{"a2a": "input", "text": T}``            status INPUT_REQUIRED, T
INFORM                 ``{"a2a": "final", "text": T}``            status COMPLETED, T
FAILURE                ``{"a2a": "final", "text": T}``            status FAILED, T
REFUSE                 ``{"a2a": "final", "text": T}``            status REJECTED, T
=====================  =========================================  =====================

A CANCEL packet to the agent's inbox (same conversation and ``reply_with``)
asks it to stop; the gateway marks the task CANCELED at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from packetbus import Packet, SpeechAct

PROTOCOL = "a2a"
# Deterministic tracking ids: a request rebuilt for the same task and message
# (a retried call, another replica) is the same packet, stored once.
_NAMESPACE = uuid.UUID("5b0f3c1e-8a53-4b8e-9a57-2f3f3f0a2a2a")
_REPLY_PREFIX = "a2a.task."

AnswerKind = Literal["status", "artifact", "input", "final"]
_KINDS: dict[str, AnswerKind] = {
    "status": "status",
    "artifact": "artifact",
    "input": "input",
    "final": "final",
}


def reply_address(task_id: str) -> str:
    """The agent id whose inbox receives the answers for A2A task `task_id`."""
    return _REPLY_PREFIX + task_id


def tracking_id(task_id: str, what: str) -> str:
    """A stable UUID for the packet `what` (a message id, "cancel") of task `task_id`."""
    return str(uuid.uuid5(_NAMESPACE, f"{task_id}\n{what}"))


def request_packet(
    *, task_id: str, context_id: str, message_id: str, text: str, message_json: str
) -> Packet:
    """The REQUEST packet for one A2A message (topic left for `send_to` to set)."""
    packet = Packet(
        tracking_id=tracking_id(task_id, message_id),
        origin=reply_address(task_id),
        speech_act=SpeechAct.SPEECH_ACT_REQUEST,
        conversation_id=context_id,
        reply_with=task_id,
        protocol=PROTOCOL,
    )
    packet.data.update({"text": text, "message": message_json})
    return packet


def cancel_packet(*, task_id: str, context_id: str) -> Packet:
    """The CANCEL packet asking the agent to stop task `task_id`."""
    packet = Packet(
        tracking_id=tracking_id(task_id, "cancel"),
        origin=reply_address(task_id),
        speech_act=SpeechAct.SPEECH_ACT_CANCEL,
        conversation_id=context_id,
        reply_with=task_id,
        protocol=PROTOCOL,
    )
    packet.data.update({"task_id": task_id})
    return packet


def answer_packet(
    kind: AnswerKind, text: str, *, name: str = "", speech_act: int = SpeechAct.SPEECH_ACT_INFORM
) -> Packet:
    """An answer's packet (addressing left for `Client.reply`)."""
    packet = Packet(speech_act=speech_act, protocol=PROTOCOL)  # type: ignore[arg-type]
    fields: dict[str, str] = {"a2a": kind, "text": text}
    if name:
        fields["name"] = name
    packet.data.update(fields)
    return packet


@dataclass(frozen=True)
class Answer:
    """One answer read back from a packet: what it is, its text, an artifact's name,
    and the speech act that carried it (INFORM, FAILURE, REFUSE)."""

    kind: AnswerKind
    text: str
    name: str
    speech_act: int


def read_answer(packet: Packet) -> Answer | None:
    """The answer `packet` carries, or None for a packet that is not one."""
    if packet.WhichOneof("contents") != "data":
        return None
    fields = _strings(packet.data)
    kind = _KINDS.get(fields.get("a2a", ""))
    if kind is None:
        return None
    return Answer(kind, fields.get("text", ""), fields.get("name", ""), packet.speech_act)


def _strings(data: Struct) -> dict[str, str]:
    raw = json_format.MessageToDict(data)
    return {k: v for k, v in raw.items() if isinstance(v, str)}
