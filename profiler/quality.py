"""Quality stages of the profiler: quantization sensitivity, attention-window coverage and CFG
redundancy, all measured on the model itself, all in one loss unit.

Loss unit (the model family's `loss_unit`): sum over scales of the mean KL(full precision || test)
per token of the family's CFG-guided prediction (VAR: the V-way next-token distribution),
teacher-forced on the full-precision model's own samples (the calibration set: `n` conditions
sampled once). Teacher forcing makes every configuration see the same inputs, so the losses of
different layers and formats are directly comparable. The model is reached through its family
(litevar.models.core.family): its linears, attention modules, conditions, logits and KL.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from litevar.kernels.formats import FORMATS
from litevar.kernels.kvquant import KV_FORMATS
from litevar.kernels.qlinear import linear_in_format
from litevar.kernels.select import KernelChoice
from litevar.kernels.windows import FULL, WindowConfig, WindowFamily, max_width, window_mass
from litevar.models.core.attention import DenseAttention, set_attention_backend
from litevar.models.core.distributed import merge_in_order, world
from litevar.models.core.errors import UserError
from litevar.models.core.family import family_of_model

log = logging.getLogger(__name__)
EVICT_FIT_RULES = ((1, 1), (3, 1), (1, 2), (3, 2), (5, 3))  # (sinks, recent) of the eviction-fit configurations
CANDIDATE_WIDTHS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192)  # half-widths; FULL added per part
SINK_FACTOR = 4.0  # a part is a sink when its attention mass is >= 4x its share of the keys
WINDOW_RATIOS = (0.99, 0.97, 0.95, 0.9, 0.8, 0.7)  # MDWA thresholds of the window-fit configurations


def quant_formats() -> tuple[str, ...]:
    """The weight formats whose loss the sensitivity stage measures: every registered one but fp."""
    return tuple(f for f in FORMATS if f != "fp")


def kv_quant_formats() -> tuple[str, ...]:
    """The KV-cache formats measured per block (on the `<attention>.kv` rows): every quantized one."""
    return tuple(name for name, f in KV_FORMATS.items() if f.quantized)


@dataclass
class Calibration:
    """The conditions, the full-precision model's tokens and its CFG-guided logits."""

    conds: torch.Tensor  # (N, ...): class labels, prompt embeddings
    tokens: list[torch.Tensor]  # per scale (N, pn*pn)
    ref_logits: torch.Tensor  # (N, L, V) float32
    cfg: float
    batch: int

    def chunks(self):
        for b in range(0, len(self.conds), self.batch):
            yield slice(b, b + self.batch)


@torch.no_grad()
def calibrate(vae, model, n: int, cfg: float, seed: int, batch: int = 40) -> Calibration:
    """The calibration set; under torchrun its batches are sampled and scored across the ranks
    (batch i on rank i mod size, with seed + i as alone) and every rank gets all of it."""
    family = family_of_model(model)
    conds = family.conditions(model, n)
    _, tokens = family.sample(vae, model, conds, seed, cfg, batch, desc="calibration samples")
    chunks = [slice(b, b + batch) for b in range(0, n, batch)]
    ref = torch.cat(run_sharded(
        lambda s: family.teacher_forced(vae, model, conds[s], [t[s] for t in tokens], cfg).cpu(), chunks))
    return Calibration(conds, tokens, ref, cfg, batch)


@torch.no_grad()
def loss_of(vae, model, calib: Calibration, dtype_name: str = "fp32") -> tuple[float, float]:
    """(loss in the profile's unit, share of tokens whose argmax is unchanged) of `model` as it is now,
    run at the compute dtype `dtype_name` (autocast)."""
    family = family_of_model(model)
    sizes = [pn * pn for pn in family.schedule_of(model)]
    kl_sum = torch.zeros(len(sizes), dtype=torch.float64)
    agree = 0
    for s in calib.chunks():
        q = family.teacher_forced(vae, model, calib.conds[s], [t[s] for t in calib.tokens], calib.cfg, dtype_name)
        kl_BL, same_BL = family.token_kl(calib.ref_logits[s], q)
        kl_sum += torch.stack([k.sum() for k in kl_BL.double().split(sizes, dim=1)])
        agree += same_BL.sum().item()
    n = len(calib.conds)
    per_scale = kl_sum / (n * torch.tensor(sizes, dtype=torch.float64))
    return float(per_scale.clamp_min(0).sum()), agree / (n * sum(sizes))


