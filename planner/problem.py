"""The planning problem as plain data, and the one function that scores a choice of it.

A `Problem` is what the solver sees: no model, no profile, no cost-model calls. It holds

    formats   one FormatGroup per quantizable linear: its options (format, loss, ms, MB, bits)
    windows   one row per windowed option of a (layer, head, scale, part): width, loss, removed
              (query, key) pairs; the FULL width (-1) of every part is implicit (loss 0, 0 removed)
    slots     one AttnSlot per attention call (layer, scale): its kernel cost per mode, dense
              (no window active) or MDWA (as a function of the kept fraction), with or without
              QK8 and CFG sharing, and its FLOPs
    cfg_loss, qk_loss   per-layer losses of sharing attention across CFG (ASC) and of QK8
    kv        one KVGroup per block: its KV-cache options (format x keep rule), each with its loss,
              cache MB, gathered-keys MB and extra attention ms, without and with CFG sharing

`evaluate(problem, selection)` is the definition of every predicted number; the integer program
(planner/solve.py) encodes exactly it, and the tests compare the two by brute force.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from litevar.models.core.errors import UserError

FULL = -1  # kernels.windows.FULL: the whole part (no window)
FLOAT_BITS = 16
WINDOW_COLUMNS = ["layer", "head", "scale", "part", "width", "loss", "removed"]


@dataclass(frozen=True)
class FormatOption:
    """One format of one linear layer and everything it changes."""

    format: str
    loss: float  # predicted quality loss (profile loss unit); fp = 0
    latency_ms: float  # summed over every call of the layer in one generation
    weight_mb: float  # stored weight bytes / 2**20
    workspace_mb: float = 0.0  # extra transient MB of one call beyond fp (peak = the largest one)
    bits: int = FLOAT_BITS  # nominal weight bits (16 = kept in float)


@dataclass(frozen=True)
class FormatGroup:
    layer: str  # fully-qualified name of the linear in its model
    params: int  # K * N weights
    options: tuple[FormatOption, ...]  # options[0] is fp
    kind: str = ""  # its role in the model family (fc2, mat_qkv, ...): recipes select by it

    def option(self, fmt: str) -> FormatOption:
        for o in self.options:
            if o.format == fmt:
                return o
        raise UserError(f"layer {self.layer}: format {fmt!r} is not an option here; "
                        f"options: {', '.join(o.format for o in self.options)}")


@dataclass(frozen=True)
class KVOption:
    """One KV-cache choice of one block: a format and the scales kept (kernels.kvcache.KVSpec)."""

    fmt: str  # "fp" | "KV8" | "KV4"
    keep: tuple[int, int | None]  # (sinks, recent); recent None: every scale
    loss: float
    mb: tuple[float, float]  # MB the cache holds while another block runs the last scale, [CFG-shared]
    # its own last-scale call's transient MB: the segment it writes + g * the buffer it gathers
    gather_mb: tuple[float, float]
    ms: tuple[float, float]  # attention ms beyond the plain cache's, [CFG-shared]

    @property
    def evicts(self) -> bool:
        return self.keep[1] is not None

    @property
    def quantized(self) -> bool:
        return self.fmt != "fp"

    @property
    def plain(self) -> bool:
        return not self.evicts and not self.quantized


@dataclass(frozen=True)
class KVGroup:
    layer: int
    options: tuple[KVOption, ...]  # options[0] is fp, every scale kept

    def option(self, fmt: str, keep) -> KVOption:
        for o in self.options:
            if o.fmt == fmt and o.keep == tuple(keep):
                return o
        raise UserError(f"block {self.layer}: KV option {fmt} keep {keep} is not an option here")


@dataclass(frozen=True)
class AttnSlot:
    """One attention call (layer, scale): every head shares one kernel.

    Costs are indexed [qk8][shared] (0/1 each). mdwa_ms[q][c] is the MDWA kernel's ms at the
    kept fractions `kept_grid` (piecewise linear in between); dense_ms[q][c] the dense kernel's.
    The dense kernel runs when no window of the call is active."""

    layer: int
    scale: int
    pairs: int  # (head, query, key) pairs of the call: H * q_len * kv_len
    dense_ms: tuple[tuple[float, float], tuple[float, float]]
    kept_grid: tuple[float, ...]
    mdwa_ms: tuple[tuple[tuple[float, ...], tuple[float, ...]], tuple[tuple[float, ...], tuple[float, ...]]]
    flops: tuple[float, float]  # attention FLOPs of the call when dense, [shared]

    def ms(self, kept: float, windowed: bool, qk8: bool, shared: bool) -> float:
        if not windowed:
            return self.dense_ms[qk8][shared]
        return float(np.interp(kept, self.kept_grid, self.mdwa_ms[qk8][shared]))

    def points_ms(self, kept: np.ndarray, qk8: bool, shared: bool) -> np.ndarray:
        """ms of frontier points: point 0 (no window) on the dense kernel, the rest on MDWA."""
        out = np.interp(kept, self.kept_grid, self.mdwa_ms[qk8][shared])
        out[0] = self.dense_ms[qk8][shared]
        return out


@dataclass
class Problem:
    formats: list[FormatGroup]
    windows: pd.DataFrame  # WINDOW_COLUMNS, one row per windowed option
    slots: dict[tuple[int, int], AttnSlot]
    cfg_loss: dict[int, float]  # layers that may share attention across CFG -> loss
    qk_loss: dict[int, float]  # layers that may run QK8 -> loss
    base_latency_ms: float  # everything that no decision changes
    base_memory_mb: float
    dense_latency_ms: float  # the dense full-precision model (speedup reference)
    dense_memory_mb: float
    meta: dict = field(default_factory=dict)  # arch, patch_nums, batch, family, device, ...
    kv: list[KVGroup] = field(default_factory=list)  # none: every cache plain (its MB in base_memory_mb)
    decode_base_mb: float | None = None  # the decode phase but for the weights; None: not modelled
    base_loss: float = 0.0  # what every plan pays: the runtime dtype's measured loss (0 at the profile's)

    def __post_init__(self):
        missing = [c for c in WINDOW_COLUMNS if c not in self.windows.columns]
        if missing:
            raise ValueError(f"Problem.windows lacks columns {missing}; give {WINDOW_COLUMNS}")
        self.windows = self.windows.reset_index(drop=True)
        self._window_index = None

    @property
    def dense_flops(self) -> float:
        return sum(s.flops[0] for s in self.slots.values())

    @property
    def total_params(self) -> int:
        return sum(g.params for g in self.formats)

    @property
    def window_index(self) -> dict[tuple[int, int, int, int, int], tuple[float, float]]:
        """(layer, head, scale, part, width) -> (loss, removed pairs)."""
        if self._window_index is None:
            w = self.windows
            keys = zip(*(w[c].astype(int).tolist() for c in WINDOW_COLUMNS[:5]))
            self._window_index = dict(zip(keys, zip(w["loss"].tolist(), w["removed"].tolist())))
        return self._window_index

    def check_finite(self) -> None:
        """UserError naming the first figure of the problem that is not finite (NaN or inf would
        make the solver fail or plan on nonsense; a validated profile never gives one)."""
        fix = "the profile's losses or cost model give it; re-run `litevar profile` for this model"
        for g in self.formats:
            for o in g.options:
                for what in ("loss", "latency_ms", "weight_mb", "workspace_mb"):
                    if not np.isfinite(getattr(o, what)):
                        raise UserError(f"layer {g.layer} in {o.format}: {what} = {getattr(o, what)}; {fix}")
        for key, slot in self.slots.items():
            if not np.isfinite(slot.dense_ms).all() or np.isnan(slot.mdwa_ms).any():  # mdwa inf = not timed
                raise UserError(f"attention call (layer, scale) {key}: kernel time is not finite; {fix}")
        bad = ~np.isfinite(self.windows[["loss", "removed"]].to_numpy(float)).all(axis=1)
        if bad.any():
            raise UserError(f"window option {self.windows[bad].iloc[0].to_dict()} is not finite; {fix}")
        for g in self.kv:
            for o in g.options:
                if not all(np.isfinite(v) for v in (o.loss, *o.mb, *o.gather_mb, *o.ms)):
                    raise UserError(f"block {g.layer} KV option {o.fmt} keep {o.keep} is not finite; {fix}")
        for what, losses in (("CFG sharing", self.cfg_loss), ("QK8", self.qk_loss)):
            for layer, v in losses.items():
                if not np.isfinite(v):
                    raise UserError(f"{what} loss of block {layer} = {v}; {fix}")
        for what in ("base_latency_ms", "base_memory_mb", "dense_latency_ms", "dense_memory_mb", "base_loss"):
            if not np.isfinite(getattr(self, what)):
                raise UserError(f"{what} = {getattr(self, what)}; {fix}")

    def size(self) -> dict[str, int]:
        return {"format_groups": len(self.formats), "format_options": sum(len(g.options) for g in self.formats),
                "kv_groups": len(self.kv), "kv_options": sum(len(g.options) for g in self.kv),
                "window_groups": int(self.windows.groupby(["layer", "head", "scale", "part"]).ngroups),
                "window_options": len(self.windows), "slots": len(self.slots),
                "cfg_layers": len(self.cfg_loss), "qk_layers": len(self.qk_loss)}


@dataclass(frozen=True)
class Budgets:
    """Any combination of budgets; None = no limit."""

    max_latency_ms: float | None = None
    max_memory_gib: float | None = None
    min_speedup: float | None = None  # vs the dense full-precision prediction
    max_attn_flops: float | None = None  # share of the dense attention FLOPs, in (0, 1]
    max_avg_bits: float | None = None  # average nominal weight bits over the linear weights

    def __post_init__(self):
        for name in ("max_latency_ms", "max_memory_gib", "min_speedup", "max_avg_bits"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise UserError(f"--{name.replace('_', '-')} {v}: give a positive number (or leave it out)")
        f = self.max_attn_flops
        if f is not None and not 0 < f <= 1:
            raise UserError(f"--max-attn-flops {f}: give the share of the dense attention FLOPs to keep, "
                            "in (0, 1], e.g. 0.3")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("max_latency_ms", "max_memory_gib", "min_speedup",
                                              "max_attn_flops", "max_avg_bits")}

    def latency_limit(self, dense_latency_ms: float) -> float | None:
        """The tighter of max_latency_ms and dense / min_speedup."""
        lims = [v for v in (self.max_latency_ms,
                            dense_latency_ms / self.min_speedup if self.min_speedup else None) if v is not None]
        return min(lims) if lims else None

    def any(self) -> bool:
        return any(v is not None for v in self.to_dict().values())

    def guarded(self, latency: float = 0.0, memory: float = 0.0) -> Budgets:
        """The budgets the solver must meet so that the measured figures meet these ones when
        the cost model under-predicts latency (relative to dense) by up to `latency` and memory
        by up to `memory` (fractions >= 0; see planner.build.guard_band)."""
        if latency < 0 or memory < 0:
            raise UserError(f"--guard {latency}/{memory}: give fractions >= 0, e.g. 0.04 (or 'auto')")
        div = lambda v, g: None if v is None else v / (1 + g)  # noqa: E731
        return Budgets(div(self.max_latency_ms, latency), div(self.max_memory_gib, memory),
                       None if self.min_speedup is None else self.min_speedup * (1 + latency),
                       self.max_attn_flops, self.max_avg_bits)


@dataclass
class Selection:
    """One choice for every decision. Missing entries are the uncompressed option."""

    formats: dict[str, str] = field(default_factory=dict)  # layer -> format (missing: fp)
    widths: dict[tuple[int, int, int, int], int] = field(default_factory=dict)  # (l, h, s, p) -> width
    cfg_shared: frozenset[int] = frozenset()
    qk_int8: frozenset[int] = frozenset()
    kv: dict[int, tuple[str, tuple]] = field(default_factory=dict)  # block -> (format, (sinks, recent))


@dataclass(frozen=True)
class Metrics:
    loss: float
    latency_ms: float
    memory_mb: float
    attn_flops: float  # share of the dense attention FLOPs
    avg_bits: float
    attn_kept: float  # share of the (head, query, key) pairs kept
    kept: dict  # (layer, scale) -> kept fraction, for every windowed call
    kv_mb: float = 0.0  # the KV caches held at the last scale (MB; kernels.kvcache.held_bytes)
    transformer_mb: float = 0.0
    decode_mb: float = 0.0

    def within(self, budgets: Budgets, problem: Problem, rtol: float = 1e-6) -> bool:
        lat = budgets.latency_limit(problem.dense_latency_ms)
        checks = [(self.latency_ms, lat), (self.memory_mb, budgets.max_memory_gib and budgets.max_memory_gib * 1024),
                  (self.attn_flops, budgets.max_attn_flops), (self.avg_bits, budgets.max_avg_bits)]
        return all(limit is None or value <= limit * (1 + rtol) + 1e-9 for value, limit in checks)


def slot_kept(problem: Problem, selection: Selection) -> dict[tuple[int, int], float]:
    """(layer, scale) -> kept fraction of the calls with an active window."""
    removed: dict[tuple[int, int], float] = {}
    index = problem.window_index
    for (l, h, s, p), w in selection.widths.items():
        if w == FULL:
            continue
        if (l, h, s, p, w) not in index:
            raise UserError(f"window width {w} of (layer {l}, head {h}, scale {s}, part {p}) is not an option")
        removed[l, s] = removed.get((l, s), 0.0) + index[l, h, s, p, w][1]
    return {k: 1.0 - r / problem.slots[k].pairs for k, r in removed.items() if r > 0}


def kv_choice(problem: Problem, selection: Selection):
    """[(group, option)] of every block's KV-cache choice (missing: options[0], the plain cache)."""
    return [(g, g.option(*selection.kv[g.layer]) if g.layer in selection.kv else g.options[0]) for g in problem.kv]


