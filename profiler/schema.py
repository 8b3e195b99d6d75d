"""What a profile must hold for the planner to trust it (docs/profile-schema.md), checked on load.

A profile may come from another machine, an older version, a hand edit, a full disk or a
colleague. `validate(profile, where)` checks every table against its columns, their types and
value rules, the indices against the profile's own architecture, and the metadata the planner
reads; the first violation raises a UserError naming the file, the table, the first bad row and
the stage to re-run (`litevar profile --stages STAGE`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from litevar.models.core.errors import UserError
from litevar.models.core.family import Arch, arch_from, family_of

FULL = -1  # kernels.windows.FULL


@dataclass(frozen=True)
class Col:
    kind: str  # int | float | str | bool
    rule: str = ""  # a key of RULES ("" = any value of the kind)
    optional: bool = False  # the column may be absent (profiles made before it existed)


# rule -> (test on a float array, what it asks for)
RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "finite": (np.isfinite, "a finite number"),
    "positive": (lambda v: np.isfinite(v) & (v > 0), "a finite number > 0"),
    "nonneg": (lambda v: np.isfinite(v) & (v >= 0), "a finite number >= 0"),
    "unit": (lambda v: np.isfinite(v) & (v >= 0) & (v <= 1 + 1e-9), "a number in [0, 1]"),
    "unit_open": (lambda v: np.isfinite(v) & (v > 0) & (v <= 1 + 1e-9), "a number in (0, 1]"),
    "cosine": (lambda v: np.isfinite(v) & (np.abs(v) <= 1 + 1e-6), "a cosine in [-1, 1]"),
    "width": (lambda v: v >= FULL, "a half-width >= 0, or -1 (FULL)"),
    "optional_nonneg": (lambda v: np.isnan(v) | (np.isfinite(v) & (v >= 0)),
                        "a finite number >= 0 or NaN (not measured)"),
}

# table -> (stage that writes it, {column: Col})
TABLES: dict[str, tuple[str, dict[str, Col]]] = {
    "sensitivity": ("sensitivity", {"layer": Col("str"), "kind": Col("str"), "format": Col("str"),
                                    "loss": Col("float", "finite"), "kl": Col("float", "finite"),
                                    "top1_agree": Col("float", "unit")}),
    "joint": ("sensitivity", {"trial": Col("int", "nonneg"), "n_quantized": Col("int", "nonneg"),
                              "predicted": Col("float", "finite"), "measured": Col("float", "finite")}),
    "coverage": ("coverage", {"layer": Col("int"), "head": Col("int"), "scale": Col("int"), "part": Col("int"),
                              "family": Col("str"), "width": Col("int", "width"), "coverage": Col("float", "unit"),
                              "kept": Col("float", "unit")}),
    "sinks": ("coverage", {"layer": Col("int"), "head": Col("int"), "scale": Col("int"), "part": Col("int"),
                           "mass": Col("float", "unit"), "sink": Col("bool")}),
    "window_fit": ("coverage", {"trial": Col("int", "nonneg"), "lost_mass": Col("float", "nonneg"),
                                "measured": Col("float", "finite")}),
    "cfg": ("coverage", {"layer": Col("int"), "scale": Col("int"), "similarity": Col("float", "cosine")}),
    "cfg_share": ("cfg", {"layer": Col("int"), "loss": Col("float", "finite")}),
    "cost_linear": ("cost", {"K": Col("int", "positive"), "N": Col("int", "positive"), "M": Col("int", "positive"),
                             "format": Col("str"), "backend": Col("str"), "ms": Col("float", "positive"),
                             "workspace_mb": Col("float", "optional_nonneg")}),
    "cost_attn": ("cost", {"B": Col("int", "positive"), "H": Col("int", "positive"), "D": Col("int", "positive"),
                           "q_len": Col("int", "positive"), "kv_len": Col("int", "positive"),
                           "kept": Col("float", "unit_open"), "backend": Col("str"), "ms": Col("float", "positive")}),
    "cost_e2e": ("cost", {"resolution": Col("int", "positive"), "batch": Col("int", "positive"), "config": Col("str"),
                          "ms": Col("float", "positive"), "peak_mb": Col("float", "positive"),
                          "patch_nums": Col("str"), "held_out": Col("bool"),
                          "rss_mb": Col("float", "optional_nonneg"),
                          "peak_tf_mb": Col("float", "optional_nonneg", optional=True),
                          "peak_decode_mb": Col("float", "optional_nonneg", optional=True),
                          "dtype": Col("str", optional=True)}),
    "cost_decode": ("cost", {"resolution": Col("int", "positive"), "batch": Col("int", "positive"),
                             "peak_mb": Col("float", "positive")}),
    "evict_fit": ("coverage", {"trial": Col("int", "nonneg"), "sinks": Col("int", "nonneg"),
                               "recent": Col("int", "positive"), "lost_mass": Col("float", "nonneg"),
                               "measured": Col("float", "finite")}),
}
WINDOW_FAMILIES = ("band", "spatial")


class _Where:
    """Builds the one-line errors of one profile file."""

    def __init__(self, where: str):
        self.where = where

    def table(self, name: str, row: int | None, what: str) -> UserError:
        stage = TABLES.get(name, ("cost",))[0]
        at = f", row {row}" if row is not None else ""
        return UserError(f"{self.where}: table {name!r}{at}: {what}; re-run that stage: "
                         f"`litevar profile --stages {stage}` (or make the profile again)")

    def meta(self, key: str, what: str, stage: str | None = None) -> UserError:
        fix = f"re-run `litevar profile --stages {stage}`" if stage else "make the profile again with `litevar profile`"
        return UserError(f"{self.where}: meta.{key}: {what}; {fix}")


def _first(mask: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.asarray(mask, dtype=bool))
    return int(bad[0]) if len(bad) else None


def _v(x):
    """A plain Python value for messages (numpy scalars print as np.float64(...))."""
    return x.item() if hasattr(x, "item") else x


def _row_text(df: pd.DataFrame, i: int) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in df.iloc[i].to_dict().items())[:200]


def check_columns(name: str, df: pd.DataFrame, w: _Where) -> None:
    """The table's documented columns, each of its type and within its rule."""
    cols = TABLES[name][1]
    missing = [c for c, spec in cols.items() if c not in df.columns and not spec.optional]
    if missing:
        raise w.table(name, None, f"lacks columns {missing} (has {list(df.columns)})")
    for c, spec in cols.items():
        if c not in df.columns:
            continue
        s = df[c]
        ok_type = {"int": pd.api.types.is_integer_dtype, "bool": pd.api.types.is_bool_dtype,
                   "float": pd.api.types.is_numeric_dtype,
                   "str": lambda x: pd.api.types.is_string_dtype(x) or pd.api.types.is_object_dtype(x)}[spec.kind](s)
        if spec.kind == "str" and ok_type:
            i = _first(s.map(lambda v: isinstance(v, str)).to_numpy())
            if i is not None:
                raise w.table(name, i, f"column {c!r} must hold text, got {_v(s.iloc[i])!r} ({_row_text(df, i)})")
        if not ok_type:
            raise w.table(name, None, f"column {c!r} must be {spec.kind}, got {s.dtype} values such as "
                                      f"{_v(s.iloc[0])!r}")
        if spec.rule:
            test, want = RULES[spec.rule]
            i = _first(test(s.to_numpy(dtype=float)))
            if i is not None:
                raise w.table(name, i, f"{c} = {_v(s.iloc[i])!r} is not {want} ({_row_text(df, i)})")


