"""Infinity transformer (FoundationVision's bitwise text-to-image VAR), written from its equations.

One image is a sequence of scales (rows x columns of tokens, coarse to fine). Each token carries the
d bits of a BSQ code (d = 32 at 2B; at 8B, 2x2 codes of 14 bits patchified into 56); the head predicts
one 2-way distribution per bit. Every block is self-attention (cosine attention with a 2-D RoPE,
block-causal across scales, through litevar.models.core.attention, so plans' KV caches and attention
backends apply), cross-attention to the text, and an FFN, each modulated by one shared AdaLN plus a
per-block offset. State-dict names follow the official model with its blocks flat (`blocks.3.sa.mat_qkv`);
`official_names` maps them to the chunked names of the released checkpoints. Every point where the
official code is ambiguous, and what we chose, is in docs/infinity.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from litevar.models.core.attention import KVCache, ScaleLayout
from litevar.models.core.sampling import sample_with_top_k_top_p_
from litevar.models.infinity.schedules import SCHEDULES, schedule_hw, square_hw
from litevar.models.var.var import FFN, AdaLNBeforeHead, SelfAttention, init_linears_embeddings, linear_with_bias


@dataclass(frozen=True)
class InfinityConfig:
    """An Infinity architecture (the official 2B and 8B in CONFIGS)."""

    depth: int = 32
    embed_dim: int = 2048
    num_heads: int = 16
    mlp_ratio: float = 4.0
    text_channels: int = 2048  # Flan-T5-XL's width
    text_maxlen: int = 512  # rows of the learned unconditional text (cfg_uncond)
    vae_bits: int = 32  # d: bits of one BSQ code
    patchify: bool = False  # 2x2 codes per token (8B): a token carries 4d bits
    norm_eps: float = 1e-6
    num_levels: int = 15  # rows of the level embedding
    rope_base: float = 10000.0
    rope_side: int = 128  # positions 0..127 per axis (2048 px)
    pool_head: int = 0  # the text pool's head width in the text (0: the official 64 above width 4096, else 128)

    def __post_init__(self):
        for k in ("depth", "embed_dim", "num_heads", "text_channels", "text_maxlen", "vae_bits"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Infinity config {k} = {v!r} must be a positive integer")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise ValueError(f"Infinity config: embed_dim {self.embed_dim} / num_heads {self.num_heads} must be a "
                             "whole head width divisible by 4 (2-D RoPE rotates pairs, half per axis)")
        if self.text_channels % self.pool_head_dim:
            raise ValueError(f"Infinity config: text_channels {self.text_channels} must be a multiple of "
                             f"{self.pool_head_dim} (the text pool's head width)")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden(self) -> int:
        """FFN width: the official round(C * mlp_ratio / 256) * 256."""
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def token_bits(self) -> int:
        return self.vae_bits * (4 if self.patchify else 1)

    @property
    def V(self) -> int:
        """Head outputs per token: two logits per bit."""
        return 2 * self.token_bits

    @property
    def pool_head_dim(self) -> int:
        """The text pool's heads are text_channels / this wide in the text, embed_dim / heads in the model."""
        return self.pool_head or (64 if self.embed_dim > 4096 else 128)

    @property
    def pool_heads(self) -> int:
        return self.text_channels // self.pool_head_dim


CONFIGS = {
    "2b": InfinityConfig(depth=32, embed_dim=2048, num_heads=16, vae_bits=32),
    "8b": InfinityConfig(depth=40, embed_dim=3584, num_heads=28, vae_bits=14, patchify=True),
}


# -- text ------------------------------------------------------------------------------------------

