"""Reading a watched file again only when it changed, for the files the server
reloads while it runs (the policy file, JWT key files): a file is read when its
(mtime ns, size, inode) differ from what was seen last, and only up to a size
bound, so a poll every second costs one stat.
"""

from __future__ import annotations

import os
from pathlib import Path

# What identifies a version of a file without reading it: (st_mtime_ns, st_size,
# st_ino). A file replaced by a rename (how editors and secret mounts update) gets
# another inode even within one mtime tick.
Mark = tuple[int, int, int]


class FileTooLargeError(ValueError):
    """The file is larger than the bound its reader gave (nothing was read)."""


def read_if_changed(path: Path, seen: Mark | None, max_bytes: int) -> tuple[Mark, bytes] | None:
    """None when `path`'s mark is still `seen`; else its new mark and its bytes.

    Raises OSError when it cannot be read, FileTooLargeError when it is larger than
    `max_bytes`."""
    info = os.stat(path)
    mark = (info.st_mtime_ns, info.st_size, info.st_ino)
    if mark == seen:
        return None
    if info.st_size > max_bytes:
        raise FileTooLargeError(f"larger than {max_bytes} bytes")
    return mark, path.read_bytes()
