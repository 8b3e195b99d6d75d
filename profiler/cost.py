"""Cost stage of the profiler: time the real kernels and whole generations on this device,
fit profiler.costmodel on them, and validate it on held-out generations.

Timings are medians of `repeats` runs after `warmup` runs (the device's time_ms:
litevar.models.core.device). Linears run through the real QuantLinear backends (AUTO kernel
choice: Triton where it compiles natively, torch otherwise) under the runtime's autocast dtype,
attention through DenseAttention and kernels.mdwa.make_mdwa_backend, generations through the
model family's `generation`.

Peak memory of a generation: the bytes of the model (parameters and buffers of the model and
its VAE, counted) plus the peak of what the call allocates (the device's peak_memory_mb: the
allocator's peak, deterministic and additive, so the memory model can fit it), taken on a
separate, untimed run. The same is taken for each phase of a generation apart (phase_peaks_mb):
the transformer phase (stopped before the decode: cost_e2e.peak_tf_mb) and the decode alone
(peak_decode_mb), which the memory model fits separately. cost_e2e.rss_mb (the process's peak
growth, the device's process_peak_mb) is left NaN by the cost stage. Linear layers also record
the memory one call adds (workspace_mb, output included) at their two largest row counts, from
which the model learns each format's temporary buffers.

Schedules other than the model's own run on a model of the same architecture that shares every
weight whose shape does not depend on the schedule (the family's model_for_schedule; latency and
memory do not depend on weight values).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from litevar.kernels.bench_attention import windows_for_kept
from litevar.kernels.bench_gemm import interleaved_ms, time_ms
from litevar.kernels.formats import CAST_DTYPES, FORMATS, capability
from litevar.kernels.qlinear import linear_in_format, swap_linears
from litevar.kernels.windows import WindowConfig, kept_fraction
from litevar.models.core.attention import AttnCall, DenseAttention, ScaleLayout
from litevar.models.core.device import device_of, settled_heap
from litevar.models.core.family import Arch, family_of, family_of_model
from litevar.models.core.inference import DTYPES, autocast
from litevar.profiler import costmodel as cmod

log = logging.getLogger(__name__)

MB = 2 ** 20
LINEAR_COLUMNS = ["K", "N", "M", "format", "backend", "ms", "workspace_mb"]
ATTN_COLUMNS = ["B", "H", "D", "q_len", "kv_len", "kept", "backend", "ms"]
E2E_COLUMNS = ["resolution", "batch", "config", "ms", "peak_mb", "patch_nums", "held_out", "rss_mb", "peak_tf_mb",
               "peak_decode_mb", "dtype"]


@dataclass(frozen=True)
class CostSettings:
    """How much to measure. Defaults: 1-2 minutes for the default model on one CPU core
    (three FlexAttention compiles included when the inductor cache is cold)."""

    dtype: str = "fp32"  # runtime compute dtype (litevar generate --dtype)
    warmup: int = 2  # kernel calls before timing
    repeats: int = 7  # timed kernel calls (median)
    e2e_repeats: int = 7  # timed generations (median), interleaved over all of them, after a warm-up each
    formats: tuple[str, ...] | None = None  # None: every native format on the device + one emulated
    mdwa: bool = True  # time the windowed backends (FlexAttention compiles ~20 s per shape on CPU)
    mdwa_shapes: int = 3  # largest attention shapes timed with windows
    kept_targets: tuple[float, ...] = (0.2, 0.5)  # window sizes timed, as kept fractions
    # the generations fitted on (second-largest schedule) and held out (the model's schedule):
    # '<FORMAT>:<kind>,...' / '<KV format>:<keep rule>' (costmodel.config_spec); None: the family's
    fit_configs: tuple[str, ...] | None = None
    validate_configs: tuple[str, ...] | None = None
    # other runtime dtypes to price whole-model autocast at (their linears, attention and generations
    # timed too); None: bf16 when the runtime dtype is fp32, else none
    runtime_dtypes: tuple[str, ...] | None = None

    def extra_dtypes(self) -> tuple[str, ...]:
        if self.runtime_dtypes is not None:
            return tuple(d for d in self.runtime_dtypes if d != self.dtype)
        return ("bf16",) if self.dtype == "fp32" else ()
    # ranks on identical GPUs (litevar.models.core.distributed.Group) that share the kernel timings;
    # None: this process times them all
    group: object = field(default=None, compare=False)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"CostSettings.dtype={self.dtype!r}: use one of {sorted(DTYPES)}")
        if self.warmup < 0 or self.repeats < 1 or self.e2e_repeats < 1:
            raise ValueError(f"CostSettings: warmup={self.warmup} must be >= 0, repeats={self.repeats} and "
                             f"e2e_repeats={self.e2e_repeats} >= 1")
        bad = [f for f in self.formats or () if f not in FORMATS]
        if bad:
            raise ValueError(f"CostSettings.formats: unknown {bad}; known: {', '.join(FORMATS)}")
        if any(not 0 < k < 1 for k in self.kept_targets):
            raise ValueError(f"CostSettings.kept_targets={self.kept_targets}: give fractions in (0, 1)")


def timed_formats(device, settings: CostSettings) -> list[str]:
    """Formats to time: the given ones, else fp, every native format and one emulated; a float
    format that casts to the runtime dtype itself (BF16 under --dtype bf16) adds nothing."""
    if settings.formats:
        return list(dict.fromkeys(("fp",) + tuple(settings.formats)))
    native = [f for f in FORMATS if capability(f, device).native and not
              (FORMATS[f].casts and CAST_DTYPES[FORMATS[f].float_dtype] == settings.dtype)]
    emulated = [f for f in FORMATS if not capability(f, device).native]  # one stands for every emulated one
    return native + emulated[:1]


# ---------------------------------------------------------------------------------------------
# Kernels


@torch.no_grad()
def measure_linear(K: int, N: int, Ms, fmt: str, device, dtype: str = "fp32", warmup: int = 2,
                   repeats: int = 7, memory_Ms=()) -> tuple[list[float], dict[int, float]]:
    """Median ms of one linear (K in, N out, bias) in `fmt` at each row count of `Ms`, under
    the autocast of `dtype` with float32 inputs, as the runtime calls it; and the transient
    memory (MB, output included) of one call at each row count of `memory_Ms`."""
    dev = torch.device(device)
    linear = nn.Linear(K, N, device=dev).requires_grad_(False)  # no grad: no autocast weight cache
    layer = linear_in_format(linear, fmt)
    times, memory = [], {}
    for M in Ms:
        x_MK = torch.randn(M, K, device=dev)
        with autocast(dev, dtype):
            times.append(time_ms(lambda x_MK=x_MK: layer(x_MK), dev, warmup, repeats))
    for M in memory_Ms:
        x_MK = torch.randn(M, K, device=dev)
        with autocast(dev, dtype):
            memory[M] = peak_memory_mb(lambda x_MK=x_MK: layer(x_MK), dev)
    return times, memory


def linear_backend(fmt: str, device, dtype: str) -> str:
    """cost_linear.backend: '<kernel>-<dtype>' (kernel from kernels.formats.capability)."""
    return f"{capability(fmt, device).kernel}-{dtype}"


def attention_backend(name: str, patch_nums, H: int, kept_target: float | None, device):
    """(backend, windows) for a cost_attn backend name ('dense', 'mdwa', '*_qk8', or a KV format's
    attn_backend: the backend the runtime gives a block with such a cache)."""
    from litevar.kernels.mdwa import LayerOptions, make_mdwa_backend
    options = {0: LayerOptions(qk_int8=True)} if name.endswith("_qk8") else {}
    kv = _kv_format_of(name)
    if name == "dense" or (kv is not None and not kv.quantized):
        return DenseAttention(), None
    if kv is not None:  # a quantized cache: the MDWA backend, whose Triton kernel reads codes
        return make_mdwa_backend(WindowConfig(tuple(patch_nums)), device=device), None
    windows = (windows_for_kept(patch_nums, H, kept_target) if name.startswith("mdwa")
               else WindowConfig(tuple(patch_nums)))
    return make_mdwa_backend(windows, device=device, options=options), windows


def _kv_format_of(backend: str):
    """The KV format whose planned-cache call a cost_attn backend name times (None: not such a call)."""
    from litevar.kernels.kvquant import KV_FORMATS
    return next((f for f in KV_FORMATS.values() if f.attn_backend == backend), None)


@torch.no_grad()
def measure_attention(patch_nums, scale: int, B: int, H: int, D: int, backend: str, device,
                      dtype: str = "fp32", kept_target: float | None = None, warmup: int = 2,
                      repeats: int = 7) -> tuple[float, float]:
    """(median ms, kept fraction) of one attention call: the queries of `scale` against the
    keys of scales 0..scale, B rows (CFG doubling included), layer 0 of `backend`; windowed
    backends keep about `kept_target` of the (query, key) pairs (band windows)."""
    pns = tuple(patch_nums[:scale + 1])  # the same call, as the last scale of a shorter schedule
    dev, layout = torch.device(device), ScaleLayout(tuple(patch_nums))
    fn, windows = attention_backend(backend, pns, H, kept_target, dev)
    n, L = patch_nums[scale] ** 2, layout.end[scale]
    g = torch.Generator(device=dev).manual_seed(scale)
    q, k, v = (torch.randn(B, H, m, D, generator=g, device=dev, dtype=DTYPES[dtype]) for m in (n, layout.L, layout.L))
    k, v = k[:, :, :L], v[:, :, :L]  # views of a full-length cache, as KVCache returns them
    ctx = AttnCall(layer=0, scale=scale, layout=ScaleLayout(pns), softmax_scale=D ** -0.5)
    if _kv_format_of(backend) is not None:
        return time_ms(_kv_call(pns, fn, backend, q, k, v, ctx), dev, warmup, repeats), 1.0
    kept = 1.0
    if windows is not None and (w_Hp := windows.scale_widths(0, scale)) is not None:
        kept = kept_fraction(ScaleLayout(pns), scale, w_Hp, windows.family)
    return time_ms(lambda: fn(q, k, v, ctx), dev, warmup, repeats), kept


def _kv_call(pns, fn, backend: str, q, k, v, ctx: AttnCall):
    """The call of the last scale of `pns` on a planned cache (kernels.kvcache.PlannedKVCache)
    holding the scales before it: writing its own segment, assembling the kept keys (every
    scale; a float cache through its segment path, as one that evicts has), attending."""
    from litevar.kernels.kvcache import KeepRule, KVSpec, PlannedKVCache
    cache = PlannedKVCache(pns, KVSpec(_kv_format_of(backend), KeepRule(0, len(pns))))  # keeps every scale, by segments
    layout, si = ScaleLayout(pns), len(pns) - 1
    for j in range(si):
        b, e = layout.begin[j], layout.end[j]
        cache.attend(fn, q[:, :, :e - b], k[:, :, b:e], v[:, :, b:e], dataclasses.replace(ctx, scale=j))
    b, e = layout.begin[si], layout.end[si]
    before = dict(cache.segments)  # the last call frees every segment (no later reader): restore them

    def call():
        cache.segments = dict(before)
        return cache.attend(fn, q, k[:, :, b:e], v[:, :, b:e], ctx)
    return call


# ---------------------------------------------------------------------------------------------
# End to end


def module_bytes(*modules: nn.Module) -> int:
    """Bytes of the parameters and buffers of `modules` (shared tensors counted once)."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen and t.device.type != "meta":
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def peak_memory_mb(fn, device) -> float:
    """Peak memory (MB) fn() allocates on top of what is allocated before it (the device's
    allocator peak: litevar.models.core.device)."""
    return device_of(device).peak_memory_mb(fn)


