"""The integer program: minimise predicted loss under any combination of budgets (PuLP + CBC).

Decisions (binary, one per option):
    x[g, o]     linear layer g runs format o (one per layer; fp is an option)
    c[l]        layer l shares its attention across the CFG branches (ASC)
    q[l]        layer l runs its QK product in INT8 (only where QK8 can save time)
    u[l, o]     block l's KV cache takes option o (a format and the scales it keeps; o = 0: plain)
    v[l, o]     u[l, o] and c[l] both (a CFG-shared layer's cache holds one half: other MB and ms)
    y[l, s, p, m]  attention call (layer l, scale s) runs window point p of its frontier
                (planner/slots.py; p = 0: no window, the dense kernel) in mode m = (qk8, shared).
                One kernel per call: every head of the call is in the same point, so the MDWA
                kernel's fixed cost is paid once per call, and its cost at the point's kept
                fraction is the measured kernel cost (exact, not linearised).
    W           (continuous) the largest transient (a quantized-linear workspace, or a block's
                last-scale KV call: the segment it writes and the buffer it gathers), part of the
                transformer phase's peak memory
Ties: the mode of every call of layer l equals (q[l], c[l]); a block that evicts KV scales takes
no window; one whose cache is quantized or evicts takes no QK8. Peak memory is the larger of the
transformer phase and the decode phase (the weights, then the VQVAE): both are within a memory
budget.

`evaluate` in planner/problem.py defines every number; this file encodes it exactly, so when
the frontiers are exact (small instances) the plan equals brute force. When the frontiers are
convex hulls, or cut to a core around the Lagrangian optimum (planner/bound.py) on big problems,
the solver also reports gap_full: the gap against a lower bound on the whole problem.
Rows and objective are normalised (budgets as a share of their limit, loss in tenths of the
median option loss): CBC's tolerances are absolute.
"""
from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pulp

from litevar.models.core.errors import UserError
from litevar.planner.bound import lagrangian_bound
from litevar.planner.problem import Budgets, Metrics, Problem, Selection, check_exclusions, evaluate
from litevar.planner.slots import SlotFrontier, select, slot_hulls

log = logging.getLogger(__name__)

OBJECTIVES = ("loss", "latency", "memory")
TRY = "try a looser --gap, a longer --time-limit, or a smaller problem (fewer --formats, or a lower --resolution)"


class SolverFailed(UserError):
    """CBC crashed, errored, or stopped with no solution: not a statement about the budgets."""


class NoPlan(UserError):
    """The budgets cannot be met (CBC proved the problem infeasible)."""


@dataclass(frozen=True)
class SolverSettings:
    time_limit_s: float = 10.0  # CBC wall-clock limit per solve
    gap: float = 0.005  # relative optimality gap at which CBC stops
    max_points: int = 24  # frontier points per attention call once they are cut (planner/slots.py)
    cut_above: int = 20000  # cut the frontiers only when all calls together have more points
    exact_cap: int = 512  # largest exact frontier before the convex-hull walk takes over
    threads: int = 1  # 1: CBC's serial code. "threads 1" would start its thread pool anyway, which
    # stalls ~10 s on a tiny problem about once in 700 solves on a busy 2-core machine (CPU 0.02 s)

    def __post_init__(self):
        if not self.time_limit_s > 0:
            raise UserError(f"--time-limit {self.time_limit_s}: give a positive number of seconds, e.g. 10")
        if not 0 <= self.gap < 1:
            raise UserError(f"--gap {self.gap}: give a relative optimality gap in [0, 1), e.g. 0.005")
        if self.max_points < 2:
            raise UserError(f"max_points {self.max_points}: keep at least 2 window points per attention call")
        if self.threads < 1:
            raise UserError(f"threads {self.threads}: give CBC at least 1 thread")


@dataclass
class Solution:
    selection: Selection
    metrics: Metrics
    solver: dict  # name, status, gap, seconds, time_limit_s, sizes, ...
    objective: str = "loss"


