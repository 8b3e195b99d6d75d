"""Devices a plan can be priced for, at three tiers, always labelled.

    spec        the catalogue (profiler/catalogue/gpus.json): peaks per math format, bandwidth,
                memory, compute capability, each figure with its source, and default efficiencies
    calibrated  `litevar calibrate` on the device: GEMMs per format at the model family's layer
                shapes, attention, a copy and a tiny op, each fitted as per-call overhead plus the
                larger of compute at a sustained throughput and bytes at a bandwidth
    profiled    the cost stage of a full profile on that device (profiler.costmodel.CostModel)

A profile splits into what moves and what stays. Losses, coverage, shapes, FLOPs and bytes per
operation and memory bytes are the model's: they stay. Kernel timings and fitted factors are the
device's: `priced(profile, target)` gives the profile with a cost model for `target` (a
TargetCostModel: the roofline of its kernels, the profile's memory terms with the target's dtype
and fixed costs, the profile's overhead scaled by the target's dispatch and throughput). Every
other part of the planner runs unchanged on it.

A CPU is never taken from a table: it is described by measuring it (calibrate), and its integer
kernels are probed for exactness (kernels.gemm.int_mm_exact).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from litevar.models.core.atomic import read_json
from litevar.models.core.errors import UserError
from litevar.profiler import costmodel as C

log = logging.getLogger(__name__)

CATALOGUE = Path(__file__).with_name("catalogue") / "gpus.json"
GiB = 2 ** 30
TIERS = ("spec", "calibrated", "profiled")
# the guard a tier implies on latency and memory budgets: spec has no measurement of the device
# (roofline analyzers miss by 22-28% per kernel, KernelSight), calibrated is checked by the
# calibration's own held-out shapes (its figure replaces this one), profiled by the profile's
# held-out generations (planner.build.guard_band)
TIER_GUARD = {"spec": {"latency": 0.30, "memory": 0.10}, "calibrated": {"latency": 0.15, "memory": 0.05}}


@dataclass(frozen=True)
class Figure:
    """One catalogue figure and where it comes from."""

    value: float  # dense (no structured sparsity)
    source: str
    from_sparse: bool = False  # the source quotes the 2:4-sparse figure; value is its half


@dataclass(frozen=True)
class DeviceSpec:
    """A catalogue device: what the datasheet says (each figure with its source)."""

    key: str
    name: str
    type: str
    compute_capability: str
    sm_count: int
    smem_per_sm_kib: int
    memory_gb: Figure
    bandwidth_gbs: Figure
    peaks: dict[str, Figure]  # math format (fp32, tf32, bf16, fp16, int8, int4) -> dense TFLOP/s or TOPS
    int4_tensor_cores: Figure
    memory_total_mib: Figure | None = None  # what CUDA reports as the card's total
    match: tuple[str, ...] = ()
    defaults: dict = field(default_factory=dict)

    @property
    def memory_gib(self) -> float:
        """Capacity in GiB: CUDA's reported total where the catalogue has it, else the datasheet's decimal GB."""
        if self.memory_total_mib is not None:
            return self.memory_total_mib.value / 1024
        return self.memory_gb.value * 1e9 / GiB

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def runtime_dtype(self) -> str:
        """bf16 where the tensor cores have it, else fp16 (T4)."""
        return "bf16" if "bf16" in self.peaks else "fp16"


def _figure(d) -> Figure:
    return Figure(float(d["value"]), str(d["source"]), bool(d.get("from_sparse", False)))


@cache
def catalogue() -> dict[str, DeviceSpec]:
    """The GPUs litevar can price on paper, by key."""
    d = json.loads(CATALOGUE.read_text())
    out = {}
    for key, e in d["devices"].items():
        out[key] = DeviceSpec(key, e["name"], e["type"], e["compute_capability"], int(e["sm_count"]),
                              int(e["smem_per_sm_kib"]), _figure(e["memory_gb"]), _figure(e["bandwidth_gbs"]),
                              {k: _figure(v) for k, v in e["peaks"].items()}, _figure(e["int4_tensor_cores"]),
                              _figure(e["memory_total_mib"]) if "memory_total_mib" in e else None,
                              tuple(e.get("match", ())), d.get("defaults", {}))
    return out


def spec_for(fingerprint: dict) -> DeviceSpec | None:
    """The catalogue entry of a fingerprinted GPU (by name), if any."""
    name = str(fingerprint.get("name", ""))
    return next((s for s in catalogue().values() if any(m in name for m in s.match)), None)


# ---------------------------------------------------------------------------------------------
# What runs where


@dataclass(frozen=True)
class Capabilities:
    """What litevar's kernels can run on a device: the planner never offers the rest."""

    formats: dict[str, str]  # format -> "" (runs) or why not
    windows: str  # "" or why windowed attention is not offered
    qk8: str
    kv_formats: dict[str, str]
    w4a8_math: str  # the math format W4A8's GEMM runs in here

    def allowed_formats(self) -> set[str]:
        return {f for f, why in self.formats.items() if not why}


