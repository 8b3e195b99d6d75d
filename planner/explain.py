"""Why a plan chose what it chose: per decision, what it saves, what it costs in predicted loss,
and the alternative it beat (plain data in, a DataFrame out; the CLI prints it).

    format   per linear layer: saves vs fp; alternative: the option that would have been faster
             at the least extra loss (or, when none is faster, the least-loss one)
    cfg/qk8  per layer: saves vs not sharing / not QK8; alternative: the other setting
    window   per (layer, head) with a window: pairs kept, ms saved (the call's saving shared by
             the heads in proportion to the pairs they remove), loss; alternative: every part
             one candidate narrower (what the budget did not need)
    text_encoder  a family's text encoder: resident, or freed after encoding (saves its GiB through
             the generation, costs its reload per prompt)
    kv       per block with KV-cache options: its format and kept scales, the GiB its cache holds
             at the last scale (kernels.kvcache.held_bytes) before (plain, both CFG halves) and
             after; alternative: the option saving the most memory beyond it at the least extra
             loss (or, when none saves more, the least-loss one)
"""
from __future__ import annotations

import pandas as pd

from litevar.models.core.family import family_of
from litevar.planner.problem import FULL, Problem, Selection, kv_choice, slot_kept

COLUMNS = ["layer", "head", "decision", "chosen", "saves_ms", "saves_gib", "loss", "alternative",
           "alt_saves_ms", "alt_loss"]
GiB = 1024  # MiB per GiB


def explain(problem: Problem, sel: Selection) -> pd.DataFrame:
    rows = (_format_rows(problem, sel) + _layer_rows(problem, sel) + _window_rows(problem, sel) + _kv_rows(problem, sel)
            + _text_encoder_rows(problem))
    return pd.DataFrame(rows, columns=COLUMNS)


def _text_encoder_rows(problem: Problem) -> list:
    """The text encoder's mode: freed saves its MB through the generation (the encoding phase holds
    it either way) and costs its reload per prompt; resident the reverse."""
    te = problem.meta.get("text_encoder") or {}
    if "mode" not in te:
        return []
    freed, gib, ms = te["mode"] == "freed", te["mb"] / GiB, te.get("reload_ms")
    ms = float("nan") if ms is None else ms  # a load rate the profile did not measure
    if freed:
        return [("text_encoder", "", "text_encoder", "freed", -ms, gib, 0.0, "resident", ms, 0.0)]
    return [("text_encoder", "", "text_encoder", "resident", 0.0, 0.0, 0.0, "freed", -ms, 0.0)]


def _format_rows(problem: Problem, sel: Selection) -> list:
    rows = []
    for g in problem.formats:
        if len(g.options) == 1:
            continue
        fp, o = g.options[0], g.option(sel.formats.get(g.layer, "fp"))
        others = [a for a in g.options if a is not o]
        faster = [a for a in others if a.latency_ms < o.latency_ms]
        alt = min(faster or others, key=lambda a: (a.loss, a.latency_ms))
        rows.append((g.layer, "", "format", o.format, fp.latency_ms - o.latency_ms, (fp.weight_mb - o.weight_mb) / GiB,
                     o.loss, alt.format, o.latency_ms - alt.latency_ms, alt.loss - o.loss))
    return rows


def _slot_ms(problem: Problem, layer: int, kept: dict, qk8: bool, shared: bool) -> float:
    return sum(s.ms(kept.get(k, 1.0), k in kept, qk8, shared) for k, s in problem.slots.items() if s.layer == layer)


def _layer_rows(problem: Problem, sel: Selection) -> list:
    kept, rows = slot_kept(problem, sel), []
    for layer in sorted(set(problem.cfg_loss) | set(problem.qk_loss)):
        q, c = layer in sel.qk_int8, layer in sel.cfg_shared
        now = _slot_ms(problem, layer, kept, q, c)
        for what, on, loss, flip in (("cfg_share", c, problem.cfg_loss.get(layer), (q, not c)),
                                     ("qk8", q, problem.qk_loss.get(layer), (not q, c))):
            if loss is None:
                continue
            other = _slot_ms(problem, layer, kept, *flip)
            saves = other - now if on else 0.0
            rows.append((_block(problem, layer), "", what, "on" if on else "off", saves, 0.0, loss if on else 0.0,
                         "off" if on else "on", now - other, (-loss if on else loss)))
    return rows