@torch.no_grad()
def phase_peaks_mb(vae, model, batch: int, dtype: str, device) -> tuple[float, float]:
    """(transformer phase, decode phase) peak MB of one generation, each the model's bytes plus
    the peak of what the phase allocates: the generation stopped before the decode (KV caches
    and activations), then the decode of its latent (the caches are freed by then)."""
    family, dev = family_of_model(model), torch.device(device)
    resident, out = module_bytes(model, vae) / MB, {}
    run = family.transformer_phase(model, batch, dtype)

    def transformer():
        out["latent"] = run()
    tf = resident + peak_memory_mb(transformer, dev)
    latent = out.pop("latent")

    def decode():
        with autocast(dev, dtype):
            family.decode(vae, latent)
    return tf, resident + peak_memory_mb(decode, dev)


def generation_peak_mb(vae, model, run, device, rss: dict | None = None) -> float:
    """Peak MB of one generation `run`: bytes of the model and VAE + the allocator's peak of the run.
    With `rss` (a dict), rss["mb"] also gets the model bytes + the process's peak growth of the same
    run (the device's peaks_mb; None where it cannot be measured)."""
    dev = device_of(device)
    resident = module_bytes(model, vae) / MB
    if rss is None:
        return resident + dev.peak_memory_mb(run)
    alloc, process = dev.peaks_mb(run)
    rss["mb"] = None if process is None else resident + process
    return resident + alloc


