"""Build the operator console's browser front end into the Python package.

    python scripts/build_console.py           # npm ci && npm run build in console/web,
                                              # then stamp static/SOURCE_SHA256
    python scripts/build_console.py --check   # exit 1 if the committed bundle's stamp does
                                              # not match console/web's sources (no Node)

The bundle (console/packetbus_console/static: index.html and hashed assets) is
committed, so ``pip install`` alone gives a working console without Node. Its stamp,
``static/SOURCE_SHA256``, is `source_digest()`: one line, the hex SHA-256 over the
files the bundle is built from (`SOURCES`: index.html, package.json, package-lock.json,
tsconfig.json, vite.config.ts and everything under src/), each as its path relative
to console/web, a NUL, its size in bytes, a NUL and its bytes, in path order. The
tests under console/web/test do not go into the bundle, so they are not in the stamp.
CI runs ``--check``, so the bundle cannot drift from its sources unnoticed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "console" / "web"
STATIC = ROOT / "console" / "packetbus_console" / "static"
STAMP = STATIC / "SOURCE_SHA256"
SOURCES = ("index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts")
SOURCE_DIRS = ("src",)
_REFERENCE = re.compile(r'(?:src|href)="/(assets/[^"]+)"')


def source_files(web: Path = WEB) -> list[Path]:
    """The files the bundle is built from, in path order (see the module docstring).
    Raises SystemExit naming a missing one."""
    files = [web / name for name in SOURCES]
    for name in SOURCE_DIRS:
        files.extend(path for path in (web / name).rglob("*") if path.is_file())
    missing = [path.relative_to(web).as_posix() for path in files if not path.is_file()]
    if missing:
        raise SystemExit(f"console sources missing in {web}: {', '.join(missing)}")
    return sorted(files, key=lambda path: path.relative_to(web).as_posix())


def source_digest(web: Path = WEB) -> str:
    """The hex SHA-256 of the console's sources (see the module docstring)."""
    digest = hashlib.sha256()
    for path in source_files(web):
        data = path.read_bytes()
        digest.update(path.relative_to(web).as_posix().encode() + b"\0")
        digest.update(str(len(data)).encode() + b"\0" + data)
    return digest.hexdigest()


def referenced_assets(index_html: str) -> list[str]:
    """The asset paths (``assets/...``, relative to static/) that index.html loads."""
    return _REFERENCE.findall(index_html)


def check() -> list[str]:
    """What is wrong with the committed bundle: [] when its stamp matches the
    sources and every asset index.html references is there."""
    if not STAMP.is_file():
        return [f"{STAMP.relative_to(ROOT)} is missing"]
    problems = []
    if STAMP.read_text().strip() != source_digest():
        problems.append(f"{STAMP.relative_to(ROOT)} does not match console/web's sources")
    index = STATIC / "index.html"
    if not index.is_file():
        return [*problems, f"{index.relative_to(ROOT)} is missing"]
    for asset in referenced_assets(index.read_text()):
        if not (STATIC / asset).is_file():
            problems.append(f"index.html references {asset}, which is missing")
    return problems


def build() -> None:
    """`npm ci && npm run build` in console/web, then write the stamp. Raises
    SystemExit when npm is missing or fails."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm (Node 20+) is required to build the console")
    for argv in ([npm, "ci", "--no-audit", "--no-fund"], [npm, "run", "build"]):
        if subprocess.run(argv, cwd=WEB, check=False).returncode != 0:
            raise SystemExit(f"{' '.join(argv[1:])} failed in {WEB.relative_to(ROOT)}")
    STAMP.write_text(source_digest() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if the bundle's stamp is stale (no Node)"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("rebuild: python scripts/build_console.py", file=sys.stderr)
            return 1
        print("console bundle is fresh")
        return 0
    build()
    print(f"built {STATIC.relative_to(ROOT)} ({STAMP.read_text().strip()[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
