"""Cost model of a model on one device: fitted from measured points, evaluated on plain data.

The profiler measures (profiler/cost.py) and `fit` turns the tables into a `CostModel` (JSON in a
profile's meta.cost_model); everything else here is a method of it or a pure function of an
architecture (litevar.models.core.family.Arch: its family says which linears run how often and
what else the model holds), so the planner predicts without torch modules.

Latency of one generation (CFG doubles the batch: 2B rows through the transformer):

    linear  t = a + b * M*K*N + c * K*N + d * M*(K+N)            per (format, dtype), ms
    attn    t = a + b * W*kept + c * W + d * B*H*D*(q+kv)         per backend, W = B*H*D*q*kv
    e2e     sum over kernel families k of alpha_k * (their linears; attention counts as dense)
            + gamma_k * (their linears' activations: sum of M*(K+N))
            + e0 + e1 * S*(depth+1) + e2 * B*L*(C*depth + V) + e3 * B*n_last

(S scales, L tokens, n_last tokens of the last scale, V the head's outputs per token). The e2e
overhead (Python dispatch per scale and block; norms, GELU and other element-wise ops, CFG mixing
and sampling per token; the decode per latent pixel) and the alphas (in-model vs isolated kernel
timings, within ALPHA_BOUNDS; one for dense kernels, one per quantized kernel family that a
fitted generation ran, since in-model and isolated speeds differ by kernel) are fitted on the
end-to-end runs. A quantized family timed in generations at two or more batches also gets gamma_k:
the in-model time its activations add beyond the isolated calls (cast or quantized on the way in,
cast back on the way out, from caches an isolated call leaves hot), which grows with the rows;
on the default model on CPU, per-layer BF16 and W8A8 fitted at batch 1 alone promised 1.30x and
1.25x at batch 8 and gave 1.18-1.25x and 0.98-1.07x. Without such generations gamma_k is 0.
All fits are non-negative least squares on relative residuals (scipy.optimize.lsq_linear), so
predictions grow with every size and extrapolate to unmeasured batches and resolutions.

Peak memory (MB = 2**20 bytes), the larger of two phases:

    transformer  weights by format (exact) + other parameters (exact) + VAE (measured) + KV caches
                 as held at the last scale (exact, per block: kernels.kvcache.held_bytes of its
                 format, kept scales and CFG rows) + m0 + m1 * activations + the largest
                 transient: m2 * linear workspace, or a block's last-scale KV call: the segment
                 it writes (kernels.kvcache.written_bytes, exact) + g * the keys it gathers
                 (kernels.kvcache.gather_bytes, exact; g, fitted, is the share of them that adds
                 to the peak). A quantized or evicting cache is freed as its block's last call
                 ends, so the blocks' last-scale segments are never all held at once.
    decode       weights + other parameters + VAE + the decode's own peak, piecewise linear in the
                 pixels decoded through measured points (fit_decode; the KV cache is freed by then)

activations = the family's activation_values at the last scale, float32. Linear workspace: the
largest extra memory of a quantized linear call at the last scale beyond the fp call's (its
temporaries), from the memory isolated calls add, fitted per format as (u*M*K + v*M*N + w*K*N) * 4
bytes. m0, m1, m2, g are fitted on generations stopped before the decode (cost_e2e.peak_tf_mb),
the decode's points on the generations' decode phases (peak_decode_mb) and on decodes alone up to
twice the largest schedule (cost_decode).

A block whose KV cache a plan sets (Decisions.kv_specs: block -> kernels.kvcache.KVSpec) attends
over its kept scales only, and pays the measured difference between the attention backend that
reads such a cache (the KV format's `attn_backend`: the scales gathered, dequantized) and the
plain one (`dense`) at the same shape.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from litevar.models.core.family import Arch, LinearSpec, arch_from, family_of

log = logging.getLogger(__name__)

VERSION = 1
MB = 2 ** 20
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
ATTN_BACKENDS = ("dense", "mdwa", "dense_qk8", "mdwa_qk8")
LINEAR_FEATURES = ("const", "MKN/1e9", "KN/1e6", "M(K+N)/1e6")
ATTN_FEATURES = ("const", "W*kept/1e9", "W/1e9", "BHD(q+kv)/1e6")
E2E_FEATURES = ("kernels", "const", "S*(depth+1)", "B*L*(C*depth+V)/1e6", "B*n_last/1e3")
ALPHA_BOUNDS = (0.5, 2.0)  # in-model vs isolated kernel time (caches, dispatch)
MEM_FEATURES = ("const", "activations_mb", "linear_workspace_mb")
# the text-encoder lever: the encoder is stored in bf16, as the official Infinity pipeline keeps it
TEXT_ENCODER_BYTES = 2
TEXT_ENCODER_MODES = ("resident", "freed")


# ---------------------------------------------------------------------------------------------
# What a generation runs


@dataclass(frozen=True)
class Decisions:
    """What a plan (or an e2e configuration) sets, as the cost model prices it: formats (linear
    name -> format; missing: fp), kept ((block, scale) -> kept fraction of the attention pairs;
    missing: 1), the blocks with CFG sharing and with QK8, and KV caches (block -> KVSpec;
    missing: the plain cache, or its conditional half in a CFG-shared block)."""

    formats: Mapping[str, str] = field(default_factory=dict)
    kept: Mapping[tuple[int, int], float] = field(default_factory=dict)
    cfg_shared: frozenset[int] = frozenset()
    qk_int8: frozenset[int] = frozenset()
    kv_specs: Mapping[int, object] = field(default_factory=dict)
    # a family with a text encoder: kept "resident" through the generation or "freed" after encoding
    # (reloaded for each new prompt, every `images_per_prompt` images); None: not counted
    text_encoder: str | None = None
    images_per_prompt: int = 1

    def __post_init__(self):
        object.__setattr__(self, "cfg_shared", frozenset(self.cfg_shared))
        object.__setattr__(self, "qk_int8", frozenset(self.qk_int8))
        if self.text_encoder not in (None, *TEXT_ENCODER_MODES) or self.images_per_prompt < 1:
            raise ValueError(f"text_encoder {self.text_encoder!r} / images_per_prompt {self.images_per_prompt}: "
                             f"give one of {TEXT_ENCODER_MODES} (or None) and a positive count")

    def with_cfg_halves(self) -> dict:
        """kv_specs with an fp keep-all spec for each CFG-shared block it leaves out (the runtime
        stores such a block's conditional half only)."""
        from litevar.kernels.kvcache import KVSpec
        out = dict(self.kv_specs)
        for layer in self.cfg_shared:
            out.setdefault(layer, KVSpec(cfg_shared=True))
        return out


def text_encoder_mb(arch: Arch) -> float:
    """MB of the family's text encoder as stored (TEXT_ENCODER_BYTES per parameter); 0: none."""
    return family_of(arch).text_encoder_params(arch) * TEXT_ENCODER_BYTES / MB


def as_shipped(arch: Arch) -> Decisions:
    """The decisions of the dense model as it ships: no lever pulled, and a family's text encoder
    resident (the default of every plan that does not free it). The planner's reference."""
    return Decisions(text_encoder="resident" if text_encoder_mb(arch) else None)


def linear_calls(arch: Arch, patch_nums, batch: int) -> list[tuple[LinearSpec, int]]:
    """(linear, M) of every linear call of one generation."""
    specs = family_of(arch).linears(arch)
    return [(s, M) for si in range(len(patch_nums)) for s in specs
            if (M := s.rows_at(patch_nums, si, batch, arch.context_len)) > 0]


def attention_calls(arch: Arch, patch_nums) -> list[tuple[int, int, int, int]]:
    """(block, scale, q_len, kv_len) of every attention call of one generation."""
    ends = np.cumsum([p * p for p in patch_nums]).tolist()
    return [(layer, si, pn * pn, ends[si]) for si, pn in enumerate(patch_nums) for layer in range(arch.depth)]


def linear_kinds(arch: Arch) -> set[str]:
    return {s.kind for s in family_of(arch).linears(arch)}


# ---------------------------------------------------------------------------------------------
# Formats and bytes


def _fmt(fmt: str):
    from litevar.kernels.formats import get_format
    return get_format(fmt)


def weight_bytes(K: int, N: int, fmt: str, fp_bytes: int = 4) -> int:
    """Stored bytes of one linear's weight (bias excluded, it is float in every format)."""
    return _fmt(fmt).weight_bytes(K, N, fp_bytes)


def format_applies(K: int, fmt: str) -> bool:
    """Whether a linear with K input features can take `fmt` (QuantLinear's requirements)."""
    return _fmt(fmt).applies(K)


def format_kernels(device) -> dict[str, str]:
    """format name -> kernel ('dense', 'w8a8', ..., 'emulated') on `device`."""
    from litevar.kernels.formats import FORMATS, capability
    return {name: capability(name, device).kernel for name in FORMATS}


def kv_backends() -> dict[str, str]:
    """KV format name -> the attention backend the cost stage times a call on such a cache with."""
    from litevar.kernels.kvquant import KV_FORMATS
    return {name: f.attn_backend for name, f in KV_FORMATS.items()}


# ---------------------------------------------------------------------------------------------
# Features


def linear_features(K, N, M) -> np.ndarray:
    K, N, M = (np.asarray(v, dtype=float) for v in (K, N, M))
    return np.stack([np.ones_like(M), M * K * N / 1e9, K * N / 1e6, M * (K + N) / 1e6], -1)


def attn_features(B, H, D, q_len, kv_len, kept) -> np.ndarray:
    B, H, D, q, kv, kept = (np.asarray(v, dtype=float) for v in (B, H, D, q_len, kv_len, kept))
    W = B * H * D * q * kv
    return np.stack([np.ones_like(W), W * kept / 1e9, W / 1e9, B * H * D * (q + kv) / 1e6], -1)


def activation_melems(K: int, N: int, Ms) -> float:
    """Million activation elements a linear's calls of `Ms` rows read and write (sum of M*(K+N)):
    what a kernel family's in-model gamma is per (CostModel.in_model_ms)."""
    return sum(M * (K + N) for M in Ms) / 1e6


def e2e_features(arch: Arch, patch_nums, batch: int) -> np.ndarray:
    """Overhead features (E2E_FEATURES without 'kernels') of one generation."""
    S, L, n_last = len(patch_nums), sum(p * p for p in patch_nums), patch_nums[-1] ** 2
    return np.array([1.0, S * (arch.depth + 1), batch * L * (arch.embed_dim * arch.depth + arch.head_out) / 1e6,
                     batch * n_last / 1e3])


def workspace_features(K, N, M) -> np.ndarray:
    K, N, M = (np.asarray(v, dtype=float) for v in (K, N, M))
    return np.stack([M * K, M * N, K * N], -1) * 4 / MB


def memory_features(arch: Arch, patch_nums, batch: int, act_bytes: int, kv_specs: Mapping | None = None
                    ) -> dict:
    """MB of the KV caches held at the last scale (exact), per block its last-scale call's
    (written segment, gathered buffer) in MB (exact), and the activations of the last scale
    (fitted factor)."""
    from litevar.kernels.kvcache import KVSpec, gather_bytes, held_bytes, written_bytes
    specs = [(kv_specs or {}).get(layer, KVSpec()) for layer in range(arch.depth)]
    H, D = arch.num_heads, arch.head_dim
    values = family_of(arch).activation_values(arch, patch_nums, batch)
    return {"kv_mb": sum(held_bytes(patch_nums, s, batch, H, D, act_bytes) for s in specs) / MB,
            "kv_calls": [(written_bytes(patch_nums, s, batch, H, D, act_bytes) / MB,
                          gather_bytes(patch_nums, s, batch, H, D, act_bytes) / MB) for s in specs],
            "activations_mb": values * 4 / MB}


def image_pixels(arch: Arch, patch_nums, batch: int) -> float:
    """Pixels the decode makes for `batch` images."""
    return batch * (patch_nums[-1] * arch.downsample) ** 2


def other_param_bytes(arch: Arch, patch_nums, fp_bytes: int = 4) -> int:
    return family_of(arch).other_param_bytes(arch, patch_nums, fp_bytes)


def resident_mb(arch: Arch, patch_nums, formats: Mapping[str, str], vae_mb: float) -> float:
    """MB of the weights (by format), the other parameters and the VAE."""
    lin = [(s.K, s.N, formats.get(s.fqn, "fp")) for s in family_of(arch).linears(arch)]
    return (sum(weight_bytes(K, N, f) for K, N, f in lin) + other_param_bytes(arch, patch_nums)) / MB + vae_mb


# ---------------------------------------------------------------------------------------------
# e2e configurations (the cost stage's generations)


def config_spec(config: str, arch: Arch) -> Decisions:
    """The decisions of an e2e config name: 'dense' (everything fp, dense attention) or
    '<FORMAT>:<kind>,<kind>[;<FORMAT>:<kind>...]' (those linear kinds in FORMAT where the format
    applies to their input width, e.g. 'W8A8:fc1,fc2;W4A16:head'); a group '<KV format>:<keep
    rule>' ('KV8:all', 'KV4:s1r2', 'fp:s3r1') sets every block's KV cache."""
    formats, kv_specs = {}, {}
    specs, kinds = family_of(arch).linears(arch), linear_kinds(arch)
    for group in ([] if config == "dense" else config.split(";")):
        fmt, _, wanted = group.partition(":")
        if fmt in kv_backends():
            kv_specs = {layer: kv_spec_of(fmt, wanted, config) for layer in range(arch.depth)}
            continue
        want = set(wanted.split(",")) if wanted else set()
        bad = want - kinds
        if not fmt or not want or bad:
            raise ValueError(f"e2e config {config!r}: use 'dense' or '<FORMAT>:<kind>,...[;...]', e.g. "
                             f"'W8A8:fc1,fc2', with kinds from {', '.join(sorted(kinds))}")
        formats.update({s.fqn: fmt for s in specs if s.kind in want and format_applies(s.K, fmt)})
    return Decisions(formats=formats, kv_specs=kv_specs)


def kv_spec_of(fmt: str, keep: str, config: str = ""):
    """kernels.kvcache.KVSpec of a KV group of an e2e config: keep 'all' or 's<sinks>r<recent>'."""
    from litevar.kernels.kvcache import KeepRule, KVSpec
    m = re.fullmatch(r"s(\d+)r(\d+)", keep)
    if keep != "all" and not m:
        raise ValueError(f"e2e config {config!r}: KV keep rule {keep!r}; use 'all' or 's<sinks>r<recent>', e.g. s1r2")
    return KVSpec(fmt, KeepRule(int(m[1]), int(m[2])) if m else KeepRule())


# ---------------------------------------------------------------------------------------------
# The fitted model


@dataclass
class KernelFit:
    """A kernel's fitted coefficients over its features (LINEAR_FEATURES or ATTN_FEATURES)."""

    coef: list[float]
    rmse_rel: float
    n: int
    kernel: str | None = None  # linears: the kernel family that ran it

    def ms(self, features: np.ndarray) -> float:
        return float(features @ np.asarray(self.coef))

    def to_dict(self) -> dict:
        d = {"coef": list(self.coef), "rmse_rel": self.rmse_rel, "n": self.n}
        return d | ({"kernel": self.kernel} if self.kernel is not None else {})


@dataclass
class E2EFit:
    coef: list[float]  # [dense alpha, overhead coefficients over E2E_FEATURES[1:]]
    alpha: dict[str, float]  # kernel family -> in-model factor
    rmse_rel: float
    n: int
    # another runtime dtype's activation factor (the memory model's m1 at it, fitted on its own
    # generations: autocast keeps some activations in float32); None: m1 scaled by the dtype's bytes
    act_coef: float | None = None
    # quantized kernel family -> in-model ms per million activation elements (M*(K+N)) of its
    # linears; only families timed in generations at two or more batches (else 0)
    gamma: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"coef": list(self.coef), "alpha": dict(self.alpha), "rmse_rel": self.rmse_rel, "n": self.n}
        d |= {"gamma": dict(self.gamma)} if self.gamma else {}
        return d | ({"act_coef": self.act_coef} if self.act_coef is not None else {})

    @classmethod
    def from_dict(cls, d: dict) -> E2EFit:
        return cls(d["coef"], dict(d.get("alpha", {})), d["rmse_rel"], d["n"], d.get("act_coef"),
                   dict(d.get("gamma", {})))


