"""How A2A requests and an agent's answers travel as packetbus packets.

A request: a REQUEST packet to the agent's inbox, ``protocol`` ``a2a``,
``conversation_id`` the A2A context id, ``reply_with`` the A2A task id, origin
`reply_address(task id)`, and ``data``::

    {"parts": [P, ...],           # every part of the message, in order
     "text": T,                   # its text parts joined by newlines (absent when
                                  # a text part is a document)
     "message": M}                # the A2A Message as proto JSON, without its parts

An answer: a packet in reply to it (``in_reply_to`` = the task id, to the inbox
of the request's origin) whose ``data`` says what it is:

speech act             data                                       A2A event
=====================  =========================================  =====================
INFORM                 ``{"a2a": "status", "text": T}``           status WORKING, T
INFORM                 ``{"a2a": "artifact", "name": N, "text": T}``  artifact N: T
INFORM                 ``{"a2a": "input", "text": T}``            status INPUT_REQUIRED, T
INFORM                 ``{"a2a": "final", "text": T}``            status COMPLETED, T
FAILURE                ``{"a2a": "final", "text": T}``            status FAILED, T
REFUSE                 ``{"a2a": "final", "text": T}``            status REJECTED, T
=====================  =========================================  =====================
=======
=====================  ===============================================  ======================
speech act             data                                             A2A event
=====================  ===============================================  ======================
INFORM                 ``{"a2a": "status", "parts": [P...]}``           status WORKING, P...
INFORM                 ``{"a2a": "artifact", "name": N, "parts": ...}``  artifact N: P...
INFORM                 ``{"a2a": "input", "parts": [P...]}``            status INPUT_REQUIRED, P...
INFORM                 ``{"a2a": "final", "parts": [P...]}``            status COMPLETED, P...
FAILURE                ``{"a2a": "final", "parts": [P...]}``            status FAILED, P...
REFUSE                 ``{"a2a": "final", "parts": [P...]}``            status REJECTED, P...
=====================  ===============================================  ======================

Each ``P`` is a part entry (`parts`): the A2A Part as proto JSON (text, raw bytes
in base64, url or data, with media_type, filename and metadata), or, for a part
that would pass the packet limit, a reference to the shared-context document
(scope ``a2a-parts``) that holds its content. An answer with ``"text": T`` and
no ``parts`` (the form before parts) reads as one text part T.

A CANCEL packet to the agent's inbox (same conversation and ``reply_with``)
asks it to stop; the gateway marks the task CANCELED at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format

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
    *,
    task_id: str,
    context_id: str,
    message_id: str,
    entries: list[dict[str, Any]],
    text: str | None,
    message_json: str,
) -> Packet:
    """The REQUEST packet for one A2A message (topic left for `send_to` to set):
    `entries` its part entries, `text` its text (None: left out), `message_json`
    the Message without its parts."""
    packet = Packet(
        tracking_id=tracking_id(task_id, message_id),
        origin=reply_address(task_id),
        speech_act=SpeechAct.SPEECH_ACT_REQUEST,
        conversation_id=context_id,
        reply_with=task_id,
        protocol=PROTOCOL,
    )
    fields: dict[str, Any] = {"parts": entries, "message": message_json}
    if text is not None:
        fields["text"] = text
    packet.data.update(fields)
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
    kind: AnswerKind,
    entries: list[dict[str, Any]],
    *,
    name: str = "",
    speech_act: int = SpeechAct.SPEECH_ACT_INFORM,
) -> Packet:
    """An answer's packet carrying part `entries` (addressing left for `Client.reply`)."""
    packet = Packet(speech_act=speech_act, protocol=PROTOCOL)  # type: ignore[arg-type]
    fields: dict[str, Any] = {"a2a": kind, "parts": entries}
    if name:
        fields["name"] = name
    packet.data.update(fields)
    return packet


@dataclass(frozen=True)
class Answer:
    """One answer read back from a packet: what it is, its text (the inline text
    parts, joined by newlines), an artifact's name, the speech act that carried it
    (INFORM, FAILURE, REFUSE) and its part entries (`parts.PartCodec.unpack` reads
    them)."""

    kind: AnswerKind
    text: str
    name: str
    speech_act: int
    entries: tuple[dict[str, Any], ...] = ()


def read_answer(packet: Packet) -> Answer | None:
    """The answer `packet` carries, or None for a packet that is not one."""
    if packet.WhichOneof("contents") != "data":
        return None
    raw = json_format.MessageToDict(packet.data)
    fields = {k: v for k, v in raw.items() if isinstance(v, str)}
    kind = _KINDS.get(fields.get("a2a", ""))
    if kind is None:
        return None
    found = raw.get("parts")
    if isinstance(found, list):
        entries = tuple(e for e in found if isinstance(e, dict))
    else:  # the text-only form
        entries = ({"text": fields.get("text", "")},)
    text = "\n".join(str(e["text"]) for e in entries if "text" in e)
    return Answer(kind, text, fields.get("name", ""), packet.speech_act, entries)


def request_entries(packet: Packet) -> list[dict[str, Any]]:
    """A request packet's part entries (one text part for a packet with only ``text``)."""
    raw = json_format.MessageToDict(packet.data)
    found = raw.get("parts")
    if isinstance(found, list):
        return [e for e in found if isinstance(e, dict)]
    return [{"text": raw.get("text", "")}] if isinstance(raw.get("text"), str) else []