def _window_rows(problem: Problem, sel: Selection) -> list:
    w = problem.windows
    if not sel.widths or w.empty:
        return []
    kept, index = slot_kept(problem, sel), problem.window_index
    saved = {k: s.ms(1.0, False, s.layer in sel.qk_int8, s.layer in sel.cfg_shared)
             - s.ms(kept[k], True, s.layer in sel.qk_int8, s.layer in sel.cfg_shared)
             for k, s in problem.slots.items() if k in kept}
    slope = {k: (s.ms(kept[k], True, s.layer in sel.qk_int8, s.layer in sel.cfg_shared)
                 - s.ms(max(kept[k] - 1e-3, 0), True, s.layer in sel.qk_int8, s.layer in sel.cfg_shared))
             / (1e-3 * s.pairs)
             for k, s in problem.slots.items() if k in kept}  # ms saved per removed pair
    removed_slot = {k: (1 - kept[k]) * problem.slots[k].pairs for k in kept}
    heads = sorted({(l, h) for (l, h, s, p) in sel.widths})
    cands = w[w.set_index(["layer", "head"]).index.isin(heads)].sort_values("removed")
    narrower: dict[tuple[int, int], list] = {}
    for (l, h, s, p), g in cands.groupby(["layer", "head", "scale", "part"]):
        narrower.setdefault((l, h), []).append(((s, p), list(zip(g["width"], g["loss"], g["removed"]))))
    rows = []
    for l, h in heads:
        mine = [(s, p, wd) for (ll, hh, s, p), wd in sel.widths.items() if (ll, hh) == (l, h) and wd != FULL]
        pairs = sum(problem.slots[l, s].pairs for (ll, s) in problem.slots if ll == l) / max(1, _heads(problem))
        removed = sum(index[l, h, s, p, wd][1] for s, p, wd in mine)
        loss = sum(index[l, h, s, p, wd][0] for s, p, wd in mine)
        ms = sum(saved[l, s] * index[l, h, s, p, wd][1] / removed_slot[l, s] for s, p, wd in mine)
        d_ms = d_loss = 0.0
        for (s, p), opts in narrower.get((l, h), []):
            cur = sel.widths.get((l, h, s, p), FULL)
            l0, r0 = (0.0, 0.0) if cur == FULL else index[l, h, s, p, cur]
            nxt = [o for o in opts if o[2] > r0]
            if nxt:
                d_loss += nxt[0][1] - l0
                d_ms += (nxt[0][2] - r0) * slope.get((l, s), 0.0)
        rows.append((_block(problem, l), h, "window", f"{len(mine)} parts, keeps {1 - removed / pairs:.1%} of pairs",
                     ms, 0.0, loss, "one width narrower", d_ms, d_loss))
    return rows


def _kv_rows(problem: Problem, sel: Selection) -> list:
    rows = []
    for g, o in kv_choice(problem, sel):
        c = int(g.layer in sel.cfg_shared)
        if len(g.options) == 1 and not c:
            continue
        plain = g.options[0]
        others = [a for a in g.options if a is not o]
        bigger = [a for a in others if a.mb[c] < o.mb[c]]
        alt = min(bigger or others, key=lambda a: (a.loss, a.mb[c])) if others else o
        rows.append((_block(problem, g.layer), "", "kv",
                     f"{kv_name(o)}: {plain.mb[0] / GiB:.3g} -> {o.mb[c] / GiB:.3g} GiB", -o.ms[c],
                     (plain.mb[0] - o.mb[c]) / GiB, o.loss, kv_name(alt), o.ms[c] - alt.ms[c], alt.loss - o.loss))
    return rows


def kv_name(o) -> str:
    """'KV4 s1r2', 'fp all' of a KV option."""
    return f"{o.fmt} " + ("all" if o.keep[1] is None else f"s{o.keep[0]}r{o.keep[1]}")


def _heads(problem: Problem) -> int:
    return problem.meta["arch"].num_heads


def _block(problem: Problem, layer: int) -> str:
    """The name of a block (its family's block_names)."""
    arch = problem.meta["arch"]
    return family_of(arch).block_names(arch)[layer]


def format_table(df: pd.DataFrame) -> str:
    """Fixed-width text of an explain frame (ms with 3 decimals, GiB and losses with 3 significant)."""
    out = df.copy()
    for c in ("saves_ms", "alt_saves_ms"):
        out[c] = out[c].map(lambda v: f"{v:.3f}")
    out["saves_gib"] = out["saves_gib"].map(lambda v: f"{v:.3g}")
    for c in ("loss", "alt_loss"):
        out[c] = out[c].map(lambda v: f"{v:.3g}")
    return out.to_string(index=False)