def _index_range(name: str, df: pd.DataFrame, col: str, hi: int, w: _Where, what: str) -> None:
    i = _first((df[col] >= 0) & (df[col] < hi))
    if i is not None:
        raise w.table(name, i, f"{col} = {_v(df[col].iloc[i])} does not exist: {what} ({_row_text(df, i)})")


def check_indices(name: str, df: pd.DataFrame, dims: dict, w: _Where) -> None:
    """Layers, heads, scales and parts that exist in the profile's architecture."""
    if name not in ("coverage", "sinks", "cfg", "cfg_share"):
        return
    depth, H, S = dims["depth"], dims["H"], dims["S"]
    _index_range(name, df, "layer", depth, w, f"the model has blocks 0..{depth - 1}")
    if "head" in df:
        _index_range(name, df, "head", H, w, f"the model has heads 0..{H - 1}")
    if "scale" in df:
        _index_range(name, df, "scale", S, w, f"the schedule has scales 0..{S - 1}")
    if "part" in df:
        i = _first((df["part"] >= 0) & (df["part"] <= df["scale"]))
        if i is not None:
            raise w.table(name, i, f"part {_v(df['part'].iloc[i])} of scale {_v(df['scale'].iloc[i])} does not "
                                   f"exist: the queries of scale k see parts 0..k ({_row_text(df, i)})")
    if "family" in df:
        i = _first(df["family"].isin(WINDOW_FAMILIES).to_numpy())
        if i is not None:
            raise w.table(name, i, f"unknown window family {df['family'].iloc[i]!r}; use one of {WINDOW_FAMILIES}")


