"""From a profile to a Problem (plain data), and from a solution back to a Plan.

Every number comes from the profile: losses from its sensitivity / coverage / cfg_share tables
(one unit, meta.loss_unit), costs from its fitted cost model (profiler.costmodel). Window
candidates per (layer, head, scale, part): for each coverage target the narrowest profiled
width reaching it (a handful per part); parts flagged as attention sinks stay FULL.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import pandas as pd

from litevar.kernels.formats import FORMATS, get_format
from litevar.kernels.kvquant import KV_FORMATS as KV_REGISTRY
from litevar.models.core.atomic import file_sha256
from litevar.models.core.device import PLAN_KEYS
from litevar.models.core.errors import UserError
from litevar.models.core.family import Arch, family_of
from litevar.planner.problem import (
    FULL,
    WINDOW_COLUMNS,
    AttnSlot,
    FormatGroup,
    FormatOption,
    KVGroup,
    KVOption,
    Problem,
    Selection,
)
from litevar.profiler import costmodel as C

log = logging.getLogger(__name__)

QK8 = "QK8"  # sensitivity format of a block's `<attention>.qk` row: the QK product in INT8
COVERAGE_TARGETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
KEPT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # where the MDWA kernel cost is sampled (exact when affine)


def profile_sha256(path) -> str:
    """sha256 of the profile file's bytes: the plan's link to the profile it was made from."""
    return file_sha256(path)


def guard_band(validation: list[dict]) -> dict:
    """Safety margins on the budgets from the cost model's validation rows (profile
    meta.validation: measured and predicted figures of every timed generation).

    latency: the worst under-prediction of a quantized generation's latency relative to the
    dense one timed at the same schedule and batch in the same rounds (ratios cancel a machine
    that drifts between profile and use, which slows dense and plan alike); memory: the worst
    under-prediction of a generation's peak memory. Both 0 when the model never under-predicts."""
    lat = [(v["measured_ms"] / d["measured_ms"]) / (v["predicted_ms"] / d["predicted_ms"]) - 1
           for v, d in C.dense_pairs(validation)]
    mem = [v["measured_mb"] / v["predicted_mb"] - 1 for v in validation if v.get("predicted_mb")]
    return {"latency": max([0.0, *lat]), "memory": max([0.0, *mem]),
            "source": f"cost-model validation: worst under-prediction of {len(lat)} quantized generations' "
                      f"latency relative to dense and of {len(mem)} generations' peak memory"}


def parse_formats(text: str | None, profiled: set[str]) -> list[str]:
    """--formats 'W8A8,W4A8,QK8' -> names (default: every format the profile measured)."""
    if text is None:
        return sorted(profiled)
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n != QK8 and n not in FORMATS and n not in kv_formats():
            raise UserError(f"--formats: unknown format {n!r}; choose from {', '.join([*FORMATS, QK8, *kv_formats()])}")
    missing = [n for n in names if n != "fp" and n not in profiled]
    if missing:
        raise UserError(f"--formats {','.join(missing)}: the profile has no sensitivity for them (it has "
                        f"{', '.join(sorted(profiled)) or 'none'}); re-run `litevar profile` or drop them")
    return [n for n in names if n != "fp"]


