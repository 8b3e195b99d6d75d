"""Multi-scale residual VQVAE, checkpoint-compatible with the official vae_ch160v4096z32.

Key layout and formulas: shared/docs/var-reference.md. The official model fixes
ch_mult = (1, 1, 2, 2, 4) (downsample 16); ours takes any ch_mult so that small models
(e.g. 64 px images with a 16x16 latent) share the architecture.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=ch, eps=1e-6, affine=True)


STRIP_BYTES = 64 * 2 ** 20  # about this many bytes of input rows per strip


def _norm_affine(norm: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm of x as a per-(row, channel) affine map (a, b): norm(x) = a * x + b."""
    B, C = x.shape[:2]
    var, mean = torch.var_mean(x.reshape(B, norm.num_groups, -1).float(), dim=2, unbiased=False)
    inv = torch.rsqrt(var + norm.eps)  # (B, G)
    per = C // norm.num_groups
    a = inv.repeat_interleave(per, 1) * norm.weight.float()
    b = norm.bias.float() - mean.repeat_interleave(per, 1) * a
    return a[:, :, None, None].to(x.dtype), b[:, :, None, None].to(x.dtype)


def _strip_norm_conv(x: torch.Tensor, norm: nn.GroupNorm, conv: nn.Conv2d, out: torch.Tensor | None = None,
                     add: bool = False) -> torch.Tensor:
    """conv(silu(norm(x))) for a 3x3 stride-1 conv with padding 1, a strip of rows at a time;
    written into `out` (added to it when `add`) or a new tensor."""
    B, C, H, W = x.shape
    a, b = _norm_affine(norm, x)
    if out is None:
        out = x.new_empty(B, conv.out_channels, H, W)
    rows = max(1, STRIP_BYTES // max(1, B * C * W * x.element_size()))
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, H)
        t = F.silu(x[:, :, lo:hi] * a + b)
        t = F.pad(t, (0, 0, 1 if r0 == 0 else 0, 1 if r1 == H else 0))  # zero rows at the image border
        y = F.conv2d(t, conv.weight, conv.bias, padding=(0, 1))
        if add:
            out[:, :, r0:r1] += y
        else:
            out[:, :, r0:r1] = y
    return out


def _lean_resnet(block: ResnetBlock, x: torch.Tensor) -> torch.Tensor:
    h = _strip_norm_conv(x, block.norm1, block.conv1)
    out = x if isinstance(block.nin_shortcut, nn.Identity) else block.nin_shortcut(x)
    del x  # the caller's reference is the only one left: freed when it rebinds
    return _strip_norm_conv(h, block.norm2, block.conv2, out=out, add=True)


