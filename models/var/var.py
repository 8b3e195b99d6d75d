"""VAR transformer, checkpoint-compatible with the official var_d16..d36 (strict loading).

Attention goes through litevar.models.core.attention (one call per scale, KV cache at inference), linear
layers keep their official fully-qualified names (`blocks.3.ffn.fc2`) so plans can address them.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from litevar.models.core.attention import AttnCall, DenseAttention, KVCache, ScaleLayout, attend_scales
from litevar.models.core.sampling import gumbel_softmax_with_rng, sample_with_top_k_top_p_
from litevar.models.var.vqvae import VQVAE


@dataclass(frozen=True)
class VARConfig:
    depth: int = 16
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    num_classes: int = 1000
    V: int = 4096
    Cvae: int = 32
    shared_aln: bool = False
    attn_l2_norm: bool = True
    head_dim: int = 64
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        validate_patch_nums(self.patch_nums)

    @property
    def C(self) -> int:
        return self.depth * self.head_dim

    @property
    def num_heads(self) -> int:
        return self.depth

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


def validate_patch_nums(patch_nums) -> None:
    pns = tuple(patch_nums)
    if len(pns) < 2 or any(not isinstance(p, int) or p < 1 for p in pns):
        raise ValueError(f"patch_nums must be >= 2 positive integers, got {pns}")
    if any(b <= a for a, b in zip(pns, pns[1:])):
        raise ValueError(f"patch_nums must be strictly increasing, got {pns}")


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, hidden), nn.Linear(hidden, C)

    def forward(self, x_BLC):
        return self.fc2(F.gelu(self.fc1(x_BLC), approximate="tanh"))


def linear_with_bias(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """layer(x) + bias for a bias-free official projection: the bias add fused into the GEMM for an
    nn.Linear, added after a swapped-in (e.g. quantized) module in the dtype that module returns
    (under autocast the runtime dtype, as nn.Linear gives: a float32 bias would promote the
    projection, and the KV cache and attention after it, to float32)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight, bias)
    y = layer(x)
    return y + bias.to(y.dtype)


