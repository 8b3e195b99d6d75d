"""An independent, functional VAR written straight from shared/docs/var-reference.md.

It reads only a state dict in the official key layout and uses the official dense L x L
block-causal mask, no KV cache and no module of ours, so the parity tests compare two
implementations, not one with itself."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _ln(x, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def _attn(sd, p, x, H, l2, bias):
    B, L, C = x.shape
    qkv_bias = torch.cat([sd[p + "q_bias"], sd[p + "zero_k_bias"], sd[p + "v_bias"]])
    q, k, v = (x @ sd[p + "mat_qkv.weight"].T + qkv_bias).view(B, L, 3, H, C // H).permute(2, 0, 3, 1, 4)
    if l2:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        q = q * sd[p + "scale_mul_1H11"].clamp(max=math.log(100)).exp()
        scale = 1.0
    else:
        scale = 0.25 / math.sqrt(C // H)
    w = (q @ k.transpose(-1, -2)) * scale + bias
    o = (w.softmax(-1) @ v).transpose(1, 2).reshape(B, L, C)
    return o @ sd[p + "proj.weight"].T + sd[p + "proj.bias"]


def blocks_forward(sd, x, cond, depth, H, l2, bias, shared_aln):
    C = x.shape[-1]
    silu_c = F.silu(cond)
    for i in range(depth):
        p = f"blocks.{i}."
        if shared_aln:
            ada = (silu_c @ sd["shared_ada_lin.1.weight"].T + sd["shared_ada_lin.1.bias"]).view(-1, 1, 6, C)
            ada = ada + sd[p + "ada_gss"]
        else:
            ada = (silu_c @ sd[p + "ada_lin.1.weight"].T + sd[p + "ada_lin.1.bias"]).view(-1, 1, 6, C)
        g1, g2, s1, s2, sh1, sh2 = ada.unbind(2)
        x = x + _attn(sd, p + "attn.", _ln(x) * (1 + s1) + sh1, H, l2, bias) * g1
        h = _ln(x) * (1 + s2) + sh2
        h = F.gelu(h @ sd[p + "ffn.fc1.weight"].T + sd[p + "ffn.fc1.bias"], approximate="tanh")
        x = x + (h @ sd[p + "ffn.fc2.weight"].T + sd[p + "ffn.fc2.bias"]) * g2
    return x


def head(sd, x, cond):
    C = x.shape[-1]
    ada = F.silu(cond) @ sd["head_nm.ada_lin.1.weight"].T + sd["head_nm.ada_lin.1.bias"]
    scale, shift = ada.view(-1, 1, 2, C).unbind(2)
    return (_ln(x) * (1 + scale) + shift) @ sd["head.weight"].T + sd["head.bias"]


def var_logits(sd, label_B, x_BLCv, patch_nums, depth, l2=True, shared_aln=False):
    """Teacher-forced logits (B, L, V) from the formulas."""
    C, H = sd["word_embed.weight"].shape[0], depth
    B, first_l = label_B.shape[0], patch_nums[0] ** 2
    cond = sd["class_emb.weight"][label_B]
    sos = cond[:, None].expand(B, first_l, C) + sd["pos_start"]
    x = torch.cat([sos, x_BLCv @ sd["word_embed.weight"].T + sd["word_embed.bias"]], 1)
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
    x = x + sd["lvl_embed.weight"][lvl] + sd["pos_1LC"]
    bias = sd["attn_bias_for_masking"]
    return head(sd, blocks_forward(sd, x, cond, depth, H, l2, bias, shared_aln), cond)


# -- VQVAE quantizer formulas -----------------------------------------------------------------

def phi_index(si, SN, K=4):
    ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K)
    return int(np.argmin(np.abs(ticks - si / (SN - 1))))


def phi(sd, si, SN, h):
    i = phi_index(si, SN)
    w, b = sd[f"quantize.quant_resi.qresi_ls.{i}.weight"], sd[f"quantize.quant_resi.qresi_ls.{i}.bias"]
    return 0.5 * h + 0.5 * F.conv2d(h, w, b, padding=1)


def quantize_f(sd, f, patch_nums):
    """Per-scale token ids of the residual quantizer applied to the latent f (B, Cvae, H, W)."""
    E = sd["quantize.embedding.weight"]
    B, C, H, W = f.shape
    rest, out, SN = f.clone(), [], len(patch_nums)
    for si, pn in enumerate(patch_nums):
        z = F.interpolate(rest, size=(pn, pn), mode="area") if si < SN - 1 else rest
        z = z.permute(0, 2, 3, 1).reshape(-1, C)
        idx = torch.cdist(z.double(), E.double()).argmin(1)
        h = E[idx].view(B, pn, pn, C).permute(0, 3, 1, 2)
        if si < SN - 1:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        rest = rest - phi(sd, si, SN, h)
        out.append(idx.view(B, -1))
    return out


def var_input(sd, idx_list, patch_nums):
    """Teacher-forcing input (B, L - first_l, Cvae) from per-scale ids."""
    E = sd["quantize.embedding.weight"]
    B, C, Hh, SN = idx_list[0].shape[0], E.shape[1], patch_nums[-1], len(patch_nums)
    f_hat, nxt = torch.zeros(B, C, Hh, Hh), []
    for si in range(SN - 1):
        pn = patch_nums[si]
        h = E[idx_list[si]].view(B, pn, pn, C).permute(0, 3, 1, 2)
        f_hat = f_hat + phi(sd, si, SN, F.interpolate(h, size=(Hh, Hh), mode="bicubic"))
        p2 = patch_nums[si + 1]
        nxt.append(F.interpolate(f_hat, size=(p2, p2), mode="area").flatten(2).transpose(1, 2))
    return torch.cat(nxt, 1)
