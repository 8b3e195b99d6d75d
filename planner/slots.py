"""Window configurations of one attention call (layer, scale), reduced to its efficient frontier.

The windows of one call reach the rest of the plan only through two numbers: their summed
loss and the (query, key) pairs they remove (the call's kept fraction sets its MDWA kernel
cost and its FLOPs; the MDWA cost is assumed non-decreasing in the kept fraction, as every
measured kernel is). So among the call's configurations only the Pareto frontier of (removed
pairs up, loss down) can be in an optimal plan, plus "no window at all", which runs the dense
kernel instead. The solver then picks one frontier point per call.

    exact    Pareto dynamic program over the call's (head, part) groups, used while the
             frontier stays small (every instance the brute-force tests build): no loss.
    hull     otherwise the lower convex hull of the frontier, walked greedily: each step moves
             one (head, part) to its next hull width, steps in order of loss per removed pair.
             Every hull point is a real configuration (one width per part).

A frontier longer than `max_points` is cut down (`select`): a core of points around the ones
the budgets' Lagrange multipliers make best (planner/bound.py), and points spread evenly along
its length. The solver reports the gap against a bound on the whole, uncut problem.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from litevar.planner.problem import Problem


@dataclass
class SlotFrontier:
    layer: int
    scale: int
    removed: np.ndarray  # [P] float: pairs removed by point p; point 0 = no window (0)
    loss: np.ndarray  # [P] float: summed window loss of point p
    widths: list[dict[tuple[int, int], int]]  # [P] (head, part) -> width of the windowed parts
    exact: bool  # True: every Pareto-optimal configuration is a point

    def __len__(self) -> int:
        return len(self.removed)


def slot_hulls(problem: Problem, exact_cap: int = 512, exact_groups: int = 24) -> dict[tuple[int, int], SlotFrontier]:
    """The whole frontier of every attention slot (slots without window options: point 0 only);
    exact for slots of at most `exact_groups` (head, part) groups whose frontier stays within
    `exact_cap` points, the convex-hull walk otherwise."""
    w = problem.windows.sort_values(["layer", "scale", "head", "part", "removed"], kind="stable")
    out = {key: SlotFrontier(key[0], key[1], np.zeros(1), np.zeros(1), [{}], True) for key in problem.slots}
    cols = {c: w[c].to_numpy() for c in ("layer", "scale", "head", "part", "width", "loss", "removed")}
    slot_id = cols["layer"].astype(np.int64) * 1_000_003 + cols["scale"]
    group_id = (slot_id * 4099 + cols["head"]) * 4099 + cols["part"]
    starts = np.flatnonzero(np.r_[True, slot_id[1:] != slot_id[:-1]]) if len(w) else np.array([], int)
    bounds = np.r_[starts, len(w)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        key = (int(cols["layer"][a]), int(cols["scale"][a]))
        g_starts = a + np.flatnonzero(np.r_[True, group_id[a + 1:b] != group_id[a:b - 1]])
        groups = [_group(cols, ga, gb) for ga, gb in zip(g_starts, np.r_[g_starts[1:], b])]
        out[key] = (len(groups) <= exact_groups and _exact(key, groups, exact_cap)) or _hull(key, groups)
    return out


def select(hulls: dict[tuple[int, int], SlotFrontier], max_points: int | None = 24,
           prices: dict[tuple[int, int], list[float]] | None = None) -> dict[tuple[int, int], SlotFrontier]:
    """At most about max_points points per slot (all of them when the frontier is that short or
    max_points is None).

    prices: per slot, the loss a removed pair is worth under the budgets' multipliers (one per
    kernel mode; planner/bound.py). Around each price's best point max_points // 4 neighbours
    on either side are kept (the core, where the optimum lies) and max_points // 2 points spread
    evenly along the frontier. Without prices, max_points points spread evenly."""
    if max_points is None:
        max_points = max([2] + [len(f) for f in hulls.values()])
    if max_points < 2:
        raise ValueError(f"max_points={max_points}: keep at least 2 points per attention call")
    return {key: _thin(f, max_points, (prices or {}).get(key, ())) for key, f in hulls.items()}


def frontiers(problem: Problem, max_points: int = 24, exact_cap: int = 512) -> dict[tuple[int, int], SlotFrontier]:
    """slot_hulls + select without prices."""
    return select(slot_hulls(problem, exact_cap), max_points)


def _group(cols, a: int, b: int):
    """((head, part), removed [n], loss [n], width [n]) of one part's windowed options."""
    hp = (int(cols["head"][a]), int(cols["part"][a]))
    return hp, cols["removed"][a:b].astype(float), cols["loss"][a:b].astype(float), cols["width"][a:b].astype(int)