def build_problem(profile, resolution: int, batch: int = 1, formats: list[str] | None = None,
                  family: str | None = None, coverage_targets=COVERAGE_TARGETS, kv_option=None,
                  dtype: str | None = None) -> Problem:
    """The planning problem of `profile` (profiler.profile.Profile) at `resolution` and `batch`, at
    runtime dtype `dtype` (whole-model autocast; default the profile's: its kernels, in-model
    factors and activations at that dtype, and its measured loss as a base every plan pays).
    The reference (speedup, dense memory) is the dense model as it ships (costmodel.as_shipped: a
    text encoder resident) at the profile's own dtype.
    kv_option: a (KV format, (sinks, recent)) every block must offer even where the profile cannot
    price its loss (a recipe's; meta.kv_unpriced says what was left out of its loss)."""
    if batch < 1:
        raise UserError(f"--batch {batch}: give a positive number of images")
    if not profile.meta.get("cost_model") or not profile.meta.get("model", {}).get("arch"):
        raise UserError("the profile has no cost model (meta.cost_model) or no meta.model.arch; "
                        "re-run `litevar profile` with the cost stage")
    cm, arch = profile.cost_model, profile.arch
    dtype = runtime_dtype(profile, dtype)
    pns = family_of(arch).schedule_for(resolution)
    reference = cm.predict(arch, pns, batch, C.as_shipped(arch))
    dense = cm.predict(arch, pns, batch, dtype=dtype)
    alpha = dense.alpha
    sens = profile.table("sensitivity")
    losses = {(r.layer, r.format): float(r.loss) for r in sens.itertuples()}
    allowed = formats if formats is not None else sorted(set(sens["format"]))
    groups = format_groups(cm, arch, pns, batch, losses, [f for f in allowed if f != QK8], dtype)
    fp_weights = sum(g.options[0].weight_mb for g in groups)
    slots = attention_slots(cm, arch, pns, batch, alpha, dtype)
    cfg_loss = {}
    if "cfg_share" in profile.tables:
        cfg_loss = {int(r.layer): float(r.loss) for r in profile.table("cfg_share").itertuples()
                    if r.layer < arch.depth}
    qk_loss = {}
    if QK8 in allowed:
        qk_names = {n: i for i, n in enumerate(family_of(arch).site_names(arch, "qk"))}
        qk_loss = {qk_names[name]: v for (name, f), v in losses.items() if f == QK8 and name in qk_names}
    fam, windows = window_options(profile, arch, pns, family, coverage_targets, slots)
    decode = dense.decode_mb - fp_weights if cm.memory.decode else None
    problem = Problem(groups, windows, slots, cfg_loss, qk_loss,
                      base_latency_ms=dense.overhead_ms,
                      base_memory_mb=dense.transformer_mb - fp_weights - dense.memory_parts_mb["kv_mb"],
                      dense_latency_ms=reference.latency_ms, dense_memory_mb=reference.memory_mb,
                      meta={"arch": arch, "patch_nums": list(pns), "resolution": resolution, "batch": batch,
                            "family": fam, "formats": allowed, "device": cm.device, "dtype": dtype},
                      kv=kv_groups(profile, cm, arch, pns, batch, alpha, allowed, dtype), decode_base_mb=decode,
                      base_loss=runtime_loss(profile, dtype))
    if kv_option is not None:
        problem.kv, problem.meta["kv_unpriced"] = required_kv(profile, cm, arch, pns, batch, alpha, problem.kv,
                                                              kv_option, dtype)
    enc_mb = C.text_encoder_mb(arch)
    if enc_mb:  # the family's text encoder: a lever (text_encoder_problem), resident until one is chosen
        parts = dense.memory_parts_mb
        problem.meta["text_encoder"] = {"mb": enc_mb, "model_other_mb": parts["other_params_mb"] + parts["vae_mb"]}
        problem = text_encoder_problem(problem, "resident", 1, cm)
    problem.check_finite()
    return problem