@contextlib.contextmanager
def quantized(model, fqn_to_format: dict[str, str]):
    """Temporarily replace linear layers by their modules in a format (restored on exit)."""
    saved = {}
    try:
        for fqn, fmt in fqn_to_format.items():
            parent, _, child = fqn.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            saved[fqn] = (owner, child, getattr(owner, child))
            setattr(owner, child, linear_in_format(saved[fqn][2], fmt, KernelChoice.AUTO))
        yield model
    finally:
        for owner, child, mod in saved.values():
            setattr(owner, child, mod)


@contextlib.contextmanager
def attention_backend(model, backend, layers=None):
    """Temporarily route attention of `layers` through `backend`."""
    attn = family_of_model(model).attention_modules(model)
    old = [a.backend for a in attn]
    set_attention_backend(attn, backend, layers)
    try:
        yield model
    finally:
        for a, o in zip(attn, old):
            a.backend = o


_CHECKPOINTS: contextvars.ContextVar = contextvars.ContextVar("shard_checkpoints", default=None)


@contextlib.contextmanager
def shard_checkpoints(directory, key: str):
    """Within it, each named run_sharded keeps this rank's results in `directory`
    (NAME.rankRofW.pt, keyed by `key`) when done, and takes them from there when run again with
    the same key and world size: a stage cut short resumes shard by shard."""
    token = _CHECKPOINTS.set((Path(directory), key))
    try:
        yield
    finally:
        _CHECKPOINTS.reset(token)


def run_sharded(fn, items: list, desc: str | None = None, progress: bool = False) -> list:
    """[fn(item) for item in items], under torchrun each item on rank index mod size and the
    results gathered back in item order on every rank (litevar.models.core.distributed); a progress
    bar on rank 0 (over its own share). Named calls (desc) resume from shard checkpoints."""
    from tqdm import tqdm

    from litevar.models.core.distributed import gather, local
    w = world()
    mine = w.mine(len(items))
    ckpt = _checkpoint(desc, w)
    results = _load_checkpoint(ckpt, mine)
    if results is None:
        results = {}
        for i in tqdm(mine, desc=desc, disable=not (progress and desc and w.main)):
            with local():  # an item runs alone: what it calls does not shard again
                results[i] = fn(items[i])
        if ckpt is not None:
            from litevar.models.core.atomic import atomic_path
            ckpt[0].parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(ckpt[0]) as tmp:
                torch.save({"key": ckpt[1], "results": results}, tmp)
    return gather(results, len(items))


def _checkpoint(desc: str | None, w) -> tuple[Path, str] | None:
    where = _CHECKPOINTS.get()
    if where is None or not desc:
        return None
    return where[0] / f"{desc.replace(' ', '_')}.rank{w.rank}of{w.size}.pt", where[1]


