"""From a profile to a Problem (plain data), and from a solution back to a Plan.

Every number comes from the profile: losses from its sensitivity / coverage / cfg_share tables
(one unit, meta.loss_unit), costs from its fitted cost model (profiler.costmodel). Window
candidates per (layer, head, scale, part): for each coverage target the narrowest profiled
width reaching it (a handful per part); parts flagged as attention sinks stay FULL.
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from litevar.kernels.formats import FORMATS, get_format
from litevar.models.core.errors import UserError
from litevar.models.var.schedules import schedule_for
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
from litevar.profiler.device import PLAN_KEYS

log = logging.getLogger(__name__)

QK8 = "QK8"  # sensitivity format of blocks.i.attn.qk: the QK product in INT8
COVERAGE_TARGETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
KEPT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # where the MDWA kernel cost is sampled (exact when affine)


def profile_sha256(path) -> str:
    """sha256 of the profile file's bytes: the plan's link to the profile it was made from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        if n != QK8 and n not in FORMATS and n not in KV_FORMATS:
            raise UserError(f"--formats: unknown format {n!r}; choose from {', '.join([*FORMATS, QK8, *KV_FORMATS])}")
    missing = [n for n in names if n != "fp" and n not in profiled]
    if missing:
        raise UserError(f"--formats {','.join(missing)}: the profile has no sensitivity for them (it has "
                        f"{', '.join(sorted(profiled)) or 'none'}); re-run `litevar profile` or drop them")
    return [n for n in names if n != "fp"]


def build_problem(profile, resolution: int, batch: int = 1, formats: list[str] | None = None,
                  family: str | None = None, coverage_targets=COVERAGE_TARGETS, kv_option=None) -> Problem:
    """The planning problem of `profile` (profiler.profile.Profile) at `resolution` and `batch`.
    kv_option: a (KV format, (sinks, recent)) every block must offer even where the profile cannot
    price its loss (a recipe's; meta.kv_unpriced says what was left out of its loss)."""
    if batch < 1:
        raise UserError(f"--batch {batch}: give a positive number of images")
    meta = profile.meta
    cm, arch = meta.get("cost_model"), meta.get("model", {}).get("arch")
    if not cm or not arch:
        raise UserError("the profile has no cost model (meta.cost_model) or no meta.model.arch; "
                        "re-run `litevar profile` with the cost stage")
    pns = schedule_for(resolution)
    dense = C.predict(cm, arch, pns, batch)
    alpha = dense["breakdown"]["alpha"]
    sens = profile.table("sensitivity")
    losses = {(r.layer, r.format): float(r.loss) for r in sens.itertuples()}
    allowed = formats if formats is not None else sorted(set(sens["format"]))
    groups = format_groups(cm, arch, pns, batch, alpha, losses, [f for f in allowed if f != QK8])
    fp_weights = sum(g.options[0].weight_mb for g in groups)
    slots = attention_slots(cm, arch, pns, batch, alpha)
    depth = C.arch_dims(arch)["depth"]
    cfg_loss = {}
    if "cfg_share" in profile.tables:
        cfg_loss = {int(r.layer): float(r.loss) for r in profile.table("cfg_share").itertuples() if r.layer < depth}
    qk_loss = {}
    if QK8 in allowed:
        qk_loss = {int(l.split(".")[1]): v for (l, f), v in losses.items() if f == QK8}
    fam, windows = window_options(profile, arch, pns, family, coverage_targets, slots)
    bd = dense["breakdown"]
    decode = bd["decode_mb"] - fp_weights if cm["memory"].get("decode") else None
    problem = Problem(groups, windows, slots, cfg_loss, qk_loss,
                      base_latency_ms=bd["overhead_ms"],
                      base_memory_mb=bd["transformer_mb"] - fp_weights - bd["memory_mb"]["kv_mb"],
                      dense_latency_ms=dense["latency_ms"], dense_memory_mb=dense["memory_mb"],
                      meta={"arch": arch, "patch_nums": list(pns), "resolution": resolution, "batch": batch,
                            "family": fam, "formats": allowed, "device": cm.get("device", "cpu")},
                      kv=kv_groups(profile, cm, arch, pns, batch, alpha, allowed), decode_base_mb=decode)
    if kv_option is not None:
        problem.kv, problem.meta["kv_unpriced"] = required_kv(profile, cm, arch, pns, batch, alpha, problem.kv,
                                                              kv_option)
    problem.check_finite()
    return problem


KV_FORMATS = ("KV8", "KV4")  # the quantized KV-cache formats (kernels.kvquant), planned where profiled
KEEP_RULES = tuple((s, r) for s in (1, 3, 5) for r in (1, 2, 3))  # (sinks, recent): coarse + latest scales