def text_encoder_problem(problem: Problem, mode: str, images_per_prompt: int, cm: C.CostModel) -> Problem:
    """The problem with the text encoder `mode` (costmodel.TEXT_ENCODER_MODES) set: resident, its MB
    in both phases' rows; freed, its reload every `images_per_prompt` images in the latency. Either
    way the encoding phase (the model's weights, the other parameters and the VAE, with the
    encoder) is a row of the same form as the decode's, so the larger constant of the two is kept."""
    import dataclasses
    te = problem.meta.get("text_encoder")
    if te is None:
        raise UserError(f"--text-encoder {mode}: the {problem.meta['arch'].family} family has no text encoder; drop "
                        "--text-encoder")
    base = te.get("base", {"memory": problem.base_memory_mb, "decode": problem.decode_base_mb,
                           "latency": problem.base_latency_ms})
    enc, resident = te["mb"], mode == "resident"
    try:  # ms per image of reloading a freed encoder (None: the profile did not measure the load rate)
        reload_ms = cm.reload_ms(problem.meta["arch"]) / images_per_prompt
    except UserError:
        if not resident:
            raise
        reload_ms = None
    added = 0.0 if resident else reload_ms
    decode = None if base["decode"] is None else max(base["decode"] + enc * resident, te["model_other_mb"] + enc)
    meta = {**problem.meta, "text_encoder": {**te, "base": base, "mode": mode, "images_per_prompt": images_per_prompt,
                                             "reload_ms": reload_ms}}
    return dataclasses.replace(problem, base_memory_mb=base["memory"] + enc * resident, decode_base_mb=decode,
                               base_latency_ms=base["latency"] + added, meta=meta)


def runtime_dtype(profile, dtype: str | None) -> str:
    """`dtype`, checked against the runtime dtypes the profile priced (default: its own)."""
    cm = profile.cost_model
    if dtype is None:
        return cm.dtype
    if dtype not in cm.dtypes():
        raise UserError(f"--dtype {dtype}: the profile priced runtime dtypes {', '.join(cm.dtypes())} only; re-run "
                        f"the cost stage with `litevar profile --runtime-dtypes {dtype}`, or pick one of those")
    return dtype


def runtime_loss(profile, dtype: str) -> float:
    """The measured loss of running the whole model at `dtype` (0 at the dtype the losses were
    measured at, the profiled cost model's; the sensitivity stage's meta.runtime_loss otherwise).
    A dtype not measured for loss is refused: its loss would be a guess."""
    measured_at = (profile.meta.get("cost_model") or {}).get("dtype", profile.cost_model.dtype)
    if dtype == measured_at:
        return 0.0
    measured = profile.meta.get("runtime_loss") or {}
    if dtype not in measured:
        raise UserError(f"the profile priced runtime dtype {dtype} but measured no loss for it (meta.runtime_loss "
                        "has " + (", ".join(measured) or "none") + "); re-run `litevar profile --stages "
                        "sensitivity`, or plan at the profile's dtype with --dtype " + measured_at)
    return float(measured[dtype])


KEEP_RULES = tuple((s, r) for s in (1, 3, 5) for r in (1, 2, 3))  # (sinks, recent): coarse + latest scales


def kv_formats() -> tuple[str, ...]:
    """The quantized KV-cache formats (kernels.kvquant's registry), planned where profiled."""
    return tuple(name for name, f in KV_REGISTRY.items() if f.quantized)


def kv_losses(profile) -> dict[tuple[str, str], float]:
    """(block's `<attention>.kv` name, KV format) -> measured loss (sensitivity stage)."""
    sens = profile.tables.get("sensitivity")
    kv = kv_formats()
    return {} if sens is None else {(r.layer, r.format): float(r.loss) for r in sens.itertuples() if r.format in kv}


def kv_groups(profile, cm: C.CostModel, arch: Arch, pns, batch, alpha, allowed, dtype: str | None = None
              ) -> list[KVGroup]:
    """One group per block: the plain cache, and every KV format the profile measured a loss for
    and timed, with every keep rule (KEEP_RULES) when the profile can price evicting (attention
    measured at this schedule: eviction_losses). Costs from kernels.kvcache (bytes) and
    CostModel.kv_call_ms (time), without and with CFG sharing."""
    losses, timed = kv_losses(profile), set(cm.attn)
    evict = eviction_losses(profile, arch, pns) if KV_REGISTRY["fp"].attn_backend in timed else None
    names = family_of(arch).site_names(arch, "kv")
    groups = []
    for layer in range(arch.depth):
        opts = []
        for fmt in ("fp", *[f for f in kv_formats() if f in allowed]):
            if fmt != "fp" and ((names[layer], fmt) not in losses or KV_REGISTRY[fmt].attn_backend not in timed):
                continue
            for keep in [(0, None), *(KEEP_RULES if evict is not None else ())]:
                loss = losses.get((names[layer], fmt), 0.0) + (evict or {}).get((layer, keep), 0.0)
                opts.append(kv_option(cm, arch, pns, batch, alpha, fmt, keep, loss, dtype))
        groups.append(KVGroup(layer, tuple(opts)))
    return groups