@dataclass
class MemoryFit:
    coef: list[float]  # m0, m1, m2 over MEM_FEATURES
    rmse_rel: float
    n: int
    vae_mb: float
    gather_coef: float = 1.0  # share of a KV call's gathered keys that adds to the peak
    decode: dict | None = None  # fit_decode's points (None: the decode phase is not modelled)
    # what the process holds beyond the allocator's peak (the resident set's growth minus it, the
    # largest over the profile's generations; None: not measured)
    process_overhead_mb: float | None = None

    def to_dict(self) -> dict:
        d = {"coef": list(self.coef), "gather_coef": self.gather_coef, "rmse_rel": self.rmse_rel, "n": self.n,
             "vae_mb": self.vae_mb}
        if self.process_overhead_mb is not None:
            d["process_overhead_mb"] = self.process_overhead_mb
        return d | ({"decode": self.decode} if self.decode is not None else {})


@dataclass
class Prediction:
    """Predicted latency and peak memory of one generation, and their parts."""

    latency_ms: float
    memory_mb: float
    linear_ms: float
    attn_ms: float
    overhead_ms: float
    alpha: float  # the dense in-model factor
    per_layer_ms: dict[str, float]  # linear name or '<attention name>.qk' -> ms
    memory_parts_mb: dict[str, float]  # the transformer phase's peak by part
    transformer_mb: float
    decode_mb: float
    encode_mb: float = 0.0  # the text-encoding phase (the model and its text encoder); 0: none counted


