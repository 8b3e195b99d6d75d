"""Training of the shipped default model (classifier, VQVAE, VAR) from scratch (`litevar train`).

Seeded and resumable: every stage checkpoints to --work-dir every --ckpt-every steps and an
interrupted run continues where it stopped. With the same seed and the same number of CPU
threads the weights are bit-identical (CPU kernels are deterministic for a fixed thread count).

The VQVAE and VAR train under bf16 autocast where bf16 is fast, in fp32 where it is not
(`autocast="auto"`: a bf16 GEMM measured against fp32 on the device, Device.bf16_gemm_speedup). An
AVX2-only CPU emulates bf16 (about 60x slower than fp32 on AMD Zen 3); AVX512-BF16 and AMX run it
faster than fp32. The dtype is part of the recipe: a checkpoint records it and resumes in it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from litevar.models.core.atomic import atomic_path
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
AUTOCASTS = ("auto", "bf16", "fp32")


@dataclass
class VAEConfig:
    V: int = 512
    Cvae: int = 16
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2)  # 64 px images -> 16x16 latent
    num_res_blocks: int = 1
    share_quant_resi: int = 4
    backbone: str = "compact"  # plain convs around the official quantizer (see vqvae.CompactEncoder)
    norm_groups: int = 32  # "var" backbone only (at ch=32, 32 groups is instance norm: it erases colour)
    steps: int = 3000
    batch: int = 16
    lr: float = 2e-3
    restart_every: int = 50  # re-seed unused codes from current residuals (first 60% of steps)


@dataclass
class GPTConfig:
    depth: int = 4
    steps: int = 2000
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    cond_drop_rate: float = 0.1
    warmup: int = 100
    pos_init: str = "sincos"  # "sincos": 2-D sine/cosine position embeddings (see sincos_pos_init); "normal": official
    pos_init_amp: float = 0.1  # peak of each sine/cosine channel (the token embeddings start at ~0.1 RMS)
    scale_loss: str = "inv_side"  # per-token loss weight: "uniform" (official) or "inv_side" (1 / side of its scale)
    prefix_batch: int = 32  # extra samples per step trained on the coarse scales only (0: off)
    prefix_side: int = 8  # ... the scales up to this side (8: 155 of 680 tokens per sample)
    # then a coarse phase: steps on the scales up to prefix_side only (4.4x fewer tokens per sample),
    # its own warm-up and cosine schedule, from the main phase's weights and optimizer state
    coarse_steps: int = 500
    coarse_batch: int = 64
    coarse_lr: float = 5e-4
    coarse_warmup: int = 20

    def __post_init__(self):
        if self.pos_init not in ("sincos", "normal"):
            raise UserError(f"var.pos_init {self.pos_init!r}: use 'sincos' or 'normal'")
        if self.scale_loss not in ("uniform", "inv_side"):
            raise UserError(f"var.scale_loss {self.scale_loss!r}: use 'uniform' or 'inv_side'")
        if self.prefix_batch < 0:
            raise UserError(f"var.prefix_batch {self.prefix_batch}: use 0 (off) or a positive batch")
        if self.coarse_steps < 0 or (self.coarse_steps and self.coarse_batch < 1):
            raise UserError(f"var.coarse_steps {self.coarse_steps} / coarse_batch {self.coarse_batch}: use "
                            "coarse_steps 0 (no coarse phase), or coarse_steps > 0 with coarse_batch >= 1")


@dataclass
class TrainConfig:
    seed: int = 0
    image_size: int = 64
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    n_images: int = 40000
    vae: VAEConfig = field(default_factory=VAEConfig)
    var: GPTConfig = field(default_factory=GPTConfig)
    classifier_steps: int = 800
    autocast: str = "auto"  # VQVAE and VAR compute dtype: bf16, fp32, or auto (bf16 where it is the faster)

    def __post_init__(self):
        if self.autocast not in AUTOCASTS:
            raise UserError(f"autocast {self.autocast!r}: use one of {', '.join(AUTOCASTS)}")
        if (self.var.prefix_batch or self.var.coarse_steps) and self.var.prefix_side not in self.patch_nums:
            raise UserError(f"var.prefix_side {self.var.prefix_side} is not a side of patch_nums {self.patch_nums}; "
                            "pick one of them")
        if self.image_size // 2 ** (len(self.vae.ch_mult) - 1) != self.patch_nums[-1]:
            raise UserError(f"image_size {self.image_size} with ch_mult {self.vae.ch_mult} does not give a "
                            f"{self.patch_nums[-1]}x{self.patch_nums[-1]} latent; change one of them")


# -- shared helpers -----------------------------------------------------------------------------

def resolve_autocast(requested: str, device) -> tuple[str, str]:
    """('bf16' or 'fp32', why in words) for `requested` (AUTOCASTS) on `device`: auto takes bf16
    where a bf16 GEMM measured faster than fp32 there."""
    if requested != "auto":
        return requested, "as asked"
    from litevar.models.core.device import device_of
    dev = device_of(device)
    why = f"a bf16 GEMM ran at {dev.bf16_gemm_speedup():.2g}x fp32's speed here"
    return ("bf16" if dev.bf16_faster() else "fp32"), why


def _autocast(device: torch.device, dtype: str):
    """The training compute context: bf16 autocast, or nothing (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def _stage_autocast(cfg: TrainConfig, device, stage: str) -> str:
    dtype, why = resolve_autocast(cfg.autocast, device)
    log.info("%s: training in %s (%s)", stage, dtype, why)
    return dtype


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _resume(path: Path, model, opt, gen: torch.Generator, autocast: str) -> int:
    """Restore model, optimizer and both RNG streams; return the step to continue from. A checkpoint
    trained in another compute dtype is refused (the recipe would change half-way)."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=False)
    was = state.get("autocast", "bf16")  # checkpoints from before the choice trained in bf16
    if was != autocast:
        raise UserError(f"{path} was trained in {was}, this run would train in {autocast}: pass --autocast {was} "
                        "to resume it, or another --work-dir to start again")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    gen.set_state(state["data_rng"])
    log.info("resumed %s at step %d", path, state["step"])
    return state["step"]


def checkpoint_step(path: Path) -> int:
    """The step a stage's checkpoint would resume from (0: none)."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"]) if path.exists() else 0


def _checkpoint(path: Path, model, opt, gen: torch.Generator, step: int, autocast: str) -> None:
    _save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                  "data_rng": gen.get_state(), "step": step, "autocast": autocast}, path)


