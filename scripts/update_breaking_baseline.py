"""Rewrite protos/baseline.binpb, the image `buf breaking` compares the contracts against.

    python scripts/update_breaking_baseline.py

Run it when cutting a release (after the version bump), never to silence a failing
check: the baseline is the contract the last release promised, so until the next
release every commit must stay wire- and source-compatible with it (buf's FILE rules).
The image is committed, so the check needs no tag, no history and no network: a
shallow or fresh clone of main has it (unlike a release tag or HEAD~1).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "protos" / "baseline.binpb"
BUF = Path(sys.executable).parent / "buf"


def main() -> int:
    # Source info (comments, spans) is left out: breaking rules ignore it, and it
    # would churn the binary on every comment edit.
    return subprocess.run(
        [str(BUF), "build", "--exclude-source-info", "-o", str(BASELINE)], cwd=ROOT, check=False
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