def kv_losses(profile) -> dict[tuple[str, str], float]:
    """(blocks.i.attn.kv, KV format) -> measured loss (sensitivity stage)."""
    sens = profile.tables.get("sensitivity")
    return {} if sens is None else {(r.layer, r.format): float(r.loss) for r in sens.itertuples()
                                    if r.format in KV_FORMATS}


def kv_groups(profile, cm, arch, pns, batch, alpha, allowed) -> list[KVGroup]:
    """One group per block: the plain cache, and every KV format the profile measured a loss for
    and timed, with every keep rule (KEEP_RULES) when the profile can price evicting (attention
    measured at this schedule: eviction_losses). Costs from kernels.kvcache (bytes) and
    costmodel.kv_call_ms (time), without and with CFG sharing."""
    losses, timed = kv_losses(profile), set(cm["attn"])
    evict = eviction_losses(profile, arch, pns) if "dense_kvfp" in timed else None
    groups = []
    for layer in range(C.arch_dims(arch)["depth"]):
        opts = []
        for fmt in ("fp", *[f for f in KV_FORMATS if f in allowed]):
            if fmt != "fp" and ((f"blocks.{layer}.attn.kv", fmt) not in losses or C.KV_BACKENDS[fmt] not in timed):
                continue
            for keep in [(0, None), *(KEEP_RULES if evict is not None else ())]:
                loss = losses.get((f"blocks.{layer}.attn.kv", fmt), 0.0) + (evict or {}).get((layer, keep), 0.0)
                opts.append(kv_option(cm, arch, pns, batch, alpha, fmt, keep, loss))
        groups.append(KVGroup(layer, tuple(opts)))
    return groups


def kv_option(cm, arch, pns, batch, alpha, fmt: str, keep, loss: float) -> KVOption:
    """One block's KV option: its loss, and its bytes (kernels.kvcache) and extra attention time
    (costmodel.kv_call_ms) without and with CFG sharing."""
    from litevar.kernels.kvcache import KeepRule, KVSpec, cache_bytes, gather_bytes
    d, act = C.arch_dims(arch), C.DTYPE_BYTES[cm["dtype"]]
    specs = [KVSpec(fmt, KeepRule(*keep), bool(c)) for c in (0, 1)]
    mb = tuple(cache_bytes(pns, sp, batch, d["H"], d["D"], act) / C.MB for sp in specs)
    gather = tuple(C.gather_coef(cm) * gather_bytes(pns, sp, batch, d["H"], d["D"], act) / C.MB for sp in specs)
    ms = tuple(alpha * _kv_extra_ms(cm, arch, pns, batch, sp) for sp in specs)
    return KVOption(fmt, tuple(keep), loss, mb, gather, ms)


def required_kv(profile, cm, arch, pns, batch, alpha, groups: list[KVGroup], option) -> tuple[list, list[str]]:
    """`groups` with `option` ((format, (sinks, recent))) in every block, its loss the part the
    profile measured; and what it could not price (no KV loss of the format, eviction without
    measured attention), for the plan to say."""
    fmt, keep = option[0], tuple(option[1])
    for need in {C.KV_BACKENDS[fmt], *(["dense_kvfp"] if keep[1] is not None else [])} - set(cm["attn"]):
        raise UserError(f"the profile's cost stage did not time attention on a {need} cache (profiles made before "
                        "KV-cache planning); re-run `litevar profile --stages cost`")
    losses = kv_losses(profile)
    evict = eviction_losses(profile, arch, pns, (keep,)) if keep[1] is not None else {}
    unpriced = set()
    out = []
    for g in groups:
        if any(o.fmt == fmt and o.keep == keep for o in g.options):
            out.append(g)
            continue
        loss = 0.0
        if fmt != "fp":
            if (f"blocks.{g.layer}.attn.kv", fmt) in losses:
                loss += losses[f"blocks.{g.layer}.attn.kv", fmt]
            else:
                unpriced.add(f"{fmt} (no measured loss)")
        if keep[1] is not None:
            if evict is None:
                unpriced.add("eviction (no measured attention at this schedule)")
            else:
                loss += evict[g.layer, keep]
        out.append(KVGroup(g.layer, (*g.options, kv_option(cm, arch, pns, batch, alpha, fmt, keep, loss))))
    return out, sorted(unpriced)