def measure_e2e(vae, model, patch_nums, batch: int, device, repeats: int = 3, dtype: str = "fp32",
                warmup: int = 1, rss: dict | None = None) -> tuple[float, float]:
    """(median ms, peak MB) of generating `batch` images (see generation_peak_mb)."""
    family = family_of_model(model)
    if family.schedule_of(model) != tuple(patch_nums):
        raise ValueError(f"measure_e2e: the model runs patch_nums {family.schedule_of(model)}, not "
                         f"{tuple(patch_nums)}; build one for this schedule with the family's model_for_schedule")
    run = family.generation(model, batch, dtype)
    ms = time_ms(run, device, warmup, repeats)
    return ms, generation_peak_mb(vae, model, run, device, rss)


def default_resolutions(patch_nums) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """(schedules to fit on, held-out larger schedule) for a model's own schedule: three
    shorter prefixes and the schedule itself; held out, one more scale of ~1.25x (at least one
    patch larger: a schedule grows strictly)."""
    pns = tuple(patch_nums)
    fit = [p for p in (pns[:-3], pns[:-2], pns[:-1]) if len(p) >= 2] + [pns]
    return fit, pns + (max(pns[-1] + 1, round(pns[-1] * 1.25)),)


# ---------------------------------------------------------------------------------------------
# The stage