def check_exclusions(problem: Problem, selection: Selection) -> str | None:
    """Why a selection is not a plan (None: it is): a block that evicts takes no window, one with
    a quantized or evicting cache no QK8."""
    for g, o in kv_choice(problem, selection):
        if o.evicts and any(l == g.layer for (l, _, _, _) in selection.widths):
            return f"block {g.layer} evicts KV scales and has windows"
        if not o.plain and g.layer in selection.qk_int8:
            return f"block {g.layer} has QK8 and a {o.fmt} cache keeping {o.keep}"
    return None


def evaluate(problem: Problem, selection: Selection) -> Metrics:
    """Predicted loss, latency, memory, attention FLOPs share and average bits of a selection."""
    loss, latency, memory = problem.base_loss, problem.base_latency_ms, problem.base_memory_mb
    workspace = bits = 0.0
    weights = 0.0
    for g in problem.formats:
        o = g.option(selection.formats.get(g.layer, "fp"))
        loss, latency, weights = loss + o.loss, latency + o.latency_ms, weights + o.weight_mb
        workspace, bits = max(workspace, o.workspace_mb), bits + o.bits * g.params
    kv_mb = 0.0
    for g, o in kv_choice(problem, selection):
        c = int(g.layer in selection.cfg_shared)
        loss, latency, kv_mb = loss + o.loss, latency + o.ms[c], kv_mb + o.mb[c]
        workspace = max(workspace, o.gather_mb[c])
    index = problem.window_index
    loss += sum(index[l, h, s, p, w][0] for (l, h, s, p), w in selection.widths.items() if w != FULL)
    loss += sum(problem.cfg_loss[l] for l in selection.cfg_shared)
    loss += sum(problem.qk_loss[l] for l in selection.qk_int8)
    kept = slot_kept(problem, selection)
    flops = kept_pairs = 0.0
    for key, slot in problem.slots.items():
        k, q, c = kept.get(key, 1.0), slot.layer in selection.qk_int8, slot.layer in selection.cfg_shared
        latency += slot.ms(k, key in kept, q, c)
        flops += slot.flops[c] * k
        kept_pairs += slot.pairs * k
    total_pairs = sum(s.pairs for s in problem.slots.values())
    transformer = memory + weights + kv_mb + workspace
    decode = problem.decode_base_mb + weights if problem.decode_base_mb is not None else 0.0
    return Metrics(loss=loss, latency_ms=latency, memory_mb=max(transformer, decode),
                   attn_flops=flops / problem.dense_flops if problem.dense_flops else 1.0,
                   avg_bits=bits / problem.total_params if problem.total_params else FLOAT_BITS,
                   attn_kept=kept_pairs / total_pairs if total_pairs else 1.0, kept=kept, kv_mb=kv_mb,
                   transformer_mb=transformer, decode_mb=decode)