@dataclass
class CostModel:
    """The fitted cost model of one model on one device (a profile's meta.cost_model)."""

    device: str
    dtype: str  # runtime compute dtype
    arch: dict
    format_kernel: dict[str, str]  # format -> kernel family the profile ran it with
    linear: dict[str, KernelFit]  # '<format>|<dtype>' -> fit
    attn: dict[str, KernelFit]  # attention backend -> fit
    e2e: E2EFit
    memory: MemoryFit
    linear_workspace: dict[str, list[float]] = field(default_factory=dict)  # format -> [u, v, w]
    features: dict = field(default_factory=dict)
    version: int = VERSION
    kernels: dict = field(default_factory=dict)  # kernel paths probes chose (cost.kernel_paths)
    timing_s: dict | None = None
    # other runtime dtypes the profile priced (whole-model autocast): dtype -> the e2e fit of its
    # generations; their linears are '<format>|<dtype>' fits, their attention '<backend>@<dtype>'
    runtimes: dict[str, E2EFit] = field(default_factory=dict)
    # the host as the cost stage measured it: dispatch_ms (one tiny operator) and bandwidth_gbs (a
    # copy), which price the overhead on another device (profiler.devices.priced); {}: not measured
    host: dict = field(default_factory=dict)
    # (kind, arguments) -> ms of linear_ms / attn_ms, as this cost model prices them (call_ms)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def call_ms(self, kind: str, *args) -> float:
        """linear_ms(*args) (kind 'linear') or attn_ms(*args) ('attn'), each distinct call priced once
        per cost model: every block repeats the same shapes. A subclass's pricing (a target's
        roofline) is what is kept; kernel fits are never changed after a cost model is made (a
        re-priced one is a new object)."""
        key = (kind, *args)
        if key not in self._memo:
            self._memo[key] = (self.linear_ms if kind == "linear" else self.attn_ms)(*args)
        return self._memo[key]

    def dtypes(self) -> list[str]:
        """The runtime dtypes this model prices: the profile's and every extra one it measured."""
        return [self.dtype, *self.runtimes]

    @classmethod
    def from_dict(cls, d: dict) -> CostModel:
        """The cost model of a profile's meta.cost_model (ValueError naming what is missing)."""
        if not isinstance(d, dict):
            raise ValueError(f"a cost model is an object, got {type(d).__name__}")
        for key in ("dtype", "format_kernel", "linear", "attn", "e2e", "memory"):
            if key not in d:
                raise ValueError(f"cost_model.{key} is missing")
        try:
            mem = d["memory"]
            return cls(device=str(d.get("device", "cpu")), dtype=d["dtype"], arch=dict(d.get("arch", {})),
                       format_kernel=dict(d["format_kernel"]),
                       linear={k: KernelFit(**v) for k, v in d["linear"].items()},
                       attn={k: KernelFit(**v) for k, v in d["attn"].items()},
                       e2e=E2EFit.from_dict(d["e2e"]),
                       memory=MemoryFit(mem["coef"], mem["rmse_rel"], mem["n"], mem.get("vae_mb", 0.0),
                                        mem.get("gather_coef", 1.0), mem.get("decode"),
                                        mem.get("process_overhead_mb")),
                       linear_workspace=dict(d.get("linear_workspace", {})), features=dict(d.get("features", {})),
                       version=d.get("version", VERSION), kernels=dict(d.get("kernels", {})),
                       timing_s=d.get("timing_s"),
                       runtimes={k: E2EFit.from_dict(v) for k, v in d.get("runtimes", {}).items()},
                       host=dict(d.get("host", {})))
        except (KeyError, TypeError) as e:
            raise ValueError(f"cost_model is malformed ({type(e).__name__}: {e})") from None

    def to_dict(self) -> dict:
        d = {"version": self.version, "device": self.device, "dtype": self.dtype, "arch": self.arch,
             "format_kernel": self.format_kernel, "features": self.features,
             "linear": {k: v.to_dict() for k, v in self.linear.items()},
             "attn": {k: v.to_dict() for k, v in self.attn.items()}, "linear_workspace": self.linear_workspace,
             "e2e": self.e2e.to_dict(), "memory": self.memory.to_dict()}
        if self.kernels:
            d["kernels"] = self.kernels
        if self.timing_s is not None:
            d["timing_s"] = self.timing_s
        if self.runtimes:
            d["runtimes"] = {k: v.to_dict() for k, v in self.runtimes.items()}
        if self.host:
            d["host"] = self.host
        return d

    # -- kernels -------------------------------------------------------------------------
    def is_emulated(self, fmt: str) -> bool:
        return self.format_kernel.get(fmt, "emulated") == "emulated"

    def kernel_of(self, fmt: str) -> str:
        """The kernel family whose in-model factor (alpha) applies to a linear in `fmt`."""
        return "dense" if fmt == "fp" else self.format_kernel.get(fmt, "emulated")

    def e2e_of(self, dtype: str | None) -> E2EFit:
        """The e2e fit (in-model factors, overhead) of generations at runtime dtype `dtype`."""
        if dtype is None or dtype == self.dtype:
            return self.e2e
        if dtype not in self.runtimes:
            raise KeyError(f"runtime dtype {dtype!r} was not priced by this profile (it priced {self.dtypes()}); "
                           "re-run the cost stage")
        return self.runtimes[dtype]

    def alpha_of(self, kernel: str, dtype: str | None = None) -> float:
        """In-model vs isolated time factor of a kernel family: fitted on the generations that
        ran it, else the dense one."""
        e = self.e2e_of(dtype)
        return float(e.alpha.get(kernel, e.coef[0]))

    def gamma_of(self, kernel: str, dtype: str | None = None) -> float:
        """In-model ms per million activation elements of a kernel family's linears (0 unless fitted)."""
        return float(self.e2e_of(dtype).gamma.get(kernel, 0.0))

    def in_model_ms(self, kernel: str, kernel_ms: float, act_melems: float, dtype: str | None = None) -> float:
        """In-model ms of linears of one kernel family whose isolated calls take `kernel_ms` and
        move `act_melems` million activation elements (sum of M*(K+N))."""
        return self.alpha_of(kernel, dtype) * kernel_ms + self.gamma_of(kernel, dtype) * act_melems

    def _linear_entry(self, fmt: str, dtype: str) -> KernelFit | None:
        for key in (f"{fmt}|{dtype}", f"{fmt}|{self.dtype}"):
            if key in self.linear:
                return self.linear[key]
        if self.is_emulated(fmt):  # any measured emulated format stands for the others
            same = [v for v in self.linear.values() if v.kernel == "emulated"]
            return same[0] if same else None
        return None

    def linear_ms(self, K: int, N: int, M: int, fmt: str, dtype: str | None = None) -> float:
        """Predicted ms of one linear call (M rows, K in, N out) in `fmt` at `dtype` (default: the
        runtime dtype of the profile). Emulated formats are never faster than fp."""
        dtype = dtype or self.dtype
        fp = self._linear_entry("fp", dtype)
        if fp is None:
            raise KeyError(f"the cost model has no fp linear timings at {dtype}; re-run the cost stage")
        fp_ms = fp.ms(linear_features(K, N, M))
        if fmt == "fp":
            return fp_ms
        if fmt not in self.format_kernel:  # not emulated: unknown to the profile, which predates it
            raise KeyError(f"format {fmt!r} is newer than this profile's cost stage, which neither timed it nor "
                           f"recorded its kernel; re-run the cost stage (`litevar profile`) to plan with it")
        entry = self._linear_entry(fmt, dtype)
        if entry is None:
            if not self.is_emulated(fmt):
                raise KeyError(f"format {fmt!r} was not timed on this device; re-run the cost stage with it "
                               f"(timed: {sorted(self.linear)})")
            return fp_ms
        ms = entry.ms(linear_features(K, N, M))
        return max(ms, fp_ms) if self.is_emulated(fmt) else ms

    def attn_ms(self, B: int, H: int, D: int, q_len: int, kv_len: int, kept: float, backend: str,
                dtype: str | None = None, segments: int = 1) -> float:
        """Predicted ms of one attention call (B rows incl. CFG doubling) on `backend` ('dense',
        'mdwa', or either with '_qk8') at runtime dtype `dtype`; an untimed '_qk8' backend falls back
        to its base, a backend untimed at `dtype` to its timing at the profile's dtype. `segments`
        (the scales a KV-cache call assembles) is unused here: the cost stage timed every call shape
        of the schedule, so its fit holds their count; a target's fit uses it."""
        if dtype is not None and dtype != self.dtype:
            for name in (f"{backend}@{dtype}", f"{backend.removesuffix('_qk8')}@{dtype}"):
                if name in self.attn:
                    backend = name
                    break
        name = backend if backend in self.attn else backend.removesuffix("_qk8")
        if name not in self.attn:
            raise KeyError(f"attention backend {backend!r} was not timed; timed: {sorted(self.attn)}")
        kept = 1.0 if name.startswith("dense") else kept
        return self.attn[name].ms(attn_features(B, H, D, q_len, kv_len, kept))

    def kv_call_ms(self, arch: Arch, patch_nums, si: int, rows: int, spec, plain_ms: float,
                   dtype: str | None = None) -> float:
        """ms of attention call `si` of a block with KV-cache decisions `spec`, from `plain_ms` (the
        call over every key of a plain cache): over its kept scales only (kv_len scaled by the keys
        kept), plus what the backend reading such a cache costs beyond the plain one at that shape."""
        if spec.plain or spec.preallocated:  # no gather
            return plain_ms
        H, D = arch.num_heads, arch.head_dim
        q = patch_nums[si] ** 2
        kv = sum(p * p for p in patch_nums[:si + 1])
        parts = spec.keep.parts(si)
        kv_kept = sum(patch_nums[j] ** 2 for j in parts)
        attn_ms = functools.partial(self.call_ms, "attn")
        base = plain_ms * attn_ms(rows, H, D, q, kv_kept, 1.0, "dense", dtype) / attn_ms(
            rows, H, D, q, kv, 1.0, "dense", dtype)
        extra = (attn_ms(rows, H, D, q, kv_kept, 1.0, spec.fmt.attn_backend, dtype, len(parts))
                 - attn_ms(rows, H, D, q, kv_kept, 1.0, "dense", dtype))
        return base + max(0.0, extra)

    def kernel_ms(self, arch: Arch, patch_nums, batch: int, dec: Decisions, dtype: str | None = None) -> dict:
        """Sum of predicted linear and attention ms of one generation, with per-layer totals and
        per-kernel totals (by_kernel: 'dense' = fp linears + attention, else the quantized kernel).
        A block in dec.kv_specs attends over its kept scales and pays its cache's gather."""
        dtype = dtype or self.dtype
        per_layer: dict[str, float] = {}
        by_kernel: dict[str, float] = {"dense": 0.0}
        act_by_layer: dict[str, float] = {}  # million activation elements, M*(K+N)
        act_by_kernel: dict[str, float] = {}
        linear_ms, attn_ms = functools.partial(self.call_ms, "linear"), functools.partial(self.call_ms, "attn")
        for s, M in linear_calls(arch, patch_nums, batch):
            fmt = dec.formats.get(s.fqn, "fp")
            ms = linear_ms(s.K, s.N, M, fmt, "fp32" if s.fp32 else dtype)
            per_layer[s.fqn] = per_layer.get(s.fqn, 0.0) + ms
            kern, act = self.kernel_of(fmt), activation_melems(s.K, s.N, (M,))
            by_kernel[kern] = by_kernel.get(kern, 0.0) + ms
            act_by_layer[s.fqn] = act_by_layer.get(s.fqn, 0.0) + act
            act_by_kernel[kern] = act_by_kernel.get(kern, 0.0) + act
        attn, qk_names = 0.0, family_of(arch).site_names(arch, "qk")
        for layer, si, q, kv in attention_calls(arch, patch_nums):
            k = float(dec.kept.get((layer, si), 1.0))
            backend = ("mdwa" if k < 1.0 else "dense") + ("_qk8" if layer in dec.qk_int8 else "")
            rows = batch if layer in dec.cfg_shared else 2 * batch
            ms = attn_ms(rows, arch.num_heads, arch.head_dim, q, kv, k, backend, dtype)
            if layer in dec.kv_specs:
                ms = self.kv_call_ms(arch, patch_nums, si, rows, dec.kv_specs[layer], ms, dtype)
            per_layer[qk_names[layer]] = per_layer.get(qk_names[layer], 0.0) + ms
            attn += ms
        by_kernel["dense"] += attn
        return {"linear_ms": sum(v for k, v in per_layer.items() if not k.endswith(".qk")),
                "attn_ms": attn, "per_layer": per_layer, "by_kernel": by_kernel,
                "act_by_layer": act_by_layer, "act_by_kernel": act_by_kernel}

    # -- memory --------------------------------------------------------------------------
    def linear_workspace_mb(self, K: int, N: int, M: int, fmt: str) -> float:
        """MB a quantized linear call adds beyond the fp one (its temporaries); 0 when not measured."""
        ws = self.linear_workspace
        if fmt not in ws and self.is_emulated(fmt):
            fmt = next((f for f in ws if self.is_emulated(f)), fmt)
        if fmt not in ws or "fp" not in ws:
            return 0.0
        f = workspace_features(K, N, M)
        return max(0.0, float(f @ np.array(ws[fmt]) - f @ np.array(ws["fp"])))

    def workspace_scale(self) -> float:
        """The memory model's factor on the largest quantized-linear workspace (1 when counted as is)."""
        names = list(self.features.get("memory", MEM_FEATURES))
        return float(self.memory.coef[names.index("linear_workspace_mb")]) if "linear_workspace_mb" in names else 1.0

    def counted_memory_mb(self, arch: Arch, patch_nums, batch: int, formats: Mapping[str, str], vae_mb: float,
                          dtype: str | None = None, kv_specs: Mapping | None = None) -> dict:
        """The parts of the transformer phase's peak not fitted on generations (MB): weights by
        format, other parameters, VAE, KV cache, the largest extra workspace of a quantized linear
        and the largest last-scale KV call's written segment and gathered buffer (the block's
        with the largest written + g * gathered)."""
        fp_bytes = 4  # parameters stay float32 under autocast
        specs = family_of(arch).linears(arch)
        last = len(patch_nums) - 1

        def rows(s):  # the largest call: the last scale's tokens (a 'next' layer: one scale earlier)
            return max(s.rows_at(patch_nums, si, batch, arch.context_len) for si in (max(last - 1, 0), last))

        lin = [(s, formats.get(s.fqn, "fp")) for s in specs]
        extra = [self.linear_workspace_mb(s.K, s.N, rows(s), f) for s, f in lin if f != "fp"]
        kv = memory_features(arch, patch_nums, batch, DTYPE_BYTES[dtype or self.dtype], kv_specs)
        g = self.memory.gather_coef
        written, gathered = max(kv["kv_calls"], key=lambda c: c[0] + g * c[1], default=(0.0, 0.0))
        return {"weights_mb": sum(weight_bytes(s.K, s.N, f, fp_bytes) for s, f in lin) / MB,
                "other_params_mb": other_param_bytes(arch, patch_nums, fp_bytes) / MB,
                "vae_mb": float(vae_mb), "kv_mb": kv["kv_mb"], "kv_written_mb": written, "kv_gather_mb": gathered,
                "linear_workspace_mb": max(extra, default=0.0)}

    def decode_mb(self, arch: Arch, patch_nums, batch: int, resident: float) -> float:
        """Peak MB of the decode phase (the resident weights plus the decode); 0 for a profile that
        did not measure it."""
        dec = self.memory.decode
        if not dec:
            return 0.0
        return resident + decode_alloc_mb(dec, image_pixels(arch, patch_nums, batch) / 1e6)

    def reload_ms(self, arch: Arch) -> float:
        """ms to load the text encoder's weights again (a freed encoder, for a new prompt), at the
        profile's measured load rate (host.load_gbs: from the page cache; a cold disk is slower)."""
        gbs = (self.host or {}).get("load_gbs")
        if not gbs:
            from litevar.models.core.errors import UserError
            raise UserError("the profile did not measure this machine's load rate (host.load_gbs), which prices "
                            "freeing the text encoder; run `litevar profile --out PROFILE --refit` on the profiled "
                            "machine, or plan with --text-encoder resident")
        return text_encoder_mb(arch) * MB / (gbs * 1e9) * 1e3

    # -- the prediction ------------------------------------------------------------------
    def overhead_ms(self, arch: Arch, patch_nums, batch: int, dtype: str | None = None) -> float:
        """What a generation spends outside its linears and attention (the e2e fit's overhead)."""
        return float(e2e_features(arch, patch_nums, batch) @ np.array(self.e2e_of(dtype).coef[1:]))

    def activation_coef(self, dtype: str | None = None) -> float:
        """The memory model's activation factor (m1) at runtime `dtype`: fitted on that dtype's own
        generations where the profile measured them; else the profile dtype's, scaled up to more
        bytes per element but never down. Autocast keeps the residual stream, norms and softmax in
        float32, so a bf16 run holds nearly as much as an fp32 one (the default model on CPU: m1
        1.33 at bf16 against 1.39 at fp32); halving by the dtype's bytes under-counts."""
        dtype = dtype or self.dtype
        fit = self.runtimes.get(dtype) if dtype != self.dtype else None
        if fit is not None and fit.act_coef is not None:
            return fit.act_coef
        return self.memory.coef[1] * max(1.0, DTYPE_BYTES[dtype] / DTYPE_BYTES[self.dtype])

    def predict(self, arch: Arch | dict, patch_nums, batch: int, dec: Decisions | None = None,
                dtype: str | None = None) -> Prediction:
        """Predicted latency_ms and memory_mb of one generation of `batch` images at `patch_nums`."""
        arch, dec = arch_from(arch), dec or Decisions()
        pns = tuple(int(p) for p in patch_nums)
        kv_specs = dec.with_cfg_halves()
        k = self.kernel_ms(arch, pns, batch, Decisions(dec.formats, dec.kept, dec.cfg_shared, dec.qk_int8, kv_specs),
                           dtype)
        overhead = self.overhead_ms(arch, pns, batch, dtype)
        latency = sum(self.in_model_ms(kern, ms, k["act_by_kernel"].get(kern, 0.0), dtype)
                      for kern, ms in k["by_kernel"].items()) + overhead
        mem = self.counted_memory_mb(arch, pns, batch, dec.formats, self.memory.vae_mb, dtype, kv_specs)
        act_mb = memory_features(arch, pns, batch, DTYPE_BYTES[dtype or self.dtype])["activations_mb"]
        m0, _, m2 = self.memory.coef
        m1 = self.activation_coef(dtype)
        ws, kv_call = m2 * mem.pop("linear_workspace_mb"), mem.pop("kv_written_mb") + self.memory.gather_coef * mem.pop(
            "kv_gather_mb")
        mem.update(fixed_mb=m0, activations_mb=m1 * act_mb, workspace_mb=max(ws, kv_call))
        resident = mem["weights_mb"] + mem["other_params_mb"] + mem["vae_mb"]
        decode = self.decode_mb(arch, pns, batch, resident)
        encode = 0.0
        enc_mb = text_encoder_mb(arch) if dec.text_encoder else 0.0
        if enc_mb:  # encoding: the model loaded and its encoder; kept through the generation if resident
            encode = resident + enc_mb
            if dec.text_encoder == "resident":
                mem["text_encoder_mb"] = enc_mb
                decode = decode + enc_mb if decode else 0.0
            else:
                overhead += self.reload_ms(arch) / dec.images_per_prompt
                latency += self.reload_ms(arch) / dec.images_per_prompt
        transformer = float(sum(mem.values()))
        alpha = self.alpha_of("dense", dtype)
        per_layer = {n: alpha * v if n.endswith(".qk") else
                     self.in_model_ms(self.kernel_of(dec.formats.get(n, "fp")), v, k["act_by_layer"][n], dtype)
                     for n, v in k["per_layer"].items()}
        return Prediction(latency_ms=float(latency), memory_mb=max(transformer, decode, encode),
                          linear_ms=sum(v for n, v in per_layer.items() if not n.endswith(".qk")),
                          attn_ms=alpha * k["attn_ms"], overhead_ms=overhead, alpha=alpha, per_layer_ms=per_layer,
                          memory_parts_mb=mem, transformer_mb=transformer, decode_mb=decode, encode_mb=encode)

    def validate(self, arch: Arch | dict, rows) -> list[dict]:
        """Predicted vs measured latency and memory of e2e rows (dicts or a DataFrame with
        patch_nums, batch, config, ms, peak_mb; optional resolution, held_out)."""
        arch = arch_from(arch)
        rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
        out = []
        for row in rows:
            pns, batch = _row_patch_nums(row), int(row["batch"])
            dtype = row_dtype(row, self.dtype)
            p = self.predict(arch, pns, batch, config_spec(row["config"], arch), dtype)
            out.append({"resolution": int(row.get("resolution", pns[-1])), "patch_nums": ",".join(map(str, pns)),
                        "batch": batch, "config": row["config"], "dtype": dtype,
                        "held_out": bool(row.get("held_out", True)),
                        "measured_ms": float(row["ms"]), "predicted_ms": p.latency_ms,
                        "latency_err": p.latency_ms / float(row["ms"]) - 1,
                        "measured_mb": float(row["peak_mb"]), "predicted_mb": p.memory_mb,
                        "memory_err": p.memory_mb / float(row["peak_mb"]) - 1})
        return out