@dataclass
class _Model:
    """The PuLP problem and its variables, by decision."""

    prob: pulp.LpProblem
    x: dict = field(default_factory=dict)  # (group index, option index) -> var
    c: dict = field(default_factory=dict)  # layer -> var
    q: dict = field(default_factory=dict)  # layer -> var
    u: dict = field(default_factory=dict)  # (group index, option index) -> var
    v: dict = field(default_factory=dict)  # (group index, option index) -> var: u and c[layer]
    y: dict = field(default_factory=dict)  # (layer, scale, point, qk8, shared) -> var
    W: pulp.LpVariable | None = None
    obj_unit: float = 1.0  # the objective in the model is value / obj_unit (normalised)
    slot_terms: dict = field(default_factory=dict)  # (l, s) -> (modes, loss [P], ms [P, M], flops [P, M])
    exact: bool = True


# ---------------------------------------------------------------------------------------------
# Building


def _useful_qk(problem: Problem, fronts: dict[tuple[int, int], SlotFrontier]) -> set[int]:
    """Layers where QK8 can pay: it saves time in some call, or its loss is negative."""
    useful = set()
    for layer, loss in problem.qk_loss.items():
        if loss < 0:
            useful.add(layer)
            continue
        for key, slot in problem.slots.items():
            if slot.layer != layer:
                continue
            kept = 1.0 - fronts[key].removed / slot.pairs
            for c in (0, 1):
                faster = slot.dense_ms[1][c] < slot.dense_ms[0][c] or any(
                    slot.ms(k, True, True, c) < slot.ms(k, True, False, c) for k in kept[1:])
                if faster:
                    useful.add(layer)
    return useful


def _eq(m: _Model, expr, rhs: float, name: str) -> None:
    m.prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintEQ, name, rhs))


def _loss_unit(problem: Problem, fronts) -> float:
    """The objective's unit: a tenth of the median positive option loss (typical losses ~10)."""
    losses = [o.loss for g in problem.formats for o in g.options] + list(problem.cfg_loss.values())
    losses += list(problem.qk_loss.values()) + [v for f in fronts.values() for v in f.loss[1:].tolist()]
    positive = [v for v in losses if v > 0]
    return float(np.median(positive)) / 10 if positive else 1.0