def kv_option(cm: C.CostModel, arch: Arch, pns, batch, alpha, fmt: str, keep, loss: float,
              dtype: str | None = None) -> KVOption:
    """One block's KV option: its loss, and its bytes (kernels.kvcache) and extra attention time
    (CostModel.kv_call_ms) without and with CFG sharing."""
    from litevar.kernels.kvcache import KeepRule, KVSpec, gather_bytes, held_bytes, written_bytes
    H, D, act = arch.num_heads, arch.head_dim, C.DTYPE_BYTES[dtype or cm.dtype]
    specs = [KVSpec(fmt, KeepRule(*keep), bool(c)) for c in (0, 1)]
    mb = tuple(held_bytes(pns, sp, batch, H, D, act) / C.MB for sp in specs)  # held at the last scale
    # its own last-scale call, a transient: the segment it writes + g * the buffer it gathers
    gather = tuple((written_bytes(pns, sp, batch, H, D, act) + cm.memory.gather_coef
                    * gather_bytes(pns, sp, batch, H, D, act)) / C.MB for sp in specs)
    ms = tuple(alpha * _kv_extra_ms(cm, arch, pns, batch, sp, dtype) for sp in specs)
    return KVOption(fmt, tuple(keep), loss, mb, gather, ms)


def required_kv(profile, cm: C.CostModel, arch: Arch, pns, batch, alpha, groups: list[KVGroup], option,
                dtype: str | None = None) -> tuple[list, list[str]]:
    """`groups` with `option` ((format, (sinks, recent))) in every block, its loss the part the
    profile measured; and what it could not price (no KV loss of the format, eviction without
    measured attention), for the plan to say."""
    fmt, keep = option[0], tuple(option[1])
    need = {KV_REGISTRY[fmt].attn_backend, *([KV_REGISTRY["fp"].attn_backend] if keep[1] is not None else [])}
    for backend in need - set(cm.attn):
        raise UserError(f"the profile's cost stage did not time attention on a {backend} cache (profiles made "
                        "before KV-cache planning, or a newer KV format); re-run `litevar profile --stages cost`")
    losses = kv_losses(profile)
    evict = eviction_losses(profile, arch, pns, (keep,)) if keep[1] is not None else {}
    names = family_of(arch).site_names(arch, "kv")
    unpriced = set()
    out = []
    for g in groups:
        if any(o.fmt == fmt and o.keep == keep for o in g.options):
            out.append(g)
            continue
        loss = 0.0
        if fmt != "fp":
            if (names[g.layer], fmt) in losses:
                loss += losses[names[g.layer], fmt]
            else:
                unpriced.add(f"{fmt} (no measured loss)")
        if keep[1] is not None:
            if evict is None:
                unpriced.add("eviction (no measured attention at this schedule)")
            else:
                loss += evict[g.layer, keep]
        out.append(KVGroup(g.layer, (*g.options, kv_option(cm, arch, pns, batch, alpha, fmt, keep, loss, dtype))))
    return out, sorted(unpriced)


def _kv_extra_ms(cm: C.CostModel, arch: Arch, pns, batch, spec, dtype: str | None = None) -> float:
    """Attention ms a block's calls take beyond the plain cache's (before the in-model factor)."""
    rows = batch if spec.cfg_shared else 2 * batch
    total = 0.0
    for si in range(len(pns)):
        q, kv = pns[si] ** 2, sum(p * p for p in pns[:si + 1])
        plain = cm.call_ms("attn", rows, arch.num_heads, arch.head_dim, q, kv, 1.0, "dense", dtype)
        total += cm.kv_call_ms(arch, pns, si, rows, spec, plain, dtype) - plain
    return total


