"""How the CLI prints protobuf messages: protobuf JSON, one line or indented."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.message import Message


def json_line(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def json_pretty(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message), indent=2)