def build_model(problem: Problem, fronts: dict[tuple[int, int], SlotFrontier], budgets: Budgets,
                objective: str = "loss", relax_windows: bool = False) -> _Model:
    """The PuLP model of `problem` under `budgets`, minimising `objective` (loss/latency/memory).

    relax_windows: window points (p > 0) continuous, i.e. any convex combination of a call's
    frontier points; every other decision stays binary. When the frontiers hold every vertex of
    the calls' convex hulls, its optimum is a lower bound on the whole problem's."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: use one of {OBJECTIVES}")
    m = _Model(pulp.LpProblem(f"litevar_{objective}", pulp.LpMinimize))
    loss, lat, mem, flops, bits = [], [], [], [], []  # (var, coefficient) terms
    lat0, mem0, bits0 = problem.base_latency_ms, problem.base_memory_mb, 0.0  # constants
    ws_rows = []  # (format group, [(var, workspace MB)])

    for gi, g in enumerate(problem.formats):
        if len(g.options) == 1:  # nothing to decide: a constant
            o = g.options[0]
            lat0, mem0, bits0 = lat0 + o.latency_ms, mem0 + o.weight_mb, bits0 + o.bits * g.params
            ws_rows.append((gi, [(None, o.workspace_mb)]))
            continue
        xs = []
        for oi, o in enumerate(g.options):
            # x[g, o] = 1: linear layer g runs format o
            v = m.x[gi, oi] = m.prob.add_variable(f"x_{gi}_{oi}", 0, 1, pulp.LpBinary)
            xs.append(v)
            loss.append((v, o.loss))
            lat.append((v, o.latency_ms))
            mem.append((v, o.weight_mb))
            bits.append((v, o.bits * g.params))
        # each linear layer runs exactly one format
        _eq(m, pulp.lpSum(xs), 1, f"one_format_{gi}")
        ws_rows.append((gi, [(m.x[gi, oi], o.workspace_mb) for oi, o in enumerate(g.options)]))

    for layer, l_loss in sorted(problem.cfg_loss.items()):
        # c[l] = 1: layer l shares its attention output across the CFG branches
        m.c[layer] = m.prob.add_variable(f"c_{layer}", 0, 1, pulp.LpBinary)
        loss.append((m.c[layer], l_loss))
    for layer in sorted(_useful_qk(problem, fronts)):
        # q[l] = 1: layer l computes QK^T in INT8
        m.q[layer] = m.prob.add_variable(f"q_{layer}", 0, 1, pulp.LpBinary)
        loss.append((m.q[layer], problem.qk_loss[layer]))

    for key, slot in sorted(problem.slots.items()):
        f = fronts[key]
        m.exact &= f.exact
        l, s = key
        qs, cs = ((0, 1) if l in m.q else (0,)), ((0, 1) if l in m.c else (0,))
        kept = 1.0 - f.removed / slot.pairs
        modes = [(qq, cc) for qq in qs for cc in cs]
        ms = np.stack([slot.points_ms(kept, qq, cc) for qq, cc in modes], 1)  # [P, M]
        fl = np.stack([slot.flops[cc] * kept for _, cc in modes], 1)
        m.slot_terms[key] = (modes, f.loss, ms, fl)
        ys, ys_q, ys_c = [], [], []
        for p in range(len(f)):
            for j, (qq, cc) in enumerate(modes):
                # y[l, s, p, qq, cc] = 1: call (l, s) runs window point p, QK8 qq, CFG-shared cc
                cat = pulp.LpContinuous if relax_windows and p > 0 else pulp.LpBinary
                v = m.y[l, s, p, qq, cc] = m.prob.add_variable(f"y_{l}_{s}_{p}_{qq}{cc}", 0, 1, cat)
                ys.append(v)
                if qq:
                    ys_q.append(v)
                if cc:
                    ys_c.append(v)
                loss.append((v, float(f.loss[p])))
                lat.append((v, float(ms[p, j])))
                flops.append((v, float(fl[p, j])))
        # each attention call runs exactly one (window point, mode)
        _eq(m, pulp.lpSum(ys), 1, f"one_point_{l}_{s}")
        if l in m.q:  # the call runs QK8 iff its layer does (one kernel setting per layer)
            _eq(m, pulp.lpSum(ys_q) - m.q[l], 0, f"tie_qk_{l}_{s}")
        if l in m.c:  # the call is CFG-shared iff its layer is
            _eq(m, pulp.lpSum(ys_c) - m.c[l], 0, f"tie_cfg_{l}_{s}")

    weights = [(v, c) for v, c in mem]  # the format terms so far: the weights, in both phases
    w0 = mem0 - problem.base_memory_mb  # weights of the layers with one format
    kv_lat0, kv_mem0, kv_ws = _kv_terms(problem, m, loss, lat, mem)
    lat0, mem0 = lat0 + kv_lat0, mem0 + kv_mem0

    peak_ws = max([w for _, row in ws_rows for v, w in row if v is None]
                  + [const for const, terms in kv_ws if not terms], default=0.0)
    if any(w > peak_ws for _, row in ws_rows for v, w in row if v is not None) or any(t for _, t in kv_ws):
        # W: the largest transient of the transformer phase (MB): a quantized linear call's
        # workspace or the keys a KV call gathers
        W = m.W = m.prob.add_variable("W_workspace_mb", peak_ws)
        mem.append((W, 1.0))
        for gi, row in ws_rows:
            terms = [(v, w) for v, w in row if v is not None and w > peak_ws]
            if terms:  # W is at least the workspace of the format layer gi runs
                m.prob.addConstraint(pulp.LpConstraint(_affine(terms) - W, pulp.LpConstraintLE,
                                                       f"workspace_{gi}", 0))
        for gi, (const, terms) in enumerate(kv_ws):
            if terms:  # W is at least block gi's last-scale KV call (written segment + gathered buffer)
                m.prob.addConstraint(pulp.LpConstraint(_affine(terms, const) - W,
                                                       pulp.LpConstraintLE, f"kv_gather_{gi}", 0))
    else:
        mem0 += peak_ws

    # Every row and the objective in normalised units (CBC's tolerances are absolute): budgets
    # as a share of their limit (<= 1), the objective in tenths of the median option loss.
    def row(terms, const, limit, name):
        e = _affine([(v, c / limit) for v, c in terms], const / limit)
        m.prob.addConstraint(pulp.LpConstraint(e, pulp.LpConstraintLE, name, 1.0))

    limit = budgets.latency_limit(problem.dense_latency_ms)
    if limit is not None:  # predicted latency (ms) within max latency and dense / min speedup
        row(lat, lat0, limit, "latency")
    if budgets.max_memory_gib is not None:  # predicted peak memory (MB), both phases, within the budget
        row(mem, mem0, budgets.max_memory_gib * 1024, "memory")
        if problem.decode_base_mb is not None:  # the decode phase: weights, then the VQVAE
            row(weights, problem.decode_base_mb + w0, budgets.max_memory_gib * 1024, "memory_decode")
    if budgets.max_attn_flops is not None:  # attention FLOPs within the share of the dense ones
        row(flops, 0.0, budgets.max_attn_flops * problem.dense_flops, "attn_flops")
    if budgets.max_avg_bits is not None:  # parameter-weighted average weight bits within the budget
        row(bits, bits0, budgets.max_avg_bits * problem.total_params, "avg_bits")
    if objective == "memory" and problem.decode_base_mb is not None:  # Z >= both phases; minimise Z
        Z = m.prob.add_variable("Z_peak_mb", 0)
        m.prob.addConstraint(pulp.LpConstraint(_affine(mem + [(Z, -1.0)], mem0), pulp.LpConstraintLE,
                                               "peak_ge_transformer", 0))
        m.prob.addConstraint(pulp.LpConstraint(_affine(weights + [(Z, -1.0)],
                                                                       problem.decode_base_mb + w0),
                                               pulp.LpConstraintLE, "peak_ge_decode", 0))
        mem, mem0 = [(Z, 1.0)], 0.0
    terms, const, unit = {"loss": (loss, 0.0, _loss_unit(problem, fronts)),
                          "latency": (lat, lat0, problem.dense_latency_ms / 1000),
                          "memory": (mem, mem0, problem.dense_memory_mb / 1000)}[objective]
    m.obj_unit = unit  # objective value = unit * (value of the model's objective)
    m.prob.setObjective(_affine([(v, c / unit) for v, c in terms], const / unit))
    return m


def _affine(terms, const: float = 0.0) -> pulp.LpAffineExpression:
    """sum(coef * var) + const over (var, coef) pairs, a variable listed twice counted twice
    (pulp's own constructor keeps the last coefficient of a repeated variable)."""
    e = pulp.LpAffineExpression(constant=const)
    for v, c in terms:
        e.addterm(v, c)
    return e


def _kv_terms(problem: Problem, m: _Model, loss: list, lat: list, mem: list) -> tuple[float, float, list]:
    """The KV-cache decisions: u (one option per block), v = u and c[l] (CFG-shared), their loss,
    latency and memory terms, and the exclusions with windows and QK8. Returns the constant
    latency and memory of blocks with one option, and per block the gathered buffer's
    (constant, terms) in MB for the transient W."""
    lat0 = mem0 = 0.0
    kv_ws = []
    for gi, g in enumerate(problem.kv):
        c = m.c.get(g.layer)
        terms = []  # (u or None when the block has one option, v or None, option)
        for oi, o in enumerate(g.options):
            u = None
            if len(g.options) > 1:
                # u[g, o] = 1: block g's KV cache takes option o
                u = m.u[gi, oi] = m.prob.add_variable(f"u_{gi}_{oi}", 0, 1, pulp.LpBinary)
            v = None
            if c is not None and (o.mb[1], o.ms[1], o.gather_mb[1]) != (o.mb[0], o.ms[0], o.gather_mb[0]):
                if u is None:
                    v = c  # the only option: on whenever the block is CFG-shared
                else:
                    # v[g, o] = u[g, o] and c[l]: the option on a CFG-shared block
                    v = m.v[gi, oi] = m.prob.add_variable(f"v_{gi}_{oi}", 0, 1, pulp.LpContinuous)
                    m.prob.addConstraint(v - u <= 0, f"v_le_u_{gi}_{oi}")
                    m.prob.addConstraint(v - c <= 0, f"v_le_c_{gi}_{oi}")
                    m.prob.addConstraint(v - u - c >= -1, f"v_ge_uc_{gi}_{oi}")
            terms.append((u, v, o))
        if len(terms) > 1:
            # each block's cache takes exactly one option
            _eq(m, pulp.lpSum(u for u, _, _ in terms), 1, f"one_kv_{gi}")
        ws_const, ws = 0.0, []
        for u, v, o in terms:
            for acc, vals in ((loss, (o.loss, o.loss)), (lat, o.ms), (mem, o.mb), (ws, o.gather_mb)):
                if u is not None:
                    acc.append((u, vals[0]))
                if v is not None:
                    acc.append((v, vals[1] - vals[0]))
            if u is None:
                lat0, mem0, ws_const = lat0 + o.ms[0], mem0 + o.mb[0], o.gather_mb[0]
        kv_ws.append((ws_const, ws))
        _kv_exclusions(problem, m, gi, g, terms)
    return lat0, mem0, kv_ws


def _kv_exclusions(problem: Problem, m: _Model, gi: int, g, terms) -> None:
    evict = [u for u, _, o in terms if u is not None and o.evicts]
    if evict:
        windowed: dict[int, list] = {}  # scale -> the call's window points (at most one of them is on)
        for (l, s, p, _, _), y in m.y.items():
            if l == g.layer and p > 0:
                windowed.setdefault(s, []).append(y)
        for s, ys in windowed.items():  # a block that evicts runs no window in any call
            m.prob.addConstraint(pulp.lpSum(evict) + pulp.lpSum(ys) <= 1, f"evict_or_window_{gi}_{s}")
    heavy = [u for u, _, o in terms if u is not None and not o.plain]
    if heavy and g.layer in m.q:  # QK8 reads float keys of a plain cache
        m.prob.addConstraint(pulp.lpSum(heavy) + m.q[g.layer] <= 1, f"kv_or_qk8_{gi}")


# ---------------------------------------------------------------------------------------------
# Solving


def _selection(problem: Problem, fronts, m: _Model) -> Selection:
    """The decisions of the solved model (binaries read as > 0.5)."""
    on = lambda v: (v.varValue or 0.0) > 0.5  # noqa: E731
    formats = {}
    for gi, g in enumerate(problem.formats):
        chosen = [oi for oi in range(len(g.options)) if (gi, oi) in m.x and on(m.x[gi, oi])]
        formats[g.layer] = g.options[chosen[0] if chosen else 0].format
    widths = {}
    for (l, s, p, _, _), v in m.y.items():
        if p > 0 and on(v):
            widths.update({(l, h, s, part): w for (h, part), w in fronts[l, s].widths[p].items()})
    kv = {}
    for gi, g in enumerate(problem.kv):
        chosen = [oi for oi in range(len(g.options)) if (gi, oi) in m.u and on(m.u[gi, oi])]
        o = g.options[chosen[0] if chosen else 0]
        if not o.plain:
            kv[g.layer] = (o.fmt, o.keep)
    return Selection(formats=formats, widths=widths,
                     cfg_shared=frozenset(l for l, v in m.c.items() if on(v)),
                     qk_int8=frozenset(l for l, v in m.q.items() if on(v)), kv=kv)


def _lagrangian_choice(problem: Problem, fronts, m: _Model, mu: np.ndarray) -> tuple[Selection, list]:
    """Each decision's best option for loss + mu . (latency, memory, FLOPs, bits): the Lagrangian
    subproblem, solved in the model's own terms; (selection, [(var, 1)] of the chosen binaries)."""
    formats, on = {}, []
    for gi, g in enumerate(problem.formats):
        costs = [o.loss + mu[0] * o.latency_ms + mu[1] * o.weight_mb + mu[3] * o.bits * g.params for o in g.options]
        oi = int(np.argmin(costs))
        formats[g.layer] = g.options[oi].format
        if (gi, oi) in m.x:
            on.append(m.x[gi, oi])
    by_layer: dict[int, list] = {}
    for key, terms in m.slot_terms.items():
        by_layer.setdefault(key[0], []).append((key, terms))
    widths, shared, qk8 = {}, set(), set()
    for layer, slots in by_layer.items():
        modes = slots[0][1][0]
        mode_loss = np.array([qq * problem.qk_loss.get(layer, 0.0) + cc * problem.cfg_loss.get(layer, 0.0)
                              for qq, cc in modes])
        cost = [(loss[:, None] + mu[0] * ms + mu[2] * fl) for _, (_, loss, ms, fl) in slots]  # [P, M] each
        j = int(np.argmin(mode_loss + sum(c.min(0) for c in cost)))
        qq, cc = modes[j]
        for (key, _), c in zip(slots, cost):
            p = int(np.argmin(c[:, j]))
            on.append(m.y[key + (p, qq, cc)])
            widths.update({(key[0], h, key[1], part): w for (h, part), w in fronts[key].widths[p].items()})
        if cc:
            shared.add(layer)
            on.append(m.c[layer])
        if qq:
            qk8.add(layer)
            on.append(m.q[layer])
    for gi, g in enumerate(problem.kv):  # the plain cache: feasible with every other choice
        on += [m.u[gi, 0]] if (gi, 0) in m.u else []
        on += [m.v[gi, 0]] if (gi, 0) in m.v and g.layer in shared else []
    return Selection(formats, widths, frozenset(shared), frozenset(qk8)), on


def warm_start(problem: Problem, fronts, m: _Model, budgets: Budgets, mu: np.ndarray) -> bool:
    """Give CBC a first solution: the Lagrangian choice at mu, scaled up until it meets the
    budgets (near-optimal when there are many decisions). False when none did."""
    for scale in (1.0, 1.01, 1.03, 1.1, 1.3, 2.0, 5.0, 20.0):
        sel, on = _lagrangian_choice(problem, fronts, m, mu * scale)
        ev = evaluate(problem, sel)
        if ev.within(budgets, problem, rtol=0.0):
            for v in m.prob.variables():
                v.setInitialValue(0)
            for v in on:
                v.setInitialValue(1)
            if m.W is not None:
                m.W.setInitialValue(max([m.W.lowBound or 0.0] + [g.option(sel.formats[g.layer]).workspace_mb
                                                                 for g in problem.formats]))
            return True
    return False


def _parse_cbc_log(text: str, objective: float | None) -> dict:
    """Best bound, relative gap and CPU seconds from a CBC log."""
    out = {}
    cpu = re.findall(r"Total time \(CPU seconds\):\s*([-\d.eE+]+)", text)
    if cpu:
        out["cpu_seconds"] = float(cpu[-1])
    if objective is None:
        return out
    bound = None
    if (mm := re.search(r"best possible ([-\d.eE+]+)\)", text)):
        bound = float(mm.group(1))
    elif (mm := re.search(r"integer gap of ([-\d.eE+]+)", text)):
        bound = objective - float(mm.group(1))
    elif re.search(r"Search completed|Optimal solution found|Result - Optimal", text):
        bound = objective
    elif (mm := re.search(r"Lower bound:\s*([-\d.eE+]+)", text)):
        bound = float(mm.group(1))
    if bound is not None:
        out["bound"] = bound
        out["gap"] = max(0.0, objective - bound) / max(abs(objective), 1e-12) if objective else 0.0
    return out


def _objective_value(prob: pulp.LpProblem) -> float:
    e = prob.objective
    return float(e.constant + sum(c * (v.varValue or 0.0) for v, c in e.items()))


def _cbc(**kw):
    """CBC on the PATH (COIN_CMD) when there is one, else the binary bundled with PuLP."""
    with warnings.catch_warnings():  # PuLP 3.3 marks the bundled binary deprecated (removed in 4.0)
        warnings.simplefilter("ignore", DeprecationWarning)
        coin = pulp.COIN_CMD(**kw)
        return coin if coin.available() else pulp.PULP_CBC_CMD(**kw)


def run_cbc(m: _Model, settings: SolverSettings, warm: bool = False) -> dict:
    """Solve with CBC (single thread, time limit, relative gap); status, gap, seconds."""
    fd, log_path = tempfile.mkstemp(prefix="litevar-cbc-", suffix=".log")
    os.close(fd)
    threads = settings.threads if settings.threads > 1 else None  # None: no thread pool (see SolverSettings)
    solver = _cbc(msg=False, timeLimit=settings.time_limit_s, gapRel=settings.gap, threads=threads,
                  logPath=log_path, warmStart=warm)
    t = time.perf_counter()
    try:
        m.prob.solve(solver)
        text = open(log_path).read()
    except (pulp.PulpSolverError, OSError, subprocess.SubprocessError, ValueError) as e:
        raise SolverFailed(f"the solver (CBC) failed on a problem of {m.prob.numVariables()} variables: "
                           f"{' '.join(str(e).split())[:160] or type(e).__name__}; {TRY}") from None
    finally:
        Path(log_path).unlink(missing_ok=True)
    seconds = time.perf_counter() - t
    found = m.prob.status == pulp.LpStatusOptimal  # PuLP's word for "has a solution", proven or not
    if m.prob.status == pulp.LpStatusInfeasible or m.prob.sol_status == pulp.LpSolutionInfeasible:
        status = "Infeasible"
    elif m.prob.sol_status == pulp.LpSolutionOptimal:
        status = "Optimal"
    elif found:
        status = "Feasible"  # stopped on the time limit with a solution
    else:
        status = "Not Solved"
    obj = _objective_value(m.prob) if found else None  # in model units until the log is read
    info = {"name": type(solver).__name__, "status": status, "seconds": round(seconds, 3),
            "time_limit_s": settings.time_limit_s, "gap_limit": settings.gap,
            "objective": obj, **_parse_cbc_log(text, obj)}
    for k in ("objective", "bound"):  # back to the problem's unit
        if info.get(k) is not None:
            info[k] *= m.obj_unit
    if status == "Optimal" and "gap" not in info:
        info["gap"] = 0.0
    info.setdefault("gap", None)
    return info


def solve(problem: Problem, budgets: Budgets, settings: SolverSettings = SolverSettings(),
          objective: str = "loss", hulls: dict | None = None) -> Solution:
    """The least-loss selection within `budgets`. Infeasible -> UserError with the reachable minima.

    hulls: slot_hulls(problem) when the caller solves the same problem repeatedly (sweeps)."""
    t = time.perf_counter()
    hulls = hulls if hulls is not None else slot_hulls(problem, settings.exact_cap)
    cut = sum(len(h) for h in hulls.values()) > settings.cut_above
    bound = mu = prices = None
    if cut and objective == "loss":  # a bound on the whole problem, and where its optimum lies
        bound, mu, prices = lagrangian_bound(problem, budgets)
    fronts = select(hulls, settings.max_points if cut else None, prices)
    m = build_model(problem, fronts, budgets, objective)
    warm = mu is not None and warm_start(problem, fronts, m, budgets, mu)
    build_s = time.perf_counter() - t
    info = run_cbc(m, settings, warm)
    info.update(warm_start=warm, build_seconds=round(build_s, 3), variables=m.prob.numVariables(),
                binaries=sum(v.cat == pulp.LpInteger for v in m.prob.variables()),
                constraints=m.prob.numConstraints(),
                windows="exact" if m.exact else (f"{settings.max_points}-point core of each call's convex hull"
                                                 if cut else "convex hull of each call's configurations"))
    info.update(_gap_full(problem, budgets, settings, fronts, m, info, bound, objective, cut))
    log.info("CBC %s in %.2f s (build %.2f s): gap %s (vs the whole problem %s), %d variables, %d constraints",
             info["status"], info["seconds"], build_s, info["gap"], info["gap_full"], info["variables"],
             info["constraints"])
    if info["status"] in ("Infeasible", "Not Solved"):
        raise _no_plan(problem, budgets, settings, hulls, info)
    sel = _selection(problem, fronts, m)
    metrics = evaluate(problem, sel)
    if not metrics.within(budgets, problem, rtol=1e-5):
        log.warning("the solution exceeds a budget by more than the solver's tolerance: %s", metrics)
    return Solution(sel, metrics, info, objective)


def _gap_full(problem, budgets, settings, fronts, m: _Model, info: dict, bound, objective, cut: bool) -> dict:
    """The gap against the whole problem (every window configuration): CBC's own when the
    frontiers are exact; else against the Lagrangian `bound` (cut frontiers) or the optimum with
    the window points relaxed to convex combinations (hulls, uncut)."""
    if m.exact:
        return {"bound_full": info.get("bound"), "gap_full": info["gap"]}
    obj, out = info["objective"], {}
    if not cut and objective == "loss" and obj is not None:
        relaxed = run_cbc(build_model(problem, fronts, budgets, objective, relax_windows=True), settings)
        bound, out["bound_seconds"] = relaxed.get("bound"), relaxed["seconds"]
    gap = None if bound is None or obj is None else (max(0.0, obj - bound) / abs(obj) if obj else 0.0)
    return {**out, "bound_full": bound, "gap_full": gap}


def reachable_minima(problem: Problem, settings: SolverSettings = SolverSettings(),
                     hulls: dict | None = None) -> tuple[float, float]:
    """(smallest predicted latency ms, smallest predicted peak memory MB) of any selection."""
    hulls = hulls if hulls is not None else slot_hulls(problem, settings.exact_cap)
    cut = sum(len(h) for h in hulls.values()) > settings.cut_above
    fronts = select(hulls, settings.max_points if cut else None)
    out = []
    for what in ("latency", "memory"):
        m = build_model(problem, fronts, Budgets(), what)
        info = run_cbc(m, settings)
        if info["objective"] is None:
            raise SolverFailed(f"could not find the smallest {what} within --time-limit {settings.time_limit_s} s; "
                            "raise --time-limit")
        ev = evaluate(problem, _selection(problem, fronts, m))
        out.append(ev.latency_ms if what == "latency" else ev.memory_mb)
    return out[0], out[1]


def _no_plan(problem, budgets, settings, hulls, info) -> NoPlan | SolverFailed:
    lat, mem = reachable_minima(problem, settings, hulls)
    asked = ", ".join(f"{k} {v:g}" for k, v in budgets.to_dict().items() if v is not None) or "no budget"
    reach = (f"this profile reaches at best {lat:.1f} ms (speedup {problem.dense_latency_ms / lat:.2f}x) "
             f"and {mem / 1024:.3f} GiB at resolution {problem.meta.get('resolution')}, "
             f"batch {problem.meta.get('batch')}")
    if info["status"] == "Infeasible":
        return NoPlan(f"no plan meets the budgets ({asked}): {reach}; loosen --max-latency-ms / "
                      "--max-memory-gib / --min-speedup / --max-attn-flops / --max-avg-bits")
    return SolverFailed(f"the solver (CBC) stopped at --time-limit {settings.time_limit_s} s with no plan for the "
                        f"budgets ({asked}); {reach}; raise --time-limit or loosen the budgets")


def brute_force(problem: Problem, budgets: Budgets) -> tuple[Selection, Metrics] | None:
    """The least-loss selection by enumerating every combination (tiny problems only; tests)."""
    import itertools
    groups = [(g.layer, [o.format for o in g.options]) for g in problem.formats]
    parts = problem.windows.groupby(["layer", "head", "scale", "part"])["width"].apply(list)
    choices = ([[("f", name, o) for o in opts] for name, opts in groups]
               + [[("w", key, w) for w in [-1, *ws]] for key, ws in parts.items()]
               + [[("c", l, b) for b in (0, 1)] for l in problem.cfg_loss]
               + [[("q", l, b) for b in (0, 1)] for l in problem.qk_loss]
               + [[("k", g.layer, (o.fmt, o.keep)) for o in g.options] for g in problem.kv])
    if math.prod(len(c) for c in choices) > 1 << 16:
        raise ValueError("brute_force: more than 65536 combinations")
    best = None
    for combo in itertools.product(*choices):
        sel = Selection(formats={k: v for t, k, v in combo if t == "f"},
                        widths={k: v for t, k, v in combo if t == "w" and v != -1},
                        cfg_shared=frozenset(k for t, k, v in combo if t == "c" and v),
                        qk_int8=frozenset(k for t, k, v in combo if t == "q" and v),
                        kv={k: v for t, k, v in combo if t == "k" and (v[0] != "fp" or v[1][1] is not None)})
        if check_exclusions(problem, sel):
            continue
        ev = evaluate(problem, sel)
        if ev.within(budgets, problem, rtol=0.0) and (best is None or ev.loss < best[1].loss):
            best = (sel, ev)
    return best