@dataclass
class TextCond:
    """Prompt embeddings (a text encoder's last hidden states), padded: emb (B, T, Ct5) and each
    prompt's length. A sliceable batch (the family's conditions)."""

    emb_BTC: torch.Tensor
    lens: tuple[int, ...]

    def __post_init__(self):
        self.lens = tuple(int(n) for n in self.lens)
        if self.emb_BTC.dim() != 3 or len(self.lens) != self.emb_BTC.shape[0]:
            raise ValueError(f"TextCond: emb must be (B, T, C) with one length per row; got {tuple(self.emb_BTC.shape)}"
                             f" and {len(self.lens)} lengths")
        if any(not 1 <= n <= self.emb_BTC.shape[1] for n in self.lens):
            raise ValueError(f"TextCond: lengths {self.lens} must lie in 1..{self.emb_BTC.shape[1]}")

    def __len__(self) -> int:
        return len(self.lens)

    def __getitem__(self, idx) -> TextCond:
        lens = self.lens[idx] if isinstance(idx, slice) else (self.lens[idx],)
        emb = self.emb_BTC[idx] if isinstance(idx, slice) else self.emb_BTC[idx:idx + 1]
        return TextCond(emb[:, :max(lens)], lens)

    def mask_BT(self) -> torch.Tensor:
        dev = self.emb_BTC.device
        return torch.arange(self.emb_BTC.shape[1], device=dev)[None] < torch.tensor(self.lens, device=dev)[:, None]


def random_text(n: int, length: int, channels: int, seed: int = 0) -> TextCond:
    """n stand-in prompt embeddings of `length` tokens: unit-RMS Gaussians, the scale of a T5 encoder's
    normalised output (what a random-init model is timed and measured with; no text encoder runs)."""
    g = torch.Generator().manual_seed(seed)
    return TextCond(torch.randn(n, length, channels, generator=g), (length,) * n)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, in float32 (the official FastRMSNorm)."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(C))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class CrossAttention(nn.Module):
    """Queries of the image tokens (or one learned query per head: the text pool) attend to the text.
    K gets no bias, V a learned one; scale 1/sqrt(head width). During a generation each block's text
    K/V are computed once (`cache_context`) instead of at every scale."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int, pool: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.pool = num_heads, embed_dim // num_heads, pool
        if pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(embed_dim, embed_dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.context: tuple[torch.Tensor, torch.Tensor] | None = None  # cached (k, v) during a generation

    def context_kv(self, ctx_BTD: torch.Tensor):
        B, T, _ = ctx_BTD.shape
        kv = linear_with_bias(self.mat_kv, ctx_BTD, torch.cat((self.zero_k_bias, self.v_bias)))
        k, v = kv.view(B, T, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each B H T c
        return k, v

    def cache_context(self, ctx_BTD: torch.Tensor | None) -> None:
        self.context = None if ctx_BTD is None else self.context_kv(ctx_BTD)

    def forward(self, x_BlC: torch.Tensor | None, ctx_BTD: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        k, v = self.context if self.context is not None else self.context_kv(ctx_BTD)
        B = k.shape[0]
        if self.pool:
            q = self.mat_q.to(k.dtype).unsqueeze(2).expand(B, -1, 1, -1)  # B H 1 c
        else:
            q = self.mat_q(x_BlC).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = (t.to(v.dtype) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_BT[:, None, None, :])
        return self.proj(o.transpose(1, 2).flatten(2))


class TextPool(nn.Module):
    """The text's pooled embedding (the start token and the AdaLN condition): one learned query."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.ca = CrossAttention(cfg.embed_dim, cfg.text_channels, cfg.pool_heads, pool=True)

    def forward(self, text_BTC, mask_BT):
        return self.ca(None, text_BTC, mask_BT).squeeze(1)


# -- 2-D RoPE --------------------------------------------------------------------------------------

def rope_positions(hw, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) positions of every token of the schedule: round(i * H / h), half to even, against
    the final grid (H, W), computed in float32 as the official table is."""
    H, W = grid
    rows, cols = [], []
    for h, w in hw:
        r = (torch.arange(h) * (H / h)).round().long()
        c = (torch.arange(w) * (W / w)).round().long()
        rows.append(r[:, None].expand(h, w).reshape(-1))
        cols.append(c[None, :].expand(h, w).reshape(-1))
    return torch.cat(rows), torch.cat(cols)


def rope_table(head_dim: int, hw, grid: tuple[int, int], base: float, side: int) -> torch.Tensor:
    """cos and sin (2, L, head_dim / 2) of every token: the first half of the rotated pairs turns with
    the row, the second half with the column, at frequencies base^(-2i / (head_dim / 2))."""
    half = head_dim // 2
    inv = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float32) / half)  # half / 2 frequencies
    r, c = rope_positions(hw, grid)
    if int(max(r.max(), c.max())) >= side:
        raise ValueError(f"RoPE position {int(max(r.max(), c.max()))} beyond the table's {side} per axis")
    ang = torch.cat([r.float()[:, None] * inv, c.float()[:, None] * inv], dim=-1)  # L half
    return torch.stack([ang.cos(), ang.sin()])


def apply_rope(x_BHlc: torch.Tensor, rope_2lh: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by the table's angles, in float32; same dtype out."""
    xf = x_BHlc.float().unflatten(-1, (-1, 2))
    cos, sin = rope_2lh[0], rope_2lh[1]
    out = torch.stack([cos * xf[..., 0] - sin * xf[..., 1], sin * xf[..., 0] + cos * xf[..., 1]], dim=-1)
    return out.flatten(-2).to(x_BHlc.dtype)


