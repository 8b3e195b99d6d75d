"""Infinity's BSQ VAE (the official `infinity_vae_d32` / `d56`): a convolutional encoder and decoder
around binary spherical quantization, written from its equations with the official module names
(`decoder.up.3.block.0.conv1.conv.weight`). Generation needs the decoder only: summed BSQ codes
(B, d, H, W) -> an image in [-1, 1]; the encoder is here so that the released file loads strictly.

Configurations (tools/run_infinity.py): base width 128, two residual blocks per level, no attention;
d = 32 with 5 levels (x16, 2B) or d = 14 with 4 levels (x8, 8B, whose tokens patchify 2x2 codes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class BSQConfig:
    bits: int = 32  # d, the code's channels
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    num_res_blocks: int = 2

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


VAE_CONFIGS = {"d32": BSQConfig(bits=32, ch_mult=(1, 2, 4, 4, 4)), "d56": BSQConfig(bits=14, ch_mult=(1, 2, 4, 4))}


class Conv(nn.Module):
    """The official wrapper's name level (`.conv`) around a 2-D convolution."""

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Normalize(nn.Module):
    """GroupNorm over 32 groups (24 where the width is not a multiple of 32), behind `.norm`."""

    def __init__(self, C):
        super().__init__()
        groups = 32 if C % 32 == 0 else 24
        self.norm = nn.GroupNorm(groups, C, eps=1e-6)

    def forward(self, x):
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin), Conv(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Normalize(cout), Conv(cout, cout, 3, padding=1)
        self.nin_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class Downsample(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.conv = Conv(C, C, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.conv = Conv(C, C, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _mid(C):
    mid = nn.Module()
    mid.block_1, mid.block_2 = ResnetBlock(C, C), ResnetBlock(C, C)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = Conv(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, ch * m))
                cin = ch * m
            level.attn = nn.ModuleList()
            if i < len(mult) - 1:
                level.downsample = Downsample(cin)
            self.down.append(level)
        self.mid = _mid(cin)
        self.norm_out = Normalize(cin)
        self.conv_out = Conv(cin, cfg.bits, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.block_1(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        cin = ch * mult[-1]
        self.conv_in = Conv(cfg.bits, cin, 3, padding=1)
        self.mid = _mid(cin)
        levels = []
        for i in reversed(range(len(mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, ch * mult[i]))
                cin = ch * mult[i]
            level.attn = nn.ModuleList()
            if i > 0:
                level.upsample = Upsample(cin)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(cin)
        self.conv_out = Conv(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class BSQVAE(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.downsample, self.bits = cfg.downsample, cfg.bits

    @torch.no_grad()
    def decode(self, codes_BdHW: torch.Tensor) -> torch.Tensor:
        """Summed BSQ codes -> image (B, 3, H * downsample, W * downsample) in [-1, 1], in float32."""
        with torch.autocast(codes_BdHW.device.type, enabled=False):
            return self.decoder(codes_BdHW.float()).clamp_(-1, 1)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Convolutions: Kaiming-uniform as PyTorch draws them, but from `generator`; norms: unit gain."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                bound = 1 / (m.weight[0].numel()) ** 0.5
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()


def normalise_vae_keys(sd: dict, own: set[str]) -> dict:
    """The released VAE files may name tensors without the wrappers' level (`conv_in.weight` for our
    `conv_in.conv.weight`, `norm1.weight` for `norm1.norm.weight`), which the official loader accepts:
    a key that is not ours but is one wrapper level short of ours is renamed. The quantizer's bit-mask
    buffer (derived from d) is dropped. Anything else is left for the strict load to report."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("quantizer.", "quantize.")) and k.endswith(".mask"):
            continue
        if k not in own:
            head, _, leaf = k.rpartition(".")
            k = next((c for c in (f"{head}.conv.{leaf}", f"{head}.norm.{leaf}") if c in own), k)
        out[k] = v
    return out
