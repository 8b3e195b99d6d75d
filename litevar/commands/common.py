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
    g.add_argument("--family", default="var", help="model family (default var; see docs/design.md, "
                   "'Add a model family')")
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
    """--dtype when not given: the device's default (bf16 on CUDA, where the tensor cores want it and
    what the GPU cost stage must price; fp32 on CPU)."""
    from litevar.models.core.device import device_of
    try:
        return device_of(device).default_dtype
    except UserError:
        return "fp32"  # an unknown device is refused, with its fix, when the model loads


def resolve_device(name: str) -> torch.device:
    """The torch device of --device, checked by its device type (one line naming the fix)."""
    from litevar.models.core.device import device_of
    dev = device_of(name)
    dev.check()
    return dev.torch


def model_flags(args):
    """The model flags as the model family reads them (litevar.models.core.family.ModelFlags)."""
    from litevar.models.core.family import ModelFlags
    return ModelFlags(family=args.family, ckpt=args.ckpt, vae=args.vae, depth=args.depth,
                      random_init=bool(args.random_init), resolution=args.resolution,
                      patch_nums=parse_patch_nums(args.patch_nums) if args.patch_nums else None)


def parse_patch_nums(text: str) -> tuple[int, ...]:
    """'1,2,3,4' -> (1, 2, 3, 4), with a one-line error for anything else."""
    try:
        pns = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise UserError(f"invalid patch_nums {text!r}: give comma-separated integers, "
                        "e.g. 1,2,3,4,5,6,8,10,13,16") from None
    if len(pns) < 2 or any(p < 1 for p in pns) or any(b <= a for a, b in zip(pns, pns[1:])):
        raise UserError(f"invalid patch_nums {text!r}: give >= 2 strictly increasing positive integers")
    return pns


def load_model(args) -> tuple:
    """(vae, model) from the model flags, on args.device, through the model family."""
    from litevar.models.core.distributed import local_device
    from litevar.models.core.family import get_family
    dev = local_device(resolve_device(args.device))  # under torchrun: this process's own GPU
    return get_family(args.family).load(model_flags(args), dev)