class RoPESelfAttention(SelfAttention):
    """VAR's cosine self-attention with the 2-D RoPE on q and k (after their normalisation)."""

    def forward(self, x_BlC, layout: ScaleLayout, scales: range, cfg_batch: int = 0, rope_2Lh=None):
        B, l, C = x_BlC.shape
        q, k, v = self.qkv(x_BlC)
        b, e = layout.begin[scales[0]], layout.end[scales[-1]]
        q, k = apply_rope(q, rope_2Lh[:, b:e]).to(v.dtype), apply_rope(k, rope_2Lh[:, b:e]).to(v.dtype)
        return self.proj(self.attend(q, k, v, layout, scales, cfg_batch).transpose(1, 2).reshape(B, l, C))


class CrossAttnBlock(nn.Module):
    def __init__(self, layer: int, cfg: InfinityConfig):
        super().__init__()
        C = self.C = cfg.embed_dim
        self.sa = RoPESelfAttention(layer, C, cfg.num_heads, attn_l2_norm=True)
        self.ca = CrossAttention(C, C, cfg.num_heads)
        self.ffn = FFN(C, cfg.hidden)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))

    def forward(self, x_BlC, gss_B16C, ctx_BTD, mask_BT, layout, scales, cfg_batch, rope_2Lh):
        g1, g2, s1, s2, sh1, sh2 = (self.ada_gss + gss_B16C).unbind(2)  # each B 1 C
        h = self.ln_wo_grad(x_BlC) * (s1 + 1) + sh1
        x_BlC = x_BlC + self.sa(h, layout, scales, cfg_batch, rope_2Lh) * g1
        x_BlC = x_BlC + self.ca(self.ca_norm(x_BlC), ctx_BTD, mask_BT)
        h = self.ln_wo_grad(x_BlC) * (s2 + 1) + sh2
        return x_BlC + self.ffn(h) * g2


# -- bits and codes --------------------------------------------------------------------------------

def bits_to_codes(bits_Bhwd: torch.Tensor, cfg: InfinityConfig) -> torch.Tensor:
    """Bits (B, h, w, token_bits) in {0, 1} -> BSQ codes (B, d, H, W) of +-1/sqrt(d); a patchified token's
    4d bits unshuffle to 2x2 codes (pixel_shuffle)."""
    s = 1.0 / math.sqrt(cfg.vae_bits)
    codes = (bits_Bhwd.float() * (2 * s) - s).permute(0, 3, 1, 2)
    return F.pixel_shuffle(codes, 2) if cfg.patchify else codes


def codes_to_tokens(codes_BdHW: torch.Tensor, cfg: InfinityConfig) -> torch.Tensor:
    """Codes at a scale (B, d, H, W) -> the transformer's input tokens (B, h * w, token_bits)."""
    x = F.pixel_unshuffle(codes_BdHW, 2) if cfg.patchify else codes_BdHW
    return x.flatten(2).transpose(1, 2)


def code_grid(hw, cfg: InfinityConfig) -> tuple[int, int]:
    k = 2 if cfg.patchify else 1
    return hw[-1][0] * k, hw[-1][1] * k


def up(x_BdHW, size):
    """The official trilinear resize of (B, d, 1, h, w) codes: bilinear in (h, w), no corner alignment."""
    return F.interpolate(x_BdHW, size=size, mode="bilinear", align_corners=False)