def capabilities(spec: DeviceSpec) -> Capabilities:
    """The capability matrix of a catalogue GPU. litevar's Triton kernels (GEMMs, MDWA, reading
    quantized caches) need sm_80 or newer; the torch paths run anywhere. BF16 needs bf16 tensor
    cores (sm_80+). INT8 GEMMs run on int8 tensor cores (torch._int_mm from sm_75). litevar's W4A8
    kernel unpacks INT4 weights to INT8 in registers on every GPU, so it runs at the INT8 rate (no
    INT4 tensor-core rate is claimed anywhere, and Hopper has none)."""
    from litevar.kernels.formats import FORMATS, capability
    from litevar.kernels.kvquant import KV_FORMATS
    triton = spec.cc >= (8, 0)
    formats = {}
    for name in FORMATS:
        kernel = capability(name, "cuda").kernel
        why = ""
        if kernel == "bf16" and "bf16" not in spec.peaks:
            why = f"no bf16 tensor cores (sm_{spec.compute_capability.replace('.', '')})"
        elif kernel in ("w8a8", "w4a8") and "int8" not in spec.peaks:
            why = "no int8 tensor cores"
        formats[name] = why
    no_triton = "" if triton else f"litevar's Triton kernels need sm_80 or newer (this is sm_{spec.cc[0]}{spec.cc[1]})"
    kv = {name: "" for name in KV_FORMATS}
    return Capabilities(formats, no_triton, no_triton, kv, "int8")


# ---------------------------------------------------------------------------------------------
# A target: the device a plan is priced for


@dataclass
class Throughput:
    """A kernel family's fitted cost: t = overhead + per_segment x segments + max(flops / tflops,
    bytes / bandwidth). Segments: the scales a KV-cache call assembles, each its own write, read and
    dequantization (1 for any other call; 0 ms per segment where not fitted)."""

    tflops: float  # sustained (peak x efficiency)
    overhead_ms: float  # per call
    per_segment_ms: float = 0.0

    def ms(self, flops: float, nbytes: float, bandwidth_gbs: float, segments: int = 1) -> float:
        return (self.overhead_ms + self.per_segment_ms * segments
                + max(flops / (self.tflops * 1e9), nbytes / (bandwidth_gbs * 1e6)))


@dataclass
class Runtime:
    """A device's kernels at one runtime dtype."""

    gemm: dict[str, Throughput]  # litevar format -> throughput (fp: a linear at this dtype)
    attention: Throughput
    # attention backend (a KV-cache format's, QK8, windows: calibrate.backend_jobs) -> its calls,
    # timed by the calibration; a backend not here is priced as dense attention
    backends: dict[str, Throughput] = field(default_factory=dict)