def eviction_losses(profile, arch: Arch, pns, rules=KEEP_RULES) -> dict[tuple[int, tuple], float] | None:
    """(block, keep rule) -> predicted loss of evicting the rule's scales in that block alone:
    meta.evict_fit's coef times the attention mass (sinks table) on the evicted (head, query
    scale, key scale) triples. None when the profile cannot price it: no fit, or attention
    measured at another schedule."""
    from litevar.profiler.quality import evicted_mass
    fit = profile.meta.get("evict_fit")
    profiled = tuple(arch.patch_nums or ())
    if not fit or "sinks" not in profile.tables or tuple(pns) != profiled:
        return None
    sk = profile.table("sinks")
    return {(layer, keep): float(fit["coef"]) * evicted_mass(sk[sk.layer == layer], {layer: keep})
            for layer in range(arch.depth) for keep in rules}


def format_groups(cm: C.CostModel, arch: Arch, pns, batch, losses, formats, dtype: str | None = None
                  ) -> list[FormatGroup]:
    """One group per quantizable linear: fp plus every allowed, profiled, applicable format, timed
    at runtime dtype `dtype` with each kernel family's in-model factor at it."""
    calls: dict[str, list[int]] = {}
    for s, M in C.linear_calls(arch, pns, batch):
        calls.setdefault(s.fqn, []).append(M)
    last = len(pns) - 1
    ws_scale = cm.workspace_scale()
    linear_ms = functools.partial(cm.call_ms, "linear")
    groups, skipped = [], {}  # skipped: format -> why the cost model cannot price it
    for s in family_of(arch).linears(arch):
        fqn, K, N = s.fqn, s.K, s.N
        dt = "fp32" if s.fp32 else dtype
        m_ws = max(s.rows_at(pns, si, batch, arch.context_len) for si in (max(last - 1, 0), last))
        rows = calls.get(fqn, [])
        act = C.activation_melems(K, N, rows)
        fp_ms = cm.in_model_ms("dense", sum(linear_ms(K, N, M, "fp", dt) for M in rows), act, dtype)
        opts = [FormatOption("fp", 0.0, fp_ms, C.weight_bytes(K, N, "fp") / C.MB, 0.0, 16)]
        for fmt in formats:
            if (fqn, fmt) not in losses or not C.format_applies(K, fmt):
                continue
            try:
                ms = cm.in_model_ms(cm.kernel_of(fmt), sum(linear_ms(K, N, M, fmt, dt) for M in rows), act, dtype)
            except KeyError as e:
                skipped.setdefault(fmt, e.args[0] if e.args else str(e))
                continue
            if cm.is_emulated(fmt):  # as the profile recorded it, not as this litevar's registry says
                ms = max(ms, fp_ms)  # an emulated format is never credited with speed
            opts.append(FormatOption(fmt, losses[fqn, fmt], ms, C.weight_bytes(K, N, fmt) / C.MB,
                                     ws_scale * cm.linear_workspace_mb(K, N, m_ws, fmt), get_format(fmt).w_bits))
        groups.append(FormatGroup(fqn, K * N, tuple(opts), s.kind))
    for fmt, why in skipped.items():
        log.warning("%s is not planned: %s", fmt, why)
    return groups