# ---------------------------------------------------------------------------------------------
# Fitting


def nonneg_fit(A: np.ndarray, y: np.ndarray, relative: bool = True, lower=None, upper=None) -> tuple[list, float]:
    """Coefficients x >= lower (default 0) minimising |(A x - y) / y| (relative) or |A x - y|,
    and the RMS relative error of the fit."""
    from scipy.optimize import lsq_linear
    A, y = np.asarray(A, dtype=float), np.asarray(y, dtype=float)
    if len(y) == 0:
        raise ValueError("no measured points to fit: the cost table is empty")
    w = 1.0 / np.maximum(np.abs(y), 1e-9) if relative else np.ones_like(y)
    scale = np.maximum(np.abs(A * w[:, None]).max(0), 1e-30)  # column scaling for conditioning
    lo = np.zeros(A.shape[1]) if lower is None else np.asarray(lower, dtype=float)
    hi = np.full(A.shape[1], np.inf) if upper is None else np.asarray(upper, dtype=float)
    res = lsq_linear(A * w[:, None] / scale, y * w, bounds=(lo * scale, hi * scale), method="bvls")
    x = res.x / scale
    rel = (A @ x - y) / np.maximum(np.abs(y), 1e-9)
    return [float(v) for v in x], float(np.sqrt(np.mean(rel ** 2)))