@dataclass
class Target:
    """A device as a plan prices it (see the module docstring)."""

    name: str
    tier: str
    type: str
    dtype: str  # its default runtime dtype (the speedup reference's)
    memory_gib: float | None
    bandwidth_gbs: float
    runtimes: dict[str, Runtime]  # runtime dtype -> its kernels; dtype first
    dispatch_ms: float  # host dispatch per op
    context_mib: float = 0.0  # fixed per process (the CUDA context)
    reserve_frac: float = 0.0  # held by the allocator beyond its allocated peak
    capabilities: Capabilities | None = None
    guard: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)  # what the plan records of the device
    sources: dict = field(default_factory=dict)
    # a dense generation timed there (calibrate.generation_point: arch, batch, ms per dtype); None: none
    generation: dict | None = None

    @property
    def gemm(self) -> dict[str, Throughput]:
        return self.runtimes[self.dtype].gemm

    @property
    def attention(self) -> Throughput:
        return self.runtimes[self.dtype].attention

    def runtime(self, dtype: str | None) -> Runtime:
        return self.runtimes.get(dtype or self.dtype, self.runtimes[self.dtype])

    def plan_device(self) -> dict:
        return {"type": self.type, "name": self.name, "tier": self.tier, **{
            k: self.fingerprint.get(k) for k in ("cpu_family", "cpu_model", "catalogue")
            if self.fingerprint.get(k) is not None}}

    def process_mib(self, allocated_mib: float) -> float:
        """What the process holds for an allocator peak: the reserve and the context on top."""
        return allocated_mib * (1 + self.reserve_frac) + self.context_mib


def from_spec(spec: DeviceSpec) -> Target:
    """A catalogue GPU at the spec tier: peaks x default efficiencies, bandwidth x its efficiency,
    at its tensor-core dtype (bf16, fp16 on T4) and at fp32 (the fp32 peak: litevar leaves TF32 off)."""
    d = spec.defaults
    eff = d.get("efficiency", {"gemm": 0.6, "attention": 0.4, "memory": 0.8})
    launch = d.get("launch_us", {}).get("value", 5.0) / 1e3
    caps = capabilities(spec)
    runtimes = {dtype: _spec_runtime(spec, caps, dtype, eff, launch) for dtype in (spec.runtime_dtype, "fp32")}
    return Target(spec.name, "spec", spec.type, spec.runtime_dtype, spec.memory_gib,
                  spec.bandwidth_gbs.value * eff["memory"], runtimes,
                  d.get("host_dispatch_us", {}).get("value", 15.0) / 1e3,
                  d.get("context_mib", {}).get("value", 512.0), d.get("reserve_frac", {}).get("value", 0.1), caps,
                  dict(TIER_GUARD["spec"]), {"type": spec.type, "name": spec.name, "catalogue": spec.key},
                  {"catalogue": spec.key, "efficiency": eff.get("source", "")})


def _spec_runtime(spec: DeviceSpec, caps: Capabilities, dtype: str, eff: dict, launch: float) -> Runtime:
    from litevar.kernels.formats import FORMATS, capability

    def peak(math_fmt):
        return spec.peaks[math_fmt].value * eff["gemm"]
    gemm = {"fp": Throughput(peak(dtype), launch)}
    for name in FORMATS:
        if name == "fp" or caps.formats.get(name):
            continue
        kernel = capability(name, "cuda").kernel
        if kernel in ("w8a8", "w4a8"):  # + the activations' quantization, one more launch
            gemm[name] = Throughput(peak("int8"), 2 * launch)
        elif kernel in ("bf16", "w4a16", "dense"):
            gemm[name] = Throughput(peak("bf16" if kernel == "bf16" else dtype), launch)
    return Runtime(gemm, Throughput(spec.peaks[dtype].value * eff["attention"], launch))


def from_calibration(cal: dict) -> Target:
    """A calibrated device (`litevar calibrate`'s file)."""
    spec = catalogue().get(cal.get("spec") or "")
    caps = capabilities(spec) if spec is not None else None
    def fit(f):
        return Throughput(f["tflops"], f["overhead_ms"], f.get("per_segment_ms", 0.0))
    runtimes = {dtype: Runtime({name: fit(g) for name, g in rt["gemm"].items()}, fit(rt["attention"]),
                               {b: fit(f) for b, f in rt.get("backends", {}).items()})
                for dtype, rt in cal["runtimes"].items()}
    memory = cal.get("memory_gib")
    fp = cal["device"]
    guard = {"latency": max(TIER_GUARD["calibrated"]["latency"], cal.get("validation", {}).get("latency_err", 0.0)),
             "memory": TIER_GUARD["calibrated"]["memory"]}
    return Target(cal.get("name") or fp.get("name", "calibrated"), "calibrated", fp.get("type", "cpu"), cal["dtype"],
                  memory, cal["bandwidth_gbs"], runtimes, cal["dispatch_ms"],
                  cal.get("context_mib", 0.0), cal.get("reserve_frac", 0.0), caps, guard, fp,
                  {"calibration": cal.get("created", "")}, cal.get("generation"))


