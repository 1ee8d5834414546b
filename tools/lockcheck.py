"""The dependency lock's two jobs: write it from a resolved environment and prove a venv matches it.

``python tools/lockcheck.py --write constraints.txt`` writes every distribution installed in
this interpreter (pip included, the project itself left out) as ``name==version``, sorted:
the constraints file every ``make`` install goes through (``pip install -c``).

``python tools/lockcheck.py constraints.txt`` checks this interpreter against it and exits 1
naming each installed distribution that the lock does not pin, or pins at another version:
what reached the venv around the lock would reach a fresh machine at whatever release is
newest that day.

A local version label (``torch 2.13.0+cpu``) is written without its label, so the pin
matches the CPU wheel and the same release built for another platform alike.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata

PROJECT = "infdebug"
HEADER = """\
# The lock: exact versions of every package the project installs (all extras), resolved
# and tested together. Every `make` install applies it (`pip install -c constraints.txt`);
# pyproject.toml keeps lower bounds for people who install infdebug as a library.
# Regenerate with `make upgrade-deps` (newest releases, then the whole suite), never by hand.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    return version.split("+", 1)[0]


def installed() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or canonical(name) == PROJECT:
            continue
        out[canonical(name)] = public(dist.version)
    return out


def read_lock(path: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
            if m is None:
                sys.exit(f"{path}:{n}: expected 'name==version', found {line!r}")
            pins[canonical(m.group(1))] = public(m.group(2))
    return pins


def write(path: str) -> None:
    pins = installed()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(HEADER)
        for name in sorted(pins):
            fh.write(f"{name}=={pins[name]}\n")
    print(f"{path}: {len(pins)} packages pinned")


def check(path: str) -> int:
    pins = read_lock(path)
    problems = []
    for name, version in sorted(installed().items()):
        if name not in pins:
            problems.append(f"{name} {version} is installed but not in {path}")
        elif pins[name] != version:
            problems.append(f"{name} is {version} here but {path} pins {pins[name]}")
    for p in problems:
        print(f"lockcheck: {p}", file=sys.stderr)
    if problems:
        print(
            "lockcheck: run `make upgrade-deps` to re-resolve, or rebuild the venv (`make clean`)",
            file=sys.stderr,
        )
        return 1
    print(f"lockcheck: the {len(installed())} installed packages match {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("lock")
    ap.add_argument("--write", action="store_true", help="write the lock from this environment")
    args = ap.parse_args()
    if args.write:
        write(args.lock)
        return 0
    return check(args.lock)


if __name__ == "__main__":
    sys.exit(main())
