"""The VAR family (litevar.models.core.family): class-conditional next-scale prediction with a
V-way head, FoundationVision's VAR d16-d36 and the small model shipped with litevar."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from litevar.models.core.errors import UserError
from litevar.models.core.family import Arch, LinearSpec, ModelFamily, ModelFlags, load_default_model, register_family
from litevar.models.core.inference import autocast
from litevar.models.var.schedules import SCHEDULES

SAMPLING = dict(cfg=4.0, top_k=900, top_p=0.95)  # what the cost stage and bench time


@dataclass(frozen=True)
class VARArch(Arch):
    """A VAR's architecture: the common fields, the codebook (V codes of Cvae channels), the
    classes, and whether the blocks share one AdaLN (d36)."""

    V: int = 4096
    Cvae: int = 32
    num_classes: int = 1000
    shared_aln: bool = False
    head_out: int = 0  # = V

    PLAN_KEYS: ClassVar[tuple[str, ...]] = ("depth", "embed_dim", "num_heads", "mlp_ratio", "V", "Cvae", "num_classes")

    def __post_init__(self):
        object.__setattr__(self, "head_out", self.V)
        for k in ("V", "Cvae", "num_classes"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"VAR arch {k} = {v!r} must be a positive integer")
        super().__post_init__()


@register_family
class VARFamily(ModelFamily):
    name = "var"
    arch_type = VARArch
    schedules = SCHEDULES
    loss_unit = ("nats: sum over scales of the mean KL(full precision || test) of the CFG-guided next-token "
                 "distribution, teacher-forced on the full-precision model's own samples")
    # each native kernel family in a few layer kinds (its in-model factor); the last linear mix is the
    # kind budget plans choose (the wide linears quantized, attention output and AdaLN kept fp); KV8 in
    # every block sets how much of a KV call's gathered keys adds to the peak
    fit_configs = ("BF16:fc1,fc2", "BF16:mat_qkv,proj,ada_lin,head,word_embed",
                   "W8A8:fc1,fc2", "W8A8:mat_qkv,proj,ada_lin,head,word_embed",
                   "W4A8:fc1,fc2", "W4A8:mat_qkv,proj,ada_lin,head,word_embed",
                   "W4A16:fc1,fc2", "W4A16:mat_qkv,proj,ada_lin,head,word_embed",
                   "W8A8:mat_qkv,fc1,fc2,head", "KV8:all")
    # held out: formats mixed over other layer kinds, and KV caches (INT8 in every block; INT4 keeping
    # the first scale and the two latest)
    validate_configs = ("W4A8:mat_qkv,proj;W8A8:fc1,fc2,head", "BF16:word_embed,mat_qkv,proj,fc1,ada_lin,head",
                        "KV8:all", "KV4:s1r2")

    # -- plain data -----------------------------------------------------------------------
    def arch_from_dict(self, d: dict) -> VARArch:
        d = dict(d)
        d.setdefault("embed_dim", d.pop("C", None))
        d.setdefault("num_heads", d.get("depth"))
        d.setdefault("mlp_ratio", 4.0)
        d.pop("head_out", None)
        return super().arch_from_dict(d)

    def linears(self, arch: VARArch) -> list[LinearSpec]:
        C, hid = arch.embed_dim, arch.hidden
        out = [LinearSpec("word_embed", arch.Cvae, C, "word_embed", "next")]
        if arch.shared_aln:
            out.append(LinearSpec("shared_ada_lin.1", C, 6 * C, "ada_lin", "cond"))
        for i in range(arch.depth):
            p = f"blocks.{i}."
            out += [LinearSpec(p + "attn.mat_qkv", C, 3 * C, "mat_qkv", block=i),
                    LinearSpec(p + "attn.proj", C, C, "proj", block=i),
                    LinearSpec(p + "ffn.fc1", C, hid, "fc1", block=i),
                    LinearSpec(p + "ffn.fc2", hid, C, "fc2", block=i)]
            if not arch.shared_aln:
                out.append(LinearSpec(p + "ada_lin.1", C, 6 * C, "ada_lin", "cond", block=i))
        # the head and its AdaLN run under autocast(enabled=False) in VAR.get_logits
        out += [LinearSpec("head_nm.ada_lin.1", C, 2 * C, "ada_lin", "cond", fp32=True),
                LinearSpec("head", C, arch.V, "head", fp32=True)]
        return out

    def block_names(self, arch: Arch) -> list[str]:
        return [f"blocks.{i}" for i in range(arch.depth)]

    def attention_names(self, arch: Arch) -> list[str]:
        return [f"{b}.attn" for b in self.block_names(arch)]

    def other_param_bytes(self, arch: VARArch, schedule, fp_bytes: int = 4) -> int:
        C, S, L = arch.embed_dim, len(schedule), sum(p * p for p in schedule)
        n = (arch.num_classes + 1) * C + schedule[0] ** 2 * C + L * C + S * C  # embeddings, positions, levels
        per_block = 3 * C + arch.num_heads + C + arch.hidden + C + (0 if arch.shared_aln else 6 * C)  # biases
        n += arch.depth * per_block + C + 2 * C + arch.V + (6 * C if arch.shared_aln else 0)
        return n * fp_bytes + L * 8  # + lvl_1L (int64)

    def activation_values(self, arch: VARArch, schedule, batch: int) -> int:
        """The last scale's residual stream, attention and FFN activations and logits, CFG-doubled."""
        return 2 * batch * schedule[-1] ** 2 * (4 * arch.embed_dim + arch.hidden + arch.V)

    # -- a live model ----------------------------------------------------------------------
    def arch_of(self, var) -> VARArch:
        cfg, vae = var.cfg, var.vae_proxy[0]
        return VARArch(family=self.name, depth=int(cfg.depth), embed_dim=int(var.C), num_heads=int(cfg.num_heads),
                       mlp_ratio=float(cfg.mlp_ratio), V=int(var.V), Cvae=int(var.Cvae),
                       num_classes=int(var.num_classes), shared_aln=bool(cfg.shared_aln),
                       patch_nums=tuple(var.patch_nums), downsample=int(getattr(vae, "downsample", 16)))

    def schedule_of(self, var) -> tuple[int, ...]:
        return tuple(var.patch_nums)

    def device_of(self, var) -> torch.device:
        return var.lvl_1L.device

    def attention_modules(self, var) -> list:
        return [block.attn for block in var.blocks]

    def conditions(self, var, n: int) -> torch.Tensor:
        from litevar.models.var.inference import balanced_labels
        return torch.tensor(balanced_labels(n, var.num_classes))

    def sample(self, vae, var, conds, seed: int, cfg: float, batch: int, desc: str = "generate"):
        from litevar.models.var.inference import sample
        return sample(var, conds.tolist(), seed, cfg, top_k=SAMPLING["top_k"], top_p=SAMPLING["top_p"], batch=batch,
                      desc=desc)

    def teacher_forced(self, vae, var, conds, tokens, cfg: float, dtype_name: str = "fp32"):
        from litevar.models.var.inference import cfg_logits
        return cfg_logits(var, vae, conds, tokens, cfg, dtype_name)

    def token_kl(self, ref_logits, test_logits):
        lp, lq = ref_logits.log_softmax(-1), test_logits.log_softmax(-1)
        return (lp.exp() * (lp - lq)).sum(-1), ref_logits.argmax(-1) == test_logits.argmax(-1)

    def conditions_from_text(self, var, text: str | None, per: int) -> list[int]:
        """--classes '3,7' (default: up to 8 classes spread over the range), each `per` times."""
        n = var.num_classes
        if text is None:
            ids = [round(i * n / min(8, n)) for i in range(min(8, n))]
        else:
            try:
                ids = [int(t) for t in text.split(",") if t.strip()]
            except ValueError:
                raise UserError(f"--classes {text!r}: give comma-separated integers") from None
        bad = [c for c in ids if not 0 <= c < n]
        if bad or not ids:
            raise UserError(f"--classes: class id(s) {bad or text} out of range; this model has classes 0..{n - 1}")
        return [c for c in ids for _ in range(per)]

    def images(self, vae, var, conds, seed: int, sampling: dict, dtype_name: str = "fp32", progress: bool = True):
        from litevar.models.var.inference import generate
        return generate(var, list(conds), seed, sampling["cfg"], sampling["top_k"], sampling["top_p"],
                        sampling.get("more_smooth", False), dtype_name, progress)

    def generation(self, var, batch: int, dtype_name: str):
        from litevar.models.var.inference import generate
        labels = [i % var.num_classes for i in range(batch)]
        return lambda: generate(var, labels, seed=0, dtype_name=dtype_name, progress=False, **SAMPLING)

    def transformer_phase(self, var, batch: int, dtype_name: str, callback=None):
        dev = var.lvl_1L.device
        labels = torch.tensor([i % var.num_classes for i in range(batch)], device=dev)
        each_scale = None if callback is None else (lambda si, _: callback(si))

        def run():
            with autocast(dev, dtype_name):
                return var.autoregressive_infer_cfg(batch, labels, g_seed=0, decode=False, callback=each_scale,
                                                    **SAMPLING)
        return run

    def decode(self, vae, latent):
        return vae.fhat_to_img(latent)

    def random_latent(self, vae, side: int, device):
        return torch.randn(1, vae.Cvae, side // vae.downsample, side // vae.downsample, device=device)

    def model_for_schedule(self, vae, var, schedule):
        """(vae, var) running `schedule`: the model itself for its own schedule, else a VAR of the
        same config that shares every parameter of the model whose shape does not depend on the
        schedule (the position and level embeddings that do are random-initialised), and a VAE
        sharing the model's weights. It costs the memory of those embeddings only, so a profile of
        an 8 GB model at three resolutions holds one copy of the weights."""
        from litevar.models.var.var import VAR
        pns = tuple(int(p) for p in schedule)
        if pns == tuple(var.patch_nums):
            return vae, var
        dev = var.lvl_1L.device
        vae_s = copy.copy(vae)  # shares every submodule ...
        vae_s._modules = dict(vae._modules)
        vae_s._modules["quantize"] = copy.copy(vae.quantize)
        vae_s.quantize.patch_nums = pns  # ... only the quantizer's schedule differs
        with torch.device("meta"):
            var_s = VAR(vae_s, dataclasses.replace(var.cfg, patch_nums=pns))
        new = dict(var_s.named_parameters())
        shared = {k: p.detach() for k, p in var.named_parameters() if k in new and new[k].shape == p.shape}
        var_s.load_state_dict(shared, strict=False, assign=True)
        for m in var_s.modules():  # materialise what is still on the meta device
            for name, p in m._parameters.items():
                if p is not None and p.is_meta:
                    m._parameters[name] = nn.Parameter(torch.empty_like(p, device=dev))
            for name, b in m._buffers.items():
                if b is not None and b.is_meta:
                    m._buffers[name] = torch.empty_like(b, device=dev)
        var_s.init_buffers()
        for name, p in var_s.named_parameters():
            if name not in shared:
                with torch.no_grad():
                    nn.init.trunc_normal_(p, std=var.default_init_std)
        return vae_s, var_s.eval().requires_grad_(False)

    def compiled(self, var):
        """Each block's FFN torch.compile'd (shapes change scale by scale: dynamic, so one compile
        serves all). The attention stays eager: its call carries the scale layout, which dynamo
        cannot trace with symbolic shapes."""
        for b in var.blocks:
            b.ffn = torch.compile(b.ffn, dynamic=True)
        return var

    def shared_copy(self, var):
        from litevar.models.var.var import shared_copy
        return shared_copy(var)

    def load(self, flags: ModelFlags, device):
        """--random-init --depth D: an untrained official architecture; --ckpt/--vae: official
        checkpoints (architecture from their shapes); neither: the small shipped model."""
        from litevar.models.var.build import build_vae_var, load_vae_var
        from litevar.models.var.schedules import schedule_for
        pns = flags.patch_nums
        if flags.random_init:
            if flags.depth is None:
                raise UserError("--random-init needs --depth (e.g. --depth 16)")
            pns = pns or schedule_for(flags.resolution or 256)
            vae, var = build_vae_var(device, patch_nums=pns, depth=flags.depth, shared_aln=flags.depth >= 36)
            # frozen as a loaded checkpoint is: a parameter that requires grad gets its bf16 copy
            # kept by autocast's weight cache for the whole generation (+half the fp32 weights:
            # d16 dense at bf16 on an H200 peaked 23% above the memory model's figure)
            return vae, var.eval().requires_grad_(False)
        if flags.ckpt or flags.vae:
            if not (flags.ckpt and flags.vae):
                raise UserError("official checkpoints need both --ckpt (VAR) and --vae (VQVAE)")
            return load_vae_var(flags.ckpt, flags.vae, device=device, patch_nums=pns, depth=flags.depth)
        if flags.depth is not None:
            raise UserError("--depth needs --ckpt/--vae (official checkpoints) or --random-init")
        return load_default_model(self.name, device)