def _kv_extra_ms(cm, arch, pns, batch, spec) -> float:
    """Attention ms a layer's calls take beyond the plain cache's (before the in-model factor)."""
    d = C.arch_dims(arch)
    rows = batch if spec.cfg_shared else 2 * batch
    total = 0.0
    for si in range(len(pns)):
        q, kv = pns[si] ** 2, sum(p * p for p in pns[:si + 1])
        plain = C.attn_ms(cm, rows, d["H"], d["D"], q, kv, 1.0, "dense")
        total += C.kv_call_ms(cm, arch, pns, si, rows, spec, plain) - plain
    return total


def eviction_losses(profile, arch, pns, rules=KEEP_RULES) -> dict[tuple[int, tuple], float] | None:
    """(block, keep rule) -> predicted loss of evicting the rule's scales in that block alone:
    meta.evict_fit's coef times the attention mass (sinks table) on the evicted (head, query
    scale, key scale) triples. None when the profile cannot price it: no fit, or attention
    measured at another schedule."""
    from litevar.profiler.quality import evicted_mass
    fit = profile.meta.get("evict_fit")
    profiled = tuple(arch.get("patch_nums") or ())
    if not fit or "sinks" not in profile.tables or tuple(pns) != profiled:
        return None
    sk = profile.table("sinks")
    return {(layer, keep): float(fit["coef"]) * evicted_mass(sk[sk.layer == layer], {layer: keep})
            for layer in range(C.arch_dims(arch)["depth"]) for keep in rules}


def format_groups(cm, arch, pns, batch, alpha, losses, formats) -> list[FormatGroup]:
    """One group per quantizable linear: fp plus every allowed, profiled, applicable format."""
    calls: dict[str, list[int]] = {}
    for fqn, _, _, M, _ in C.linear_calls(arch, pns, batch):
        calls.setdefault(fqn, []).append(M)
    last = len(pns) - 1
    ws_scale = _workspace_scale(cm)
    groups, skipped = [], {}  # skipped: format -> why the cost model cannot price it
    for fqn, K, N, kind in C.linear_layers(arch):
        dt = "fp32" if fqn in C.FP32_ALWAYS else None
        m_ws = max(C.rows_at_scale(kind, pns, si, batch) for si in (max(last - 1, 0), last))
        fp_ms = alpha * sum(C.linear_ms(cm, K, N, M, "fp", dt) for M in calls.get(fqn, []))  # alpha: dense
        opts = [FormatOption("fp", 0.0, fp_ms, C.weight_bytes(K, N, "fp") / C.MB, 0.0, 16)]
        for fmt in formats:
            if (fqn, fmt) not in losses or not C.format_applies(K, fmt):
                continue
            try:
                ms = C.alpha_of(cm, C.kernel_of(cm, fmt)) * sum(C.linear_ms(cm, K, N, M, fmt, dt)
                                                                 for M in calls.get(fqn, []))
            except KeyError as e:
                skipped.setdefault(fmt, e.args[0] if e.args else str(e))
                continue
            if C.is_emulated(cm, fmt):  # as the profile recorded it, not as this litevar's registry says
                ms = max(ms, fp_ms)  # an emulated format is never credited with speed
            opts.append(FormatOption(fmt, losses[fqn, fmt], ms, C.weight_bytes(K, N, fmt) / C.MB,
                                     ws_scale * C.linear_workspace_mb(cm, K, N, m_ws, fmt), get_format(fmt).w_bits))
        groups.append(FormatGroup(fqn, K * N, tuple(opts)))
    for fmt, why in skipped.items():
        log.warning("%s is not planned: %s", fmt, why)
    return groups


def _workspace_scale(cm) -> float:
    """The memory model's factor on the largest quantized-linear workspace (1 when counted as is)."""
    names = cm.get("features", {}).get("memory", C.MEM_FEATURES)
    return float(cm["memory"]["coef"][list(names).index("linear_workspace_mb")]) \
        if "linear_workspace_mb" in names else 1.0


def attention_slots(cm, arch, pns, batch, alpha) -> dict[tuple[int, int], AttnSlot]:
    """Kernel costs of every attention call, per (QK8, CFG-shared) mode; MDWA at KEPT_GRID."""
    d = C.arch_dims(arch)
    H, D = d["H"], d["D"]
    has_mdwa = "mdwa" in cm["attn"]
    slots = {}
    for layer, si, q, kv in C.attention_calls(arch, pns, batch):
        def ms(backend, kept, shared, q=q, kv=kv):
            return alpha * C.attn_ms(cm, batch if shared else 2 * batch, H, D, q, kv, kept, backend)
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
    profiled = tuple(arch.get("patch_nums") or ())
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
    depth = C.arch_dims(problem.meta["arch"])["depth"]
    out = {}
    for layer in range(depth):
        fmt, keep = sel.kv.get(layer, ("fp", (0, None)))
        out[layer] = KVSpec(fmt, KeepRule(*keep), layer in sel.cfg_shared)
    return out


