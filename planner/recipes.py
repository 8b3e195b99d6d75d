"""Uniform recipes: fixed compression settings, written as plans, that the planner is measured
against (and that `litevar ablate` walks through, as the LiteVAR paper's tables do).

A recipe is a '+'-joined spec of parts, each optional:
- a format for every quantizable linear (`w8a8`, `w4a8`, `w6a6`, ... any registered format);
- `mp`: mixed precision as in the paper, the FFNs' second linears (kind fc2) stay full precision;
- `qk8`: the attention QK product in INT8 in every block (the paper's "QKV 8");
- `mdwa0.95`: multi-diagonal windows of threshold R0 = 0.95 in every (layer, head, scale, part)
  (per part the narrowest profiled width keeping >= R0 of the attention mass; as in the paper the
  keys of the first three scales stay whole, and so do the parts the profile flags as sinks);
- `asc`: attention shared across the CFG branches in every block;
- `kv8` / `kv4`: every block's KV cache in INT8 / INT4;
- `keep-s<S>r<R>`: every block keeps only the first S scales and the R latest in its KV cache
  (AMS-KV's coarse-plus-recent rule), e.g. `kv4+keep-s1r2`.
Names of the paper's settings: see ALIASES (e.g. `paper` = W4A8 + QK8 + fc2 full precision +
MDWA 0.95 + ASC). Predicted loss, latency and memory come from the same profile and cost model
the planner uses, so a recipe and a plan are compared on equal terms.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace

from litevar.kernels.formats import FORMATS
from litevar.models.core.errors import UserError
from litevar.planner.problem import Problem, Selection, check_exclusions, evaluate

log = logging.getLogger(__name__)

MIXED_PRECISION_KINDS = ("fc2",)  # layer kinds the paper keeps at FP16 ("mp")
# MDWA keeps the keys of the first five scales whole: the paper's "first three parts" of the
# attention map, its first part being scales 1-3 merged and the next two the scales 4 and 5
SINK_PARTS = 5
ALIASES = {
    "dense": "",
    "paper": "w4a8+qk8+mp+mdwa0.95+asc",  # LiteVAR's full recipe (Table 3, last row)
    "paper-nomp": "w4a8+qk8+mdwa0.95+asc",
}


@dataclass(frozen=True)
class Recipe:
    spec: str  # canonical text, e.g. "w4a8+qk8+mp+mdwa0.95+asc"
    fmt: str = "fp"  # format of every quantizable linear
    keep_fp: tuple[str, ...] = ()  # layer kinds kept at full precision
    qk8: bool = False
    mdwa: float | None = None  # MDWA threshold R0
    asc: bool = False
    kv_fmt: str = "fp"  # every block's KV-cache format
    kv_keep: tuple[int, int] | None = None  # (sinks, recent) every block keeps; None: every scale

    def describe(self) -> str:
        parts = [f"{self.fmt} linears" if self.fmt != "fp" else "full-precision linears"]
        parts += [f"{', '.join(self.keep_fp)} full precision"] if self.keep_fp else []
        parts += ["QK INT8"] if self.qk8 else []
        parts += [f"MDWA {self.mdwa:g}"] if self.mdwa is not None else []
        parts += ["ASC"] if self.asc else []
        parts += [f"{self.kv_fmt} KV cache"] if self.kv_fmt != "fp" else []
        if self.kv_keep:
            parts.append(f"KV keeps the first {self.kv_keep[0]} and the {self.kv_keep[1]} latest scales")
        return ", ".join(parts)

    @property
    def kv_option(self) -> tuple[str, tuple] | None:
        """The (format, (sinks, recent)) of every block's KV cache; None: the plain cache."""
        if self.kv_fmt == "fp" and self.kv_keep is None:
            return None
        return self.kv_fmt, (self.kv_keep[0], self.kv_keep[1]) if self.kv_keep else (0, None)


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
        elif part in ("kv8", "kv4"):
            r = replace(r, kv_fmt=part.upper())
        elif m := re.fullmatch(r"keep-s(\d+)r(\d+)", part):
            if int(m[2]) < 1:
                raise UserError(f"recipe {text!r}: {part} keeps no recent scale; the scale being generated is "
                                "always kept: use r >= 1, e.g. keep-s1r2")
            r = replace(r, kv_keep=(int(m[1]), int(m[2])))
        elif m := re.fullmatch(r"mdwa(0?\.\d+|1(\.0*)?)", part):
            r = replace(r, mdwa=float(m.group(1)))
        else:
            raise UserError(f"recipe {text!r}: unknown part {part!r}; join parts with '+' from a format "
                            f"({', '.join(f.lower() for f in FORMATS)}), mp, qk8, mdwaR (0 < R <= 1), asc, kv8, "
                            f"kv4, keep-sSrR, or use a name: {', '.join(ALIASES)}")
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
            if g.kind in recipe.keep_fp:
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
    kv = {g.layer: recipe.kv_option for g in problem.kv} if recipe.kv_option else {}
    if recipe.kv_keep is not None:  # a block that evicts takes no window (planner.problem.check_exclusions)
        widths = {}
    sel = Selection(formats, widths, frozenset(layers) if recipe.asc else frozenset(),
                    frozenset(layers) if recipe.qk8 else frozenset(), kv)
    why = check_exclusions(problem, sel)
    if why:
        raise UserError(f"recipe {recipe.spec!r}: {why}; drop one of the two parts (qk8 reads a plain KV cache)")
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
    from litevar.planner.solve import Solution
    rs = select(problem, recipe)
    metrics = evaluate(problem, rs.selection)
    return Solution(rs.selection, metrics, {"name": "recipe", "recipe": recipe.spec,
                                            "description": recipe.describe(), "status": "fixed",
                                            "skipped_layers": rs.skipped,
                                            "loss_leaves_out": problem.meta.get("kv_unpriced", [])})


def recipe_plan(profile, profile_path, recipe: Recipe | str, resolution: int, batch: int = 1,
                name: str = "", family: str | None = None, dtype: str | None = None):
    """The planner.plan.Plan of `recipe` on `profile` (predicted on its cost model), at runtime
    dtype `dtype` (default the profile's)."""
    from litevar.planner.build import COVERAGE_TARGETS, build_problem, to_plan
    from litevar.planner.problem import Budgets
    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    problem = build_problem(profile, resolution, batch, None, family,
                            coverage_targets=targets_for(recipe, COVERAGE_TARGETS), kv_option=recipe.kv_option,
                            dtype=dtype)
    return to_plan(problem, recipe_solution(problem, recipe), profile, profile_path, Budgets(),
                   name or recipe.spec or "dense")