def _backend_dtype(backend: str) -> str:
    """'w8a8-fp32' -> 'fp32' (cost_linear.backend is '<kernel>-<dtype>')."""
    return backend.rsplit("-", 1)[-1]


def fit_linear(df) -> dict[str, KernelFit]:
    """{'<format>|<dtype>': fit} from the cost_linear table."""
    out = {}
    df = df.assign(dtype=df["backend"].map(_backend_dtype))
    for (fmt, dtype), g in df.groupby(["format", "dtype"]):
        coef, err = nonneg_fit(linear_features(g["K"], g["N"], g["M"]), g["ms"].to_numpy())
        out[f"{fmt}|{dtype}"] = KernelFit(coef, err, len(g), g["backend"].iloc[0].rsplit("-", 1)[0])
    return out


def fit_linear_workspace(df) -> dict:
    """{format: [u, v, w]}: MB one linear call adds = (u * M*K + v * M*N + w * K*N) * 4 B
    (rows of cost_linear with a workspace_mb)."""
    if "workspace_mb" not in df:
        return {}
    df = df[df["workspace_mb"].notna()]
    out = {}
    for fmt, g in df.groupby("format"):
        A = workspace_features(g["K"], g["N"], g["M"])
        out[fmt], _ = nonneg_fit(A, g["workspace_mb"].to_numpy(dtype=float), relative=False)
    return out


