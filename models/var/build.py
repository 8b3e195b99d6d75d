"""Build VQVAE + VAR (random init or from official checkpoints) without extra copies in RAM.

Models are built on the meta device; a random-init build is materialised in place
(`to_empty` + init), a checkpoint is loaded with `assign=True` from a memory-mapped file, so a
2B-parameter model needs one copy of its weights in memory, not three.
"""
from __future__ import annotations

import hashlib
import logging
import re

import torch

from litevar.models.core.checkpoint import load_checkpoint, strict_load
from litevar.models.core.errors import UserError
from litevar.models.var.schedules import SCHEDULES, num_tokens
from litevar.models.var.var import VAR, VARConfig
from litevar.models.var.vqvae import VQVAE

log = logging.getLogger(__name__)

OFFICIAL_VAE = dict(V=4096, Cvae=32, ch=160, ch_mult=(1, 1, 2, 2, 4), share_quant_resi=4, num_res_blocks=2)


def build_vae_var(device, patch_nums=SCHEDULES[256], V=4096, Cvae=32, ch=160, share_quant_resi=4,
                  num_classes=1000, depth=16, shared_aln=False, attn_l2_norm=True,
                  flash_if_available=True, fused_if_available=True, init_adaln=0.5,
                  init_adaln_gamma=1e-5, init_head=0.02, init_std=-1.0, *,
                  ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, seed: int = 0, dtype=None, backbone: str = "var"):
    """The official entry point: returns (vae, var), randomly initialised on `device`.

    `device="meta"` returns unmaterialised modules (for `load_state_dict(..., assign=True)`).
    flash_if_available / fused_if_available are accepted for compatibility; attention kernels
    are chosen by the attention backend instead. `backbone`: the VQVAE's encoder/decoder,
    "var" (official) or "compact" (the small shipped model's, litevar.models.var.vqvae.CompactEncoder)."""
    with torch.device("meta"):
        vae = VQVAE(vocab_size=V, z_channels=Cvae, ch=ch, ch_mult=tuple(ch_mult), share_quant_resi=share_quant_resi,
                    v_patch_nums=tuple(patch_nums), num_res_blocks=num_res_blocks, backbone=backbone)
        cfg = VARConfig(depth=depth, patch_nums=tuple(patch_nums), num_classes=num_classes, V=V, Cvae=Cvae,
                        shared_aln=shared_aln, attn_l2_norm=attn_l2_norm)
        var = VAR(vae, cfg)
    if str(device) == "meta":
        return vae, var
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae.to_empty(device=device)
        _reset_all(vae)
        vae.quantize.embedding.weight.data.uniform_(-1 / V, 1 / V)
        vae.quantize.ema_vocab_hit_SV.zero_()
        var.to_empty(device=device)
        var.init_buffers()
        var.init_weights(init_adaln, init_adaln_gamma, init_head, init_std)
    if dtype is not None:
        vae.to(dtype), var.to(dtype)
    vae.eval().requires_grad_(False)
    return vae, var


def _reset_all(module: torch.nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


# -- checkpoints ------------------------------------------------------------------------------

def infer_var_config(sd: dict[str, torch.Tensor]) -> dict:
    """The architecture a VAR state dict implies (depth, shared_aln, attn_l2_norm, ...)."""
    if "word_embed.weight" not in sd or "head.weight" not in sd:
        raise UserError("not a VAR checkpoint: keys word_embed.weight / head.weight are missing "
                        "(is this the VQVAE file? pass it with --vae)")
    C, Cvae = sd["word_embed.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    return dict(depth=depth, C=C, Cvae=Cvae, V=sd["head.weight"].shape[0],
                num_classes=sd["class_emb.weight"].shape[0] - 1,
                shared_aln="shared_ada_lin.1.weight" in sd,
                attn_l2_norm="blocks.0.attn.scale_mul_1H11" in sd,
                num_scales=sd["lvl_embed.weight"].shape[0], L=sd["pos_1LC"].shape[1])


def infer_vae_config(sd: dict[str, torch.Tensor]) -> dict:
    if "quantize.embedding.weight" in sd and "encoder.0.weight" in sd:
        return _infer_compact_vae_config(sd)
    if "quantize.embedding.weight" not in sd or "encoder.conv_in.weight" not in sd:
        raise UserError("not a VQVAE checkpoint: keys quantize.embedding.weight / encoder.conv_in.weight are missing "
                        "(is this the VAR file? pass it with --ckpt)")
    V, Cvae = sd["quantize.embedding.weight"].shape
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    return dict(V=V, Cvae=Cvae, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks, share_quant_resi=_share_quant_resi(sd),
                backbone="var")


def _share_quant_resi(sd) -> int:
    shared = {m.group(1) for k in sd if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k))}
    return len(shared) if shared else (1 if "quantize.quant_resi.qresi.weight" in sd else 0)