def check_coverage_monotone(df: pd.DataFrame, w: _Where) -> None:
    """Coverage never falls as the window widens (FULL, -1, is the widest)."""
    order = df.assign(_w=df["width"].where(df["width"] != FULL, np.iinfo(np.int64).max))
    order = order.sort_values(["layer", "head", "scale", "part", "family", "_w"], kind="stable")
    keys = order[["layer", "head", "scale", "part", "family"]]
    same = (keys == keys.shift()).all(axis=1).to_numpy()
    drop = order["coverage"].diff().to_numpy() < -1e-9
    bad = np.flatnonzero(same & drop)
    if len(bad):
        i = int(order.index[bad[0]])
        raise w.table("coverage", i, f"coverage falls as the window widens ({_row_text(df, i)}, after "
                                     f"{order['coverage'].iloc[bad[0] - 1]:.6g} at a narrower width)")


def check_layers(df: pd.DataFrame, arch: Arch, w: _Where) -> None:
    """Sensitivity rows name layers of the architecture and known formats."""
    from litevar.kernels.formats import FORMATS
    from litevar.kernels.kvquant import KV_FORMATS
    family = family_of(arch)
    kv_names = set(family.site_names(arch, "kv"))
    names = set(family.linear_names(arch)) | set(family.site_names(arch, "qk")) | kv_names
    i = _first(df["layer"].isin(names).to_numpy())
    if i is not None:
        raise w.table("sensitivity", i, f"layer {df['layer'].iloc[i]!r} is not a layer of this architecture "
                                        f"(depth {arch.depth}; e.g. {', '.join(sorted(names)[:3])})")
    kv = set(KV_FORMATS) - {"fp"}
    known = set(FORMATS) | {"QK8"} | kv
    i = _first(df["format"].isin(known).to_numpy())
    if i is not None:
        raise w.table("sensitivity", i, f"unknown format {df['format'].iloc[i]!r}; this litevar knows "
                                        f"{', '.join(sorted(known))}")
    on_kv = df["layer"].isin(kv_names).to_numpy()
    i = _first(on_kv == df["format"].isin(kv).to_numpy())
    if i is not None:
        raise w.table("sensitivity", i, f"{df['layer'].iloc[i]!r} with format {df['format'].iloc[i]!r}: KV-cache "
                                        f"formats ({', '.join(sorted(kv))}) go with a block's KV-cache rows "
                                        f"({sorted(kv_names)[0]}, ...) only")


def typed_arch(arch, w: _Where) -> Arch:
    """The profile's architecture (meta.model.arch) as its family reads it, or one line naming what is wrong."""
    if not isinstance(arch, dict):
        raise w.meta("model.arch", f"missing or not an object ({type(arch).__name__})")
    pns = arch.get("patch_nums")
    if pns is not None and not (isinstance(pns, list) and len(pns) >= 2 and all(isinstance(p, int) and p > 0
                                                                               for p in pns)):
        raise w.meta("model.arch.patch_nums", f"{pns!r:.80} is not a list of positive integers")
    try:
        a = arch_from(arch)
    except (ValueError, TypeError) as e:
        raise w.meta("model.arch", str(e)) from None
    except UserError as e:  # an unknown family
        raise w.meta("model.arch.family", str(e)) from None
    missing = [k for k in a.PLAN_KEYS if k not in arch]
    if missing:
        raise w.meta("model.arch", f"lacks {missing}")
    bad = [k for k in a.PLAN_KEYS if not (isinstance(arch[k], (int, float)) and not isinstance(arch[k], bool)
                                          and math.isfinite(arch[k]) and arch[k] > 0)]
    if bad:
        raise w.meta("model.arch", f"{bad[0]} = {arch[bad[0]]!r} must be a positive number")
    return a