def dataset_images(cfg: TrainConfig, n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a split in [-1, 1] (n, 3, H, W) and their labels."""
    from litevar.models.default.data import make_split, to_float
    imgs, labels = make_split(split, n, size=cfg.image_size)
    return to_float(imgs), torch.from_numpy(labels).long()


def _batch_indices(gen: torch.Generator, n: int, batch: int) -> torch.Tensor:
    return torch.randint(0, n, (batch,), generator=gen)


# -- VQVAE ----------------------------------------------------------------------------------------

def build_small_vae(cfg: TrainConfig):
    from litevar.models.var.vqvae import VQVAE
    v = cfg.vae
    return VQVAE(vocab_size=v.V, z_channels=v.Cvae, ch=v.ch, ch_mult=v.ch_mult, share_quant_resi=v.share_quant_resi,
                 v_patch_nums=cfg.patch_nums, num_res_blocks=v.num_res_blocks, norm_groups=v.norm_groups,
                 backbone=v.backbone)


@torch.no_grad()
def _restart_dead_codes(vae, x_B3HW: torch.Tensor, gen: torch.Generator) -> int:
    """Codes no scale used on this batch are re-seeded from the residual vectors the scales quantize."""
    q = vae.quantize
    f = vae.quant_conv(vae.encoder(x_B3HW)).float()
    used, pool = torch.zeros(q.V, dtype=torch.bool), []
    for _, z_NC, idx_N, _ in q.residual_steps(f):
        used[idx_N] = True
        pool.append(z_NC)
    dead = (~used).nonzero().flatten()
    if len(dead):
        pool = torch.cat(pool)
        pick = torch.randint(0, len(pool), (len(dead),), generator=gen)
        q.embedding.weight[dead] = pool[pick] + 1e-3 * torch.randn(len(dead), pool.shape[1], generator=gen)
    return len(dead)


def train_vae(cfg: TrainConfig, work: Path, device: torch.device, ckpt_every: int, progress=True):
    from tqdm import tqdm
    torch.manual_seed(cfg.seed)
    vae = build_small_vae(cfg).to(device).train()
    x_all, _ = dataset_images(cfg, cfg.n_images // 2)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    path, gen = work / "vae.pt", torch.Generator().manual_seed(cfg.seed + 1)
    dtype = _stage_autocast(cfg, device, "vqvae")
    start = _resume(path, vae, opt, gen, dtype)
    if start == 0:  # a codebook seeded from data, not the tiny uniform init
        _restart_dead_codes(vae, x_all[_batch_indices(gen, len(x_all), 256)].to(device), gen)
    bar = tqdm(range(start, cfg.vae.steps), desc="vqvae", disable=not progress, initial=start, total=cfg.vae.steps)
    for step in bar:
        x = x_all[_batch_indices(gen, len(x_all), cfg.vae.batch)].to(device)
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, cfg.vae.steps, cfg.vae.lr, 100)
        with _autocast(device, dtype):
            rec, vq_loss = vae(x)
        rec_loss = F.mse_loss(rec.float(), x) + 0.2 * F.l1_loss(rec.float(), x)
        loss = rec_loss + vq_loss.float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 2.0)
        opt.step()
        if (step + 1) % cfg.vae.restart_every == 0 and step + 1 < cfg.vae.steps * 0.6:
            dead = _restart_dead_codes(vae, x_all[_batch_indices(gen, len(x_all), 256)].to(device), gen)
            bar.set_postfix(rec=f"{rec_loss.item():.4f}", dead=dead)
        if (step + 1) % ckpt_every == 0:
            _checkpoint(path, vae, opt, gen, step + 1, dtype)
    _checkpoint(path, vae, opt, gen, cfg.vae.steps, dtype)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def tokenize(vae, x_all: torch.Tensor, batch: int = 256, progress=True) -> torch.Tensor:
    """Token ids of every image, concatenated over scales: (N, L) int16."""
    from tqdm import tqdm
    out = []
    for i in tqdm(range(0, len(x_all), batch), desc="tokenize", disable=not progress):
        out.append(torch.cat(vae.img_to_idxBl(x_all[i:i + batch]), dim=1).to(torch.int16))
    return torch.cat(out)


# -- VAR --------------------------------------------------------------------------------------------

def build_small_var(cfg: TrainConfig, vae, init: bool = True):
    from litevar.models.default.data import NUM_CLASSES
    from litevar.models.var.var import VAR, VARConfig
    vcfg = VARConfig(depth=cfg.var.depth, patch_nums=cfg.patch_nums, num_classes=NUM_CLASSES, V=cfg.vae.V,
                     Cvae=cfg.vae.Cvae, cond_drop_rate=cfg.var.cond_drop_rate)
    var = VAR(vae, vcfg)
    if init:
        var.init_weights()
        if cfg.var.pos_init == "sincos":
            with torch.no_grad():
                var.pos_1LC.copy_(sincos_pos_init(cfg.patch_nums, var.C, cfg.var.pos_init_amp))
    return var


def sincos_pos_init(patch_nums, C: int, amp: float) -> torch.Tensor:
    """(1, L, C) start values of the learned position embeddings: sines and cosines of the token's
    centre in image coordinates (0..1, the same on every scale), half the channels for each axis,
    frequencies geometric from 1 to the finest grid's Nyquist rate. A token then starts out
    knowing where it is and which tokens of the coarser scales lie above it, which a small model
    otherwise needs many steps to learn from random embeddings."""
    if C % 4:
        raise UserError(f"sincos position init needs C divisible by 4, got C={C}; use pos_init='normal'")
    n = C // 4  # frequencies per axis (a sine and a cosine each)
    freq_n = math.pi * torch.logspace(0, math.log10(patch_nums[-1]), n)  # radians per image width
    rows = []
    for pn in patch_nums:
        c = (torch.arange(pn, dtype=torch.float64) + 0.5) / pn
        y, x = (t.flatten() for t in torch.meshgrid(c, c, indexing="ij"))
        ay, ax = y[:, None] * freq_n, x[:, None] * freq_n
        rows.append(torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1))
    return (amp * torch.cat(rows)).float().unsqueeze(0)


def _split_scales(tokens_NL: torch.Tensor, patch_nums) -> list[torch.Tensor]:
    return list(tokens_NL.long().split([pn * pn for pn in patch_nums], dim=1))


def token_loss_weights(patch_nums, scheme: str) -> torch.Tensor:
    """Per-token cross-entropy weights (L,), mean 1. "uniform" is the official loss. "inv_side"
    weighs a token of an n x n scale by 1/n, so scale n carries n (not n^2) of the total: the
    coarse scales, where the layout and hence the class is decided, get 43% of the loss at 16x16
    instead of 23%."""
    w = torch.cat([torch.full((pn * pn,), 1.0 if scheme == "uniform" else 1.0 / pn) for pn in patch_nums])
    return w / w.mean()


def _weighted_ce(var, vae, tokens_NL, labels_N, patch_nums, weight_L, device, dtype) -> torch.Tensor:
    """Sum over samples and tokens of the weighted cross-entropy of the first len(patch_nums)
    scales (teacher-forced; all scales when patch_nums is the model's schedule)."""
    gt = _split_scales(tokens_NL[:, :sum(pn * pn for pn in patch_nums)], patch_nums)
    x_in = vae.quantize.idxBl_to_var_input([g.to(device) for g in gt])
    with _autocast(device, dtype):
        logits = var(labels_N.to(device), x_in, n_scales=len(patch_nums))
    ce_BL = F.cross_entropy(logits.float().transpose(1, 2), torch.cat(gt, 1).to(device), reduction="none")
    return (ce_BL * weight_L[:ce_BL.shape[1]]).sum()


def train_var(cfg: TrainConfig, vae, tokens_NL, labels_N, work: Path, device, ckpt_every: int, progress=True):
    from tqdm import tqdm
    torch.manual_seed(cfg.seed + 2)
    var = build_small_var(cfg, vae).to(device).train()
    decay = [p for n, p in var.named_parameters() if p.dim() >= 2 and "pos_" not in n]
    no_decay = [p for n, p in var.named_parameters() if not (p.dim() >= 2 and "pos_" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.var.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.var.lr, betas=(0.9, 0.95),
                            fused=True)
    path, gen = work / "var.pt", torch.Generator().manual_seed(cfg.seed + 3)
    dtype = _stage_autocast(cfg, device, "var")
    start = _resume(path, var, opt, gen, dtype)
    weight_L = token_loss_weights(cfg.patch_nums, cfg.var.scale_loss).to(device)
    n_prefix = cfg.patch_nums.index(cfg.var.prefix_side) + 1 if cfg.var.prefix_side in cfg.patch_nums else 0
    main, total = cfg.var.steps, cfg.var.steps + cfg.var.coarse_steps
    bar = tqdm(range(start, total), desc="var", disable=not progress, initial=start, total=total)
    for step in bar:
        coarse = step >= main  # the coarse phase: the scales up to prefix_side only
        lr = (_cosine_lr(step - main, cfg.var.coarse_steps, cfg.var.coarse_lr, cfg.var.coarse_warmup) if coarse
              else _cosine_lr(step, main, cfg.var.lr, cfg.var.warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = 0.0
        if not coarse:
            idx = _batch_indices(gen, len(tokens_NL), cfg.var.batch)
            loss = _weighted_ce(var, vae, tokens_NL[idx], labels_N[idx], cfg.patch_nums, weight_L, device, dtype)
        extra = cfg.var.coarse_batch if coarse else cfg.var.prefix_batch
        if extra:  # more samples for the coarse scales, where the layout (the class) is decided
            idx = _batch_indices(gen, len(tokens_NL), extra)
            loss = loss + _weighted_ce(var, vae, tokens_NL[idx], labels_N[idx], cfg.patch_nums[:n_prefix],
                                       weight_L, device, dtype)
        loss = loss / (cfg.var.batch * len(weight_L))  # every token weighs the same in both phases
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", phase="coarse" if coarse else "all")
        if (step + 1) % ckpt_every == 0 or step + 1 == main:
            _checkpoint(path, var, opt, gen, step + 1, dtype)
    _checkpoint(path, var, opt, gen, total, dtype)
    return var.eval().requires_grad_(False)



def scaled(cfg: TrainConfig, s: float) -> TrainConfig:
    if s != 1.0:
        cfg.vae.steps = max(2, int(cfg.vae.steps * s))
        cfg.var.steps = max(2, int(cfg.var.steps * s))
        cfg.var.warmup = max(1, int(cfg.var.warmup * s))
        cfg.var.coarse_steps = max(1, int(cfg.var.coarse_steps * s)) if cfg.var.coarse_steps else 0
        cfg.var.coarse_warmup = max(1, int(cfg.var.coarse_warmup * s))
        cfg.classifier_steps = max(2, int(cfg.classifier_steps * s))
        cfg.n_images = max(64, int(cfg.n_images * s))
    return cfg


def shipped_var_state(var) -> dict[str, torch.Tensor]:
    """The VAR weights as shipped: float tensors stored in fp16 (half the size; loaded back to
    fp32, and fp16 keeps 3 more mantissa bits than bf16), integer buffers as they are."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in var.state_dict().items()}
