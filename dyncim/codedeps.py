"""Which package files a pipeline step runs, derived from the package's own imports.

The Snakefile declares these files as each job's inputs (a code change re-runs exactly the jobs
that run that code); a test checks that dvc.yaml's stage dependencies cover them. Torch-free.

A step `python -m dyncim <step>` runs: the package's `__init__`, `__main__` and the CLI with its
module-level imports, plus the imports inside the CLI's `cmd_<step>` function (the CLI's other
function-level imports run only by hand, without `--job`, or for another step). From there every
`dyncim` import is followed, absolute or relative, at module level or inside functions (they
run too), with the packages each module sits in. Methods are imported by name at run time
(dyncim.methods.catalog): a step that trains or evaluates methods names their types.

One `snakemake` run asks for every rule's and job's files, hundreds of times over the same
modules: each module is parsed once, and its import sets, each closure and each step's files are
computed once per process (`clear_caches()` starts afresh, for tests).
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "dyncim"
ROOT = Path(__file__).resolve().parent.parent


# Memoised per process, never invalidated: a process (one snakemake invocation) never sees the
# package's sources change while it runs. Cached values are immutable (Path, AST only read,
# frozenset, tuple); the public functions hand out fresh lists and sets.
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
# Import statements sit only in statement lists (bodies, else/finally blocks, except handlers,
# match cases), never inside an expression (a lambda, decorator or default value holds none)
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


@functools.cache
def module_file(module: str) -> Path | None:
    """The source file of a package module (`dyncim.a.b`), or None if it is not one."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@functools.cache
def _tree(module: str) -> ast.Module:
    path = module_file(module)
    return ast.parse(path.read_text(), str(path))


def _walk(node, into_functions: bool):
    """The statements below `node`; without `into_functions`, none inside a function."""
    todo = [node]
    while todo:
        parent = todo.pop()
        for field in _BLOCKS:
            for child in getattr(parent, field, ()):
                if into_functions or not isinstance(child, _FUNCTIONS):
                    yield child
                    todo.append(child)


def _imported(module: str, nodes) -> set[str]:
    """Package modules named by the import statements among `nodes` of `module`."""
    is_pkg = module_file(module).name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if module_file(m) is not None}


@functools.cache
def _imports(module: str, into_functions: bool) -> frozenset[str]:
    return frozenset(_imported(module, _walk(_tree(module), into_functions)))


def imports(module: str, into_functions: bool = True) -> set[str]:
    """Package modules `module` imports (with `into_functions`, also inside its functions)."""
    return set(_imports(module, bool(into_functions)))


def _with_packages(modules) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    out = set()
    for m in modules:
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


@functools.cache
def _closure(modules: frozenset, module_level: frozenset) -> frozenset[str]:
    todo, seen = list(_with_packages(modules)), set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(_with_packages(_imports(m, m not in module_level)) - seen)
    return frozenset(seen)


def closure(modules, module_level=()) -> set[str]:
    """Every package module that importing `modules` runs; of the `module_level` ones, only
    their module-level imports count."""
    return set(_closure(frozenset(modules), frozenset(module_level)))


@functools.cache
def _step_modules(step: str) -> frozenset[str]:
    cli = f"{PACKAGE}.cli"
    fn = next((n for n in _tree(cli).body if isinstance(n, ast.FunctionDef) and n.name == f"cmd_{step}"), None)
    if fn is None:
        raise ValueError(f"{cli} has no cmd_{step}: not a step")
    return _closure(frozenset({f"{PACKAGE}.__main__", cli} | _imported(cli, _walk(fn, True))), frozenset({cli}))


def step_modules(step: str) -> set[str]:
    """The modules `python -m dyncim <step>` imports before it loads any method."""
    return set(_step_modules(step))


def method_modules(types) -> set[str]:
    from .methods.catalog import CATALOG
    return closure(f"{PACKAGE}.methods.{mod}" for t in types for mod in CATALOG[t].modules)


@functools.cache
def _files(step: str, types: tuple) -> tuple[str, ...]:
    mods = _step_modules(step) | method_modules(types)
    return tuple(sorted(module_file(m).relative_to(ROOT).as_posix() for m in mods))


def step_files(step: str, method_types=()) -> list[str]:
    """Package files (relative to the project root) a step runs, with the given method types'."""
    return list(_files(step, tuple(sorted(set(method_types)))))


def clear_caches() -> None:
    """Forget every parsed module and derived result (tests: count parses, compare afresh)."""
    for f in (module_file, _tree, _imports, _closure, _step_modules, _files):
        f.cache_clear()