class NextInput:
    """The next scale's input: codes summed at full resolution, resized to the next scale."""

    def __init__(self, cfg: InfinityConfig, hw, B: int, device, dtype=torch.float32):
        self.cfg, self.hw = cfg, hw
        self.grid = code_grid(hw, cfg)
        self.summed = torch.zeros(B, cfg.vae_bits, *self.grid, device=device, dtype=dtype)

    def add(self, si: int, bits_Bld: torch.Tensor) -> torch.Tensor | None:
        """Add scale si's bits (B, h * w, token_bits); the input tokens of scale si + 1 (None after the last)."""
        h, w = self.hw[si]
        codes = bits_to_codes(bits_Bld.view(bits_Bld.shape[0], h, w, -1), self.cfg).to(self.summed.dtype)
        self.summed += up(codes, self.grid)
        if si + 1 == len(self.hw):
            return None
        k = 2 if self.cfg.patchify else 1
        h2, w2 = self.hw[si + 1]
        return codes_to_tokens(up(self.summed, (h2 * k, w2 * k)), self.cfg)


# -- the model -------------------------------------------------------------------------------------

class Infinity(nn.Module):
    family_name = "infinity"

    def __init__(self, cfg: InfinityConfig, hw=None):
        super().__init__()
        self.cfg = cfg
        C, Ct5 = cfg.embed_dim, cfg.text_channels
        self.C = C
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, Ct5))
        self.text_norm = RMSNorm(Ct5, cfg.norm_eps)
        self.text_proj_for_sos = TextPool(cfg)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        self.word_embed = nn.Linear(cfg.token_bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList(CrossAttnBlock(i, cfg) for i in range(cfg.depth))
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.V)
        self.register_buffer("rope_2Lh", torch.zeros(2, 1, cfg.head_dim // 2), persistent=False)
        self.set_schedule(hw or square_hw(SCHEDULES[1024]))

    # -- schedule --------------------------------------------------------------------------------
    def set_schedule(self, hw) -> None:
        """Run the schedule `hw` ((rows, columns) per scale); the RoPE table follows it."""
        hw = tuple((int(h), int(w)) for h, w in hw)
        if len(hw) > self.cfg.num_levels:
            raise ValueError(f"{len(hw)} scales; the level embedding has {self.cfg.num_levels}")
        self.hw = hw
        self.layout = ScaleLayout(tuple(h for h, _ in hw), None if all(h == w for h, w in hw) else hw)
        self.patch_nums = self.layout.patch_nums
        self.L = self.layout.L
        dev = self.rope_2Lh.device
        if dev.type != "meta":
            self.rope_2Lh = rope_table(self.cfg.head_dim, hw, self.rope_grid(hw), self.cfg.rope_base,
                                       self.cfg.rope_side).to(dev)

    @staticmethod
    def rope_grid(hw) -> tuple[int, int]:
        """The grid positions are measured against: the final grid of the aspect ratio's official 1M
        schedule (so its shorter schedules share its positions), or a longer schedule's own (ours)."""
        h, w = hw[-1]
        H, W = schedule_hw(h / w, "1M")[-1]
        return (h, w) if h * w > H * W else (H, W)

    @property
    def wide_dtype(self) -> torch.dtype:
        """What runs outside autocast (text, AdaLN, head): float32, or float64 in a float64 model."""
        return torch.promote_types(self.pos_start.dtype, torch.float32)

    # -- text --------------------------------------------------------------------------------------
    def encode_text(self, text: TextCond, cfg_double: bool):
        """(pooled condition (B', D), cross-attention context (B', T, D), mask (B', T)) in float32;
        with cfg_double the unconditional rows (cfg_uncond cut to each prompt's length) follow."""
        dev = self.pos_start.device
        wide = self.wide_dtype
        emb, mask = text.emb_BTC.to(dev, wide), text.mask_BT().to(dev)
        with torch.autocast(dev.type, enabled=False):
            if cfg_double:
                T = emb.shape[1]
                if T > self.cfg.text_maxlen:
                    raise ValueError(f"prompt of {T} tokens; the unconditional text has {self.cfg.text_maxlen}")
                un = self.cfg_uncond[:T].to(wide).unsqueeze(0).expand_as(emb)
                emb, mask = torch.cat([emb, torch.where(mask[..., None], un, 0.0)]), mask.repeat(2, 1)
            emb = self.text_norm(emb)
            cond_BD = self.text_proj_for_sos(emb, mask).to(wide)
            ctx_BTD = self.text_proj_for_ca(emb).to(wide)
        return cond_BD, ctx_BTD, mask

    def gss(self, cond_BD):
        with torch.autocast(cond_BD.device.type, enabled=False):
            wide = self.wide_dtype
            return self.shared_ada_lin(cond_BD.to(wide)).to(wide).view(-1, 1, 6, self.C)

    def get_logits(self, h_BlC, cond_BD) -> torch.Tensor:
        """Logits (B, l, 2 * token_bits), in float32 outside autocast."""
        with torch.autocast(h_BlC.device.type, enabled=False):
            wide = self.wide_dtype
            return self.head(self.head_nm(h_BlC.to(wide), cond_BD.to(wide))).to(wide)

    def _run_blocks(self, x_BlC, gss, ctx_BTD, mask_BT, scales: range, cfg_batch: int):
        for block in self.blocks:
            x_BlC = block(x_BlC, gss, ctx_BTD, mask_BT, self.layout, scales, cfg_batch, self.rope_2Lh)
        return x_BlC

    def _lvl(self, si: int, n: int, device) -> torch.Tensor:
        return self.lvl_embed(torch.full((n,), si, device=device, dtype=torch.long))

    # -- teacher forcing -----------------------------------------------------------------------------
    def forward(self, text: TextCond, x_BLd_wo_first: torch.Tensor, cfg_double: bool = False) -> torch.Tensor:
        """Logits (B', L, 2 * token_bits) of every token given the inputs of scales 1.. (x, as
        `teacher_inputs` makes them); block-causal across scales. cfg_double: the batch is the
        prompts then their unconditional rows (x repeated), B' = 2B."""
        dev = self.pos_start.device
        cond_BD, ctx_BTD, mask = self.encode_text(text, cfg_double)
        Bt = cond_BD.shape[0]
        x = x_BLd_wo_first.to(dev, self.wide_dtype)
        if x.shape[0] != Bt:
            x = x.repeat(Bt // x.shape[0], 1, 1)
        if x.shape[1] != self.L - 1:
            raise ValueError(f"inputs hold {x.shape[1]} tokens; this schedule needs {self.L - 1}")
        with torch.autocast(dev.type, enabled=False):
            sos = cond_BD.unsqueeze(1) + self.pos_start
            x_BLC = torch.cat([sos, self.word_embed(x)], dim=1)
            lvl = torch.repeat_interleave(torch.arange(len(self.hw), device=dev),
                                          torch.tensor(self.layout.sizes, device=dev))
            x_BLC = x_BLC + self.lvl_embed(lvl)
        h = self._run_blocks(x_BLC, self.gss(cond_BD), ctx_BTD, mask, range(len(self.hw)),
                             Bt // 2 if cfg_double else 0)
        return self.get_logits(h, cond_BD)

    def teacher_inputs(self, bits: list[torch.Tensor]) -> torch.Tensor:
        """The inputs (B, L - 1, token_bits) of scales 1.. from every scale's bits (B, h * w, token_bits)."""
        nxt = NextInput(self.cfg, self.hw, bits[0].shape[0], self.pos_start.device, self.wide_dtype)
        xs = [nxt.add(si, b.to(self.pos_start.device)) for si, b in enumerate(bits[:-1])]
        return torch.cat(xs, dim=1)

    # -- generation ------------------------------------------------------------------------------
    def _set_caching(self, on: bool, ctx_BTD=None) -> None:
        for block in self.blocks:
            factory = block.sa.kv_factory or (lambda: KVCache(self.L))
            block.sa.kv_cache = factory() if on else None
            block.ca.cache_context(ctx_BTD if on else None)

    @torch.no_grad()
    def generate(self, text: TextCond, g_seed: int | None = 0, cfg: float = 4.0, tau: float = 0.5,
                 top_k: int = 0, top_p: float = 0.0, callback=None, prefix_bits=None):
        """(summed codes (B, d, H, W), per-scale bits [(B, h * w, token_bits)]) of B prompts, scale by
        scale with CFG on the logits: cfg * conditional + (1 - cfg) * unconditional, after 1/tau.
        `prefix_bits`: bits of the first scales used instead of sampled ones (same random draws)."""
        dev = self.pos_start.device
        rng = None
        if g_seed is not None:
            rng = torch.Generator(device=dev).manual_seed(g_seed)
        B = len(text)
        cond_BD, ctx_BTD, mask = self.encode_text(text, cfg_double=True)
        gss = self.gss(cond_BD)
        x_BlC = (cond_BD.unsqueeze(1) + self.pos_start) + self._lvl(0, 1, dev)
        nxt, bits_all, prefix_bits = NextInput(self.cfg, self.hw, B, dev, self.wide_dtype), [], prefix_bits or []
        self._set_caching(True, ctx_BTD)
        try:
            for si, (h, w) in enumerate(self.hw):
                out = self._run_blocks(x_BlC, gss, ctx_BTD, mask, range(si, si + 1), B)
                logits = self.get_logits(out, cond_BD).mul(1 / tau)
                logits = cfg * logits[:B] + (1 - cfg) * logits[B:]
                if callback is not None:
                    callback(si, logits)
                bits = sample_with_top_k_top_p_(logits.view(B, -1, 2), top_k=top_k, top_p=top_p, rng=rng)[:, :, 0]
                bits = bits.view(B, h * w, -1)
                if si < len(prefix_bits):
                    bits = prefix_bits[si].to(dev)
                bits_all.append(bits)
                x = nxt.add(si, bits)
                if x is not None:
                    with torch.autocast(dev.type, enabled=False):
                        x_BlC = (self.word_embed(x) + self._lvl(si + 1, x.shape[1], dev)).repeat(2, 1, 1)
        finally:
            self._set_caching(False)
        return nxt.summed, bits_all

    # -- initialisation ------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, init_adaln: float = 0.5,
                     init_adaln_gamma: float = 1e-5, init_head: float = 0.02) -> None:
        """Random initialisation in the spirit of the official one: truncated normals of std
        sqrt(1 / 3C), small AdaLN gains and head, the residual projections scaled by 1/sqrt(2 depth)."""
        std = (1 / self.C / 3) ** 0.5
        init_linears_embeddings(self, std, generator)
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, RMSNorm)) and getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        Ct5 = self.cfg.text_channels
        nn.init.trunc_normal_(self.cfg_uncond, std=1.2, generator=generator)
        self.cfg_uncond.div_(Ct5 ** 0.5)
        nn.init.trunc_normal_(self.pos_start, std=std, generator=generator)
        nn.init.trunc_normal_(self.text_proj_for_sos.ca.mat_q, std=std, generator=generator)
        self.text_proj_for_sos.ca.v_bias.zero_()
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        w = self.shared_ada_lin[-1].weight
        w[2 * self.C:].mul_(init_adaln)
        w[:2 * self.C].mul_(init_adaln_gamma)
        scale = 1 / math.sqrt(2 * len(self.blocks))
        for block in self.blocks:
            nn.init.normal_(block.ada_gss, std=self.C ** -0.5, generator=generator)
            block.sa.scale_mul_1H11.fill_(math.log(4.0))
            for p in (block.sa.q_bias, block.sa.v_bias, block.ca.v_bias):
                p.zero_()
            for lin in (block.sa.proj, block.ca.proj, block.ffn.fc2):
                lin.weight.mul_(scale)
        for m in self.modules():
            if isinstance(m, CrossAttention) or isinstance(m, SelfAttention):
                m.zero_k_bias.zero_()


def official_names(names, depth: int, block_chunks: int) -> dict[str, str]:
    """Our name -> the released checkpoints' (blocks in `block_chunks` chunks: block_chunks.c.module.j)."""
    per = depth // block_chunks
    out = {}
    for n in names:
        if n.startswith("blocks."):
            i, rest = n[len("blocks."):].split(".", 1)
            i = int(i)
            n2 = f"block_chunks.{i // per}.module.{i % per}.{rest}" if block_chunks > 1 else n
        else:
            n2 = n
        out[n] = n2
    return out