def to_plan(problem: Problem, solution, profile, profile_path, budgets, name: str = ""):
    """The Plan (planner.plan) of a solved problem; predicted numbers from the cost model."""
    from litevar.kernels.windows import WindowConfig
    from litevar.planner.plan import ARCH_KEYS, Plan
    meta, sel, m = profile.meta, solution.selection, solution.metrics
    arch, pns = problem.meta["arch"], problem.meta["patch_nums"]
    cm = meta["cost_model"]
    pred = C.predict(cm, arch, pns, problem.meta["batch"], sel.formats, m.kept, set(sel.cfg_shared),
                     set(sel.qk_int8), kv_specs=selection_kv_specs(problem, sel))
    if abs(pred["latency_ms"] - m.latency_ms) > 1e-6 * max(1.0, m.latency_ms) or \
            abs(pred["memory_mb"] - m.memory_mb) > 1e-6 * max(1.0, m.memory_mb):
        log.warning("planner and cost model disagree: %.4f vs %.4f ms, %.3f vs %.3f MB", m.latency_ms,
                    pred["latency_ms"], m.memory_mb, pred["memory_mb"])
    model = meta.get("model", {})
    d = C.arch_dims(arch)
    kv = {layer: {"format": fmt, **({"keep": {"sinks": keep[0], "recent": keep[1]}} if keep[1] is not None else {})}
          for layer, (fmt, keep) in sorted(sel.kv.items())}
    return Plan(model={"name": model.get("name", ""), "weights_sha256": model.get("weights_sha256"),
                       "arch": {k: arch[k] for k in ARCH_KEYS if k in arch}},
                resolution=problem.meta["resolution"], patch_nums=tuple(pns), formats=sel.formats,
                name=name, batch=problem.meta["batch"],
                device={k: meta.get("device", {}).get(k) for k in PLAN_KEYS},
                profile_sha256=profile_sha256(profile_path) if profile_path else None,
                budgets=budgets.to_dict(), solver=_jsonable(solution.solver),
                predicted={"latency_ms": pred["latency_ms"], "memory_mb": pred["memory_mb"], "loss": m.loss,
                           "dense_latency_ms": problem.dense_latency_ms, "dense_memory_mb": problem.dense_memory_mb,
                           "speedup": problem.dense_latency_ms / pred["latency_ms"], "attn_kept": m.attn_kept,
                           "attn_flops": m.attn_flops, "avg_bits": m.avg_bits,
                           "memory_breakdown_mb": memory_breakdown(pred)},
                qk_int8=sorted(sel.qk_int8), windows=window_config(problem, sel, WindowConfig),
                cfg_shared=sorted(sel.cfg_shared), kv=kv, kv_layout={"heads": d["H"], "head_dim": d["D"]})


MEMORY_PARTS = {"weights": ("weights_mb",), "kv_cache": ("kv_mb",),
                "activations": ("activations_mb", "workspace_mb", "linear_workspace_mb"),
                "other": ("other_params_mb", "vae_mb", "fixed_mb")}


def memory_breakdown(pred: dict) -> dict[str, float]:
    """MB of the transformer phase's peak by part (MEMORY_PARTS) from a costmodel.predict result,
    and `decode_phase`: the decode phase's whole peak (the VQVAE; 0 when not modelled)."""
    mem = pred["breakdown"]["memory_mb"]
    out = {part: float(sum(mem.get(k, 0.0) for k in keys)) for part, keys in MEMORY_PARTS.items()}
    out["decode_phase"] = float(pred["breakdown"].get("decode_mb", 0.0))
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


def plan_memory_breakdown(plan, profile) -> dict[str, float]:
    """The memory breakdown of a plan on `profile`'s cost model (for plans that do not record it)."""
    cm, arch = profile.meta["cost_model"], profile.meta["model"]["arch"]
    specs = {layer: plan.kv_spec(layer) for layer in range(plan.arch["depth"])}
    pred = C.predict(cm, arch, plan.patch_nums, plan.batch, plan.formats, plan_kept(plan), set(plan.cfg_shared),
                     set(plan.qk_int8), kv_specs=specs)
    return memory_breakdown(pred)


def window_config(problem: Problem, sel: Selection, cls):
    """litevar.kernels.windows.WindowConfig of the selection (layers with no window are left out)."""
    H, S = int(problem.meta["arch"].get("num_heads", problem.meta["arch"]["depth"])), len(problem.meta["patch_nums"])
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