def load_target(name_or_path: str) -> Target:
    """--device NAME (a catalogue key) or FILE (a calibration), one line naming the fix otherwise."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        cal = read_json(path, "--device calibration", f"make one with `litevar calibrate --out {name_or_path}`, or "
                        "name a catalogue device (`litevar devices`)")
        if not isinstance(cal, dict) or cal.get("format") != "litevar-calibration":
            raise UserError(f"--device {name_or_path}: not a litevar calibration (format litevar-calibration); "
                            "re-run `litevar calibrate`")
        if cal.get("version") != 2:
            raise UserError(f"--device {name_or_path}: calibration version {cal.get('version')}, this litevar reads "
                            "version 2 (a fit per runtime dtype); re-run `litevar calibrate`")
        try:
            return from_calibration(cal)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"--device {name_or_path}: malformed calibration ({e}); re-run `litevar calibrate`") \
                from None
    cat = catalogue()
    key = next((k for k in cat if k.lower() == name_or_path.lower()), None)
    if key is None:
        raise UserError(f"--device {name_or_path}: not a catalogue device ({', '.join(cat)}) nor a calibration file")
    return from_spec(cat[key])


# ---------------------------------------------------------------------------------------------
# Pricing a profile for a target


def attention_work(B: int, H: int, D: int, q_len: int, kv_len: int, kept: float, act_bytes: int
                   ) -> tuple[float, float]:
    """(flops, bytes) of one attention call keeping `kept` of its (query, key) pairs: a windowed
    call reads at least a 64-query tile's keys."""
    flops = 4.0 * B * H * D * q_len * kv_len * kept
    return flops, B * H * D * (2 * q_len + 2 * kv_len * max(kept, min(1.0, 64.0 / max(q_len, 1)))) * act_bytes


def linear_bytes(K: int, N: int, M: int, fmt: str, act_bytes: int) -> float:
    """Bytes one linear call moves: activations in and out, and its weights in their format."""
    return M * K * act_bytes + C.weight_bytes(K, N, fmt, act_bytes) + M * N * act_bytes