def attention_slots(cm: C.CostModel, arch: Arch, pns, batch, alpha, dtype: str | None = None
                    ) -> dict[tuple[int, int], AttnSlot]:
    """Kernel costs of every attention call, per (QK8, CFG-shared) mode; MDWA at KEPT_GRID."""
    H, D = arch.num_heads, arch.head_dim
    has_mdwa = "mdwa" in cm.attn
    attn_ms = functools.partial(cm.call_ms, "attn")
    slots = {}
    for layer, si, q, kv in C.attention_calls(arch, pns):
        def ms(backend, kept, shared, q=q, kv=kv):
            return alpha * attn_ms(batch if shared else 2 * batch, H, D, q, kv, kept, backend, dtype)
        dense = tuple(tuple(ms("dense" + sfx, 1.0, c) for c in (0, 1)) for sfx in ("", "_qk8"))
        mdwa = tuple(tuple(tuple(ms("mdwa" + sfx, k, c) if has_mdwa else np.inf for k in KEPT_GRID)
                           for c in (0, 1)) for sfx in ("", "_qk8"))
        flops = 4.0 * H * D * q * kv
        slots[layer, si] = AttnSlot(layer, si, H * q * kv, dense, KEPT_GRID, mdwa, (2 * batch * flops, batch * flops))
    return slots


def window_options(profile, arch, pns, family, targets, slots) -> tuple[str, pd.DataFrame]:
    """(family, WINDOW_COLUMNS frame): the candidate widths of every non-sink part (all profiled
    widths when `targets` is None)."""
    empty = pd.DataFrame(columns=WINDOW_COLUMNS)
    if "coverage" not in profile.tables:
        return family or "band", empty
    profiled = tuple(arch.patch_nums or ())
    if profiled and tuple(pns) != profiled:
        log.warning("coverage was profiled at patch_nums %s, the plan is for %s: no windows planned",
                    profiled, tuple(pns))
        return family or "band", empty
    if not np.isfinite(next(iter(slots.values())).mdwa_ms[0][0][0]):
        log.warning("the cost model has no MDWA timings: no windows planned")
        return family or "band", empty
    cov = profile.table("coverage")
    fams = sorted(set(cov["family"]))
    fam = family or ("band" if "band" in fams else fams[0])
    if fam not in fams:
        raise UserError(f"--family {fam}: the profile's coverage has {', '.join(fams)}")
    coef = float(profile.meta.get("window_fit", {}).get("coef", 0.0))
    S = len(pns)
    cov = cov[(cov["family"] == fam) & (cov["width"] != FULL) & (cov["kept"] < 1.0)
              & (cov["scale"] < S) & (cov["part"] <= cov["scale"])]
    key = (((cov["layer"].to_numpy(np.int64) * 4096 + cov["head"].to_numpy()) * S + cov["scale"].to_numpy()) * S
           + cov["part"].to_numpy())
    if "sinks" in profile.tables:
        sk = profile.table("sinks")
        sk = sk[sk["sink"].astype(bool)]
        sink_key = ((sk["layer"].to_numpy(np.int64) * 4096 + sk["head"].to_numpy()) * S + sk["scale"].to_numpy()) * S \
            + sk["part"].to_numpy()
        keep = ~np.isin(key, sink_key)
        cov, key = cov[keep], key[keep]
    order = np.lexsort((cov["width"].to_numpy(), key))
    cov, key = cov.iloc[order], key[order]
    coverage = cov["coverage"].to_numpy()
    if targets is not None:  # per part, the narrowest width reaching each coverage target
        chosen = set()
        for t in targets:
            idx = np.flatnonzero(coverage >= t - 1e-12)
            _, first = np.unique(key[idx], return_index=True)
            chosen.update(idx[first].tolist())
        cov = cov.iloc[sorted(chosen)]
    side = np.asarray(pns, dtype=np.int64) ** 2
    out = pd.DataFrame({"layer": cov["layer"].astype(int).to_numpy(), "head": cov["head"].astype(int).to_numpy(),
                        "scale": cov["scale"].astype(int).to_numpy(), "part": cov["part"].astype(int).to_numpy(),
                        "width": cov["width"].astype(int).to_numpy(),
                        "loss": coef * (1.0 - cov["coverage"].to_numpy(float)),
                        "coverage": cov["coverage"].to_numpy(float),
                        "removed": (1.0 - cov["kept"].to_numpy(float)) * side[cov["scale"].to_numpy()]
                        * side[cov["part"].to_numpy()]})
    return fam, out


