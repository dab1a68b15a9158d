"""Custody routes: a packet's chain hop by hop with the server's verdict, and its
export line for offline checking.

- ``GET /api/custody/{tracking_id}`` -> ``{"verified": bool, "headVerdict": str,
  "hops": [Hop], "packet": StoredPacket}``, one Hop per chain entry in chain order:
  ``{"index": int, "action": str (the hop: received, validated, dispatched...),
  "actor": str, "keyId": str, "principal": str (whose call made a server hop, or
  ""), "occurredAt": RFC 3339 str ("" when the record does not parse), "verdict":
  str (a CustodyVerdict name: CUSTODY_VERDICT_OK...), "detail": str}``. From
  VerifyCustody (the server's verdict), times from each entry's signed record.
- ``GET /api/custody/{tracking_id}/export`` -> ``application/x-ndjson``, as a
  download (``Content-Disposition: attachment; filename="<tracking_id>.jsonl"``):
  the keys line and the packet line exactly as ``packetbus export`` writes them
  (`packetbus._export.write_keys`, `write_packet`), so
  ``packetbus verify --file <it>`` checks it offline. Both routes read the packet
  through VerifyCustody: they need audit.export on its topic (not topics.subscribe).
"""

from __future__ import annotations

import io

from google.protobuf.message import DecodeError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from packetbus import Client
from packetbus._export import write_keys, write_packet
from packetbus.v1 import custody_pb2

from .shapes import as_json


def _occurred_at(entry: custody_pb2.CustodyEntry) -> str:
    try:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
    except DecodeError:
        return ""
    return record.occurred_at.ToJsonString() if record.HasField("occurred_at") else ""


async def chain(request: Request, client: Client) -> Response:
    result = await client.verify_custody(request.path_params["tracking_id"], timeout=10)
    entries = result.packet.packet.chain_of_custody
    hops = []
    for verdict in result.entries:
        hops.append(
            {
                "index": verdict.index,
                "action": verdict.action,
                "actor": verdict.actor,
                "keyId": verdict.key_id,
                "principal": verdict.principal,
                "occurredAt": _occurred_at(entries[verdict.index])
                if verdict.index < len(entries)
                else "",
                "verdict": custody_pb2.CustodyVerdict.Name(verdict.verdict),
                "detail": verdict.detail,
            }
        )
    return JSONResponse(
        {
            "verified": result.verified,
            "headVerdict": custody_pb2.CustodyVerdict.Name(result.head_verdict),
            "hops": hops,
            "packet": as_json(result.packet),
        }
    )


async def export(request: Request, client: Client) -> Response:
    tracking_id = request.path_params["tracking_id"]
    # The stored packet as VerifyCustody reads it: under audit.export on its topic, as
    # the chain above is, not GetPacket's topics.subscribe (an auditor who may see a
    # chain may download it).
    stored = (await client.verify_custody(tracking_id, timeout=10)).packet
    keys = await client.signing_keys(timeout=10)
    out = io.StringIO()
    write_keys(out, keys)
    write_packet(out, stored)
    # The tracking id is a canonical UUID (VerifyCustody refused anything else).
    disposition = f'attachment; filename="{stored.packet.tracking_id}.jsonl"'
    return Response(
        out.getvalue(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": disposition},
    )


ROUTES = (
    ("/api/custody/{tracking_id}", ("GET",), chain),
    ("/api/custody/{tracking_id}/export", ("GET",), export),
)