@dataclass
class TargetCostModel(C.CostModel):
    """A profile's cost model re-priced for a target: kernels from the target's roofline, memory
    terms from the profile (activations at the target's dtype, the target's fixed costs on top),
    the profile's overhead scaled by the target's dispatch (per scale and block) and throughput
    (per token and pixel)."""

    target: Target | None = None
    source_dispatch_ms: float = 0.0
    source_tflops: float = 0.0
    host_ops: object = None  # profiler.hostops.HostOps on an accelerator (its host dispatches), else None
    act_coefs: dict = field(default_factory=dict)  # runtime dtype -> the source profile's activation factor
    in_model: dict = field(default_factory=dict)  # runtime dtype -> the target's in-model factor (in_model_factors)

    def activation_coef(self, dtype: str | None = None) -> float:
        return self.act_coefs.get(dtype or self.dtype, self.memory.coef[1])

    def overhead_ms(self, arch, patch_nums, batch, dtype=None) -> float:
        """On an accelerator: the operators the host dispatches times its cost per operator, plus the
        profile's per-token and per-pixel terms scaled to the target's throughput. On a CPU: the
        profile's overhead, scaled (see priced)."""
        if self.host_ops is None:
            return super().overhead_ms(arch, patch_nums, batch, dtype)
        f = C.e2e_features(arch, patch_nums, batch)
        e = self.e2e.coef
        host = self.host_ops.count(len(patch_nums), arch.depth) * self.target.dispatch_ms
        return float(host + e[3] * f[2] + e[4] * f[3])

    def dtypes(self) -> list[str]:
        return list(self.target.runtimes)

    def e2e_of(self, dtype):
        if dtype is not None and dtype not in self.target.runtimes:
            raise KeyError(f"runtime dtype {dtype!r} is not priced for {self.target.name} (it has "
                           f"{self.dtypes()})")
        return self.e2e  # the overhead is the host's, at any dtype

    def linear_ms(self, K, N, M, fmt, dtype=None) -> float:
        t = self.target
        rt = t.runtime(dtype)
        if fmt not in rt.gemm and fmt != "fp":
            raise KeyError(f"format {fmt!r} does not run on {t.name} ({t.tier} tier)")
        g, fp = rt.gemm.get(fmt, rt.gemm["fp"]), rt.gemm["fp"]
        act = C.DTYPE_BYTES[dtype if dtype in t.runtimes else t.dtype]
        ms = g.ms(2.0 * M * K * N, linear_bytes(K, N, M, fmt, act), t.bandwidth_gbs)
        if self.is_emulated(fmt):  # fake quant: never faster than fp
            ms = max(ms, fp.ms(2.0 * M * K * N, linear_bytes(K, N, M, "fp", act), t.bandwidth_gbs))
        return ms

    def attn_ms(self, B, H, D, q_len, kv_len, kept, backend, dtype=None, segments: int = 1) -> float:
        t = self.target
        act = C.DTYPE_BYTES[dtype if dtype in t.runtimes else t.dtype]
        flops, nbytes = attention_work(B, H, D, q_len, kv_len, 1.0 if backend.startswith("dense") else kept, act)
        rt = t.runtime(dtype)
        return rt.backends.get(backend, rt.attention).ms(flops, nbytes, t.bandwidth_gbs, segments)

    def alpha_of(self, kernel: str, dtype: str | None = None) -> float:
        """The target's in-model factor at `dtype` for the dense family (fp linears and attention),
        which its timed generation measured; 1 for a quantized family, which no generation ran
        there, and where the target timed no generation of this model: priced as the isolated calls
        ran. (Carried over to the quantized families, the dense factor over-priced them by a median
        of 24% in a transfer run on an AVX2-only Zen 3: a slow kernel's own work leaves less for the
        model around it to add.)"""
        return self.in_model.get(dtype or self.dtype, 1.0) if kernel == "dense" else 1.0

    def gamma_of(self, kernel: str, dtype: str | None = None) -> float:
        return 0.0  # (the roofline's bytes hold the activations)


def priced(profile, target: Target):
    """`profile` with a cost model for `target` (see the module docstring); its validation rows
    are dropped (they measured the profiled device) and meta.target says where it is priced."""
    from litevar.profiler.profile import Profile
    cm = profile.cost_model
    fp = cm._linear_entry("fp", cm.dtype)
    source_dispatch = cm.host.get("dispatch_ms") or max(fp.coef[0], 1e-6)  # per op (else an fp linear's per call)
    source_tflops = 2.0 / max(fp.coef[1], 1e-12)  # 2 MKN flops per coef[1] ms per MKN/1e9: TFLOP/s
    allowed = target.capabilities.allowed_formats() if target.capabilities else set(target.gemm) | {"fp"}
    fmt_kernel = {f: k for f, k in cm.format_kernel.items() if f in allowed or f == "fp"}
    coef = list(cm.memory.coef)
    coef[1] = cm.activation_coef(target.dtype)  # activations at the target's dtype
    dispatch_ratio = target.dispatch_ms / source_dispatch
    throughput_ratio = source_tflops / target.runtime(cm.dtype).gemm["fp"].tflops
    # per token (element-wise ops: bandwidth-bound) at the bandwidth ratio when the profile measured
    # its host's, else at the throughput ratio; per latent pixel (the decode's convolutions) at the
    # throughput ratio; per generation and per block and scale at the dispatch ratio (on a CPU; an
    # accelerator counts its host's operators instead: TargetCostModel.overhead_ms)
    token_ratio = (cm.host["bandwidth_gbs"] / target.bandwidth_gbs if cm.host.get("bandwidth_gbs")
                   else throughput_ratio)
    e = list(cm.e2e.coef)
    e2e = C.E2EFit([1.0, e[1] * dispatch_ratio, e[2] * dispatch_ratio, e[3] * token_ratio, e[4] * throughput_ratio],
                   {}, cm.e2e.rmse_rel, cm.e2e.n)
    memory = dataclasses.replace(cm.memory, coef=coef)
    attn = {b: v for b, v in cm.attn.items() if not ((b.startswith("mdwa") and target.capabilities is not None
                                                       and target.capabilities.windows)
                                                      or (b.endswith("_qk8") and target.capabilities is not None
                                                          and target.capabilities.qk8))}
    ops = None
    if target.type != "cpu":  # an accelerator: the host's dispatch sets the coarse scales' time
        from litevar.profiler.hostops import host_ops
        ops = host_ops(profile.arch.family)
    tcm = TargetCostModel(device=target.type, dtype=target.dtype, arch=cm.arch, format_kernel=fmt_kernel,
                          linear=cm.linear, attn=attn, e2e=e2e, memory=memory, linear_workspace=cm.linear_workspace,
                          features=cm.features, kernels=cm.kernels, timing_s=None, target=target,
                          source_dispatch_ms=source_dispatch, source_tflops=source_tflops, host_ops=ops,
                          act_coefs={d: cm.activation_coef(d) for d in target.runtimes})
    tcm.in_model, in_model_note = in_model_factors(tcm, profile.arch, target)
    meta = {k: v for k, v in profile.meta.items() if k not in ("validation",)}
    meta["target"] = {"name": target.name, "tier": target.tier, "dtype": target.dtype,
                      "in_model": tcm.in_model, "in_model_note": in_model_note,
                      "memory_gib": target.memory_gib, "sources": target.sources,
                      "dispatch_ratio": dispatch_ratio, "throughput_ratio": throughput_ratio,
                      "token_ratio": token_ratio, "host_ops": None if ops is None else ops.to_dict()}
    return Profile(meta=meta, tables=profile.tables, priced=tcm)