def progress_bar(iterable, desc: str, progress: bool, total: int | None = None):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, disable=not progress, leave=False)


def linear_points(arch: Arch, resolutions, batches) -> dict[tuple[int, int], list[int]]:
    """(K, N) -> sorted distinct row counts of every linear call of the given generations."""
    points: dict[tuple[int, int], set[int]] = {}
    for pns in resolutions:
        for b in batches:
            for s, M in cmod.linear_calls(arch, pns, b):
                points.setdefault((s.K, s.N), set()).add(M)
    return {kn: sorted(ms) for kn, ms in sorted(points.items())}


def measure_linears(arch: Arch, resolutions, batches, device, settings: CostSettings, progress=True) -> pd.DataFrame:
    """cost_linear: every distinct (K, N, M) x format at the runtime dtype, fp also at the
    other dtype (fp32 vs bf16: on CPU bf16 autocast can be much faster)."""
    points, rows = linear_points(arch, resolutions, batches), []
    fp32_only = {(s.K, s.N) for s in family_of(arch).linears(arch) if s.fp32}
    jobs = []
    for fmt in timed_formats(device, settings):
        dtypes = {settings.dtype, *settings.extra_dtypes()} | ({"fp32", "bf16"} if fmt == "fp" else set())
        jobs += [(K, N, fmt, dt) for (K, N) in points for dt in sorted(dtypes) if cmod.format_applies(K, fmt)]
    jobs += [(K, N, fmt, "fp32") for K, N, fmt, dt in list(jobs) if (K, N) in fp32_only and dt != "fp32"
             and (K, N, fmt, "fp32") not in jobs]  # fp32 layers (a head) run so whatever the runtime dtype
    def measure(job):
        K, N, fmt, dt = job
        Ms = points[K, N]
        mem_Ms = Ms[-1:] + Ms[-2:-1] if dt == settings.dtype else ()  # the two largest
        ms, mem = measure_linear(K, N, Ms, fmt, device, dt, settings.warmup, settings.repeats, mem_Ms)
        return [(K, N, M, fmt, linear_backend(fmt, device, dt), t, mem.get(M, float("nan"))) for M, t in zip(Ms, ms)]
    rows = [r for part in _jobs(measure, jobs, "cost: linears", progress, settings.group) for r in part]
    return pd.DataFrame(rows, columns=LINEAR_COLUMNS)