def _pareto(R: np.ndarray, Lo: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (more or equal removed, less or equal loss)."""
    order = np.lexsort((Lo, -R))
    Ls = Lo[order]
    best_before = np.minimum.accumulate(np.r_[np.inf, Ls[:-1]])
    return order[Ls < best_before]


def _exact(key, groups, cap: int) -> SlotFrontier | None:
    """Pareto frontier by dynamic programming over the groups; None once it exceeds `cap`."""
    R, Lo = np.zeros(1), np.zeros(1)
    picks = np.zeros((1, 0), dtype=np.int64)  # option index per group, -1 = FULL
    for _, r, l, _ in groups:
        r_o, l_o = np.r_[0.0, r], np.r_[0.0, l]
        R2, L2 = (R[:, None] + r_o[None, :]).ravel(), (Lo[:, None] + l_o[None, :]).ravel()
        keep = _pareto_with_origin(R2, L2)
        if len(keep) > cap:
            return None
        parent, opt = np.divmod(keep, len(r_o))
        R, Lo = R2[keep], L2[keep]
        picks = np.concatenate([picks[parent], (opt - 1)[:, None]], axis=1)
    order = np.argsort(R, kind="stable")
    R, Lo, picks = R[order], Lo[order], picks[order]
    widths = [{hp: int(wd[i]) for (hp, _, _, wd), i in zip(groups, row) if i >= 0} for row in picks]
    return SlotFrontier(key[0], key[1], R, Lo, widths, True)


def _pareto_with_origin(R: np.ndarray, Lo: np.ndarray) -> np.ndarray:
    """Pareto set of the configurations that remove something, plus the all-FULL one (index 0):
    "no window" runs another kernel, so it is never dominated."""
    windowed = np.flatnonzero(R > 0)
    return np.r_[0, windowed[_pareto(R[windowed], Lo[windowed])]]


def _hull_steps(r: np.ndarray, l: np.ndarray) -> list[tuple[float, float, int]]:
    """(d_removed, d_loss, option) steps along the lower convex hull from FULL (0, 0)."""
    hull = [(0.0, 0.0, -1)]
    for i in np.lexsort((l, r)):
        x, y = float(r[i]), float(l[i])
        if x <= hull[-1][0]:
            continue
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) > 0:
                break
            hull.pop()
        hull.append((x, y, int(i)))
    return [(b[0] - a[0], b[1] - a[1], b[2]) for a, b in zip(hull, hull[1:])]


def _hull(key, groups) -> SlotFrontier:
    """Greedy walk along the convex hull: every point is one width per (head, part)."""
    steps = [(dl / dr, gi, dr, dl, opt) for gi, (_, r, l, _) in enumerate(groups)
             for dr, dl, opt in _hull_steps(r, l)]
    steps.sort(key=lambda t: t[0])  # stable: a group's own steps keep their (convex) order
    R = np.r_[0.0, np.cumsum([s[2] for s in steps])]
    Lo = np.r_[0.0, np.cumsum([s[3] for s in steps])]
    return SlotFrontier(key[0], key[1], R, Lo, _HullWidths(groups, steps), False)


class _HullWidths:
    """Lazy widths of hull point p (steps are replayed only for the points kept)."""

    def __init__(self, groups, steps):
        self.groups, self.steps = groups, steps

    def __len__(self):
        return len(self.steps) + 1

    def pick(self, points) -> list[dict[tuple[int, int], int]]:
        want, out, cur = sorted(set(points)), {}, {}
        for p in range(max(want, default=0) + 1):
            if p > 0:
                _, gi, _, _, opt = self.steps[p - 1]
                hp, _, _, wd = self.groups[gi]
                cur[hp] = int(wd[opt])
            if p in want:
                out[p] = dict(cur)
        return [out[p] for p in points]


def _thin(f: SlotFrontier, max_points: int, prices=()) -> SlotFrontier:
    """The points of `f` kept for the solver: a core around each price's best point, ends, and
    evenly spread points along the normalised frontier."""
    n = len(f.removed)
    if n <= max_points:
        idx = np.arange(n)
    else:
        half = max_points // 4
        spread = max_points // 2 if len(prices) else max_points
        x = f.removed / max(f.removed[-1], 1e-300)
        span = f.loss.max() - f.loss.min()
        y = (f.loss - f.loss.min()) / span if span > 0 else np.zeros(n)
        arc = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
        keep = [np.searchsorted(arc, np.linspace(0, arc[-1], max(spread, 2))).clip(0, n - 1), [0, n - 1]]
        for lam in prices:  # the point minimising loss - lam * removed, and its neighbours
            best = int(np.argmin(f.loss - lam * f.removed))
            keep.append(np.arange(max(best - half, 0), min(best + half + 1, n)))
        idx = np.unique(np.concatenate(keep))
    widths = f.widths.pick(idx.tolist()) if isinstance(f.widths, _HullWidths) else [f.widths[i] for i in idx]
    return SlotFrontier(f.layer, f.scale, f.removed[idx], f.loss[idx], widths, f.exact and n <= max_points)
