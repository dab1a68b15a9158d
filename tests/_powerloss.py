"""A power loss for a store, simulated: what was never fsynced is gone.

An LD_PRELOAD shim in the store's process records, at every fsync/fdatasync of
an AOF file, the file's size just before the call (all of it is on disk once the
call returns), with the time. After the store is SIGKILLed (its page cache would
still hold every write), `cut_to_last_sync` truncates each append-only AOF file
back to the last size synced, which is what a machine crash leaves behind.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void note(int fd, long long size) {
    const char *log = getenv("PB_SYNC_LOG");
    char link[64], path[4096], line[4200];
    struct timespec now;
    ssize_t n;
    int out, len;
    if (!log) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = 0;
    if (!strstr(path, ".aof")) return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    len = snprintf(line, sizeof line, "%lld.%09ld %lld %s\n",
                   (long long)now.tv_sec, now.tv_nsec, size, path);
    out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0) return;
    if (write(out, line, len) < 0) { /* the test sees a missing line */ }
    close(out);
}

static int synced(int fd, const char *name) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    struct stat st;
    long long size = -1;
    int rc;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) size = (long long)st.st_size;
    rc = real(fd);
    if (rc == 0 && size >= 0) note(fd, size);
    return rc;
}

int fsync(int fd) { return synced(fd, "fsync"); }
int fdatasync(int fd) { return synced(fd, "fdatasync"); }
"""


def build_shim(where: Path) -> Path:
    """Compile the shim into `where`; the .so's path."""
    source = where / "powerloss.c"
    source.write_text(_SHIM)
    shim = where / "powerloss.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return shim


def shim_env(shim: Path, log: Path) -> dict[str, str]:
    return {"LD_PRELOAD": str(shim), "PB_SYNC_LOG": str(log)}


@dataclass(frozen=True)
class Sync:
    at: float  # time.monotonic() of the fsync's end
    size: int
    path: str


def syncs(log: Path) -> list[Sync]:
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        at, size, path = line.split(" ", 2)
        found.append(Sync(float(at), int(size), path))
    return found


def last_sync_age(log: Path, path_part: str = ".incr.aof") -> float | None:
    """Seconds since the last fsync of a file whose path contains `path_part`."""
    times = [s.at for s in syncs(log) if path_part in s.path]
    return time.monotonic() - max(times) if times else None


def cut_to_last_sync(aof_dir: Path, log: Path) -> int:
    """Truncate every incremental AOF file in `aof_dir` to its last fsynced size (to
    nothing when it was never fsynced); the bytes dropped. The base file and the
    manifest are written to a temporary file, fsynced and renamed, so they are
    whole or absent: only the incremental files are ever appended to."""
    synced: dict[str, int] = {}
    for sync in syncs(log):
        synced[sync.path] = max(synced.get(sync.path, 0), sync.size)
    dropped = 0
    for aof in sorted(aof_dir.glob("*.incr.aof")):
        keep = synced.get(str(aof.resolve()), 0)
        size = aof.stat().st_size
        if size > keep:
            with aof.open("r+b") as f:
                f.truncate(keep)
            dropped += size - keep
    return dropped