def _jobs(fn, jobs: list, desc: str, progress: bool, group) -> list:
    """[fn(job) for job in jobs]; with a group of ranks on identical devices (CostSettings.group),
    each job on one of them, gathered in job order on all of them."""
    from litevar.models.core.distributed import gather
    if group is None:
        return [fn(j) for j in progress_bar(jobs, desc, progress)]
    w = group.world()
    mine = progress_bar(w.mine(len(jobs)), desc, progress and w.main)
    return gather({i: fn(jobs[i]) for i in mine}, len(jobs), group)


def attention_points(resolutions, batches) -> list[tuple[tuple[int, ...], int, int]]:
    """(patch_nums, scale, B rows) of every distinct attention call (with and without ASC)."""
    seen, out = set(), []
    for pns in resolutions:
        ends = ScaleLayout(tuple(pns)).end
        for si, pn in enumerate(pns):
            for rows in sorted({r for b in batches for r in (b, 2 * b)}):
                if (pn * pn, ends[si], rows) not in seen:
                    seen.add((pn * pn, ends[si], rows))
                    out.append((tuple(pns), si, rows))
    return out


def measure_attentions(arch: Arch, resolutions, batches, device, settings: CostSettings, progress=True
                       ) -> pd.DataFrame:
    """cost_attn: dense (and emulated-or-native QK8) at every call shape, and a call on a planned
    cache of every KV format; windowed backends at the `mdwa_shapes` largest shapes of the
    CFG-doubled smallest batch, per kept target."""
    H, D = arch.num_heads, arch.head_dim
    points = attention_points(resolutions, batches)
    plain = ("dense", "dense_qk8", *cmod.kv_backends().values())
    jobs = [(p, b, None, settings.dtype) for b in plain for p in points]
    jobs += [(p, b, None, d) for d in settings.extra_dtypes() for b in plain for p in points]
    if settings.mdwa:
        rows0 = 2 * min(batches)
        def work(p):
            return p[0][p[1]] ** 2 * ScaleLayout(p[0]).end[p[1]]  # q_len * kv_len
        big = sorted((p for p in points if p[2] == rows0 and p[1] >= 5), key=work, reverse=True)  # scales
        big = big[:settings.mdwa_shapes]  # 0..4 are kept full (paper_parts_full): windows start at 5
        jobs += [(p, b, k, settings.dtype) for p in big for b in ("mdwa", "mdwa_qk8") for k in settings.kept_targets]
    def measure(job):
        (pns, si, B), backend, target, dtype = job
        ms, kept = measure_attention(pns, si, B, H, D, backend, device, dtype, target,
                                     settings.warmup, settings.repeats)
        label = backend if dtype == settings.dtype else f"{backend}@{dtype}"  # costmodel.CostModel.attn_ms
        return B, H, D, pns[si] ** 2, ScaleLayout(pns).end[si], kept, label, ms
    return pd.DataFrame(_jobs(measure, jobs, "cost: attention", progress, settings.group), columns=ATTN_COLUMNS)


def config_formats(config: str) -> set[str]:
    """Linear format names of an e2e config: 'BF16:fc1;W8A8:head;KV8:all' -> {'BF16', 'W8A8'} (the
    KV cache's backends are always timed)."""
    groups = set() if config == "dense" else {g.partition(":")[0] for g in config.split(";")}
    return groups - set(cmod.kv_backends())


