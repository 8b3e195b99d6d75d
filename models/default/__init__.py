"""The small model trained by `litevar train` and shipped in models/default/assets (the default)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from litevar.models.core.errors import UserError

ASSETS = Path(__file__).parent / "assets"


def default_paths(root: str | Path = ASSETS) -> dict[str, Path]:
    root = Path(root)
    return {"var": root / "var.safetensors", "vae": root / "vae.safetensors", "card": root / "train.json"}


def load_default(device="cpu", root: str | Path = ASSETS):
    """(vae, var) of the shipped model, in eval mode on `device`."""
    from safetensors.torch import load_file

    from litevar.models.default.train import GPTConfig, TrainConfig, VAEConfig, build_small_vae, build_small_var
    paths = default_paths(root)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"the default model is missing ({', '.join(missing)}); run `litevar train` to rebuild it, "
                        f"or pass official checkpoints with --ckpt/--vae")
    recipe = json.loads(paths["card"].read_text())["recipe"]
    cfg = TrainConfig(seed=recipe["seed"], image_size=recipe["image_size"], patch_nums=tuple(recipe["patch_nums"]),
                      vae=VAEConfig(**{**recipe["vae"], "ch_mult": tuple(recipe["vae"]["ch_mult"])}),
                      var=GPTConfig(**recipe["var"]))
    # built on the CPU, not on meta: 6 M parameters take 0.07 s, and initialising an nn.Embedding on
    # meta imports torch._dynamo (1.2 s of every command's start); on a forked RNG, so that loading
    # draws nothing from the caller's
    with torch.random.fork_rng(devices=[]):
        vae = build_small_vae(cfg)
        var = build_small_var(cfg, vae, init=False)
    vae.load_state_dict(load_file(str(paths["vae"])), strict=True, assign=True)
    var.load_state_dict(load_file(str(paths["var"])), strict=True, assign=True)
    vae.to(device).eval().requires_grad_(False)
    var.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    return vae, var

