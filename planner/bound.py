"""A lower bound on the least loss of the full problem (every window configuration, no frontier
thinning): the Lagrangian dual, maximised over the budgets' multipliers.

For multipliers mu >= 0 on the budgets, min over selections of loss + mu . (use - limit) splits
into independent minima: per linear layer over its formats, per layer over its (QK8, CFG-shared)
modes, and per attention call over dense vs MDWA, where (the MDWA cost being affine in the kept
fraction) the windows split further into one minimum per (head, part). Any mu gives a valid
bound. Peak memory holds the largest quantized-linear workspace (a maximum, not a sum): the
dual takes the best of its possible levels. Relaxed, which keeps the bound valid: the decode
phase's memory row, the KV gather buffers, and the tie of a block's KV option to its CFG mode
(each block's KV option takes the better of both). The solver reports gap_full = (its objective -
this bound) / its objective.
"""
from __future__ import annotations

import math

import numpy as np

from litevar.planner.problem import Budgets, Problem


class _Dual:
    """Precomputed arrays of one problem and its budgets; __call__(mu) evaluates the dual."""

    def __init__(self, problem: Problem, budgets: Budgets):
        p = problem
        self.limits = np.array([budgets.latency_limit(p.dense_latency_ms) or np.nan,
                                budgets.max_memory_gib * 1024 if budgets.max_memory_gib else np.nan,
                                budgets.max_attn_flops * p.dense_flops if budgets.max_attn_flops else np.nan,
                                budgets.max_avg_bits * p.total_params if budgets.max_avg_bits else np.nan])
        self.active = np.flatnonzero(~np.isnan(self.limits))
        self.base = np.array([p.base_latency_ms, p.base_memory_mb, 0.0, 0.0])
        n_opt = max(len(g.options) for g in p.formats) if p.formats else 1
        pad = lambda f, fill=0.0: np.array([[f(o, g) for o in g.options] + [fill] * (n_opt - len(g.options))  # noqa
                                            for g in p.formats]).reshape(len(p.formats), n_opt)
        self.f_loss = pad(lambda o, g: o.loss, np.inf)  # missing options: never chosen
        self.f_use = np.stack([pad(lambda o, g: o.latency_ms), pad(lambda o, g: o.weight_mb),
                               np.zeros_like(self.f_loss), pad(lambda o, g: o.bits * g.params)])  # [4, G, O]
        self.f_ws = pad(lambda o, g: o.workspace_mb)
        self.ws_levels = np.unique(np.r_[0.0, self.f_ws.ravel()])  # candidate peak workspaces
        self.keys = sorted(p.slots)
        slot_idx = {k: i for i, k in enumerate(self.keys)}
        slots = [p.slots[k] for k in self.keys]
        modes = [(q, c) for q in (0, 1) for c in (0, 1)]
        self.dense = np.array([[s.dense_ms[q][c] for q, c in modes] for s in slots])  # [S, 4]
        self.mdwa1 = np.array([[s.ms(1.0, True, q, c) for q, c in modes] for s in slots])
        mdwa0 = np.array([[s.ms(0.0, True, q, c) for q, c in modes] for s in slots])
        self.slope = self.mdwa1 - mdwa0  # ms per unit of kept fraction
        self.flops = np.array([[s.flops[c] for _, c in modes] for s in slots])
        self.pairs = np.array([float(s.pairs) for s in slots])
        self.affine = all(np.allclose(np.interp(s.kept_grid, [0, 1], [s.ms(0, True, q, c), s.ms(1, True, q, c)]),
                                      s.mdwa_ms[q][c], rtol=1e-9, atol=1e-12)
                          for s in slots for q, c in modes if np.isfinite(s.mdwa_ms[q][c]).all())
        w = p.windows.sort_values(["layer", "scale", "head", "part"], kind="stable")
        slot_of = np.array([slot_idx[k] for k in zip(w["layer"], w["scale"])], dtype=np.int64)
        gid = ((w["layer"].to_numpy(np.int64) * 4099 + w["scale"].to_numpy()) * 4099 + w["head"].to_numpy()) * 4099 \
            + w["part"].to_numpy()
        self.g_start = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]]) if len(w) else np.zeros(0, np.int64)
        self.w_loss, self.w_rem, self.w_slot = w["loss"].to_numpy(float), w["removed"].to_numpy(float), slot_of
        self.g_slot = slot_of[self.g_start] if len(w) else np.zeros(0, np.int64)
        self.has_windows = np.bincount(self.g_slot, minlength=len(slots)) > 0
        self.s_start = np.flatnonzero(np.r_[True, self.g_slot[1:] != self.g_slot[:-1]]) if len(w) else None
        layers = sorted({s.layer for s in slots})
        self.layer_of = np.array([layers.index(s.layer) for s in slots])
        self.l_start = np.flatnonzero(np.r_[True, self.layer_of[1:] != self.layer_of[:-1]])
        allowed = np.zeros((len(layers), 4), dtype=bool)
        self.mode_loss = np.zeros((len(layers), 4))
        for li, l in enumerate(layers):
            for m, (q, c) in enumerate(modes):
                allowed[li, m] = (not q or l in p.qk_loss) and (not c or l in p.cfg_loss)
                self.mode_loss[li, m] = q * p.qk_loss.get(l, 0.0) + c * p.cfg_loss.get(l, 0.0)
        self.mode_loss[~allowed] = np.inf
        kv = [[(o.loss, o.ms[c], o.mb[c]) if (c == 0 or g.layer in p.cfg_loss) else (np.inf, 0.0, 0.0)
               for o in g.options for c in (0, 1)] for g in p.kv]
        n_kv = max((len(r) for r in kv), default=0)
        self.kv = np.array([r + [(np.inf, 0.0, 0.0)] * (n_kv - len(r)) for r in kv]).reshape(len(kv), n_kv, 3)

    def __call__(self, mu: np.ndarray) -> float:
        """The dual value at multipliers mu [latency, memory, flops, bits] (zeros where inactive)."""
        mu = np.where(np.isnan(self.limits), 0.0, mu)
        total = float(mu @ np.nan_to_num(self.base - self.limits, nan=0.0))
        if len(self.f_loss):  # the peak workspace is one of ws_levels: the best level T, exactly
            cost = self.f_loss + np.tensordot(mu, self.f_use, 1)  # [G, O]
            over = self.f_ws[None] > self.ws_levels[:, None, None] + 1e-12  # [T, G, O]
            per_level = np.where(over, np.inf, cost[None]).min(2).sum(1) + mu[1] * self.ws_levels
            total += float(per_level.min())
        dense = mu[0] * self.dense + mu[2] * self.flops  # [S, 4]
        windowed = mu[0] * self.mdwa1 + mu[2] * self.flops
        lam = (mu[0] * self.slope + mu[2] * self.flops) / self.pairs[:, None]  # loss-free value of a removed pair
        if len(self.g_start):
            x = self.w_loss[:, None] - lam[self.w_slot] * self.w_rem[:, None]  # [options, 4]
            g_min = np.minimum(np.minimum.reduceat(x, self.g_start, axis=0), 0.0)  # per (head, part)
            gain = np.zeros_like(dense)
            gain[self.g_slot[self.s_start]] = np.add.reduceat(g_min, self.s_start, axis=0)
            windowed = np.where(self.has_windows[:, None], windowed + gain, np.inf)
        else:
            windowed = np.full_like(dense, np.inf)
        per_layer = np.add.reduceat(np.minimum(dense, windowed), self.l_start, axis=0)
        if len(self.kv):  # each block's KV option, at the better of its CFG modes
            total += float((self.kv[..., 0] + mu[0] * self.kv[..., 1] + mu[1] * self.kv[..., 2]).min(1).sum())
        return total + float(np.min(per_layer + self.mode_loss, 1).sum())

    def prices(self, mu: np.ndarray) -> dict[tuple[int, int], list[float]]:
        """Per slot and allowed mode: the loss one removed pair is worth at multipliers mu."""
        mu = np.where(np.isnan(self.limits), 0.0, mu)
        lam = (mu[0] * self.slope + mu[2] * self.flops) / self.pairs[:, None]
        ok = np.isfinite(self.mode_loss)[self.layer_of]
        return {k: sorted(set(lam[i][ok[i]].tolist())) for i, k in enumerate(self.keys)}