def _finite_numbers(obj, path: str, w: _Where, stage: str) -> None:
    """Every number in a JSON tree (coefficients) is finite."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{path}.{k}", w, stage)
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            _finite_numbers(v, f"{path}[{k}]", w, stage)
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise w.meta(path, f"{obj} is not finite", stage)


def check_cost_model(cm, w: _Where) -> None:
    """meta.cost_model: the fitted coefficients the planner evaluates, all present and finite."""
    if not isinstance(cm, dict):
        raise w.meta("cost_model", "missing (the profile has cost tables but no fitted model)", "cost")
    for key in ("dtype", "format_kernel", "linear", "attn", "e2e", "memory"):
        if key not in cm:
            raise w.meta(f"cost_model.{key}", "missing", "cost")
    from litevar.profiler.costmodel import ATTN_FEATURES, DTYPE_BYTES, E2E_FEATURES, LINEAR_FEATURES
    if cm["dtype"] not in DTYPE_BYTES:
        raise w.meta("cost_model.dtype", f"{cm['dtype']!r} is not one of {sorted(DTYPE_BYTES)}", "cost")
    for part, n in (("linear", len(LINEAR_FEATURES)), ("attn", len(ATTN_FEATURES))):
        for name, entry in cm[part].items():
            coef = entry.get("coef") if isinstance(entry, dict) else None
            if not isinstance(coef, list) or len(coef) != n:
                raise w.meta(f"cost_model.{part}.{name}.coef", f"must be {n} numbers, got {coef!r:.60}", "cost")
    e, m = cm["e2e"], cm["memory"]
    if len(e.get("coef", [])) != len(E2E_FEATURES) or len(m.get("coef", [])) != 3 or "vae_mb" not in m:
        raise w.meta("cost_model.e2e / memory", "coefficients missing or of the wrong length", "cost")
    _finite_numbers({k: cm[k] for k in ("linear", "attn", "e2e", "memory", "linear_workspace") if k in cm},
                    "cost_model", w, "cost")
    from litevar.profiler.costmodel import CostModel
    try:
        CostModel.from_dict(cm)
    except ValueError as e:
        raise w.meta("cost_model", str(e), "cost") from None


def check_fit(fit, key: str, stage: str, w: _Where) -> None:
    """meta.<key>.coef: a loss-per-lost-mass factor, finite and >= 0."""
    coef = fit.get("coef") if isinstance(fit, dict) else None
    if not (isinstance(coef, (int, float)) and not isinstance(coef, bool) and math.isfinite(coef) and coef >= 0):
        raise w.meta(f"{key}.coef", f"{coef!r} is not a finite number >= 0", stage)


def check_validation(rows, w: _Where) -> None:
    """meta.validation (read by the planner's guard): measured and predicted figures > 0."""
    if not isinstance(rows, list):
        raise w.meta("validation", f"must be a list, got {type(rows).__name__}", "cost")
    for i, v in enumerate(rows):
        for k in ("measured_ms", "predicted_ms", "measured_mb", "predicted_mb"):
            x = v.get(k) if isinstance(v, dict) else None
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                raise w.meta(f"validation[{i}].{k}", f"{x!r} is not a finite number > 0", "cost")


def validate(profile, where: str = "profile", arch: dict | None = None) -> None:
    """Raise UserError at the first rule `profile` breaks (see the module docstring). `arch`:
    the architecture to check indices against (default: the profile's meta.model.arch)."""
    w = _Where(where)
    meta, tables = profile.meta, profile.tables
    if not isinstance(meta, dict):
        raise w.meta("", "meta must be an object")
    arch = arch if arch is not None else (meta.get("model") or {}).get("arch")
    a = typed_arch(arch, w) if (tables or "model" in meta) else None
    dims = None if a is None else {"depth": a.depth, "H": a.num_heads, "S": len(a.patch_nums or ())}
    for name, df in tables.items():
        if name not in TABLES:
            continue  # extra tables are kept as they are
        check_columns(name, df, w)
        if dims is not None and dims["S"]:
            check_indices(name, df, dims, w)
        elif name in ("coverage", "sinks", "cfg") and len(df):
            raise w.meta("model.arch.patch_nums", "missing: the coverage tables cannot be checked without it")
    if "coverage" in tables:
        check_coverage_monotone(tables["coverage"], w)
        check_fit(meta.get("window_fit", {}), "window_fit", "coverage", w)
    if "evict_fit" in tables:
        check_fit(meta.get("evict_fit"), "evict_fit", "coverage", w)
    if "sensitivity" in tables:
        check_layers(tables["sensitivity"], a, w)
    if any(n.startswith("cost_") for n in tables):
        check_cost_model(meta.get("cost_model"), w)
        check_validation(meta.get("validation", []), w)


def rules_markdown() -> str:
    """The rules above as the markdown section of docs/profile-schema.md (tests/test_docs.py checks
    that the page holds it: `python -m litevar.profiler.schema` prints it)."""
    lines = ["| table | stage | column: type, rule |", "|---|---|---|"]
    for name, (stage, cols) in TABLES.items():
        spec = "; ".join(f"`{c}`: {col.kind}" + (f", {RULES[col.rule][1]}" if col.rule else "")
                         + (" (optional)" if col.optional else "") for c, col in cols.items())
        lines.append(f"| `{name}` | {stage} | {spec} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(rules_markdown(), end="")
