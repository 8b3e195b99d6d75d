"""`litevar eval`: quality of a model on N generated images.

- class accuracy of the generated images by the shipped classifier (chance = 1 / classes);
- Frechet distance in that classifier's feature space against held-out real images, next to
  the real-vs-real figure (two disjoint real sets of the same size) as the floor;
- fidelity to the full-precision model with the same seeds (when the evaluated model differs:
  a lower --dtype, later a plan): token agreement per scale, PSNR of the images, and the KL of
  the CFG logits with both models teacher-forced on the reference tokens;
- real FID / IS through an established library when its Inception weights are already cached;
- under torchrun (`torchrun --nproc-per-node N -m litevar eval ...`) the generation batches are
  shared by the ranks (batch i on rank i mod N, seed + i as alone: the same images whatever N)
  and rank 0 scores them;
- with --by-scale N, where the class shows, scale by scale, on N held-out real images: the class
  accuracy of each image decoded from its first k scales of tokens (what any VAR on this VQVAE
  can show by then) and of images generated with those real tokens forced at the first k scales
  and the rest sampled (where the sampled layout goes wrong).
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from litevar.commands.args import COUNT, FRACTION, NONNEG, NONNEG_INT, SEED, Number
from litevar.commands.common import add_model_arguments, load_model
from litevar.models.core.distributed import world
from litevar.models.default.evaluation import Scorer, balanced_images, class_by_scale, fidelity, quality
from litevar.models.var.inference import sample

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--n", "--num-images", dest="n", type=Number(int, 2), default=200,
                   help="images to generate (balanced over classes; default 200; under torchrun write "
                   "--num-images: torchrun takes --n for its own --nnodes / --nproc-per-node)")
    p.add_argument("--batch", type=COUNT, default=50)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--cfg", type=NONNEG, default=4.0)
    p.add_argument("--top-k", type=NONNEG_INT, default=900)
    p.add_argument("--top-p", type=FRACTION, default=0.95)
    p.add_argument("--plan", help="compression plan JSON (`litevar plan`): evaluate the planned model, and its "
                   "fidelity to the dense full-precision one with the same seeds")
    p.add_argument("--by-scale", type=NONNEG_INT, default=0, metavar="N",
                   help="also: where the class shows, scale by scale, on N held-out real images (their first k "
                   "scales decoded; generation with their real tokens forced at the first k scales); 0 = off")
    p.add_argument("--no-ceiling", action="store_true",
                   help="leave out the VQVAE's reconstruction ceiling (500 real images encoded and decoded: a "
                   "figure of the VAE alone, the same for every plan and seed)")
    p.add_argument("--json", help="write every figure here")


def run(args) -> int:
    t0 = time.perf_counter()
    plan = None
    if args.plan:  # read it first: a bad plan fails before the model loads
        from litevar.planner.plan import Plan
        plan = Plan.load(args.plan)
    vae, dense = load_model(args)
    var = dense
    if plan is not None:
        from litevar.commands.generate import run_dtype
        from litevar.runtime import planned_copy
        var = planned_copy(vae, dense, plan)
        args.dtype = run_dtype(args, plan)  # the plan's runtime dtype unless --dtype says otherwise
    w = world()  # under torchrun: images sharded by batch, metrics on rank 0
    imgs, labels = balanced_images(var, args.n, args.seed, args.cfg, args.top_k, args.top_p, args.batch, args.dtype)
    scorer = Scorer(max(args.n, 500)) if w.main else None
    report = {"n": args.n, "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
              "dtype": args.dtype, "plan": args.plan, "world_size": w.size,
              **({"images_sha256": images_sha256(imgs)} if w.main else {}),
              **(quality(imgs, labels, vae=None if args.no_ceiling else vae, scorer=scorer) if w.main else {})}
    if args.by_scale:
        report["class_by_scale"] = class_by_scale(var, vae, scorer, args.by_scale, args.seed, args.cfg, args.top_k,
                                                  args.top_p, args.batch, args.dtype)
    if plan is not None:  # fidelity of the planned model (at its dtype) to the dense fp32 one, same seeds
        report["fidelity_vs_dense"] = fidelity(dense, var, vae, labels, args.seed, args.cfg, args.top_k, args.top_p,
                                               args.batch, args.dtype)
    elif args.dtype != "fp32":  # fidelity of the lower-precision run to the fp32 one, same seeds
        ref_out = sample(var, labels, args.seed, args.cfg, args.top_k, args.top_p, args.batch, "fp32", "fp32 reference")
        report["fidelity_vs_fp32"] = fidelity(var, var, vae, labels, args.seed, args.cfg, args.top_k, args.top_p,
                                              args.batch, args.dtype, ref_out=ref_out)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if not w.main:
        return 0
    print_report(report)
    if args.json:
        from litevar.commands.results import write_command_result
        write_command_result(args, "eval", report, args.device, default=str)
        print(f"wrote {args.json}")
    return 0


def images_sha256(imgs) -> str:
    """sha256 of the generated images' float values in order: the same images, whatever the ranks."""
    import hashlib
    return hashlib.sha256(imgs.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def print_report(r: dict) -> None:
    print(f"images: {r['n']} (cfg {r['cfg']}, top-k {r['top_k']}, top-p {r['top_p']}, {r['dtype']})")
    chance = f" (chance {100 * r['chance']:.0f}%)" if r.get("chance") else ""
    print(f"class accuracy: {100 * r['class_accuracy']:.1f}%{chance}")
    print(f"Frechet distance (classifier features): {r['frechet_feature']:.3f} "
          f"(real vs real, {r['n_real']} images each: {r['frechet_feature_real_vs_real']:.3f})")
    if "confusion" in r:
        print_confusions(np.array(r["confusion"]), r["per_class_accuracy"])
    if "reconstruction" in r:
        c = r["reconstruction"]
        print(f"VQVAE reconstruction ceiling ({c['n']} real images encoded and decoded): PSNR {c['psnr_db']:.1f} dB, "
              f"class accuracy {100 * c['class_accuracy']:.1f}%, Frechet distance {c['frechet_feature']:.3f}")
    for key in ("fidelity_vs_fp32", "fidelity_vs_dense"):
        if key not in r:
            continue
        f = r[key]
        print(f"{key.replace('_', ' ')}: PSNR {f['psnr_db']:.2f} dB, CFG-logit KL {f['cfg_kl_sum']:.4f} nats "
              "(sum over scales), "
              f"token agreement per scale {[round(a, 3) for a in f['token_agreement_per_scale']]}")
    inc = r["inception"]
    print(f"Inception FID/IS: skipped: {inc['skipped']}" if "skipped" in inc else f"Inception FID/IS: {inc}")
    if "class_by_scale" in r:
        print_class_by_scale(r["class_by_scale"])


def class_names(n: int) -> list[str]:
    from litevar.models.default.data import CLASS_NAMES
    return list(CLASS_NAMES) if len(CLASS_NAMES) == n else [str(i) for i in range(n)]


def print_confusions(cm: np.ndarray, per_class: list[float], top: int = 5) -> None:
    """Per-class accuracy and the most frequent confusions (intended -> predicted)."""
    names = class_names(len(cm))
    print("per class: " + ", ".join(f"{n} {100 * a:.0f}%" for n, a in zip(names, per_class)))
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
    worst = sorted(off, reverse=True)[:top]
    if worst:
        print("most frequent confusions: " + ", ".join(f"{names[i]} -> {names[j]} ({c})" for c, i, j in worst))


def print_class_by_scale(c: dict) -> None:
    pns = c["patch_nums"]
    print(f"where the class shows ({c['n']} held-out real images; k = scales of their own tokens):")
    print(f"{'k':>3} {'up to':>7} {'decoded from k scales':>22} {'generated, k forced':>20}")
    for k in range(len(pns) + 1):
        side = f"{pns[k - 1]}x{pns[k - 1]}" if k else "-"
        dec = f"{100 * c['decoded'][k - 1]:.1f}%" if k else "-"
        gen = f"{100 * c['forced'][k]:.1f}%" if k < len(pns) else "-"
        print(f"{k:>3} {side:>7} {dec:>22} {gen:>20}")
