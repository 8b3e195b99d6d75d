"""`litevar generate`: a PNG grid of class-conditional samples.

With no model flags it uses the small model shipped with the project; `--ckpt/--vae` load
official checkpoints (architecture inferred from their keys, `--depth` checked against them);
`--random-init --depth N` builds an untrained model of any depth (for timing only).
"""
from __future__ import annotations

import argparse
import logging
import time

from litevar.commands.args import COUNT, FRACTION, NONNEG, NONNEG_INT, SEED
from litevar.commands.common import add_model_arguments, load_model
from litevar.models.core.errors import UserError
from litevar.models.core.family import family_of_model

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated class ids (default: one per class, up to 8)")
    p.add_argument("--per-class", type=COUNT, default=1, help="samples per class id (default 1)")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed: same seed, same image")
    p.add_argument("--cfg", type=NONNEG, default=4.0, help="classifier-free guidance scale (default 4)")
    p.add_argument("--top-k", type=NONNEG_INT, default=900, help="top-k filtering, 0 = off (default 900)")
    p.add_argument("--top-p", type=FRACTION, default=0.95, help="nucleus filtering, 0 = off (default 0.95)")
    p.add_argument("--more-smooth", action="store_true", help="gumbel-softmax smoothing (official option)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.add_argument("--plan", help="compression plan JSON (`litevar plan`) to apply to the model")
    p.add_argument("--prompt", action="append", help="a text prompt (repeatable; a family with a text encoder: "
                   "Infinity), encoded by --text-encoder; --per-class images each")
    p.add_argument("--text-encoder", help="with --prompt: a local T5 v1.1 / Flan-T5 model directory (config.json, "
                   "weights, spiece.model); kept through the generation or freed after encoding as the plan says "
                   "(resident without a plan)")


def run(args) -> int:
    from litevar.models.core.imageio import save_grid
    t0 = time.perf_counter()
    plan = None
    if args.plan:  # read it first: a bad plan fails before the model loads
        from litevar.planner.plan import Plan
        plan = Plan.load(args.plan)
    vae, var = load_model(args)
    if plan is not None:
        from litevar.runtime import apply_plan
        apply_plan(vae, var, plan)
    t1 = time.perf_counter()
    family = family_of_model(var)
    encoder = None
    if args.prompt:
        if args.classes:
            raise UserError("give --prompt or --classes, not both")
        conds, encoder = family.encode_text(var, args.text_encoder, args.prompt, args.per_class)
        if ((plan.text_encoder if plan else None) or {}).get("mode") == "freed":
            encoder = None  # freed after encoding, as the plan was priced
        what = f"prompts {args.prompt}"
    else:
        conds = family.conditions_from_text(var, args.classes, args.per_class)
        what = f"classes {sorted(set(conds))}" if isinstance(conds, (list, tuple)) else "conditions"
    sampling = {"cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "more_smooth": args.more_smooth}
    dtype = run_dtype(args, plan)
    img = family.images(vae, var, conds, args.seed, sampling, dtype)
    del encoder  # resident through the generation
    t2 = time.perf_counter()
    save_grid(img, args.out, nrow=min(len(conds), 8))
    print(f"wrote {args.out}: {len(conds)} samples of {what}, "
          f"{img.shape[-1]}x{img.shape[-2]} px (load {t1 - t0:.1f} s, generate {t2 - t1:.1f} s on {args.device}, "
          f"{dtype})")
    return 0


def run_dtype(args, plan) -> str:
    """The runtime dtype: --dtype when given, else the plan's (what it was priced at), else the
    device's default. A --dtype other than the plan's gets a warning: its figures do not hold."""
    given = getattr(args, "_dtype_given", True)
    if plan is None or plan.dtype is None:
        return args.dtype
    if given and args.dtype != plan.dtype:
        log.warning("--dtype %s: the plan was priced at %s; its predicted latency, memory and loss do not hold",
                    args.dtype, plan.dtype)
        return args.dtype
    return plan.dtype