IN_MODEL_FLOOR = 0.25  # the least in-model factor taken from a generation (below: the overhead over-priced)


def in_model_factors(tcm: TargetCostModel, arch, target: Target) -> tuple[dict, str]:
    """({runtime dtype: factor}, what they rest on): per dtype, the factor on the target's dense
    kernel prices (fp linears, attention) that makes the dense generation the target timed
    (calibrate.generation_point) come out as measured, given the overhead priced for it:

        factor = (measured - overhead) / kernels,   both priced at factor 1

    It holds what isolated calls miss in a model: caches shared with the other operators, and on a
    CPU that emulates a dtype, the conversions around every operator. {} where the target timed no
    generation of `arch` (a catalogue device, an older calibration, another model's shapes)."""
    gen = target.generation or {}
    if not gen.get("ms"):
        why = (gen.get("skipped") or {}).get("all") or "no dense generation timed"
        return {}, f"kernels as isolated calls ran ({why})"
    if gen.get("arch") != arch.to_dict():
        return {}, ("kernels as isolated calls ran (the calibration timed a generation of another model: re-run "
                    "`litevar calibrate --profile` with this model's profile)")
    out = {}
    for dtype, ms in gen["ms"].items():
        if dtype not in target.runtimes:
            continue
        p = tcm.predict(arch, arch.patch_nums, int(gen.get("batch", 1)), dtype=dtype)
        kernels = p.latency_ms - p.overhead_ms
        factor = (ms - p.overhead_ms) / kernels if kernels > 0 else 1.0
        if factor < IN_MODEL_FLOOR:
            log.warning("in-model factor at %s floored at %g: the overhead priced (%.1f ms) is most of the timed "
                        "generation (%.1f ms)", dtype, IN_MODEL_FLOOR, p.overhead_ms, ms)
        out[dtype] = max(IN_MODEL_FLOOR, factor)
    return out, "one dense generation timed on the device (litevar calibrate)"


def tier_of(profile) -> str:
    """The tier a (possibly priced) profile's figures come from."""
    return profile.meta.get("target", {}).get("tier", "profiled")


def fmt_gib(mib: float | None) -> str:
    return "-" if mib is None or (isinstance(mib, float) and math.isnan(mib)) else f"{mib / 1024:.2f}"


def roofline_ms(flops: float, nbytes: float, tflops: float, bandwidth_gbs: float, overhead_ms: float = 0.0) -> float:
    """overhead + max(compute, memory) in ms: the one formula every tier's kernels follow."""
    return Throughput(tflops, overhead_ms).ms(flops, nbytes, bandwidth_gbs)


def median_rel_err(pred, meas) -> float:
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    return float(np.median(np.abs(pred / meas - 1)))
