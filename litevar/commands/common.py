"""What every command that runs a model shares: the model flags and loading them."""
from __future__ import annotations

import argparse

import torch

from litevar.commands.args import COUNT, RESOLUTION
from litevar.models.core.errors import UserError
from litevar.models.core.inference import DTYPES


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Model selection flags shared by every command that runs a model."""
    g = p.add_argument_group("model (default: the small model shipped with litevar)")
    g.add_argument("--ckpt", help="official VAR checkpoint (e.g. var_d16.pth)")
    g.add_argument("--vae", help="official VQVAE checkpoint (vae_ch160v4096z32.pth)")
    g.add_argument("--depth", type=COUNT, help="VAR depth; checked against --ckpt, required with --random-init")
    g.add_argument("--random-init", action="store_true", help="untrained model of --depth (cost measurement only)")
    g.add_argument("--resolution", type=RESOLUTION, default=None, help="with --random-init: 256, 512, 1024 or 2048")
    g.add_argument("--patch-nums", help="explicit token schedule, e.g. 1,2,3,4,5,6,8,10,13,16")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="compute dtype (autocast; default bf16 on CUDA, where the tensor cores want it, fp32 on CPU)")



def default_dtype(device: str) -> str:
    """--dtype when not given: bf16 on CUDA (tensor cores, and what the GPU cost stage must price),
    fp32 on CPU."""
    return "bf16" if str(device).startswith("cuda") else "fp32"


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
    from litevar.models.core.distributed import local_device
    from litevar.models.var.build import build_vae_var, load_vae_var
    from litevar.models.var.schedules import parse_patch_nums, schedule_for
    dev = local_device(resolve_device(args.device))  # under torchrun: this process's own GPU
    pns = parse_patch_nums(args.patch_nums) if args.patch_nums else None
    if args.random_init:
        if args.depth is None:
            raise UserError("--random-init needs --depth (e.g. --depth 16)")
        pns = pns or schedule_for(args.resolution or 256)
        return build_vae_var(dev, patch_nums=pns, depth=args.depth, shared_aln=args.depth >= 36)
    if args.ckpt or args.vae:
        if not (args.ckpt and args.vae):
            raise UserError("official checkpoints need both --ckpt (VAR) and --vae (VQVAE)")
        return load_vae_var(args.ckpt, args.vae, device=dev, patch_nums=pns, depth=args.depth)
    if args.depth is not None:
        raise UserError("--depth needs --ckpt/--vae (official checkpoints) or --random-init")
    from litevar.models.default import load_default
    return load_default(dev)