def fit_attention(df) -> dict[str, KernelFit]:
    """{backend: fit} from the cost_attn table."""
    out = {}
    for backend, g in df.groupby("backend"):
        kept = g["kept"].where(~g["backend"].str.startswith("dense"), 1.0)
        coef, err = nonneg_fit(attn_features(g["B"], g["H"], g["D"], g["q_len"], g["kv_len"], kept),
                               g["ms"].to_numpy())
        out[backend] = KernelFit(coef, err, len(g))
    return out


def row_dtype(row, default: str) -> str:
    """A cost_e2e row's runtime dtype (rows measured before the column: the profile's)."""
    d = row.get("dtype") if hasattr(row, "get") else None
    return d if isinstance(d, str) and d else default


def _row_patch_nums(row) -> tuple[int, ...]:
    pn = row["patch_nums"]
    return tuple(int(p) for p in (pn.split(",") if isinstance(pn, str) else pn))


def fit(tables: dict, arch: Arch | dict, device: str = "cpu", dtype: str = "fp32", vae_mb: float = 0.0,
        fit_rows: Iterable[int] | None = None) -> CostModel:
    """The cost model of the cost tables (pandas DataFrames cost_linear, cost_attn, cost_e2e;
    cost_e2e needs a patch_nums column). `dtype` is the runtime compute dtype, `vae_mb` the VAE's
    resident bytes, `fit_rows` the cost_e2e rows (positions) to fit on (default all; the rest are
    for validation)."""
    arch = arch_from(arch)
    placeholder = E2EFit([1.0, 0.0, 0.0, 0.0], {}, 0.0, 0)
    cm = CostModel(device=str(device), dtype=dtype, arch=arch.to_dict(), format_kernel=format_kernels(device),
                   features={"linear": list(LINEAR_FEATURES), "attn": list(ATTN_FEATURES),
                             "e2e": list(E2E_FEATURES), "memory": list(MEM_FEATURES)},
                   linear=fit_linear(tables["cost_linear"]), attn=fit_attention(tables["cost_attn"]),
                   e2e=placeholder, memory=MemoryFit([0.0, 0.0, 1.0], 0.0, 0, vae_mb),
                   linear_workspace=fit_linear_workspace(tables["cost_linear"]))
    e2e = tables["cost_e2e"]
    e2e = e2e.iloc[list(fit_rows)] if fit_rows is not None else e2e
    dtypes = e2e.apply(lambda r: row_dtype(r, dtype), axis=1) if len(e2e) else e2e.get("config")
    own = e2e[dtypes == dtype] if len(e2e) else e2e
    cm.e2e = fit_e2e(cm, arch, own)
    cm.memory = fit_memory(cm, arch, own, vae_mb, tables.get("cost_decode"))
    for other in sorted(set(dtypes) - {dtype}) if len(e2e) else ():
        cm.runtimes[other] = fit_e2e(cm, arch, e2e[dtypes == other], other)
        cm.runtimes[other].act_coef = fit_activations(cm, arch, e2e[dtypes == other], other)
    log.info("cost model: linear %s, attention %s, e2e rmse %.1f%%, memory rmse %.1f%%",
             {k: round(v.rmse_rel, 3) for k, v in cm.linear.items()},
             {k: round(v.rmse_rel, 3) for k, v in cm.attn.items()},
             100 * cm.e2e.rmse_rel, 100 * cm.memory.rmse_rel)
    return cm