def _lean_upsample(up: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv(nearest 2x upsample(x)) a strip of output rows at a time (never the whole upsampled map)."""
    B, C, H, W = x.shape
    out = x.new_empty(B, up.conv.out_channels, 2 * H, 2 * W)
    rows = max(1, STRIP_BYTES // max(1, B * C * 4 * W * x.element_size()))  # input rows per strip
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, H)
        t = F.interpolate(x[:, :, lo:hi], scale_factor=2, mode="nearest")
        a0, a1 = 2 * (r0 - lo), 2 * (r0 - lo) + 2 * (r1 - r0)  # the strip's rows within t
        t = t[:, :, max(a0 - 1, 0):a1 + 1]
        t = F.pad(t, (0, 0, 1 if r0 == 0 else 0, 1 if r1 == H else 0))
        out[:, :, 2 * r0:2 * r1] = F.conv2d(t, up.conv.weight, up.conv.bias, padding=(0, 1))
    return out


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # each B C N
        if not torch.is_grad_enabled():  # inference: no N x N score matrix (1 GB at a 128 x 128 latent)
            h_BNC = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                                   v.transpose(1, 2)[:, None], scale=C ** -0.5)[:, 0]
            return x + self.proj_out(h_BNC.transpose(1, 2).reshape(B, C, H, W))
        w_BNN = torch.bmm(q.transpose(1, 2), k).mul_(C ** -0.5).softmax(dim=2)
        h_BCN = torch.bmm(v, w_BNN.transpose(1, 2))
        return x + self.proj_out(h_BCN.view(B, C, H, W))


class Downsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _mid(ch: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResnetBlock(ch, ch, groups), AttnBlock(ch, groups)
    mid.block_2 = ResnetBlock(ch, ch, groups)
    return mid


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], z_channels: int, num_res_blocks: int = 2,
                 norm_groups: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        c_in, last = ch, len(ch_mult) - 1
        for i, mult in enumerate(ch_mult):
            c_out = ch * mult
            blocks = [ResnetBlock(c_in if b == 0 else c_out, c_out, norm_groups) for b in range(num_res_blocks)]
            attns = [AttnBlock(c_out, norm_groups) for _ in range(num_res_blocks)] if i == last else []
            level = _level(blocks, attns)
            if i != last:
                level.downsample = Downsample2x(c_out)
            self.down.append(level)
            c_in = c_out
        self.mid = _mid(c_in, norm_groups)
        self.norm_out = _norm(c_in, norm_groups)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: tuple[int, ...], z_channels: int, num_res_blocks: int = 2,
                 norm_groups: int = 32):
        super().__init__()
        last = len(ch_mult) - 1
        c_in = ch * ch_mult[last]
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, 1, 1)
        self.mid = _mid(c_in, norm_groups)
        levels = []
        for i in reversed(range(len(ch_mult))):
            c_out = ch * ch_mult[i]
            n = num_res_blocks + 1
            blocks = [ResnetBlock(c_in if b == 0 else c_out, c_out, norm_groups) for b in range(n)]
            attns = [AttnBlock(c_out, norm_groups) for _ in range(n)] if i == last else []
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample2x(c_out)
            levels.insert(0, level)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in, norm_groups)
        self.conv_out = nn.Conv2d(c_in, 3, 3, 1, 1)

    def forward(self, z):
        if not torch.is_grad_enabled():  # inference: the same decoder in strips (its memory grows with pixels
            return self.forward_lean(z)    # at one rate at every size, which the cost model fits)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward_lean(self, z):
        """The same decoder at inference in row strips: GroupNorm's statistics come from one pass
        over the whole map, then norm, SiLU and the 3x3 conv run a strip at a time, and a residual
        block adds into its input. About two feature maps of the top level at a time instead of four
        (the peak of a 2048 px image: ~5 GB instead of 12.8 in float32); equal to forward() up to
        float summation order."""
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = _lean_resnet(block, h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = _lean_upsample(level.upsample, h)
        return _strip_norm_conv(h, self.norm_out, self.conv_out)


class CompactEncoder(nn.Sequential):
    """A plain conv encoder (no normalisation, no attention) for the small shipped model: the
    GroupNorm + attention backbone above needs far more steps than a CPU budget allows at 32 channels."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], z_channels: int):
        layers, c_in = [nn.Conv2d(3, ch, 3, 1, 1), nn.SiLU()], ch
        for mult in ch_mult[1:]:
            layers += [nn.Conv2d(c_in, ch * mult, 4, 2, 1), nn.SiLU()]
            c_in = ch * mult
        layers += [nn.Conv2d(c_in, c_in, 3, 1, 1), nn.SiLU(), nn.Conv2d(c_in, z_channels, 3, 1, 1)]
        super().__init__(*layers)


class CompactDecoder(nn.Sequential):
    """Mirror of CompactEncoder: nearest-neighbour 2x upsampling followed by 3x3 convolutions."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], z_channels: int):
        c_in = ch * ch_mult[-1]
        layers = [nn.Conv2d(z_channels, c_in, 3, 1, 1), nn.SiLU(), nn.Conv2d(c_in, c_in, 3, 1, 1), nn.SiLU()]
        for mult in reversed(ch_mult[:-1]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, ch * mult, 3, 1, 1), nn.SiLU()]
            c_in = ch * mult
        layers += [nn.Conv2d(c_in, 3, 3, 1, 1)]
        super().__init__(*layers)


BACKBONES = ("var", "compact")


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): the residual refinement of each scale."""

    def __init__(self, dim: int, resi_ratio: float):
        super().__init__(dim, dim, 3, 1, 1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw):
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiPartiallyShared(nn.Module):
    """K phi convs shared across scales; scale si uses the one whose tick is nearest si/(n-1)."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls
        K = len(qresi_ls)
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def __getitem__(self, at_0_to_1: float) -> Phi:
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at_0_to_1)))]


class PhiShared(nn.Module):
    def __init__(self, qresi: Phi):
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _: float) -> Phi:
        return self.qresi


class PhiNonShared(nn.ModuleList):
    def __init__(self, qresi: list[Phi]):
        super().__init__(qresi)
        K = len(qresi)
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def __getitem__(self, at_0_to_1: float) -> Phi:
        return super().__getitem__(int(np.argmin(np.abs(self.ticks - at_0_to_1))))


class MultiScaleQuantizer(nn.Module):
    """The multi-scale residual vector quantizer (official name: VectorQuantizer2)."""

    def __init__(self, V: int, Cvae: int, patch_nums: tuple[int, ...], quant_resi: float = 0.5,
                 share_quant_resi: int = 4, beta: float = 0.25):
        super().__init__()
        self.V, self.Cvae, self.patch_nums, self.beta = V, Cvae, tuple(patch_nums), beta
        self.embedding = nn.Embedding(V, Cvae)
        if share_quant_resi == 1:
            self.quant_resi = PhiShared(Phi(Cvae, quant_resi))
        elif share_quant_resi == 0:
            self.quant_resi = PhiNonShared([Phi(Cvae, quant_resi) for _ in patch_nums])
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList(Phi(Cvae, quant_resi) for _ in range(share_quant_resi)))
        self.register_buffer("ema_vocab_hit_SV", torch.full((len(patch_nums), V), fill_value=0.0))

    def phi(self, si: int) -> Phi:
        return self.quant_resi[si / (len(self.patch_nums) - 1)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint trained with another schedule has another number of scales here:
        # the buffer is statistics only, so take ours (the official loader does the same).
        key = prefix + "ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.ema_vocab_hit_SV.shape:
            state_dict[key] = torch.zeros_like(self.ema_vocab_hit_SV, device=state_dict[key].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        w_VC = self.embedding.weight
        d_NV = z_NC.square().sum(1, keepdim=True) + w_VC.square().sum(1)
        d_NV.addmm_(z_NC, w_VC.T, alpha=-2, beta=1)
        return d_NV.argmin(dim=1)

    def residual_steps(self, f_BChw: torch.Tensor):
        """Yield (si, z_NC, idx_N, f_hat) scale by scale: z_NC are the residual vectors that scale
        quantizes, idx_N their nearest codes, f_hat the reconstruction so far."""
        B, C, H, W = f_BChw.shape
        if self.patch_nums[-1] != H or H != W:
            raise ValueError(f"latent is {H}x{W} but patch_nums ends at {self.patch_nums[-1]}")
        f_rest, f_hat, SN = f_BChw.detach().clone(), torch.zeros_like(f_BChw), len(self.patch_nums)
        for si, pn in enumerate(self.patch_nums):
            last = si == SN - 1
            z = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
            z_NC = z.permute(0, 2, 3, 1).reshape(-1, C)
            idx_N = self.nearest_code(z_NC)
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).contiguous()
            if not last:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic").contiguous()
            h_BChw = self.phi(si)(h_BChw)
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)
            yield si, z_NC, idx_N, f_hat

    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        """Residual-quantize f scale by scale; return per-scale token ids (B, pn*pn) or f_hat's."""
        B = f_BChw.shape[0]
        return [f_hat.clone() if to_fhat else idx_N.reshape(B, -1)
                for _, _, idx_N, f_hat in self.residual_steps(f_BChw)]

    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: f_hat with a straight-through gradient, and the VQ loss."""
        B, C, H, W = f_BChw.shape
        f_rest, f_hat, loss, SN = f_BChw.detach().clone(), torch.zeros_like(f_BChw), 0.0, len(self.patch_nums)
        for si, pn in enumerate(self.patch_nums):
            last = si == SN - 1
            z = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
            with torch.no_grad():
                idx_N = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C).float())
            h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
            if not last:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
            h_BChw = self.phi(si)(h_BChw)
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw.detach()
            loss = loss + F.mse_loss(f_hat, f_BChw.detach()) + self.beta * F.mse_loss(f_hat.detach(), f_BChw)
        f_hat = (f_hat.detach() - f_BChw.detach()).add_(f_BChw)  # straight-through estimator
        return f_hat, loss / SN

    def embed_to_fhat(self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool = True,
                      last_one: bool = False):
        B, SN, H = ms_h_BChw[0].shape[0], len(self.patch_nums), self.patch_nums[-1]
        out = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, H, dtype=self.acc_dtype)
            for si in range(SN):
                h = ms_h_BChw[si]
                if si < SN - 1:
                    h = F.interpolate(h, size=(H, H), mode="bicubic")
                f_hat.add_(self.phi(si)(h))
                out.append(f_hat if last_one else f_hat.clone())
        else:  # each scale's f_hat at its own size (visualisation only)
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, self.patch_nums[0], self.patch_nums[0], dtype=self.acc_dtype)
            for si, pn in enumerate(self.patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")
                f_hat.add_(self.phi(si)(ms_h_BChw[si]))
                out.append(f_hat)
        return out[-1] if last_one else out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor | None:
        """Teacher-forcing input: cumulative f_hat area-downsampled to each next scale, (B, L-pn0^2, Cvae).

        Given the tokens of only the first n scales, the input of scales 1..n-1 (a VAR prefix)."""
        B, C, H = gt_ms_idx_Bl[0].shape[0], self.Cvae, self.patch_nums[-1]
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, C, H, H, dtype=self.acc_dtype)
        nxt = []
        for si in range(len(gt_ms_idx_Bl) - 1):
            pn = self.patch_nums[si]
            h = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(B, C, pn, pn)
            f_hat.add_(self.phi(si)(F.interpolate(h, size=(H, H), mode="bicubic")))
            pn_next = self.patch_nums[si + 1]
            nxt.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1) if nxt else None

    @property
    def acc_dtype(self) -> torch.dtype:
        """The dtype f_hat accumulates in: float32, or float64 for a float64 model (numerics references)."""
        return torch.promote_types(self.embedding.weight.dtype, torch.float32)

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor):
        """Add scale si's codes to f_hat; return (f_hat, next scale's input map)."""
        H = self.patch_nums[-1]
        if si != SN - 1:
            f_hat.add_(self.phi(si)(F.interpolate(h_BChw, size=(H, H), mode="bicubic")))
            pn = self.patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")
        f_hat.add_(self.phi(si)(h_BChw))
        return f_hat, f_hat


class VQVAE(nn.Module):
    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4), quant_resi: float = 0.5,
                 share_quant_resi: int = 4, v_patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 num_res_blocks: int = 2, beta: float = 0.25, norm_groups: int = 32, backbone: str = "var"):
        super().__init__()
        self.V, self.Cvae, self.ch, self.ch_mult = vocab_size, z_channels, ch, tuple(ch_mult)
        self.downsample = 2 ** (len(ch_mult) - 1)
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r}: choose one of {BACKBONES}")
        if ch % norm_groups:
            raise ValueError(f"ch={ch} is not divisible by norm_groups={norm_groups}; pick a divisor of ch")
        if backbone == "var":  # the official architecture (loads official checkpoints)
            self.encoder = Encoder(ch, self.ch_mult, z_channels, num_res_blocks, norm_groups)
            self.decoder = Decoder(ch, self.ch_mult, z_channels, num_res_blocks, norm_groups)
        else:
            self.encoder = CompactEncoder(ch, self.ch_mult, z_channels)
            self.decoder = CompactDecoder(ch, self.ch_mult, z_channels)
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, v_patch_nums, quant_resi, share_quant_resi, beta)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 3, 1, 1)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: (reconstruction in [-1, 1] scale, VQ loss)."""
        f_hat, vq_loss = self.quantize(self.quant_conv(self.encoder(img_B3HW)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    @torch.no_grad()
    def img_to_idxBl(self, inp_img_no_grad: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] (B, 3, H, W) -> per-scale token ids, each (B, pn*pn)."""
        f = self.quant_conv(self.encoder(inp_img_no_grad))
        return self.quantize.f_to_idxBl_or_fhat(f, to_fhat=False)

    def idxBl_to_img(self, ms_idx_Bl: list[torch.Tensor], same_shape: bool, last_one: bool = False):
        B = ms_idx_Bl[0].shape[0]
        ms_h = []
        for idx_Bl in ms_idx_Bl:
            pn = round(idx_Bl.shape[1] ** 0.5)
            ms_h.append(self.quantize.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn))
        return self.embed_to_img(ms_h, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool, last_one: bool = False):
        f = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        return self.fhat_to_img(f) if last_one else [self.fhat_to_img(f_hat) for f_hat in f]