def init_linears_embeddings(module: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """Truncated-normal weights of std `std` for every Linear and Embedding of `module`; zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=std, generator=generator)


class SelfAttention(nn.Module):
    def __init__(self, layer: int, C: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, num_heads, C // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.softmax_scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.softmax_scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.proj = nn.Linear(C, C)
        self.backend = DenseAttention()
        self.kv_cache: KVCache | None = None
        # () -> the layer's KV cache at inference (a plan's; None: KVCache), which also gives teacher-forced
        # calls the keys and values it would hold (attend_scales)
        self.kv_factory = None

    def qkv(self, x_BlC: torch.Tensor):
        B, l, C = x_BlC.shape
        qkv = linear_with_bias(self.mat_qkv, x_BlC, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        qkv = qkv.view(B, l, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B H l c
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q, k = F.normalize(q, dim=-1).mul(scale_mul), F.normalize(k, dim=-1)
        return q, k, v

    def forward(self, x_BlC: torch.Tensor, layout: ScaleLayout, scales: range, cfg_batch: int = 0):
        """x holds the tokens of `scales` (all scales when teacher-forced, one at inference)."""
        B, l, C = x_BlC.shape
        q, k, v = self.qkv(x_BlC)
        return self.proj(self.attend(q, k, v, layout, scales, cfg_batch).transpose(1, 2).reshape(B, l, C))

    def attend(self, q, k, v, layout: ScaleLayout, scales: range, cfg_batch: int = 0) -> torch.Tensor:
        """o (B, H, l, c) of the queries of `scales`: through the plan's KV cache when one is set, else
        the cache (inference) or every key so far (teacher-forced), by the attention backend."""
        ctx = AttnCall(self.layer, scales[0], layout, self.softmax_scale, cfg_batch)
        if hasattr(self.kv_cache, "attend"):  # a cache that stores K/V its own way runs the call
            o_BHlc = self.kv_cache.attend(self.backend, q, k, v, ctx)
        elif self.kv_cache is None and self.kv_factory is not None:  # teacher-forced: keys and values as
            o_BHlc = self.kv_factory().attend_scales(self.backend, q, k, v, ctx, scales)  # that cache gives them
        else:
            if self.kv_cache is not None:
                k, v = self.kv_cache.append(k, v)
            o_BHlc = attend_scales(self.backend, q, k, v, ctx, scales)
        return o_BHlc


class AdaLNSelfAttn(nn.Module):
    def __init__(self, layer: int, cfg: VARConfig):
        super().__init__()
        C = cfg.C
        self.C, self.shared_aln = C, cfg.shared_aln
        self.attn = SelfAttention(layer, C, cfg.num_heads, cfg.attn_l2_norm)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x_BlC, cond_BD_or_gss, layout: ScaleLayout, scales: range, cfg_batch: int = 0):
        if self.shared_aln:
            g1, g2, s1, s2, sh1, sh2 = (self.ada_gss + cond_BD_or_gss).unbind(2)  # each B 1 C
        else:
            g1, g2, s1, s2, sh1, sh2 = self.ada_lin(cond_BD_or_gss).view(-1, 1, 6, self.C).unbind(2)
        h = self.ln_wo_grad(x_BlC) * (s1 + 1) + sh1
        x_BlC = x_BlC + self.attn(h, layout, scales, cfg_batch) * g1
        h = self.ln_wo_grad(x_BlC) * (s2 + 1) + sh2
        return x_BlC + self.ffn(h) * g2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, norm_eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BLC, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC) * (scale + 1) + shift


class VAR(nn.Module):
    family_name = "var"  # litevar.models.core.family: what the profiler, planner and runtime ask it through

    def __init__(self, vae: VQVAE | None, cfg: VARConfig):
        super().__init__()
        C, self.cfg = cfg.C, cfg
        self.C, self.num_classes, self.patch_nums = C, cfg.num_classes, cfg.patch_nums
        self.layout = ScaleLayout(cfg.patch_nums)
        self.L, self.first_l, self.Cvae, self.V = cfg.L, cfg.patch_nums[0] ** 2, cfg.Cvae, cfg.V
        self.num_stages_minus_1 = len(cfg.patch_nums) - 1
        self.vae_proxy = (vae,)  # a tuple: not a submodule, not in the state dict
        self.word_embed = nn.Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        # d36's one AdaLN for every block (the official SharedAdaLin: a Linear whose output is viewed as
        # (B, 1, 6, C), reshaped in _run_blocks so that a plan can swap the Linear for a quantized one)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList(AdaLNSelfAttn(i, cfg) for i in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.V)
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(cfg.patch_nums)])
        self.register_buffer("lvl_1L", lvl.view(1, self.L))
        # The official model also stores a dense L x L mask `attn_bias_for_masking`; we never
        # build it (attention is block-causal by construction): see _load_from_state_dict.

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the buffers (after `to_empty` from the meta device)."""
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)])
        self.lvl_1L.copy_(lvl.view(1, self.L))
        for block in self.blocks:
            block.attn.zero_k_bias.zero_()

    # -- checkpoint compatibility -------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "attn_bias_for_masking"
        if key in state_dict:
            bias = state_dict.pop(key)
            if tuple(bias.shape) != (1, 1, self.L, self.L):
                raise ValueError(f"{key} has shape {tuple(bias.shape)}, expected (1, 1, {self.L}, {self.L}): "
                                 f"the checkpoint was trained with another patch_nums")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def official_attn_bias(self) -> torch.Tensor:
        """The dense block-causal mask the official checkpoints carry (for export only)."""
        d = self.lvl_1L.view(1, self.L, 1)
        return torch.where(d >= d.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, self.L, self.L)

    # -- forward -------------------------------------------------------------------------
    @property
    def wide_dtype(self) -> torch.dtype:
        """The dtype of the parts that run outside autocast (the head, the input embedding): float32, or
        float64 in a float64 model (numerics references)."""
        return torch.promote_types(self.pos_1LC.dtype, torch.float32)

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h_BLC.device.type, enabled=False):
            wide = self.wide_dtype
            return self.head(self.head_nm(h_BLC.to(wide), cond_BD.to(wide)).to(wide)).to(wide)

    def _run_blocks(self, x_BLC, cond_BD, scales: range, cfg_batch: int = 0):
        cond_BD_or_gss = self.shared_ada_lin(cond_BD)
        if self.cfg.shared_aln:
            cond_BD_or_gss = cond_BD_or_gss.view(-1, 1, 6, self.C)
        for block in self.blocks:
            x_BLC = block(x_BLC, cond_BD_or_gss, self.layout, scales, cfg_batch)
        return x_BLC

    def forward(self, label_B: torch.LongTensor, x_BLCv_wo_first_l: torch.Tensor, cfg_batch: int = 0,
                n_scales: int | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) for all scales (class dropout in training mode).

        `cfg_batch`: B of the conditional half when the batch is CFG-doubled (for backends that
        share attention across the CFG halves). `n_scales`: run only the first n scales (x holds
        their tokens, logits are (B, end of scale n, V)); attention is block-causal, so these
        logits equal the first ones of a full call (cheap training of the coarse scales)."""
        n = len(self.patch_nums) if n_scales is None else n_scales
        if not 1 <= n <= len(self.patch_nums):
            raise ValueError(f"n_scales={n_scales}: use 1..{len(self.patch_nums)} (or None for all scales)")
        L = self.layout.end[n - 1]
        if x_BLCv_wo_first_l.shape[1] != L - self.first_l:
            raise ValueError(f"x has {x_BLCv_wo_first_l.shape[1]} tokens; the first {n} scales need "
                             f"{L - self.first_l} (their tokens after the first scale)")
        B = x_BLCv_wo_first_l.shape[0]
        if self.training and self.cfg.cond_drop_rate > 0:
            drop = torch.rand(B, device=label_B.device) < self.cfg.cond_drop_rate
            label_B = torch.where(drop, self.num_classes, label_B)
        with torch.autocast(label_B.device.type, enabled=False):
            cond_BD = self.class_emb(label_B)
            sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
            x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.to(self.wide_dtype))), dim=1)
            x_BLC = x_BLC + self.lvl_embed(self.lvl_1L[:, :L].expand(B, -1)) + self.pos_1LC[:, :L]
        x_BLC = self._run_blocks(x_BLC, cond_BD, range(n), cfg_batch)
        return self.get_logits(x_BLC, cond_BD)

    # -- inference -----------------------------------------------------------------------
    def _set_kv_caching(self, on: bool) -> None:
        for block in self.blocks:
            factory = block.attn.kv_factory or (lambda: KVCache(self.L))
            block.attn.kv_cache = factory() if on else None

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B=None, g_seed: int | None = None, cfg: float = 1.5,
                                 top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                                 return_tokens: bool = False, callback=None, prefix_tokens=None, decode: bool = True):
        """Generate B images in [0, 1] (B, 3, H, W), scale by scale with CFG (batch doubled).

        `return_tokens` also returns the per-scale token ids; `callback(si, logits_BlV)` is
        called once per scale (progress bars, profiling); `prefix_tokens`, token ids (B, pn * pn)
        of the first k scales, are used there instead of sampled ones (the rest is sampled as
        usual, with the same random draws as without them); `decode=False` returns the VQVAE
        latent f_hat (B, Cvae, h, w) instead of the image (the transformer phase alone)."""
        vae = self.vae_proxy[0]
        if vae is None:
            raise RuntimeError("this VAR was built without a VQVAE; pass one to VAR(vae, cfg)")
        dev = self.lvl_1L.device
        rng = None
        if g_seed is not None:
            rng = torch.Generator(device=dev)
            rng.manual_seed(g_seed)
        if label_B is None:
            uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, device=dev)
            label_B = torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
        elif isinstance(label_B, int):
            label_B = torch.full((B,), self.num_classes if label_B < 0 else label_B, device=dev)
        label_B = label_B.to(dev)
        prefix_tokens = self._check_prefix(prefix_tokens or [], B)
        cond_BD = sos = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        x_BlC = sos.unsqueeze(1).expand(2 * B, self.first_l, -1) + self.pos_start.expand(2 * B, self.first_l, -1) \
            + lvl_pos[:, :self.first_l]
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        quant, tokens = vae.quantize, []
        self._set_kv_caching(True)
        try:
            for si, pn in enumerate(self.patch_nums):
                ratio = si / self.num_stages_minus_1
                h_BlC = self._run_blocks(x_BlC, cond_BD, range(si, si + 1), cfg_batch=B)
                logits_BlV = self.get_logits(h_BlC, cond_BD)
                t = cfg * ratio
                logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
                if callback is not None:
                    callback(si, logits_BlV)
                idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
                if si < len(prefix_tokens):
                    idx_Bl = prefix_tokens[si].to(dev)
                tokens.append(idx_Bl)
                if not more_smooth or si < len(prefix_tokens):
                    h_BlC = quant.embedding(idx_Bl)
                else:
                    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                    soft = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=tau, hard=False, dim=-1, rng=rng)
                    h_BlC = soft @ quant.embedding.weight.unsqueeze(0)
                h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn)
                f_hat, nxt = quant.get_next_autoregressive_input(si, len(self.patch_nums), f_hat, h_BChw)
                if si != self.num_stages_minus_1:
                    e = self.layout.end[si]
                    nxt = self.word_embed(nxt.view(B, self.Cvae, -1).transpose(1, 2))
                    x_BlC = (nxt + lvl_pos[:, e:e + self.patch_nums[si + 1] ** 2]).repeat(2, 1, 1)
        finally:
            self._set_kv_caching(False)
        del logits_BlV, x_BlC, lvl_pos  # the decode runs without them (~134 MB at 1024 px, 0.6 GB at 2048)
        img = vae.fhat_to_img(f_hat).add_(1).mul_(0.5) if decode else f_hat
        return (img, tokens) if return_tokens else img

    def _check_prefix(self, prefix_tokens: list, B: int) -> list:
        if len(prefix_tokens) > len(self.patch_nums):
            raise ValueError(f"prefix_tokens has {len(prefix_tokens)} scales; this VAR has {len(self.patch_nums)}")
        for si, t in enumerate(prefix_tokens):
            if tuple(t.shape) != (B, self.patch_nums[si] ** 2):
                raise ValueError(f"prefix_tokens[{si}] has shape {tuple(t.shape)}; scale {si} needs "
                                 f"(B, pn * pn) = ({B}, {self.patch_nums[si] ** 2})")
        return prefix_tokens

    # -- initialisation --------------------------------------------------------------------
    @property
    def default_init_std(self) -> float:
        """Standard deviation of init_weights' truncated normals when no init_std is given."""
        return (1 / self.C / 3) ** 0.5

    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = -1.0, generator: torch.Generator | None = None) -> None:
        """Random initialisation in the spirit of the official one (truncated normals)."""
        std = init_std if init_std > 0 else self.default_init_std
        init_linears_embeddings(self, std, generator)
        nn.init.trunc_normal_(self.pos_start, std=std, generator=generator)
        nn.init.trunc_normal_(self.pos_1LC, std=std, generator=generator)
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        for block in self.blocks:
            block.attn.q_bias.zero_()
            block.attn.v_bias.zero_()
            if block.attn.attn_l2_norm:
                block.attn.scale_mul_1H11.fill_(math.log(4.0))
            block.ffn.fc2.weight.div_(math.sqrt(2 * len(self.blocks)))
            block.attn.proj.weight.div_(math.sqrt(2 * len(self.blocks)))
            if hasattr(block, "ada_gss"):  # shared AdaLN: the per-block offset, as the official constructor draws it
                nn.init.normal_(block.ada_gss, std=self.C ** -0.5, generator=generator)
            if hasattr(block, "ada_lin"):
                w = block.ada_lin[-1].weight
                w[2 * self.C:].mul_(init_adaln)
                w[:2 * self.C].mul_(init_adaln_gamma)
        if self.cfg.shared_aln:
            w = self.shared_ada_lin[-1].weight
            w[2 * self.C:].mul_(init_adaln)
            w[:2 * self.C].mul_(init_adaln_gamma)


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of a model's module tree sharing every parameter and buffer tensor (and the VAE its
    `vae_proxy` holds, when it has one) with `model`: swapping a layer of the copy leaves `model` as
    it is and costs only the new layer. Moving or converting the copy (`.to`) would move the shared
    tensors too: deep-copy for that."""
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    proxy = getattr(model, "vae_proxy", None)
    if proxy is not None:
        memo[id(proxy)] = proxy
    return copy.deepcopy(model, memo)
