"""`litevar ablate`: the LiteVAR paper's Tables 1-3, re-run on a model of ours.

1. MDWA thresholds 1 .. 0.6: attention FLOPs saved and quality;
2. bit-widths (W/A/QK) with and without mixed precision (ffn.fc2 kept full precision);
3. MDWA + ASC + quantization, added one at a time.
Each row is a uniform recipe (planner/recipes.py) turned into a plan on the given profile and
applied with the reference kernels (the numerics of the plan; speed is `litevar bench`'s job).
Quality per row, all with the same seeds: the loss the planner predicts, measured (profile unit,
teacher-forced on N calibration samples of the dense model), the share of unchanged argmax
tokens, and on --n generated images (CFG 4) the class accuracy and classifier-feature Frechet
distance of `litevar eval`. The paper's FID / IS (VAR-d16, ImageNet 256 px, 8K images) stand
beside ours for shape, not for value: different model, data and metric.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from litevar.commands.args import COUNT, SEED, Number
from litevar.commands.common import add_model_arguments, load_model
from litevar.models.core.atomic import write_text
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)

# table -> (title, [(recipe, paper figures)]); paper figures are Tables 1-3 of the LiteVAR paper
# (shared/seeds/litevar-paper.txt): FID, IS and, in Table 1, the attention FLOPs saving (%).
TABLES = {
    1: ("MDWA threshold R0 (attention windows only)", [
        ("dense", {"flops_saved": 0.0, "fid": 13.39, "is": 257.34}),
        ("mdwa0.95", {"flops_saved": 70.34, "fid": 13.47, "is": 260.95}),
        ("mdwa0.9", {"flops_saved": 73.43, "fid": 13.50, "is": 261.45}),
        ("mdwa0.85", {"flops_saved": 75.47, "fid": 13.72, "is": 259.54}),
        ("mdwa0.8", {"flops_saved": 76.82, "fid": 13.77, "is": 258.45}),
        ("mdwa0.7", {"flops_saved": 79.36, "fid": 13.94, "is": 254.17}),
        ("mdwa0.6", {"flops_saved": 81.39, "fid": 14.39, "is": 250.97})]),
    2: ("bit-widths W/A/QK, without and with mixed precision (mp: ffn.fc2 full precision)", [
        ("dense", {"fid": 13.39, "is": 257.34}),
        ("w8a8+qk8", {"fid": 12.71, "is": 249.04}),
        ("w8a8+qk8+mp", {"fid": 13.08, "is": 253.43}),
        ("w4a8+qk8", {"fid": 54.29, "is": 40.71}),
        ("w4a8+qk8+mp", {"fid": 12.82, "is": 228.59}),
        ("w6a6+qk8", {"fid": 66.53, "is": 26.08}),
        ("w6a6+qk8+mp", {"fid": 18.54, "is": 133.13}),
        ("w4a6+qk8", {"fid": 111.24, "is": 9.79}),
        ("w4a4+qk8", {"fid": 133.38, "is": 6.63})]),
    3: ("MDWA + ASC + quantization, added one at a time", [
        ("dense", {"fid": 13.39, "is": 257.34}),
        ("mdwa0.95", {"fid": 13.47, "is": 260.95}),
        ("mdwa0.95+asc", {"fid": 13.45, "is": 248.8}),
        ("w4a8+qk8+mdwa0.95+asc", {"fid": 52.27, "is": 33.87}),
        ("paper", {"fid": 13.34, "is": 224.74})]),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--profile", required=True, help="the model's profile (written by `litevar profile`)")
    p.add_argument("--tables", default="1,2,3", help="which of the paper's tables (default 1,2,3)")
    p.add_argument("--n", "--num-images", dest="n", type=Number(int, 2), default=100,
                   help="generated images per row (default 100; under torchrun write --num-images: torchrun "
                   "takes --n for its own --nnodes / --nproc-per-node)")
    p.add_argument("--calib", type=COUNT, default=80, help="calibration samples of the measured loss (default 80)")
    p.add_argument("--batch", type=COUNT, default=50, help="images per generation batch (default 50)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", help="write the tables as markdown here (e.g. docs/ablation.md)")
    p.add_argument("--json", help="write every figure as JSON here")


def _tables(text: str) -> list[int]:
    try:
        ids = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        ids = []
    if not ids or not set(ids) <= set(TABLES):
        raise UserError(f"--tables {text!r}: give a comma-separated subset of {', '.join(map(str, TABLES))}")
    return ids


def measure_row(vae, dense, plan, calib, scorer, args) -> dict:
    """Quality figures of `plan` applied (reference kernels) to a copy of `dense`."""
    from litevar.models.default.evaluation import balanced_images
    from litevar.profiler.quality import loss_of
    from litevar.runtime import planned_copy
    var = planned_copy(vae, dense, plan, kernel="torch")
    loss, top1 = loss_of(vae, var, calib)
    imgs, labels = balanced_images(var, args.n, args.seed, 4.0, 900, 0.95, args.batch, desc=plan.name)
    q = scorer(imgs, labels)
    pr = plan.predicted
    return {"recipe": plan.name, "description": plan.solver.get("description", ""),
            "attn_flops_saved": 1.0 - pr.attn_flops, "avg_bits": pr.avg_bits,
            "loss": loss, "predicted_loss": pr.loss, "top1": top1,
            "class_accuracy": q["class_accuracy"], "frechet_feature": q["frechet_feature"]}


def run(args) -> int:
    from litevar.models.core.distributed import world
    from litevar.models.core.family import family_of_model
    from litevar.models.default.evaluation import Scorer
    from litevar.planner.recipes import recipe_plan
    from litevar.profiler.profile import Profile
    from litevar.profiler.quality import calibrate, run_sharded
    tables = _tables(args.tables)
    for path in (args.out, args.json):
        if path and not Path(path).resolve().parent.is_dir():
            raise UserError(f"{path}: folder {Path(path).resolve().parent} does not exist; create it first")
    t0 = time.perf_counter()
    profile = Profile.load(args.profile)
    vae, dense = load_model(args)
    family = family_of_model(dense)
    res = family.resolution_of(family.schedule_of(dense))
    if res is None:
        raise UserError(f"the model runs a custom schedule {list(family.schedule_of(dense))}; ablate a model of a "
                        "standard resolution")
    plans = {spec: recipe_plan(profile, args.profile, spec, res, 1, spec)
             for t in tables for spec, _ in TABLES[t][1]}
    calib = calibrate(vae, dense, args.calib, 4.0, args.seed)
    scorer = Scorer(max(args.n, 500))
    specs = list(plans)  # under torchrun: row i on rank i mod size, whole (the same seeds as alone)
    rows = dict(zip(specs, run_sharded(lambda spec: measure_row(vae, dense, plans[spec], calib, scorer, args),
                                       specs, "ablation rows", progress=True)))
    if not world().main:
        return 0
    result = {"model": profile.meta.get("model", {}).get("name", ""), "profile": args.profile, "n": args.n,
              "calib": args.calib, "seed": args.seed, "cfg": 4.0,
              "real_vs_real_frechet": scorer.real_vs_real, "chance": scorer.chance,
              "tables": {t: [{**rows[spec], "paper": paper} for spec, paper in TABLES[t][1]] for t in tables},
              "seconds": round(time.perf_counter() - t0, 1)}
    text = markdown(result)
    print(text)
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    if args.json:
        from litevar.commands.results import write_command_result
        write_command_result(args, "ablation", result, args.device)
        print(f"wrote {args.json}")
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Ablation: the LiteVAR paper's Tables 1-3 on {r['model'] or 'the model'}", "",
             (f"`litevar ablate --profile {r['profile']} --n {r['n']} --calib {r['calib']} --seed {r['seed']}` "
             f"({r['seconds']:.0f} s). Loss: the planner's unit (sum over scales of the CFG-guided KL to the "
             f"dense model, nats; teacher-forced on {r['calib']} samples), measured, with the planner's "
             f"prediction beside it; top-1: unchanged argmax tokens. Class accuracy and Frechet distance "
             f"(classifier features) on {r['n']} generated images at CFG 4; real vs real "
             f"{r['real_vs_real_frechet']:.2f}, chance {100 * r['chance']:.0f}%. Paper: VAR-d16 on ImageNet "
             f"256 px, 8K images (FID, IS)."), ""]
    for t, rows in r["tables"].items():
        title = TABLES[int(t)][0]
        lines += [f"## Table {t}: {title}", "",
                  "| recipe | attn FLOPs saved | avg bits | loss (pred) | top-1 | class acc | Frechet "
                  "| paper FID | paper IS |" + (" paper FLOPs saved |" if int(t) == 1 else ""),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if int(t) == 1 else "")]
        for row in rows:
            p = row["paper"]
            lines.append(f"| {row['recipe']} | {100 * row['attn_flops_saved']:.1f}% | {row['avg_bits']:.1f} "
                         f"| {row['loss']:.4f} ({row['predicted_loss']:.4f}) | {100 * row['top1']:.1f}% "
                         f"| {100 * row['class_accuracy']:.1f}% | {row['frechet_feature']:.2f} | {p['fid']:.2f} "
                         f"| {p['is']:.2f} |" + (f" {p['flops_saved']:.2f}% |" if int(t) == 1 else ""))
        lines.append("")
    return "\n".join(lines)
