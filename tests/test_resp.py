"""The batch encoder writes exactly the bytes redis-py's own encoder writes."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from packetbus_server._resp import BatchEncodingConnection


@pytest.mark.parametrize("count", [1, 31, 32, 600])
def test_same_bytes_as_redis_py(count: int) -> None:
    args: list[bytes | memoryview | str | int | float] = ["EVALSHA", "a" * 40, count]
    for i in range(count):
        args += [f"pb:{{t}}:pkt:{i}", b"\x00\xff" * i, i * 7, 0.5 + i, memoryview(b"mv%d" % i)]
    ours = b"".join(BatchEncodingConnection().pack_command(*args))
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*args))
    assert ours == theirs


def test_a_spaced_command_name_is_split_like_redis_py() -> None:
    args = ["CONFIG GET", *[f"k{i}" for i in range(40)]]
    ours = b"".join(BatchEncodingConnection().pack_command(*args))
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*args))
    assert ours.startswith(b"*42\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n")
    assert ours == theirs


def test_text_is_encoded_as_configured() -> None:
    conn = BatchEncodingConnection(encoding="latin-1")
    packed = b"".join(conn.pack_command("SET", *["é"] * 40))
    assert b"$1\r\n\xe9\r\n" in packed
