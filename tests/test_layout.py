"""The layering contract (docs/design.md): imports between the parts of the tree run one way.

Every import of every module is read from its source (module-level and inside functions alike)
and mapped to the part it lives in; each part may import only the parts listed for it below.
Run `python -m pytest tests/test_layout.py -q` to check a change; on failure the message lists
every import that crosses the layering the wrong way. The same holds between the top-level
folders (FOLDERS, bottom floor first): no folder imports one above it.

The parts install under one package (pyproject.toml's package-dir): models/ as litevar.models,
kernels/ as litevar.kernels, and so on; the top floor litevar/ is litevar itself."""
import ast
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "kernels", "profiler", "planner", "litevar", "benchmarks")  # bottom floor first
PACKAGE = {"models": "litevar.models", "kernels": "litevar.kernels", "profiler": "litevar.profiler",
           "planner": "litevar.planner", "litevar": "litevar", "benchmarks": "benchmarks"}

# part -> the parts it may import (bottom floor first)
ALLOWED = {
    "models/core": set(),
    "models/var": {"models/core"},
    "models/default": {"models/core", "models/var"},
    "models/infinity": {"models/core", "models/var"},
    "kernels": {"models/core"},
    "profiler": {"models/core", "kernels"},
    "planner": {"models/core", "kernels", "profiler"},
    "litevar/runtime": {"models/core", "kernels", "profiler", "planner"},
    "litevar/commands": {"models/core", "models/var", "models/default", "kernels", "profiler", "planner",
                         "litevar/runtime"},
    "litevar": set(),  # the API facade: names only, imported on first use
    "benchmarks": {"models/core", "models/var", "models/default", "kernels", "profiler", "planner",
                   "litevar/runtime", "litevar/commands", "litevar"},
}
# found through the family registry, never imported below
FAMILIES = ("models/var", "models/default", "models/infinity")


def part_of(module: str) -> str | None:
    """The part a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] == "benchmarks":
        return "benchmarks"
    if parts[0] != "litevar":
        return None
    sub = parts[1] if len(parts) > 1 else ""
    if sub == "models":
        return f"models/{parts[2]}" if len(parts) > 2 else "models/core"
    if sub in ("kernels", "profiler", "planner"):
        return sub
    if sub in ("runtime", "commands"):
        return f"litevar/{sub}"
    return "litevar/commands" if sub == "__main__" else "litevar"


def module_name(path: Path) -> str:
    """The installed dotted name of a source file (models/core/x.py -> litevar.models.core.x)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join([PACKAGE[parts[0]], *parts[1:]]) if parts[0] != "litevar" else ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved)."""
    pkg = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def part_graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the modules that import it."""
    graph: dict[str, dict[str, list[str]]] = {}
    for top in FOLDERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            src = part_of(module_name(path))
            for mod in imports(path):
                dst = part_of(mod)
                if dst is not None and dst != src:
                    graph.setdefault(src, {}).setdefault(dst, []).append(str(path.relative_to(ROOT)))
    return graph


def folder_of(part: str) -> str:
    return part.split("/")[0]


def test_every_part_has_a_rule():
    assert set(part_graph()) <= set(ALLOWED)


def test_imports_run_one_way():
    bad = [f"{src} imports {dst} (in {', '.join(sorted(set(files)))})"
           for src, deps in part_graph().items() for dst, files in deps.items() if dst not in ALLOWED[src]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_folder_imports_one_above_it():
    rank = {f: i for i, f in enumerate(FOLDERS)}
    bad = [f"{src} imports {dst} (in {', '.join(sorted(set(files)))})"
           for src, deps in part_graph().items() for dst, files in deps.items()
           if rank[folder_of(dst)] > rank[folder_of(src)]]
    assert not bad, "a folder imports one above it:\n" + "\n".join(bad)


def test_the_allowed_graph_is_acyclic():
    done, order = set(), []
    while len(done) < len(ALLOWED):
        ready = [p for p in ALLOWED if p not in done and ALLOWED[p] <= done]
        assert ready, f"cycle among {set(ALLOWED) - done}"
        done.update(ready)
        order += ready


def test_the_model_floor_imports_nothing_of_ours():
    assert "models/core" not in part_graph()


def test_kernels_profiler_and_planner_name_no_family():
    """They reach a model through the family registry (litevar.models.core.family), never by import."""
    graph = part_graph()
    bad = [f"{src} imports {fam}" for src in ("kernels", "profiler", "planner", "litevar/runtime")
           for fam in FAMILIES if fam in graph.get(src, {})]
    assert not bad, bad


def test_the_package_installs_no_generic_top_level_name():
    """pyproject.toml installs every part under litevar (`pip show -f litevar` lists no top-level
    kernels, profiler or planner), and the installed metadata says so."""
    import tomllib
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "litevar" or p.startswith("litevar.") for p in setup["packages"])
    mapped = {PACKAGE[f] for f in FOLDERS if f not in ("litevar", "benchmarks")}
    assert set(setup["package-dir"]) == {"litevar", *mapped}
    try:
        dist = importlib.metadata.distribution("litevar")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("litevar is not installed (pip install -e .)")
    tops = {line.strip() for line in (dist.read_text("top_level.txt") or "").splitlines() if line.strip()}
    assert tops <= {"litevar"}, tops
