"""An offline node fetches nothing: are the packages carried to it as pinned, their needs met? Torch-free."""
from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

CARRY = Path(__file__).resolve().parents[2] / "resources" / "gpu-node" / "carry.txt"


def pins(carry_file: str | Path) -> dict[str, str]:
    """The `name==version` lines of a carry file (comments and blank lines skipped), in its order."""
    out = {}
    for n, line in enumerate(Path(carry_file).read_text().splitlines(), 1):
        if not (line := line.split("#", 1)[0].strip()):
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{carry_file}:{n}: {line!r} is not name==version")
        out[canonicalize_name(name.strip())] = version.strip()
    return out


def installed(name: str) -> str | None:
    """The version of `name` that imports would find (the first on sys.path), or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def problems(carry_file: str | Path = CARRY) -> list[str]:
    """One line for each pin not installed at its version, and for each of an installed pin's
    requirements (markers evaluated here, extras' requirements left out) that nothing installed
    meets."""
    label = Path(carry_file).name
    out = []
    for name, want in pins(carry_file).items():
        have = installed(name)
        if have is None:
            out.append(f"{name}: expected {want} ({label}), not installed")
            continue
        if Version(have) != Version(want):
            out.append(f"{name}: expected {want} ({label}), found {have}")
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            found = installed(req.name)
            wanted = f"{name} {have} requires {req.name}{req.specifier}"
            if found is None:
                out.append(f"{wanted}: not installed")
            elif not req.specifier.contains(found, prereleases=True):
                out.append(f"{wanted}: found {found}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dyncim.bench.offline_deps", description=__doc__)
    ap.add_argument("carry_file", nargs="?", default=str(CARRY), help="default: %(default)s")
    args = ap.parse_args(argv)
    found = problems(args.carry_file)
    for line in found:
        print(line)
    if not found:
        print(f"{len(pins(args.carry_file))} carried packages installed as {args.carry_file} pins, "
              "their requirements met")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