# ---------------------------------------------------------------------------------------------
# Solution -> Plan


def selection_kv_specs(problem: Problem, sel: Selection) -> dict:
    """block -> kernels.kvcache.KVSpec of a selection (CFG-shared blocks included: their cache
    holds one half)."""
    from litevar.kernels.kvcache import KeepRule, KVSpec
    out = {}
    for layer in range(problem.meta["arch"].depth):
        fmt, keep = sel.kv.get(layer, ("fp", (0, None)))
        out[layer] = KVSpec(fmt, KeepRule(*keep), layer in sel.cfg_shared)
    return out


def decisions_of(problem: Problem, sel: Selection, kept: dict) -> C.Decisions:
    """The cost model's view of a selection."""
    te = problem.meta.get("text_encoder") or {}
    return C.Decisions(sel.formats, kept, sel.cfg_shared, sel.qk_int8, selection_kv_specs(problem, sel),
                       te.get("mode"), te.get("images_per_prompt", 1))


def to_plan(problem: Problem, solution, profile, profile_path, budgets, name: str = ""):
    """The Plan (planner.plan) of a solved problem; predicted numbers from the cost model."""
    from litevar.kernels.windows import WindowConfig
    from litevar.planner.plan import Plan, Predicted
    meta, sel, m = profile.meta, solution.selection, solution.metrics
    arch, pns = problem.meta["arch"], problem.meta["patch_nums"]
    dtype = problem.meta.get("dtype")
    pred = profile.cost_model.predict(arch, pns, problem.meta["batch"], decisions_of(problem, sel, m.kept), dtype)
    if abs(pred.latency_ms - m.latency_ms) > 1e-6 * max(1.0, m.latency_ms) or \
            abs(pred.memory_mb - m.memory_mb) > 1e-6 * max(1.0, m.memory_mb):
        log.warning("planner and cost model disagree: %.4f vs %.4f ms, %.3f vs %.3f MB", m.latency_ms,
                    pred.latency_ms, m.memory_mb, pred.memory_mb)
    model = meta.get("model", {})
    kv = {layer: {"format": fmt, **({"keep": {"sinks": keep[0], "recent": keep[1]}} if keep[1] is not None else {})}
          for layer, (fmt, keep) in sorted(sel.kv.items())}
    predicted = Predicted(latency_ms=pred.latency_ms, memory_mb=pred.memory_mb, loss=m.loss,
                          dense_latency_ms=problem.dense_latency_ms, dense_memory_mb=problem.dense_memory_mb,
                          speedup=problem.dense_latency_ms / pred.latency_ms, attn_kept=m.attn_kept,
                          attn_flops=m.attn_flops, avg_bits=m.avg_bits, memory_breakdown_mb=memory_breakdown(pred))
    return Plan(model={"name": model.get("name", ""), "weights_sha256": model.get("weights_sha256"),
                       "arch": {k: v for k, v in arch.to_dict().items() if k != "patch_nums"}},
                resolution=problem.meta["resolution"], patch_nums=tuple(pns), formats=sel.formats,
                name=name, batch=problem.meta["batch"],
                device={k: meta.get("device", {}).get(k) for k in PLAN_KEYS},
                profile_sha256=profile_sha256(profile_path) if profile_path else None,
                budgets=budgets.to_dict(), solver=_jsonable(solution.solver), predicted=predicted.to_dict(),
                qk_int8=sorted(sel.qk_int8), windows=window_config(problem, sel, WindowConfig),
                cfg_shared=sorted(sel.cfg_shared), kv=kv,
                kv_layout={"heads": arch.num_heads, "head_dim": arch.head_dim}, dtype=dtype,
                text_encoder=plan_text_encoder(problem))