def e2e_configs(settings: CostSettings, arch: Arch) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fitted, held-out) e2e configurations: the settings', else the family's; each checked."""
    family = family_of(arch)
    fit = family.fit_configs if settings.fit_configs is None else settings.fit_configs
    held = family.validate_configs if settings.validate_configs is None else settings.validate_configs
    for c in fit + held:
        cmod.config_spec(c, arch)  # raises on a bad name
    return tuple(fit), tuple(held)


def e2e_plan(resolutions, batches, own_pns, holdout_resolution, holdout_batch, configs, timed=None,
             dtypes=("fp32",)):
    """(patch_nums, batch, config, held_out, dtype) of every timed generation, at each runtime
    dtype of `dtypes` (the first is the profile's); configs in a format whose kernels were not timed
    (not in `timed`, when given) are left out, as the model cannot price them. The configurations
    run at the smallest and the largest batch: a format's in-model cost grows with the rows
    differently from its isolated calls' (costmodel.fit_e2e's gamma)."""
    def ok(c):
        return timed is None or config_formats(c) <= set(timed)
    fit_configs, validate_configs = configs
    fit_pns = sorted(resolutions, key=len)[-2] if len(resolutions) > 1 else tuple(resolutions[0])
    ends = sorted({batches[0], batches[-1]})
    plan = []
    for d in dtypes:
        plan += [(tuple(p), b, "dense", False, d) for p in resolutions for b in batches]
        plan += [(tuple(fit_pns), b, c, False, d) for b in ends for c in fit_configs if ok(c)]
        if holdout_resolution is not None:
            plan.append((tuple(holdout_resolution), batches[0], "dense", True, d))
        if holdout_batch is not None:
            plan.append((tuple(own_pns), holdout_batch, "dense", True, d))
        plan += [(tuple(own_pns), b, c, True, d) for b in ends for c in validate_configs if ok(c)]
    return plan


class _Variants:
    """The planned generations' models. Each schedule's (vae, model) is kept (it shares the model's
    weights); the quantized and KV-cache variants of it are kept too when their extra weights fit
    in a quarter of the memory available, else built one at a time, each when its turn comes,
    replacing the previous one (every variant alive held ~7 GB of extra bf16 weights for d30 and
    ran a 24 GB machine out of memory). A rebuilt variant's first call is then a timed one."""

    def __init__(self, vae, model, arch: Arch, plan, device, dtype: str):
        self.vae, self.model, self.arch, self.plan, self.device, self.dtype = vae, model, arch, plan, device, dtype
        self.family = family_of(arch)
        self.models, self.built, self.current = {}, {}, None
        extra = sum(_extra_weight_bytes(arch, cmod.config_spec(c, arch).formats) for _, _, c, _, _ in plan)
        self.keep = extra < device_of(device).available_bytes() / 4
        log.info("cost: %s the %.1f GB of quantized variants' weights", "keeping" if self.keep else
                 "building one at a time", extra / 2 ** 30)

    def get(self, i: int):
        """(vae, model) of planned generation i."""
        if i not in self.built:
            if not self.keep:
                self.built.clear()  # free the previous variant before building the next
            pns, _, config, _, _ = self.plan[i]
            if pns not in self.models:
                self.models[pns] = self.family.model_for_schedule(self.vae, self.model, pns)
            vae_s, model_s = self.models[pns]
            self.built[i] = (vae_s, configured(model_s, cmod.config_spec(config, self.arch), self.device))
        self.current = self.built[i]
        return self.current

    def run(self, i: int):
        """The timed generation i (of the variant `get(i)` made current)."""
        return lambda: self.family.generation(self.current[1], self.plan[i][1], self.plan[i][4])()


def _extra_weight_bytes(arch: Arch, formats: dict) -> int:
    """Bytes a variant's swapped linears hold beside the model's (shared) fp weights."""
    return sum(cmod.weight_bytes(s.K, s.N, formats[s.fqn]) for s in family_of(arch).linears(arch) if s.fqn in formats)


def measure_generations(vae, model, arch: Arch, plan, device, settings: CostSettings, progress=True) -> pd.DataFrame:
    """cost_e2e: median ms (repeats interleaved over every planned generation) and peak MB of
    each planned generation, whole and by phase."""
    variants, rows = _Variants(vae, model, arch, plan, device, settings.dtype), []
    bar = progress_bar(plan, "cost: generations (memory)", progress)
    for i, (pns, batch, config, held_out, dtype) in enumerate(bar):
        vae_s, model_s = variants.get(i)
        rss: dict = {}
        peak = generation_peak_mb(vae_s, model_s, variants.family.generation(model_s, batch, dtype), device, rss)
        tf, dec = phase_peaks_mb(vae_s, model_s, batch, dtype, device)
        rows.append({"resolution": pns[-1] * arch.downsample, "batch": batch, "config": config,
                     "peak_mb": peak, "patch_nums": ",".join(map(str, pns)), "held_out": held_out,
                     "rss_mb": float("nan") if rss.get("mb") is None else rss["mb"], "peak_tf_mb": tf,
                     "peak_decode_mb": dec, "dtype": dtype})
    ms = interleaved_ms({i: variants.run(i) for i in range(len(plan))}, settings.e2e_repeats, torch.device(device),
                        rounds=lambda r: progress_bar(r, "cost: generations (rounds)", progress), prepare=variants.get)
    return pd.DataFrame([{**row, "ms": ms[i]} for i, row in enumerate(rows)], columns=E2E_COLUMNS)


