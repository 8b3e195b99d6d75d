"""The layering contract (docs/design.md): imports between the parts of the tree run one way.

Every import of every module is read from its source (module-level and inside functions alike)
and mapped to the part it lives in; each part may import only the parts listed for it below.
Run `python -m pytest tests/test_layout.py -q` to check a change; on failure the message lists
every import that crosses the layering the wrong way."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# part -> the parts it may import (bottom floor first)
ALLOWED = {
    "litevar/model": set(),
    "kernels": {"litevar/model"},
    "litevar/default_model": {"litevar/model"},
    "profiler": {"litevar/model", "kernels"},
    "planner": {"litevar/model", "kernels", "profiler"},
    "litevar/runtime": {"litevar/model", "kernels", "profiler", "planner"},
    "litevar/commands": {"litevar/model", "kernels", "litevar/default_model", "profiler", "planner",
                         "litevar/runtime"},
    "litevar": {"litevar/model", "litevar/default_model", "planner", "litevar/runtime"},  # the API facade
}


def part_of(module: str) -> str | None:
    """The part a dotted module name belongs to (None: not ours)."""
    top = module.split(".")[0]
    if top in ("kernels", "profiler", "planner"):
        return top
    if top != "litevar":
        return None
    sub = module.split(".")[1] if "." in module else ""
    if sub in ("model", "default_model", "runtime", "commands"):
        return f"litevar/{sub}"
    return "litevar/commands" if sub == "__main__" else "litevar"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


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
    for top in ("litevar", "kernels", "profiler", "planner"):
        for path in sorted((ROOT / top).rglob("*.py")):
            src = part_of(module_name(path))
            for mod in imports(path):
                dst = part_of(mod)
                if dst is not None and dst != src:
                    graph.setdefault(src, {}).setdefault(dst, []).append(str(path.relative_to(ROOT)))
    return graph


def test_every_part_has_a_rule():
    assert set(part_graph()) <= set(ALLOWED)


def test_imports_run_one_way():
    bad = [f"{src} imports {dst} (in {', '.join(sorted(set(files)))})"
           for src, deps in part_graph().items() for dst, files in deps.items() if dst not in ALLOWED[src]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_allowed_graph_is_acyclic():
    done, order = set(), []
    while len(done) < len(ALLOWED):
        ready = [p for p in ALLOWED if p not in done and ALLOWED[p] <= done]
        assert ready, f"cycle among {set(ALLOWED) - done}"
        done.update(ready)
        order += ready


def test_the_model_floor_imports_nothing_of_ours():
    assert "litevar/model" not in part_graph()