def lagrangian_bound(problem: Problem, budgets: Budgets, sweeps: int = 2, iters: int = 32
                     ) -> tuple[float | None, np.ndarray, dict[tuple[int, int], list[float]]]:
    """(largest dual value found, its multipliers [latency, memory, FLOPs, bits], the window
    prices there): coordinate-wise golden-section search over log(mu). The bound is None when
    the MDWA cost is not affine in the kept fraction (the split above would not be exact)."""
    dual = _Dual(problem, budgets)
    mu = np.zeros(4)
    best = dual(mu)
    for _ in range(sweeps if len(dual.active) > 1 else 1):
        for i in dual.active:
            scale = _scale(problem, i)
            f = lambda t, i=i, scale=scale: dual(np.where(np.arange(4) == i, math.exp(t) * scale, mu))  # noqa: E731
            t = _golden_max(f, math.log(1e-9), math.log(1e9), iters)
            val = f(t)
            if val > best:
                best, mu[i] = val, math.exp(t) * scale
    return (best if dual.affine else None), mu, dual.prices(mu)


def _scale(problem: Problem, i: int) -> float:
    """Loss per unit of budget i at which the multiplier search is centred."""
    units = [problem.dense_latency_ms, problem.dense_memory_mb, problem.dense_flops,
             16.0 * max(problem.total_params, 1)]
    losses = [o.loss for g in problem.formats for o in g.options] + problem.windows["loss"].tolist()
    return max(sum(abs(v) for v in losses), 1e-12) / max(units[i], 1e-12)


def _golden_max(f, a: float, b: float, iters: int) -> float:
    """Argmax of a unimodal f on [a, b]."""
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return c if fc >= fd else d
