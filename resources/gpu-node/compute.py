"""Recompute carry.txt: what the offline GPU check needs beyond what the GPU node holds.

Run it with the project's environment (it reads the installed versions of the roots below):

    .venv/bin/python resources/gpu-node/compute.py

It asks pip's resolver (dry run, nothing installed) for the closure of the roots at the versions
installed here, for CPython 3.12 on manylinux x86-64 (the node's Python), takes away the packages
the node holds (node-held.txt), and carries a pinned copy of a node-held package as well where a
carried package's requirement on it rules out its newest release (an upper bound: the node's copy
may be that release) or allows only its newest release (a lower bound: a node set up before that
release has an older one). A package published as a source distribution only is built here into a
pure-Python wheel (the node cannot build anything) and marked `sdist-only` for `make gpu-wheels`.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
ROOTS = ["snakemake", "av", "jsonschema"]  # the project's runtime deps the node lacks
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
          "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
NODE_ENV = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          check=True, capture_output=True, text=True)


def resolve(roots: list[str], tmp: Path, name: str, *extra: str) -> dict:
    report = tmp / f"{name}.json"
    pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
        "--target", str(tmp / "unused"), *extra, *roots)
    return {canonicalize_name(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}


@functools.lru_cache(maxsize=None)
def releases(name: str) -> list[Version]:
    out = pip("index", "versions", name, "--only-binary=:all:", *TARGET).stdout
    line = next(x for x in out.splitlines() if x.startswith("Available versions:"))
    return sorted(Version(v.strip()) for v in line.split(":", 1)[1].split(","))


def main() -> int:
    held = {canonicalize_name(n) for line in (HERE / "node-held.txt").read_text().splitlines()
            if (n := line.split("#", 1)[0].strip())}
    roots = [f"{r}=={md.version(r)}" for r in ROOTS]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # sources-only releases: resolved for this interpreter (sources allowed), built into wheels
        here = resolve(roots, tmp, "here")
        sdist = sorted(n for n, i in here.items() if not i["download_info"]["url"].endswith(".whl"))
        for n in sdist:
            pip("wheel", "-q", "--no-deps", "--no-binary", n, f"{n}=={here[n]['metadata']['version']}",
                "-w", str(tmp / "built"))
        bad = [w.name for w in (tmp / "built").glob("*.whl") if not w.name.endswith("-py3-none-any.whl")]
        if bad:
            sys.exit(f"compute: source-only packages that do not build into pure-Python wheels: {bad}")
        node = resolve(roots, tmp, "node", "--only-binary=:all:", *TARGET,
                       *(["--find-links", str(tmp / "built")] if sdist else []))
    if set(here) != set(node):
        print(f"note: the closure differs between this Python and 3.12: {sorted(set(here) ^ set(node))}")
    carry = {n: i for n, i in node.items() if n not in held}
    why: dict[str, list[str]] = {n: [] for n in carry}
    shadow: dict[str, list[str]] = {}
    newest: dict[str, Version] = {}
    for n, i in carry.items():
        for r in i["metadata"].get("requires_dist") or []:
            req = Requirement(r)
            if req.marker and not req.marker.evaluate(NODE_ENV):
                continue
            dep = canonicalize_name(req.name)
            if dep in carry:
                why[dep].append(n)
            elif dep in held and req.specifier:
                if dep not in newest:
                    newest[dep] = releases(dep)[-1]
                older = [v for v in releases(dep) if v < newest[dep]]
                if not req.specifier.contains(newest[dep], prereleases=True):
                    shadow.setdefault(dep, []).append(f"{n} requires {req.name}{req.specifier}, the newest is "
                                                      f"{newest[dep]}")
                elif older and not any(req.specifier.contains(v, prereleases=True) for v in older):
                    shadow.setdefault(dep, []).append(f"{n} requires {req.name}{req.specifier}, only the "
                                                      f"newest release ({newest[dep]})")
    lines = [
        "# What the offline GPU check (.ci/gpu-check) needs that the GPU node does not hold: the closure",
        f"# of {', '.join(roots)} (the versions installed here) for",
        "# CPython 3.12 manylinux x86-64, less the node's packages (node-held.txt), pinned. `make",
        "# gpu-wheels` downloads exactly these wheels into .gpu-wheels/, which travels with the checkout;",
        "# the check installs them with --no-index --no-deps into a folder ahead of the node's",
        "# site-packages on PYTHONPATH. Recompute: .venv/bin/python resources/gpu-node/compute.py",
        "# (README.md here). `sdist-only`: no wheel is published; gpu-wheels builds a pure-Python one.",
        "# gpu-wheels also leaves out of pulp's wheel the CBC solvers of other platforms than the node's.",
        "",
    ]
    for n in sorted(carry):
        v = carry[n]["metadata"]["version"]
        notes = (["sdist-only"] if n in sdist else []) + (["root"] if n in ROOTS else []) + (
            [f"for {', '.join(sorted(set(why[n])))}"] if why[n] else [])
        lines.append(f"{n}=={v}  # {'; '.join(notes)}")
    if shadow:
        lines += ["", "# Node-held, carried anyway: the copy here comes first on PYTHONPATH and shadows the",
                  "# node's for the check's processes only (the node's own environment is untouched)."]
        for n in sorted(shadow):
            lines.append(f"{n}=={node[n]['metadata']['version']}  # {'; '.join(shadow[n])}")
    (HERE / "carry.txt").write_text("\n".join(lines) + "\n")
    print(f"carry.txt: {len(carry)} packages, {len(shadow)} node-held shadowed ({', '.join(sorted(shadow))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
