"""Uniform recipes: fixed compression settings, written as plans, that the planner is measured
against (and that `litevar ablate` walks through, as the LiteVAR paper's tables do).

A recipe is a '+'-joined spec of parts, each optional:
- a format for every quantizable linear (`w8a8`, `w4a8`, `w6a6`, ... any registered format);
- `mp`: mixed precision as in the paper, the ffn.fc2 layers stay full precision;
- `qk8`: the attention QK product in INT8 in every block (the paper's "QKV 8");
- `mdwa0.95`: multi-diagonal windows of threshold R0 = 0.95 in every (layer, head, scale, part)
  (per part the narrowest profiled width keeping >= R0 of the attention mass; as in the paper the
  keys of the first three scales stay whole, and so do the parts the profile flags as sinks);
- `asc`: attention shared across the CFG branches in every block.
Names of the paper's settings: see ALIASES (e.g. `paper` = W4A8 + QK8 + fc2 full precision +
MDWA 0.95 + ASC). Predicted loss, latency and memory come from the same profile and cost model
the planner uses, so a recipe and a plan are compared on equal terms.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

from kernels.formats import FORMATS
from litevar.model.errors import UserError
from planner.problem import Problem, Selection, evaluate

log = logging.getLogger(__name__)

MIXED_PRECISION_KINDS = ("ffn.fc2",)  # the paper keeps these at FP16 ("mp")
SINK_PARTS = 3  # MDWA keeps the keys of the first three scales whole (the paper's first part)
ALIASES = {
    "dense": "",
    "paper": "w4a8+qk8+mp+mdwa0.95+asc",  # LiteVAR's full recipe (Table 3, last row)
    "paper-nomp": "w4a8+qk8+mdwa0.95+asc",
}


@dataclass(frozen=True)
class Recipe:
    spec: str  # canonical text, e.g. "w4a8+qk8+mp+mdwa0.95+asc"
    fmt: str = "fp"  # format of every quantizable linear
    keep_fp: tuple[str, ...] = ()  # layer-name suffixes kept at full precision
    qk8: bool = False
    mdwa: float | None = None  # MDWA threshold R0
    asc: bool = False

    def describe(self) -> str:
        parts = [f"{self.fmt} linears" if self.fmt != "fp" else "full-precision linears"]
        parts += [f"{', '.join(self.keep_fp)} full precision"] if self.keep_fp else []
        parts += ["QK INT8"] if self.qk8 else []
        parts += [f"MDWA {self.mdwa:g}"] if self.mdwa is not None else []
        parts += ["ASC"] if self.asc else []
        return ", ".join(parts)


def parse_recipe(text: str) -> Recipe:
    """'paper' or 'w4a8+mp+mdwa0.9' -> Recipe; UserError naming the bad part."""
    spec = ALIASES.get(text.strip().lower(), text.strip().lower())
    r = Recipe(spec="")
    fmt_by_lower = {k.lower(): k for k in FORMATS}
    for part in filter(None, spec.split("+")):
        if part in fmt_by_lower:
            r = replace(r, fmt=fmt_by_lower[part])
        elif part == "mp":
            r = replace(r, keep_fp=MIXED_PRECISION_KINDS)
        elif part == "qk8":
            r = replace(r, qk8=True)
        elif part == "asc":
            r = replace(r, asc=True)
        elif m := re.fullmatch(r"mdwa(0?\.\d+|1(\.0*)?)", part):
            r = replace(r, mdwa=float(m.group(1)))
        else:
            raise UserError(f"recipe {text!r}: unknown part {part!r}; join parts with '+' from a format "
                            f"({', '.join(f.lower() for f in FORMATS)}), mp, qk8, mdwaR (0 < R <= 1), asc, "
                            f"or use a name: {', '.join(ALIASES)}")
    if r.mdwa is not None and not 0 < r.mdwa <= 1:
        raise UserError(f"recipe {text!r}: MDWA threshold {r.mdwa} must be in (0, 1]")
    return replace(r, spec=spec)


@dataclass
class RecipeSelection:
    selection: Selection
    skipped: list[str] = field(default_factory=list)  # layers left at fp: format not applicable or not profiled


def select(problem: Problem, recipe: Recipe) -> RecipeSelection:
    """The Selection a recipe makes on `problem` (build it with the recipe's threshold among its
    coverage targets: planner.build.build_problem(..., coverage_targets=targets_for(recipe)))."""
    formats, skipped = {}, []
    if recipe.fmt != "fp":
        for g in problem.formats:
            if recipe.keep_fp and g.layer.endswith(recipe.keep_fp):
                continue
            if any(o.format == recipe.fmt for o in g.options):
                formats[g.layer] = recipe.fmt
            else:
                skipped.append(g.layer)
    if skipped:
        log.info("recipe %s: %d layer(s) stay full precision (%s not profiled or not applicable): %s",
                    recipe.spec, len(skipped), recipe.fmt, ", ".join(skipped))
    layers = sorted({layer for layer, _ in problem.slots})
    widths = _ratio_widths(problem, recipe.mdwa) if recipe.mdwa is not None else {}
    sel = Selection(formats, widths, frozenset(layers) if recipe.asc else frozenset(),
                    frozenset(layers) if recipe.qk8 else frozenset())
    return RecipeSelection(sel, skipped)


def targets_for(recipe: Recipe, targets: tuple[float, ...]) -> tuple[float, ...]:
    """Coverage targets of the problem that can express `recipe`'s windows."""
    return tuple(sorted(set(targets) | ({recipe.mdwa} if recipe.mdwa is not None else set())))


def _ratio_widths(problem: Problem, r0: float) -> dict[tuple[int, int, int, int], int]:
    """Per (layer, head, scale, part) the narrowest candidate width covering >= r0 of the mass."""
    w = problem.windows
    if w.empty:
        log.warning("the profile offers no windows (no coverage or no MDWA timings): MDWA %g left out", r0)
        return {}
    if "coverage" not in w.columns:
        raise UserError("the problem's window table has no coverage column; build it with planner.build.build_problem")
    ok = w[(w["coverage"] >= r0 - 1e-12) & (w["part"] >= SINK_PARTS)].sort_values("width")
    first = ok.groupby(["layer", "head", "scale", "part"], sort=False).head(1)
    return {(int(r.layer), int(r.head), int(r.scale), int(r.part)): int(r.width) for r in first.itertuples()}


def recipe_solution(problem: Problem, recipe: Recipe):
    """A planner.solve.Solution for the recipe (predicted figures, no solver), for build.to_plan."""
    from planner.solve import Solution
    rs = select(problem, recipe)
    metrics = evaluate(problem, rs.selection)
    return Solution(rs.selection, metrics, {"name": "recipe", "recipe": recipe.spec,
                                            "description": recipe.describe(), "status": "fixed",
                                            "skipped_layers": rs.skipped})


def recipe_plan(profile, profile_path, recipe: Recipe | str, resolution: int, batch: int = 1,
                name: str = "", family: str | None = None):
    """The planner.plan.Plan of `recipe` on `profile` (predicted on its cost model)."""
    from planner.build import COVERAGE_TARGETS, build_problem, to_plan
    from planner.problem import Budgets
    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    problem = build_problem(profile, resolution, batch, None, family,
                            coverage_targets=targets_for(recipe, COVERAGE_TARGETS))
    return to_plan(problem, recipe_solution(problem, recipe), profile, profile_path, Budgets(),
                   name or recipe.spec or "dense")
