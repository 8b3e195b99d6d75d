"""`litevar generate`: a PNG grid of class-conditional samples.

With no model flags it uses the small model shipped with the project; `--ckpt/--vae` load
official checkpoints (architecture inferred from their keys, `--depth` checked against them);
`--random-init --depth N` builds an untrained model of any depth (for timing only).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import time

import torch

from litevar.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Model selection flags shared by every command that runs a model."""
    g = p.add_argument_group("model (default: the small model shipped with litevar)")
    g.add_argument("--ckpt", help="official VAR checkpoint (e.g. var_d16.pth)")
    g.add_argument("--vae", help="official VQVAE checkpoint (vae_ch160v4096z32.pth)")
    g.add_argument("--depth", type=int, help="VAR depth; checked against --ckpt, required with --random-init")
    g.add_argument("--random-init", action="store_true", help="untrained model of --depth (cost measurement only)")
    g.add_argument("--resolution", type=int, default=None, help="with --random-init: 256, 512, 1024 or 2048")
    g.add_argument("--patch-nums", help="explicit token schedule, e.g. 1,2,3,4,5,6,8,10,13,16")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    g.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="compute dtype (autocast; default fp32)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated class ids (default: one per class, up to 8)")
    p.add_argument("--per-class", type=int, default=1, help="samples per class id (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: same seed, same image")
    p.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    p.add_argument("--top-k", type=int, default=900, help="top-k filtering, 0 = off (default 900)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus filtering, 0 = off (default 0.95)")
    p.add_argument("--more-smooth", action="store_true", help="gumbel-softmax smoothing (official option)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.add_argument("--plan", help="compression plan JSON (`litevar plan`) to apply to the model")


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return dev


def load_model(args) -> tuple:
    """(vae, var) from the model flags, on args.device."""
    from litevar.build import build_vae_var, load_vae_var
    from litevar.schedules import parse_patch_nums, schedule_for
    dev = resolve_device(args.device)
    pns = parse_patch_nums(args.patch_nums) if args.patch_nums else None
    if args.random_init:
        if args.depth is None:
            raise UserError("--random-init needs --depth (e.g. --depth 16)")
        if args.depth < 1:
            raise UserError(f"--depth must be >= 1, got {args.depth}")
        pns = pns or schedule_for(args.resolution or 256)
        return build_vae_var(dev, patch_nums=pns, depth=args.depth, shared_aln=args.depth >= 36)
    if args.ckpt or args.vae:
        if not (args.ckpt and args.vae):
            raise UserError("official checkpoints need both --ckpt (VAR) and --vae (VQVAE)")
        return load_vae_var(args.ckpt, args.vae, device=dev, patch_nums=pns, depth=args.depth)
    if args.depth is not None:
        raise UserError("--depth needs --ckpt/--vae (official checkpoints) or --random-init")
    from litevar.default_model import load_default
    return load_default(dev)


def autocast(device: torch.device, dtype_name: str):
    dtype = DTYPES[dtype_name]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def parse_classes(text: str | None, num_classes: int, per_class: int) -> list[int]:
    if text is None:
        ids = [round(i * num_classes / min(8, num_classes)) for i in range(min(8, num_classes))]
    else:
        try:
            ids = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise UserError(f"--classes {text!r}: give comma-separated integers") from None
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad or not ids:
        raise UserError(f"--classes: class id(s) {bad or text} out of range; this model has classes 0..{num_classes - 1}")
    if per_class < 1:
        raise UserError(f"--per-class must be >= 1, got {per_class}")
    return [c for c in ids for _ in range(per_class)]


def generate(var, labels: list[int], seed: int, cfg: float, top_k: int, top_p: float, more_smooth: bool = False,
             dtype_name: str = "fp32", progress: bool = True) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W), with a progress bar over scales."""
    from tqdm import tqdm
    dev = var.lvl_1L.device
    bar = tqdm(total=len(var.patch_nums), desc="scales", unit="scale", disable=not progress, leave=False)
    label_B = torch.tensor(labels, device=dev)
    with autocast(dev, dtype_name):
        img = var.autoregressive_infer_cfg(len(labels), label_B, g_seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
                                           more_smooth=more_smooth, callback=lambda si, _: bar.update(1))
    bar.close()
    return img.float()


def run(args) -> int:
    from litevar.imageio import save_grid
    t0 = time.perf_counter()
    plan = None
    if args.plan:  # read it first: a bad plan fails before the model loads
        from planner.plan import Plan
        plan = Plan.load(args.plan)
    vae, var = load_model(args)
    if plan is not None:
        from litevar.runtime import apply_plan
        apply_plan(vae, var, plan)
    t1 = time.perf_counter()
    labels = parse_classes(args.classes, var.num_classes, args.per_class)
    img = generate(var, labels, args.seed, args.cfg, args.top_k, args.top_p, args.more_smooth, args.dtype)
    t2 = time.perf_counter()
    save_grid(img, args.out, nrow=min(len(labels), 8))
    print(f"wrote {args.out}: {len(labels)} samples of classes {sorted(set(labels))}, "
          f"{img.shape[-1]}x{img.shape[-2]} px (load {t1 - t0:.1f} s, generate {t2 - t1:.1f} s on {args.device})")
    return 0
