"""A2A parts in packets, and parts over the packet limit as shared-context documents.

A part travels in a packet's ``data`` as a *part entry*: the A2A `Part` as proto
JSON with the proto field names (``{"text": ...}``, ``{"raw": <base64>,
"media_type": ..., "filename": ...}``, ``{"url": ...}``, ``{"data": <any JSON>}``,
each with its ``metadata`` if set). A packet that would pass the server's packet
limit (``GetServerInfo.limits.max_packet_bytes``, read once per `PartCodec`, less
`HEADROOM` for the envelope and custody entries) moves its largest parts, one by
one, to context documents until it fits. Such a part's entry is a *document
entry*: the part's JSON without its content, plus

``{"document": {"scope": "a2a-parts", "name": N, "version": V, "size": S,
"sha256": <hex>, "kind": "text" | "raw" | "url" | "data"}}``

whose document holds the content alone: the text or URL as UTF-8, the raw bytes,
or the data as JSON; content type the part's media type (or, without one,
`DEFAULT_MEDIA_TYPES`). ``N`` is ``<task id>/<uuid>/<part index>``, the uuid
naming the message or answer (`wire.tracking_id`), and the upload id is derived
from the name and the SHA-256: a retried request or answer writes the same
documents, and a repeated put answers its first commit. The reader fetches that
exact version and checks its size and SHA-256. Documents keep the server's
default context TTL (24 h, as long as the longest packet TTL).

A part the context store refuses (larger than ``Limits.max_context_bytes``, 256
MiB by default, which GetServerInfo does not publish) raises `PartRefused`:
nothing is cut.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from a2a.types.a2a_pb2 import Message, Part
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Value

from packetbus import Client, Packet, PacketbusError

from .wire import reply_address, request_packet, tracking_id

SCOPE = "a2a-parts"
# Room left under the packet limit for what is added after the packet is built
# (topic, in_reply_to, the client's and server's custody entries).
HEADROOM = 64 * 1024
DEFAULT_MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "raw": "application/octet-stream",
    "url": "text/uri-list",
    "data": "application/json",
}
_UPLOADS = uuid.UUID("0d6c39a5-4f0e-4b8a-a2a0-7a2a2a2a2a2a")

Entry = dict[str, Any]
PartLike = Part | str | bytes | Mapping[str, Any]


class PartRefused(ValueError):
    """A part that cannot travel: the context store refused its document (too large,
    or a media type too long for a content type), or the packet is over the limit
    with every part moved out (its other fields alone are too large)."""


def as_part(value: PartLike) -> Part:
    """`value` as a Part: a str is a text part, bytes a raw part
    (application/octet-stream), a mapping a data part, a Part itself."""
    if isinstance(value, Part):
        return value
    if isinstance(value, str):
        return Part(text=value)
    if isinstance(value, bytes):
        return Part(raw=value, media_type=DEFAULT_MEDIA_TYPES["raw"])
    data = Value()
    data.struct_value.update(dict(value))
    return Part(data=data)


def part_entry(part: Part) -> Entry:
    """The inline entry of `part` (see the module docstring)."""
    entry: Entry = json_format.MessageToDict(part, preserving_proto_field_name=True)
    return entry


def entry_part(entry: Entry) -> Part:
    """The Part an inline entry holds. Raises json_format.ParseError on a bad entry."""
    return json_format.ParseDict(entry, Part())


def entries_text(entries: Sequence[Entry]) -> str | None:
    """The text parts joined by newlines, or None when a text part is a document."""
    if any(e.get("document", {}).get("kind") == "text" for e in entries):
        return None
    return "\n".join(str(e["text"]) for e in entries if "text" in e)


def parts_text(parts: Sequence[Part]) -> str:
    """The text parts of `parts`, joined by newlines."""
    return "\n".join(p.text for p in parts if p.WhichOneof("content") == "text")


def part_content(part: Part) -> tuple[str, bytes]:
    """What a document holds for `part`: its kind ("text", "raw", "url", "data") and
    content (UTF-8 text or URL, the raw bytes, the data as compact JSON)."""
    kind = part.WhichOneof("content") or "text"
    if kind == "raw":
        return kind, part.raw
    if kind == "data":
        as_json = json_format.MessageToDict(part.data)
        return kind, json.dumps(as_json, separators=(",", ":"), ensure_ascii=False).encode()
    return kind, getattr(part, kind).encode()


def part_from_content(entry: Entry, kind: str, content: bytes) -> Part:
    """The Part whose document entry is `entry` (its content left out) and whose
    document holds `content` of `kind` (`part_content`'s inverse)."""
    fields = {k: v for k, v in entry.items() if k != "document"}
    if kind == "raw":
        fields["raw"] = base64.b64encode(content).decode()
    elif kind == "data":
        fields["data"] = json.loads(content)
    else:
        fields[kind] = content.decode()
    return entry_part(fields)


class PartCodec:
    """Puts parts into packets and reads them back, through `client`'s context store
    (documents in scope `SCOPE`). Holds the server's packet limit once asked."""

    def __init__(self, client: Client, *, _limit: dict[str, int] | None = None) -> None:
        self._client = client
        # {"packet": the server's packet limit}, once asked; shared by `with_client`.
        self._limit: dict[str, int] = {} if _limit is None else _limit

    @property
    def client(self) -> Client:
        """The client this codec reads and writes documents with."""
        return self._client

    def with_client(self, client: Client) -> PartCodec:
        """This codec for another caller's `client`, sharing the limit once asked."""
        return PartCodec(client, _limit=self._limit)

    async def budget(self) -> int:
        """Bytes a packet may have when built: the server's packet limit (asked once)
        less `HEADROOM`."""
        if "packet" not in self._limit:
            info = await self._client.server_info()
            self._limit["packet"] = info.limits.max_packet_bytes
        return self._limit["packet"] - HEADROOM

    async def pack(
        self,
        parts: Sequence[Part],
        build: Callable[[list[Entry]], Packet],
        *,
        task_id: str,
        what: str,
        author: str,
    ) -> Packet:
        """The packet `build` makes of `parts`' entries, with the largest parts moved to
        documents named ``<task_id>/<what>/<index>`` until it fits the budget.

        Raises PartRefused when the store refuses a document or nothing more can move;
        other PacketbusErrors (UNAVAILABLE...) as the put raised them."""
        entries = [part_entry(p) for p in parts]
        packet = build(entries)
        budget = await self.budget()
        # Largest first, ties by index: the same parts move on every retry.
        order = sorted(range(len(parts)), key=lambda i: (-parts[i].ByteSize(), i))
        for index in order:
            if packet.ByteSize() <= budget:
                return packet
            entries[index] = await self._put(parts[index], f"{task_id}/{what}/{index}", author)
            packet = build(entries)
        if packet.ByteSize() > budget:
            raise PartRefused(
                f"the packet is {packet.ByteSize()} bytes with every part in a document; "
                f"at most {budget} fit"
            )
        return packet

    async def _put(self, part: Part, name: str, author: str) -> Entry:
        kind, content = part_content(part)
        digest = hashlib.sha256(content).hexdigest()
        try:
            document = await self._client.put_context(
                SCOPE,
                name,
                content,
                content_type=part.media_type or DEFAULT_MEDIA_TYPES[kind],
                author=author,
                upload_id=str(uuid.uuid5(_UPLOADS, f"{name}\n{digest}")),
            )
        except PacketbusError as exc:
            if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            why = "; ".join(f"{v.field} {v.description}" for v in exc.field_violations)
            raise PartRefused(
                f"part of {len(content)} bytes cannot be a context document ({why or exc.message})"
            ) from None
        entry = part_entry(part)
        entry.pop(kind, None)
        entry["document"] = {
            "scope": SCOPE,
            "name": name,
            "version": document.version,
            "size": len(content),
            "sha256": digest,
            "kind": kind,
        }
        return entry

    async def unpack(self, entries: Sequence[Entry]) -> list[Part]:
        """The parts `entries` stand for, documents read back (exact version, size and
        SHA-256 checked). Raises PacketbusError (NOT_FOUND: a document expired;
        DATA_LOSS: it is not what the entry says) or json_format.ParseError."""
        parts = []
        for entry in entries:
            ref = entry.get("document")
            if not isinstance(ref, dict):
                parts.append(entry_part(entry))
                continue
            value = await self._client.get_context(
                str(ref["scope"]), str(ref["name"]), version=int(ref["version"])
            )
            if len(value.data) != int(ref["size"]) or (
                hashlib.sha256(value.data).hexdigest() != ref["sha256"]
            ):
                raise PacketbusError(
                    grpc.StatusCode.DATA_LOSS,
                    f"context {ref['scope']}/{ref['name']} is not the part the packet names",
                )
            parts.append(part_from_content(entry, str(ref["kind"]), value.data))
        return parts


async def message_packet(
    codec: PartCodec, message: Message, *, task_id: str, context_id: str
) -> Packet:
    """The REQUEST packet (`wire.request_packet`) for A2A `message` of `task_id`, every
    part in it or in a document (see the module docstring). Raises PartRefused."""
    what = tracking_id(task_id, message.message_id)
    rest = Message()
    rest.CopyFrom(message)
    del rest.parts[:]  # the parts travel as entries, not twice
    rest_json = json_format.MessageToJson(rest, indent=None)

    def build(entries: list[Entry]) -> Packet:
        return request_packet(
            task_id=task_id,
            context_id=context_id,
            message_id=message.message_id,
            entries=entries,
            text=entries_text(entries),
            message_json=rest_json,
        )

    return await codec.pack(
        list(message.parts), build, task_id=task_id, what=what, author=reply_address(task_id)
    )