def _load_checkpoint(ckpt, mine: list[int]) -> dict | None:
    """This rank's results from its checkpoint, if it is whole and for the same key and items."""
    if ckpt is None or not ckpt[0].is_file():
        return None
    try:  # our own file (pickled rows and tensors), written atomically by run_sharded
        d = torch.load(ckpt[0], weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is measured again
        log.info("shard checkpoint %s unreadable (%s): measuring it again", ckpt[0], e)
        return None
    if not isinstance(d, dict) or d.get("key") != ckpt[1] or sorted(d.get("results", {})) != mine:
        return None
    log.info("resumed %d results from %s", len(mine), ckpt[0])
    return d["results"]


# -- 1. quantization sensitivity --------------------------------------------------------------------

def sensitivity(vae, model, calib: Calibration, formats=None, qk8: bool = True, kv_formats=None,
                progress=True) -> pd.DataFrame:
    """Loss of each linear layer in each format alone (default: every registered format), of QK8 in
    each block and of each block's KV cache in each KV format (default: every registered quantized
    one; keys and values as the cache returns them: kernels.kvcache.FakeQuantKV)."""
    family = family_of_model(model)
    arch = family.arch_of(model)
    formats = quant_formats() if formats is None else formats
    kv_formats = kv_quant_formats() if kv_formats is None else kv_formats
    kinds = {s.fqn: s.kind for s in family.linears(arch)}
    blocks = {n: i for site in ("qk", "kv") for i, n in enumerate(family.site_names(arch, site))}
    jobs = [(fqn, fmt) for fqn in kinds for fmt in formats]
    jobs += [(n, "QK8") for n in family.site_names(arch, "qk")] if qk8 else []
    jobs += [(n, f) for n in family.site_names(arch, "kv") for f in kv_formats]

    def measure(job):
        fqn, fmt = job
        kind = kinds.get(fqn) or ("attn_qk" if fmt == "QK8" else "attn_kv")
        try:
            with _configured(model, fqn, fmt, kind, blocks.get(fqn)):
                loss, agree = loss_of(vae, model, calib)
        except UserError as e:  # e.g. a group size that does not divide the layer's width
            log.info("sensitivity: %s cannot take %s (%s); the planner will not offer it", fqn, fmt, e)
            return None
        return fqn, kind, fmt, loss, loss, agree
    rows = run_sharded(measure, jobs, "sensitivity", progress)
    return pd.DataFrame([r for r in rows if r is not None], columns=["layer", "kind", "format", "loss", "kl",
                                                                      "top1_agree"])


def _configured(model, fqn: str, fmt: str, kind: str, block: int | None):
    """The context that runs `model` with one layer (linear, QK product or KV cache) in `fmt`."""
    from litevar.kernels.kvcache import FakeQuantKV
    from litevar.kernels.mdwa import LayerOptions, MaskedReference
    if kind == "attn_qk":
        schedule = family_of_model(model).schedule_of(model)
        backend = MaskedReference(WindowConfig(schedule), {block: LayerOptions(qk_int8=True)})
        return attention_backend(model, backend, [block])
    if kind == "attn_kv":
        return attention_backend(model, FakeQuantKV(fmt), [block])
    return quantized(model, {fqn: fmt})


def joint_check(vae, model, calib: Calibration, sens: pd.DataFrame, trials: int = 8, seed: int = 0,
                progress=True) -> tuple[pd.DataFrame, float]:
    """Random joint configurations: is the sum of single-layer losses a good predictor?"""
    from scipy.stats import spearmanr
    rng = random.Random(seed)
    single = {(r.layer, r.format): r.loss for r in sens.itertuples() if r.format in FORMATS}
    options: dict[str, list[str]] = {}
    for l, f in sorted(single):
        options.setdefault(l, []).append(f)
    layers = sorted(options)
    configs = []
    for _ in range(trials):  # drawn in order on every rank, then measured where sharded
        chosen = rng.sample(layers, rng.randint(2, max(2, len(layers) // 2)))
        configs.append({l: rng.choice(options[l]) for l in chosen})

    def measure(cfg):
        with quantized(model, cfg):
            return loss_of(vae, model, calib)[0]
    measured = run_sharded(measure, configs, "joint check", progress)
    rows = [(t, len(cfg), sum(single[(l, f)] for l, f in cfg.items()), m)
            for t, (cfg, m) in enumerate(zip(configs, measured))]
    df = pd.DataFrame(rows, columns=["trial", "n_quantized", "predicted", "measured"])
    rho = float(spearmanr(df.predicted, df.measured).statistic) if trials > 2 else float("nan")
    return df, rho


# -- 2. attention-window coverage ---------------------------------------------------------------------

class _Recorder:
    """Dense attention that also accumulates, per (layer, scale): the window mass histograms of
    both families, each part's total mass, and the cosine similarity of the CFG halves' outputs."""

    def __init__(self, widths, families):
        self.widths, self.families = list(widths), list(families)
        self.inside, self.total, self.cos = {}, {}, {}

    def state(self) -> dict:
        """The sums, as one dict of tensors (what ranks send and merge)."""
        return ({("inside",) + k: v for k, v in self.inside.items()}
                | {("total",) + k: v for k, v in self.total.items()}
                | {("cos",) + k: torch.tensor(v, dtype=torch.float64) for k, v in self.cos.items()})

    def load(self, state: dict) -> _Recorder:
        for (what, *key), v in state.items():
            key = tuple(key)
            if what == "cos":
                self.cos[key] = (int(v[0]), float(v[1]))
            else:
                getattr(self, what)[key] = v
        return self

    def __call__(self, q_BHlc, k_BHLc, v_BHLc, ctx):
        P_BHlL = (q_BHlc.float() @ k_BHLc.float().transpose(-1, -2)).mul_(ctx.softmax_scale).softmax(-1)
        o_BHlc = (P_BHlL @ v_BHLc.float()).to(q_BHlc.dtype)
        key = (ctx.layer, ctx.scale)
        for fam in self.families:
            inside, total = window_mass(P_BHlL, ctx.layout, ctx.scale, self.widths, fam)
            k = key + (fam,)
            self.inside[k] = self.inside.get(k, 0) + inside
            self.total[k] = self.total.get(k, 0) + total
        if ctx.cfg_batch:
            B = ctx.cfg_batch
            c, u = o_BHlc[:B].transpose(1, 2).flatten(2).float(), o_BHlc[B:].transpose(1, 2).flatten(2).float()
            s = F.cosine_similarity(c, u, dim=-1)
            n, tot = self.cos.get(key, (0, 0.0))
            self.cos[key] = (n + s.numel(), tot + s.sum().item())
        return o_BHlc


def _kept_share(layout, scale: int, part: int, width: int, family: WindowFamily) -> float:
    """Share of the part's keys a window of half-width `width` keeps, averaged over the queries."""
    n_q = layout.patch_nums[scale] ** 2
    P = torch.full((1, 1, n_q, layout.end[scale]), 1.0)
    inside, total = window_mass(P, layout, scale, [width], family)
    return float(inside[0, part, 0] / total[0, part])


@torch.no_grad()
def record_attention(vae, model, calib: Calibration, widths=CANDIDATE_WIDTHS,
                     families=(WindowFamily.BAND, WindowFamily.SPATIAL), progress=True) -> _Recorder:
    def record(s):  # one chunk's sums (summed over chunks in chunk order, wherever they ran)
        rec = _Recorder(list(widths) + [FULL], families)
        with attention_backend(model, rec):
            family_of_model(model).teacher_forced(vae, model, calib.conds[s], [t[s] for t in calib.tokens], calib.cfg)
        return rec.state()
    states = run_sharded(record, list(calib.chunks()), "attention maps", progress)
    return _Recorder(list(widths) + [FULL], families).load(merge_in_order(states))


def coverage_tables(rec: _Recorder, model) -> tuple[pd.DataFrame, pd.DataFrame]:
    from litevar.models.core.attention import ScaleLayout
    layout = ScaleLayout(family_of_model(model).schedule_of(model))
    kept_cache, cov_rows, sink_rows = {}, [], []
    for (layer, scale, fam), inside in sorted(rec.inside.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2].value)):
        total = rec.total[(layer, scale, fam)]
        R_HpW = torch.where(total[..., None] > 0, inside / total[..., None].clamp_min(1e-300), 1.0)
        H, parts = total.shape
        for j in range(parts):
            side = layout.patch_nums[j]
            top = max_width(side, fam)
            for wi, w in enumerate(rec.widths):
                if w != FULL and w >= top:
                    continue
                kk = (scale, j, w, fam)
                if kk not in kept_cache:
                    kept_cache[kk] = 1.0 if w == FULL else _kept_share(layout, scale, j, w, fam)
                for h in range(H):
                    cov_rows.append((layer, h, scale, j, fam.value, int(w), float(R_HpW[h, j, wi]), kept_cache[kk]))
        if fam is rec.families[0]:
            share = torch.tensor([layout.patch_nums[j] ** 2 for j in range(parts)], dtype=torch.float64)
            share /= share.sum()
            mass_Hp = total / total.sum(1, keepdim=True)
            for h in range(H):
                for j in range(parts):
                    m = float(mass_Hp[h, j])
                    sink_rows.append((layer, h, scale, j, m, bool(m >= SINK_FACTOR * float(share[j]))))
    cov = pd.DataFrame(cov_rows, columns=["layer", "head", "scale", "part", "family", "width", "coverage", "kept"])
    sinks = pd.DataFrame(sink_rows, columns=["layer", "head", "scale", "part", "mass", "sink"])
    return cov, sinks


_FULL_LAST = 1 << 30  # FULL's place when widths are ordered narrowest first


def ratio_windows(cov: pd.DataFrame, model, r0: float, family: WindowFamily = WindowFamily.BAND,
                  sinks: pd.DataFrame | None = None) -> WindowConfig:
    """The MDWA configuration of threshold r0: per (layer, head, scale, part) the narrowest
    candidate width whose coverage >= r0 (sink parts stay FULL)."""
    model_family = family_of_model(model)
    schedule = model_family.schedule_of(model)
    S, H = len(schedule), model_family.arch_of(model).num_heads
    sub = cov[cov.family == family.value]
    sink_set = set() if sinks is None else {
        tuple(r) for r in sinks[sinks.sink][["layer", "head", "scale", "part"]].values}
    ok = sub[sub.coverage >= r0 - 1e-12]  # the widths that keep enough of each part's mass
    order = ok.width.where(ok.width != FULL, _FULL_LAST)  # FULL is the widest
    narrowest = order.groupby([ok[c] for c in ("layer", "head", "scale", "part")]).min()
    widths = {int(layer): torch.full((H, S, S), FULL, dtype=torch.int32) for layer in sorted(sub.layer.unique())}
    for (layer, h, k, j), width in narrowest.items():
        if width != _FULL_LAST and (layer, h, k, j) not in sink_set:
            widths[int(layer)][h, k, j] = int(width)
    return WindowConfig(schedule, family, widths)


def lost_mass(cov: pd.DataFrame, windows: WindowConfig) -> float:
    """Sum over the windowed (layer, head, scale, part) of 1 - coverage of the chosen width."""
    idx = cov[cov.family == windows.family.value].set_index(["layer", "head", "scale", "part", "width"]).coverage
    lost = 0.0
    for layer, w in windows.widths.items():
        for h, k, j in (w != FULL).nonzero().tolist():
            if j <= k:
                lost += 1.0 - float(idx[(layer, h, k, j, int(w[h, k, j]))])
    return lost


def window_fit(vae, model, calib: Calibration, cov: pd.DataFrame, sinks: pd.DataFrame, ratios=WINDOW_RATIOS,
               progress=True) -> tuple[pd.DataFrame, dict]:
    """Measured loss of MDWA configurations vs their lost attention mass; fit loss = coef * lost."""
    from litevar.kernels.mdwa import MaskedReference

    def measure(r0):
        wc = ratio_windows(cov, model, r0, sinks=sinks)
        with attention_backend(model, MaskedReference(wc)):
            measured, _ = loss_of(vae, model, calib)
        return lost_mass(cov, wc), measured, r0, wc.kept_fraction()
    rows = [(t, *r) for t, r in enumerate(run_sharded(measure, list(ratios), "window fit", progress))]
    df = pd.DataFrame(rows, columns=["trial", "lost_mass", "measured", "ratio", "attn_kept"])
    return df, {**_through_origin(df.lost_mass.to_numpy(), df.measured.to_numpy()),
                "model": "loss = coef * sum over windowed (layer, head, scale, part) of (1 - coverage)"}


def evicted_mass(sinks: pd.DataFrame, keep: dict[int, tuple[int, int]]) -> float:
    """Sum over the (layer, head, query scale) of the attention mass on the key scales that
    `keep` ((sinks, recent) per layer) evicts: eviction's lost mass, in the unit of window_fit's."""
    from litevar.kernels.kvcache import KeepRule
    mass = sinks.groupby(["layer", "scale", "part"])["mass"].sum()
    S = int(sinks["scale"].max()) + 1 if len(sinks) else 0
    lost = 0.0
    for layer, rule in keep.items():
        r = KeepRule(*rule)
        lost += sum(float(mass.get((layer, k, j), 0.0)) for k in range(S) for j in r.evicted(k))
    return lost


def evict_fit(vae, model, calib: Calibration, sinks: pd.DataFrame, rules=EVICT_FIT_RULES,
              progress=True) -> tuple[pd.DataFrame, dict]:
    """Measured loss of evicting KV scales in every block at once (each keep rule of `rules`) vs the
    attention mass evicted; fit loss = coef * evicted mass. The planner prices a block's keep rule
    by its own evicted mass (planner.build.eviction_losses)."""
    from litevar.kernels.kvcache import KeepRule, eviction_windows
    from litevar.kernels.mdwa import MaskedReference
    arch = family_of_model(model).arch_of(model)

    def measure(rule):
        keep = {layer: tuple(rule) for layer in range(arch.depth)}
        wc = eviction_windows(arch.patch_nums, arch.num_heads, {layer: KeepRule(*r) for layer, r in keep.items()})
        with attention_backend(model, MaskedReference(wc)):
            measured, _ = loss_of(vae, model, calib)
        return evicted_mass(sinks, keep), measured
    rows = [(t, rule[0], rule[1], *r) for t, (rule, r) in
            enumerate(zip(rules, run_sharded(measure, list(rules), "eviction fit", progress)))]
    df = pd.DataFrame(rows, columns=["trial", "sinks", "recent", "lost_mass", "measured"])
    return df, {**_through_origin(df.lost_mass.to_numpy(), df.measured.to_numpy()),
                "model": "loss = coef * sum over (layer, head, query scale) of the attention mass on evicted scales"}


def _through_origin(x, y) -> dict:
    """Least-squares y = coef * x and its r2."""
    coef = float((x @ y) / (x @ x)) if (x @ x) > 0 else 0.0
    ss_res, ss_tot = float(((y - coef * x) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"coef": max(coef, 0.0), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")}


# -- 3. CFG redundancy ------------------------------------------------------------------------------------

def cfg_similarity(rec: _Recorder) -> pd.DataFrame:
    """Mean cosine similarity of the conditional and unconditional attention outputs per (layer, scale)."""
    return pd.DataFrame([(l, s, tot / n) for (l, s), (n, tot) in sorted(rec.cos.items())],
                        columns=["layer", "scale", "similarity"])


def cfg_share_losses(vae, model, calib: Calibration, progress=True) -> pd.DataFrame:
    """Loss of ASC in each layer alone: the unconditional half reuses the conditional output."""
    from litevar.kernels.mdwa import CFGShared

    def measure(layer):
        with attention_backend(model, CFGShared(DenseAttention(), [layer]), [layer]):
            return loss_of(vae, model, calib)[0]
    layers = list(range(family_of_model(model).arch_of(model).depth))
    return pd.DataFrame(list(zip(layers, run_sharded(measure, layers, "cfg sharing", progress))),
                        columns=["layer", "loss"])


def summarize_sensitivity(sens: pd.DataFrame) -> pd.DataFrame:
    """Mean loss per layer kind x format (the paper's view: which layer types are most sensitive)."""
    return sens.pivot_table(index="kind", columns="format", values="loss", aggfunc="mean").sort_values(
        "W4A8" if "W4A8" in set(sens.format) else sens.format.iloc[0], ascending=False)