def plan_text_encoder(problem: Problem) -> dict | None:
    te = problem.meta.get("text_encoder")
    return None if te is None else {"mode": te["mode"], "images_per_prompt": te["images_per_prompt"]}


MEMORY_PARTS = {"weights": ("weights_mb",), "kv_cache": ("kv_mb",),
                "activations": ("activations_mb", "workspace_mb", "linear_workspace_mb"),
                "other": ("other_params_mb", "vae_mb", "fixed_mb"), "text_encoder": ("text_encoder_mb",)}


def memory_breakdown(pred: C.Prediction) -> dict[str, float]:
    """MB of the transformer phase's peak by part (MEMORY_PARTS) of a prediction, `decode_phase`:
    the decode phase's whole peak (0 when not modelled), and for a family with a text encoder
    `encode_phase`: the encoding phase's (the model and its encoder)."""
    mem = pred.memory_parts_mb
    out = {part: float(sum(mem.get(k, 0.0) for k in keys)) for part, keys in MEMORY_PARTS.items()
           if part != "text_encoder" or "text_encoder_mb" in mem}
    out["decode_phase"] = float(pred.decode_mb)
    if pred.encode_mb:
        out["encode_phase"] = float(pred.encode_mb)
    return out


def plan_kept(plan) -> dict[tuple[int, int], float]:
    """(layer, scale) -> kept fraction of the attention pairs of every windowed call of a plan."""
    from litevar.kernels.windows import kept_fraction
    if plan.windows is None:
        return {}
    w, out = plan.windows, {}
    for layer in w.widths:
        for k in range(len(plan.patch_nums)):
            w_Hp = w.scale_widths(layer, k)
            if w_Hp is not None:
                out[layer, k] = kept_fraction(w.layout, k, w_Hp, w.family)
    return out


def plan_decisions(plan) -> C.Decisions:
    """The cost model's view of a plan."""
    te = plan.text_encoder or {}
    return C.Decisions(plan.formats, plan_kept(plan), plan.cfg_shared, plan.qk_int8,
                       {layer: plan.kv_spec(layer) for layer in range(plan.arch["depth"])}, te.get("mode"),
                       te.get("images_per_prompt", 1))


def plan_prediction(plan, profile) -> C.Prediction:
    """A plan's prediction on `profile`'s cost model."""
    return profile.cost_model.predict(profile.arch, plan.patch_nums, plan.batch, plan_decisions(plan), plan.dtype)


def plan_memory_breakdown(plan, profile) -> dict[str, float]:
    """The memory breakdown of a plan on `profile`'s cost model (for plans that do not record it)."""
    return memory_breakdown(plan_prediction(plan, profile))


def window_config(problem: Problem, sel: Selection, cls):
    """litevar.kernels.windows.WindowConfig of the selection (layers with no window are left out)."""
    H, S = problem.meta["arch"].num_heads, len(problem.meta["patch_nums"])
    widths = {}
    for (l, h, s, p), w in sel.widths.items():
        if l not in widths:
            widths[l] = np.full((H, S, S), FULL, dtype=np.int32)
        widths[l][h, s, p] = w
    return cls(tuple(problem.meta["patch_nums"]), problem.meta["family"], widths)


def selection_of(plan) -> Selection:
    """The Selection a plan encodes (for explain and tests)."""
    kv = {layer: (e.get("format", "fp"), (e.get("keep", {}).get("sinks", 0), e.get("keep", {}).get("recent")))
          for layer, e in plan.kv.items()}
    widths = {}
    if plan.windows is not None:
        for l, w in plan.windows.widths.items():
            for h, s, p in zip(*np.nonzero(w.numpy() != FULL)):
                if p <= s:
                    widths[int(l), int(h), int(s), int(p)] = int(w[h, s, p])
    return Selection(dict(plan.formats), widths, frozenset(plan.cfg_shared), frozenset(plan.qk_int8), kv)


def _jsonable(d: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating,)) else v) for k, v in d.items()}