def fit_e2e(cm: CostModel, arch: Arch, e2e, dtype: str | None = None) -> E2EFit:
    """Per kernel family an alpha (kernel time factor, within ALPHA_BOUNDS) and the overhead
    coefficients. A quantized family gets its own alpha when a generation ran it (its in-model
    speed differs from the isolated one differently from dense kernels'), and its gamma when
    generations ran it at two or more batches; coef[0] is the dense alpha."""
    runs = [(_row_patch_nums(row), int(row["batch"]), row["config"], float(row["ms"])) for _, row in e2e.iterrows()]
    ks = [cm.kernel_ms(arch, pns, b, config_spec(c, arch), dtype) for pns, b, c, _ in runs]
    quant = sorted({k for km in ks for k, v in km["by_kernel"].items() if k != "dense" and v > 0})
    # gamma_k is identifiable only where family k ran at two or more batches
    batched = [q for q in quant if len({b for km, (_, b, _, _) in zip(ks, runs) if km["by_kernel"].get(q, 0) > 0}) > 1]
    A = [np.concatenate([[km["by_kernel"]["dense"]], [km["by_kernel"].get(q, 0.0) for q in quant],
                         [km["act_by_kernel"].get(q, 0.0) for q in batched], e2e_features(arch, pns, b)])
         for km, (pns, b, _, _) in zip(ks, runs)]
    y = [ms for *_, ms in runs]
    n_alpha, n_gamma, n = 1 + len(quant), len(batched), len(E2E_FEATURES) - 1
    lower = np.r_[np.full(n_alpha, ALPHA_BOUNDS[0]), np.zeros(n_gamma + n)]
    upper = np.r_[np.full(n_alpha, ALPHA_BOUNDS[1]), np.full(n_gamma + n, np.inf)]
    coef, err = nonneg_fit(np.array(A), np.array(y), lower=lower, upper=upper)
    return E2EFit([coef[0], *coef[n_alpha + n_gamma:]], dict(zip(["dense", *quant], coef[:n_alpha])), err, len(y),
                  gamma=dict(zip(batched, coef[n_alpha:n_alpha + n_gamma])))