def _infer_compact_vae_config(sd) -> dict:
    """The compact backbone (litevar.models.var.vqvae.CompactEncoder): conv_in, then one 4x4 stride-2 conv
    per extra level (its output width gives ch_mult)."""
    V, Cvae = sd["quantize.embedding.weight"].shape
    ch = sd["encoder.0.weight"].shape[0]
    convs = sorted((int(m.group(1)), sd[k]) for k in sd if (m := re.fullmatch(r"encoder\.(\d+)\.weight", k)))
    ch_mult = (1, *(w.shape[0] // ch for _, w in convs[1:] if w.shape[-1] == 4))
    return dict(V=V, Cvae=Cvae, ch=ch, ch_mult=ch_mult, num_res_blocks=1, share_quant_resi=_share_quant_resi(sd),
                backbone="compact")


def infer_patch_nums(num_scales: int, L: int, lvl_1L: torch.Tensor | None = None) -> tuple[int, ...]:
    """The schedule from the checkpoint's per-token scale index (lvl_1L), else a known schedule."""
    if lvl_1L is not None and lvl_1L.numel() == L:
        counts = torch.bincount(lvl_1L.flatten().long(), minlength=num_scales).tolist()
        pns = tuple(round(c ** 0.5) for c in counts)
        if len(pns) == num_scales and all(p * p == c for p, c in zip(pns, counts)):
            return pns
    for pns in SCHEDULES.values():
        if len(pns) == num_scales and num_tokens(pns) == L:
            return pns
    raise UserError(f"the checkpoint has {num_scales} scales and L = {L} tokens, which matches no known schedule; "
                    f"pass its patch_nums explicitly")


def load_vae_var(var_ckpt, vae_ckpt, device="cpu", patch_nums=None, depth: int | None = None, dtype=None):
    """Build (vae, var) from checkpoints, inferring the architecture from their keys and shapes."""
    var_sd, vae_sd = load_checkpoint(var_ckpt, "var_wo_ddp"), load_checkpoint(vae_ckpt, "vae_local")
    vc, ac = infer_var_config(var_sd), infer_vae_config(vae_sd)
    implied = {k: vc[k] for k in ("depth", "shared_aln", "attn_l2_norm", "num_classes")}
    if depth is not None and depth != vc["depth"]:
        raise UserError(f"--depth {depth} does not match {var_ckpt}: its shapes imply depth={vc['depth']}, "
                        f"shared_aln={vc['shared_aln']}, attn_l2_norm={vc['attn_l2_norm']}")
    if (vc["V"], vc["Cvae"]) != (ac["V"], ac["Cvae"]):
        raise UserError(f"VAR and VQVAE do not belong together: VAR expects V={vc['V']}, Cvae={vc['Cvae']}, "
                        f"the VQVAE has V={ac['V']}, Cvae={ac['Cvae']}")
    if vc["C"] != 64 * vc["depth"]:
        raise UserError(f"unsupported VAR width {vc['C']} for depth {vc['depth']} (expected C = 64 * depth)")
    pns = tuple(patch_nums) if patch_nums else infer_patch_nums(vc["num_scales"], vc["L"], var_sd.get("lvl_1L"))
    if len(pns) != vc["num_scales"] or num_tokens(pns) != vc["L"]:
        raise UserError(f"patch_nums {pns} has {len(pns)} scales / L={num_tokens(pns)}, the checkpoint "
                        f"{vc['num_scales']} scales / L={vc['L']}")
    vae, var = build_vae_var("meta", patch_nums=pns, V=vc["V"], Cvae=vc["Cvae"], ch=ac["ch"],
                             share_quant_resi=ac["share_quant_resi"], num_classes=vc["num_classes"],
                             depth=vc["depth"], shared_aln=vc["shared_aln"], attn_l2_norm=vc["attn_l2_norm"],
                             ch_mult=ac["ch_mult"], num_res_blocks=ac["num_res_blocks"], backbone=ac["backbone"])
    strict_load(vae, vae_sd, "VQVAE", ac)
    strict_load(var, var_sd, "VAR", implied, ignored=frozenset({"attn_bias_for_masking"}))
    dtype = dtype or torch.float32  # half-stored weights (e.g. the shipped VAR) run in fp32 + autocast
    vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    var.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("loaded VAR depth %d (%s) and VQVAE ch %d", vc["depth"], var_ckpt, ac["ch"])
    return vae, var


def official_state_dict(var: VAR) -> dict[str, torch.Tensor]:
    """The VAR state dict in the official layout, including the dense mask buffer it carries."""
    sd = dict(var.state_dict())
    sd["attn_bias_for_masking"] = var.official_attn_bias()
    return sd


# -- fingerprints (what a plan is bound to) ------------------------------------------------------

def arch_of(var) -> dict:
    """The architecture a plan is bound to, read from a live VAR."""
    cfg = var.cfg
    return {"depth": int(cfg.depth), "embed_dim": int(var.C), "num_heads": int(cfg.num_heads),
            "mlp_ratio": float(cfg.mlp_ratio), "V": int(var.V), "Cvae": int(var.Cvae),
            "num_classes": int(var.num_classes)}


def weights_sha256(var) -> str:
    """sha256 over the state dict (sorted names, dtype, shape, raw bytes): same weights, same hash."""
    h = hashlib.sha256()
    for name, t in sorted(var.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
