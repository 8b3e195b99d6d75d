"""Build Infinity + its BSQ VAE: at random init, or from the released checkpoints by path (strict).

Models are built on the meta device and materialised once (random init) or assigned from the
checkpoint's tensors, so a model costs one copy of its weights. Nothing is downloaded.
"""
from __future__ import annotations

import logging
import re

import torch

from litevar.models.core.checkpoint import load_checkpoint, strict_load
from litevar.models.core.errors import UserError
from litevar.models.infinity.model import CONFIGS, Infinity, InfinityConfig, official_names
from litevar.models.infinity.vae import BSQVAE, VAE_CONFIGS, BSQConfig, normalise_vae_keys

log = logging.getLogger(__name__)

VAE_OF = {"2b": "d32", "8b": "d56"}


def _materialise(module: torch.nn.Module, device, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    module.to_empty(device="cpu")
    module.init_weights(generator=g)
    module.to(device)


def build(size: str = "2b", hw=None, device="cpu", seed: int = 0, cfg: InfinityConfig | None = None):
    """(vae, model) at random init (`device="meta"`: unmaterialised, for loading)."""
    if cfg is None and size not in CONFIGS:
        raise UserError(f"unknown Infinity size {size!r}; choose one of {sorted(CONFIGS)}")
    cfg = cfg or CONFIGS[size]
    vae_cfg = _vae_config_for(cfg)
    with torch.device("meta"):
        model, vae = Infinity(cfg, hw), BSQVAE(vae_cfg)
    if str(device) == "meta":
        return vae, model
    _materialise(vae, device, seed + 1)
    _materialise(model, device, seed)
    model.set_schedule(model.hw)
    return vae.eval().requires_grad_(False), model.eval().requires_grad_(False)


def _vae_config_for(cfg: InfinityConfig) -> BSQConfig:
    for c in VAE_CONFIGS.values():
        if c.bits == cfg.vae_bits and (c.downsample == 8) == cfg.patchify:
            return c
    levels = 4 if cfg.patchify else 5
    return BSQConfig(bits=cfg.vae_bits, ch_mult=(1, 2, 4, 4, 4)[:levels])


def infer_config(sd: dict) -> tuple[InfinityConfig, int]:
    """(architecture, block_chunks) a released transformer state dict implies."""
    need = ("word_embed.weight", "head.weight", "cfg_uncond", "shared_ada_lin.1.weight")
    if any(k not in sd for k in need):
        missing = [k for k in need if k not in sd]
        raise UserError(f"not an Infinity transformer checkpoint: keys {missing} are missing (is this the VAE "
                        "file? pass it with --vae)")
    C, token_bits = sd["word_embed.weight"].shape
    chunks = {int(m.group(1)) for k in sd if (m := re.match(r"block_chunks\.(\d+)\.module\.(\d+)\.", k))}
    per = {int(m.group(2)) for k in sd if (m := re.match(r"block_chunks\.(\d+)\.module\.(\d+)\.", k))}
    flat = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if chunks:
        block_chunks, depth = len(chunks), len(chunks) * len(per)
    elif flat:
        block_chunks, depth = 1, len(flat)
    else:
        raise UserError("Infinity checkpoint has no blocks (keys block_chunks.<c>.module.<j>.* or blocks.<i>.*)")
    first = "block_chunks.0.module.0." if chunks else "blocks.0."
    heads = sd[first + "sa.scale_mul_1H11"].shape[1]
    hidden = sd[first + "ffn.fc1.weight"].shape[0]
    maxlen, Ct5 = sd["cfg_uncond"].shape
    patchify = token_bits % 4 == 0 and token_bits // 4 in (14, 16, 18, 20, 24)
    pool_heads = sd["text_proj_for_sos.ca.mat_q"].shape[1] if "text_proj_for_sos.ca.mat_q" in sd else 0
    official_pool = 64 if C > 4096 else 128
    pool_head = 0 if not pool_heads or Ct5 // pool_heads == official_pool else Ct5 // pool_heads
    try:
        cfg = InfinityConfig(depth=depth, embed_dim=C, num_heads=heads, mlp_ratio=hidden / C, text_channels=Ct5,
                             text_maxlen=maxlen, vae_bits=token_bits // 4 if patchify else token_bits,
                             patchify=patchify, num_levels=sd["lvl_embed.weight"].shape[0], pool_head=pool_head)
    except ValueError as e:
        raise UserError(f"Infinity checkpoint implies an unsupported architecture: {e}") from None
    if cfg.hidden != hidden:
        raise UserError(f"Infinity checkpoint FFN width {hidden} is not round(C * mlp_ratio / 256) * 256 for C={C}")
    return cfg, block_chunks


def _flat_names(sd: dict, cfg: InfinityConfig, block_chunks: int) -> dict:
    """The checkpoint with chunked block names mapped back to ours."""
    with torch.device("meta"):
        ours = Infinity(cfg).state_dict().keys()
    back = {v: k for k, v in official_names(ours, cfg.depth, block_chunks).items()}
    return {back.get(k, k): v for k, v in sd.items()}


def load(ckpt, vae_ckpt, device="cpu", hw=None):
    """(vae, model) from the released files: the transformer (.pth, or a folder's state dict) and the
    BSQ VAE ({'vae': ...} or a plain state dict). Every key and shape is checked (one line on error)."""
    sd = load_checkpoint(ckpt, "gpt_fsdp")
    cfg, chunks = infer_config(sd)
    sd = _flat_names(sd, cfg, chunks)
    vae_sd = load_checkpoint(vae_ckpt, "vae")
    vae, model = build(cfg=cfg, hw=hw, device="meta")
    implied = dict(depth=cfg.depth, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, token_bits=cfg.token_bits,
                   block_chunks=chunks)
    strict_load(model, sd, "Infinity", implied)
    own = set(vae.state_dict())
    vae_sd = normalise_vae_keys(vae_sd, own)
    if "decoder.conv_in.conv.weight" in vae_sd and vae_sd["decoder.conv_in.conv.weight"].shape[1] != cfg.vae_bits:
        raise UserError(f"VAE and transformer do not belong together: the VAE's codes have "
                        f"{vae_sd['decoder.conv_in.conv.weight'].shape[1]} bits, the transformer's {cfg.vae_bits}")
    strict_load(vae, vae_sd, "Infinity VAE", dict(bits=cfg.vae_bits, downsample=vae.downsample))
    model.rope_2Lh = torch.zeros(2, 1, cfg.head_dim // 2)  # not in the file: rebuilt from the schedule
    model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    vae.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    model.set_schedule(model.hw)
    log.info("loaded Infinity depth %d width %d (%s)", cfg.depth, cfg.embed_dim, ckpt)
    return vae, model