def decode_sides(resolutions, downsample: int) -> list[int]:
    """Image sides (px) the decode-alone sweep measures: each fitted schedule's, and twice the
    largest (the decoder's peak is that of its full-resolution level only from ~512 px on, so
    the extrapolation to high resolution needs a point there)."""
    sides = sorted({int(p[-1]) * downsample for p in resolutions})
    return sides + [2 * sides[-1]]


@torch.no_grad()
def measure_decodes(vae, model, sides: list[int], device, dtype: str, progress=True) -> pd.DataFrame:
    """cost_decode: peak MB the decode of one random latent allocates (on top of what is resident),
    per image side; the decode phase of the memory model is fitted on these."""
    family, dev, rows = family_of_model(model), torch.device(device), []

    def decoder(side: int):
        latent = family.random_latent(vae, side, dev)

        def decode():
            with autocast(dev, dtype):
                family.decode(vae, latent)
        return decode
    for side in progress_bar(sides, "cost: decodes (memory)", progress):
        rows.append({"resolution": side, "batch": 1, "peak_mb": peak_memory_mb(decoder(side), dev)})
    return pd.DataFrame(rows, columns=["resolution", "batch", "peak_mb"])


def configured(model, dec: cmod.Decisions, device):
    """`model`, or a copy sharing its tensors, with an e2e config's linear formats and KV caches
    (a quantized cache's blocks on the MDWA backend, as the runtime sets them)."""
    from litevar.kernels.kvcache import reads_codes, set_kv_caches
    from litevar.kernels.mdwa import make_mdwa_backend
    from litevar.models.core.attention import set_attention_backend
    if not dec.formats and not dec.kv_specs:
        return model
    family = family_of_model(model)
    model = family.shared_copy(model)
    if dec.formats:
        swap_linears(model, dict(dec.formats))
    attn = family.attention_modules(model)
    set_kv_caches(attn, family.schedule_of(model), dec.kv_specs)
    coded = {layer for layer, sp in dec.kv_specs.items() if reads_codes(sp)}
    if coded:
        backend = make_mdwa_backend(WindowConfig(family.schedule_of(model)), device=device)
        set_attention_backend(attn, backend, layers=coded)
    return model


def kernel_paths(device, settings: CostSettings) -> dict:
    """The kernels this process ran where a probe chose between a fast path and a right one
    (kernels.gemm.int_mm_exact, kernels.mdwa.flex_exact): what the timings are of."""
    from litevar.kernels.gemm import int8_gemm_path
    from litevar.kernels.mdwa import flex_exact
    dev = torch.device(device)
    out = {"int8_gemm": int8_gemm_path(dev.type)}
    if settings.mdwa and not device_of(dev).triton_native:  # where FlexAttention runs windows
        out["windowed_attention"] = "flex" if flex_exact(dev.type) else "masked SDPA"
    return out


def slower_than_dense(validation: list[dict]) -> list[str]:
    """A message per quantized generation (validation rows) that was not faster than the dense one
    at the same schedule and batch: the planner will find no speedup in those formats here."""
    return [f"{v['config']} took {v['measured_ms']:.1f} ms, dense {d['measured_ms']:.1f} ms ({v['resolution']} px, "
            f"batch {v['batch']}): not faster in the model on this device, so plans cannot buy speed with it; if "
            "the machine was busy, re-run `litevar profile` when it is idle"
            for v, d in cmod.dense_pairs(validation) if v["measured_ms"] >= d["measured_ms"]]


def fit_cost_model(tables: dict, arch: Arch, device, dtype: str, vae) -> tuple[cmod.CostModel, list[dict]]:
    """(cost model, validation rows) from the measured tables: fitted on the generations not
    held out, validated on all of them."""
    e2e = tables["cost_e2e"]
    fit_rows = [i for i, h in enumerate(e2e["held_out"]) if not h]
    cm = cmod.fit(tables, arch, torch.device(device).type, dtype, module_bytes(vae) / MB, fit_rows)
    return cm, cm.validate(arch, e2e)