def fit_memory(cm: CostModel, arch: Arch, e2e, vae_mb: float = 0.0, decodes=None) -> MemoryFit:
    """The fitted terms of the memory model (see the module docstring): m0, m1, m2 >= 0 on the
    transformer phase's peak minus its counted parts (m2 scales the isolated quantized-linear
    workspace; it stays 1 without quantized generations to fit on), the gather share g, and the
    decode's points. Without the phase columns (profiles measured before them) m0..m2 are fitted
    on the whole generation's peak and the decode phase is not modelled."""
    phases = "peak_tf_mb" in e2e and e2e["peak_tf_mb"].notna().all()
    A, y, act_bytes = [], [], DTYPE_BYTES[cm.dtype]
    for _, row in e2e.iterrows():
        pns, batch = _row_patch_nums(row), int(row["batch"])
        spec = config_spec(row["config"], arch)
        counted = cm.counted_memory_mb(arch, pns, batch, spec.formats, vae_mb, kv_specs=spec.kv_specs)
        f = memory_features(arch, pns, batch, act_bytes)
        A.append([1.0, f["activations_mb"], counted.pop("linear_workspace_mb"), counted.pop("kv_gather_mb")])
        y.append(float(row["peak_tf_mb" if phases else "peak_mb"]) - sum(counted.values()))
    A, y = np.array(A), np.array(y)
    coef, _ = nonneg_fit(A, y, relative=False)
    for j in (2, 3):  # no quantized linear / KV generation to fit on: count the isolated figure as is
        if not A[:, j].any():
            coef[j] = 1.0
    target = e2e["peak_tf_mb" if phases else "peak_mb"].to_numpy(dtype=float)
    rmse = float(np.sqrt(np.mean(((A @ coef - y) / target) ** 2)))
    decode = fit_decode(arch, e2e, vae_mb, decodes) if phases and "peak_decode_mb" in e2e else None
    overhead = None
    if "rss_mb" in e2e and e2e["rss_mb"].notna().any():
        overhead = float(max(0.0, (e2e["rss_mb"] - e2e["peak_mb"]).max()))
    return MemoryFit(coef[:3], rmse, len(y), float(vae_mb), coef[3], decode, overhead)


def fit_activations(cm: CostModel, arch: Arch, e2e, dtype: str) -> float | None:
    """The activation factor (m1) of generations at another runtime dtype: what their transformer
    phase's peak leaves after every other term of the memory model (fitted at the profile's dtype),
    over the activation values. None without phase columns."""
    if "peak_tf_mb" not in e2e or not e2e["peak_tf_mb"].notna().all() or not len(e2e):
        return None
    m0, _, m2 = cm.memory.coef
    x, y = [], []
    for _, row in e2e.iterrows():
        pns, batch = _row_patch_nums(row), int(row["batch"])
        spec = config_spec(row["config"], arch)
        counted = cm.counted_memory_mb(arch, pns, batch, spec.formats, cm.memory.vae_mb, dtype, spec.kv_specs)
        rest = max(m2 * counted.pop("linear_workspace_mb"),
                   counted.pop("kv_written_mb") + cm.memory.gather_coef * counted.pop("kv_gather_mb"))
        x.append([memory_features(arch, pns, batch, DTYPE_BYTES[dtype])["activations_mb"]])
        y.append(float(row["peak_tf_mb"]) - sum(counted.values()) - m0 - rest)
    coef, _ = nonneg_fit(np.array(x), np.array(y), relative=False)
    return coef[0]


def fit_decode(arch: Arch, e2e, vae_mb: float, decodes=None) -> dict:
    """The decode phase's own peak (MB above the resident weights) against the pixels decoded:
    piecewise linear through the measured points (MB/1e6 px), extended past the largest along its
    last segment. Points: each generation's decode phase (peak_decode_mb - weights - other
    parameters - VAE) and the decodes alone (cost_decode). Not an affine fit: the decoder's peak
    is that of its lower levels at small images and of its full-resolution level (a fixed number
    of feature maps) only from ~512 px on, so a line through 256 and 512 px overshoots 2048 px by
    half; the last segment is the one that holds there."""
    pts: dict[float, list[float]] = {}
    for _, row in e2e.iterrows():
        pns, batch = _row_patch_nums(row), int(row["batch"])
        resident = resident_mb(arch, pns, config_spec(row["config"], arch).formats, vae_mb)
        pts.setdefault(image_pixels(arch, pns, batch) / 1e6, []).append(float(row["peak_decode_mb"]) - resident)
    for _, row in (decodes.iterrows() if decodes is not None else ()):
        pts.setdefault(int(row["batch"]) * int(row["resolution"]) ** 2 / 1e6, []).append(float(row["peak_mb"]))
    points = [[x, max(float(np.median(v)), 0.0)] for x, v in sorted(pts.items())]
    return {"points": points, "features": ["pixels/1e6", "MB"], "n": sum(map(len, pts.values()))}


def decode_alloc_mb(dec: dict, pixels_m: float) -> float:
    """MB the decode of `pixels_m` million pixels allocates: fit_decode's points (or d0 + d1 * px
    of profiles fitted before them)."""
    if "coef" in dec:
        return dec["coef"][0] + dec["coef"][1] * pixels_m
    x, y = np.array(dec["points"]).T
    if len(x) == 1:
        return float(y[0] * pixels_m / x[0])  # one point: proportional to the pixels
    if pixels_m <= x[-1]:
        return float(np.interp(pixels_m, x, y))
    slope = max((y[-1] - y[-2]) / (x[-1] - x[-2]), 0.0)
    return float(y[-1] + slope * (pixels_m - x[-1]))


# ---------------------------------------------------------------------------------------------
# Validation rows


def dense_pairs(validation: list[dict]) -> list[tuple[dict, dict]]:
    """(row, dense row) of validation rows: every quantized generation with the dense one timed
    at the same schedule and batch (those without one are left out)."""
    def key(v):
        return v["patch_nums"], v["batch"], v.get("dtype")
    dense = {key(v): v for v in validation if v["config"] == "dense"}
    return [(v, dense[key(v)]) for v in validation if v["config"] != "dense" and key(v) in dense]