def refit_cost_model(tables: dict, arch: Arch, old: dict) -> tuple[cmod.CostModel, list[dict]]:
    """(cost model, validation rows) fitted again on a cost stage's own tables (after a change to
    profiler/costmodel.py), keeping what the fit does not make: the device type, runtime dtype and
    VAE bytes it was measured at, the measurements' time, the kernels probed, the host figures."""
    e2e = tables["cost_e2e"]
    fit_rows = [i for i, h in enumerate(e2e["held_out"]) if not h]
    cm = cmod.fit(tables, arch, old["device"], old["dtype"], old["memory"]["vae_mb"], fit_rows)
    cm.timing_s, cm.kernels, cm.host = old.get("timing_s"), old.get("kernels", {}), old.get("host", {})
    return cm, cm.validate(arch, e2e)


def host_figures(dev) -> dict:
    """The host's dispatch per operator and copy bandwidth (profiler.calibrate), for pricing the
    profile's overhead on another device, and its load rate of a weights file (reloading a freed
    text encoder)."""
    from litevar.models.core.device import device_of
    from litevar.profiler.calibrate import copy_bandwidth_gbs, dispatch_ms, load_gbs
    d = device_of(dev)
    return {"dispatch_ms": dispatch_ms(d), "bandwidth_gbs": copy_bandwidth_gbs(d, 1024 if d.accelerator else 256),
            "load_gbs": load_gbs(d)}


def run_cost_stage(vae, model, arch: Arch, device, resolutions=None, batches=(1, 2), progress: bool = True,
                   settings: CostSettings | None = None, holdout_resolution=None, holdout_batch: int | None = None
                   ) -> tuple[dict[str, pd.DataFrame], cmod.CostModel | None, list[dict]]:
    """Measure, fit and validate the cost model. Returns (tables cost_linear / cost_attn /
    cost_e2e / cost_decode, cost model, validation rows).

    resolutions: schedules (patch_nums) to fit on (default: default_resolutions of the model);
    held out from fitting, never timed kernel by kernel: `holdout_resolution` (default: the
    model's schedule plus one larger scale), `holdout_batch` (default 2 x the largest batch)
    at the model's schedule, and the held-out configurations (e2e_configs)."""
    settings = settings or CostSettings()
    dev = torch.device(device)
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise ValueError(f"run_cost_stage: batches={batches}; give batch sizes >= 1, e.g. (1, 2)")
    configs = e2e_configs(settings, arch)
    own = family_of(arch).schedule_of(model)
    fit_res, larger = default_resolutions(own)
    resolutions = [tuple(p) for p in (resolutions or fit_res)]
    holdout_resolution = holdout_resolution or larger
    holdout_batch = holdout_batch or 2 * batches[-1]
    with settled_heap():  # each measurement's collection scans only what the stage made
        t0 = time.perf_counter()
        tables = {"cost_linear": measure_linears(arch, resolutions, batches, dev, settings, progress),
                  "cost_attn": measure_attentions(arch, resolutions, batches, dev, settings, progress)}
        if settings.group is not None and not settings.group.world().main:
            return tables, None, []  # a helper of its group's leader: the generations run on the leader alone
        t1 = time.perf_counter()
        plan = e2e_plan(resolutions, batches, own, holdout_resolution, holdout_batch, configs,
                        timed_formats(dev, settings), (settings.dtype, *settings.extra_dtypes()))
        tables["cost_e2e"] = measure_generations(vae, model, arch, plan, dev, settings, progress)
        tables["cost_decode"] = measure_decodes(vae, model, decode_sides(resolutions, arch.downsample), dev,
                                                settings.dtype, progress)
        t2 = time.perf_counter()
        cm, validation = fit_cost_model(tables, arch, dev, settings.dtype, vae)
        for msg in slower_than_dense(validation):
            log.warning(msg)
        cm.timing_s = {"kernels": t1 - t0, "e2e": t2 - t1}
        cm.kernels = kernel_paths(dev, settings)
        cm.host = host_figures(dev)
        log.info("cost stage: kernels %.0f s, generations %.0f s; held-out errors %s", t1 - t0, t2 - t1,
                 [(v["resolution"], v["batch"], v["config"], round(v["latency_err"], 3), round(v["memory_err"], 3))
                  for v in validation if v["held_out"]])
        return tables, cm, validation
