"""The Infinity family (litevar.models.core.family): text-to-image bitwise VAR, Infinity-2B and 8B.

Plain data: its linears (the self- and cross-attention projections, the FFN, the text projections,
AdaLN and head), its blocks' self-attention modules (`blocks.3.sa`: where KV caches, CFG sharing and
attention backends plug in), its square schedules (profiles and plans price the 1:1 ones; generation
also runs the official aspect ratios) and what its memory model counts besides the linears.
The loss unit is nats per bit: its head predicts one 2-way distribution per bit of each token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from litevar.models.core.errors import UserError
from litevar.models.core.family import Arch, LinearSpec, ModelFamily, ModelFlags, register_family
from litevar.models.core.inference import autocast
from litevar.models.infinity.schedules import SCHEDULES, square_hw

SAMPLING = dict(cfg=4.0, tau=0.5, top_k=900, top_p=0.97)  # scripts/infer.sh and gen_one_img's defaults
CONTEXT_LEN = 64  # prompt tokens a plan is priced for (T5 tokens of a long prompt), and random-init prompts'


def context_len(cfg) -> int:
    """Prompt tokens of the random stand-in prompts and of a plan's pricing."""
    return min(CONTEXT_LEN, cfg.text_maxlen)


def _t5_config(text_channels: int):
    """The known T5 encoder (models.infinity.t5.T5_CONFIGS) of that width, or None."""
    from litevar.models.infinity.t5 import T5_CONFIGS
    return next((c for c in T5_CONFIGS.values() if c.d_model == text_channels), None)


def pixels_per_token(model) -> int:
    """Image pixels per token side: the attached VAE's downsampling (x2 for patchified tokens); 16 for the
    official models when no VAE is attached."""
    vae = getattr(model, "vae_proxy", (None,))[0]
    if vae is None:
        return 16
    return vae.downsample * (2 if model.cfg.patchify else 1)


@dataclass(frozen=True)
class InfinityArch(Arch):
    """An Infinity's architecture: the common fields, the text encoder's width, the code's bits and
    whether a token patchifies 2x2 codes (8B)."""

    text_channels: int = 2048
    vae_bits: int = 32
    patchify: bool = False
    text_maxlen: int = 512
    pool_head: int = 0
    head_out: int = 0  # = 2 * token bits
    context_len: int = CONTEXT_LEN

    # a plan fits when equal (numbers: head_out = 2 x token bits tells a patchified model apart)
    PLAN_KEYS: ClassVar[tuple[str, ...]] = ("depth", "embed_dim", "num_heads", "mlp_ratio", "text_channels",
                                            "vae_bits", "head_out")

    def __post_init__(self):
        object.__setattr__(self, "head_out", 2 * self.token_bits)
        super().__post_init__()

    @property
    def token_bits(self) -> int:
        return self.vae_bits * (4 if self.patchify else 1)

    @property
    def hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256


@register_family
class InfinityFamily(ModelFamily):
    name = "infinity"
    arch_type = InfinityArch
    schedules = SCHEDULES
    loss_unit = ("nats per bit: sum over scales of the mean, over tokens and bits, of KL(full precision || test) of "
                 "the CFG-guided 2-way distribution of each bit, teacher-forced on the full-precision model's samples")
    fit_configs = ("BF16:fc1,fc2", "BF16:mat_qkv,proj,ca_q,ca_proj,ca_kv",
                   "W8A8:fc1,fc2", "W8A8:mat_qkv,proj,ca_q,ca_proj",
                   "W4A8:fc1,fc2", "W4A8:mat_qkv,proj,ca_q,ca_proj",
                   "W4A16:fc1,fc2", "W4A16:mat_qkv,proj,ca_q,ca_proj",
                   "W8A8:mat_qkv,fc1,fc2,head", "KV8:all")
    configs = {"2b": dict(depth=32, embed_dim=2048, num_heads=16, mlp_ratio=4.0, text_channels=2048, vae_bits=32,
                          patchify=False),
               "8b": dict(depth=40, embed_dim=3584, num_heads=28, mlp_ratio=4.0, text_channels=2048, vae_bits=14,
                          patchify=True)}
    # no trained Infinity is at hand: a VAR's losses rank its layers, cross-attention taking self-attention's
    borrow_roles = {"var": {"ca_q": "mat_qkv", "ca_kv": "mat_qkv", "ca_proj": "proj"}}
    validate_configs = ("W4A8:mat_qkv,proj;W8A8:fc1,fc2,head", "BF16:mat_qkv,proj,fc1,ca_q,ca_proj", "KV8:all",
                        "KV4:s1r2")

    # -- plain data -----------------------------------------------------------------------
    def linears(self, arch: InfinityArch) -> list[LinearSpec]:
        C, Ct5, hid = arch.embed_dim, arch.text_channels, arch.hidden
        # the text projections, AdaLN and head run outside autocast (float32), as the official model's
        out = [LinearSpec("text_proj_for_sos.ca.mat_kv", Ct5, 2 * C, "text_proj", "context", fp32=True),
               LinearSpec("text_proj_for_sos.ca.proj", C, C, "text_pool_proj", "cond", fp32=True),
               LinearSpec("text_proj_for_ca.0", Ct5, C, "text_proj_in", "context", fp32=True),
               LinearSpec("text_proj_for_ca.2", C, C, "text_proj_out", "context", fp32=True),
               LinearSpec("word_embed", arch.token_bits, C, "word_embed", "next", fp32=True),
               LinearSpec("shared_ada_lin.1", C, 6 * C, "ada_lin", "cond", fp32=True)]
        for i in range(arch.depth):
            p = f"blocks.{i}."
            out += [LinearSpec(p + "sa.mat_qkv", C, 3 * C, "mat_qkv", block=i),
                    LinearSpec(p + "sa.proj", C, C, "proj", block=i),
                    LinearSpec(p + "ca.mat_q", C, C, "ca_q", block=i),
                    LinearSpec(p + "ca.mat_kv", C, 2 * C, "ca_kv", "context", block=i),
                    LinearSpec(p + "ca.proj", C, C, "ca_proj", block=i),
                    LinearSpec(p + "ffn.fc1", C, hid, "fc1", block=i),
                    LinearSpec(p + "ffn.fc2", hid, C, "fc2", block=i)]
        out += [LinearSpec("head_nm.ada_lin.1", C, 2 * C, "head_ada_lin", "cond", fp32=True),
                LinearSpec("head", C, arch.head_out, "head", fp32=True)]
        return out

    def block_names(self, arch: Arch) -> list[str]:
        return [f"blocks.{i}" for i in range(arch.depth)]

    def attention_names(self, arch: Arch) -> list[str]:
        return [f"{b}.sa" for b in self.block_names(arch)]

    def other_param_bytes(self, arch: InfinityArch, schedule, fp_bytes: int = 4) -> int:
        """Parameters and buffers besides the linears' weights (biases, norms, embeddings, the learned
        unconditional text), plus the RoPE table of the schedule (float32)."""
        C, Ct5, H, hid = arch.embed_dim, arch.text_channels, arch.num_heads, arch.hidden
        top = arch.text_maxlen * Ct5 + Ct5  # cfg_uncond, text_norm
        top += C + 2 * C + C  # the pool's query (H x head width = C), v bias + zero k bias, proj bias
        top += 2 * C + C + 15 * C + C + 6 * C + 2 * C + arch.head_out  # text proj, pos_start, lvl, biases
        block = 6 * C + H + 3 * C + C + C + 2 * C + C + hid + C + 2 * C  # gss, scale, q/k/v bias, ..., ca_norm
        L = sum(p * p for p in schedule)
        return (top + arch.depth * block) * fp_bytes + 2 * L * (arch.head_dim // 2) * 4

    def activation_values(self, arch: InfinityArch, schedule, batch: int) -> int:
        """The last scale's residual stream, attention and FFN activations and logits, CFG-doubled, plus
        every block's cached text K/V (a generation keeps them)."""
        n = 2 * batch * schedule[-1] ** 2
        ctx = arch.depth * 2 * (2 * batch * arch.context_len) * arch.embed_dim
        return n * (4 * arch.embed_dim + arch.hidden + arch.head_out) + ctx

    # -- a live model ----------------------------------------------------------------------
    def text_encoder_params(self, arch: InfinityArch) -> int:
        """The T5 encoder of the model's text width (Flan-T5-XL for the official 2B and 8B)."""
        cfg = _t5_config(arch.text_channels)
        return 0 if cfg is None else cfg.param_count()

    def arch_of(self, model) -> InfinityArch:
        c = model.cfg
        return InfinityArch(family=self.name, depth=c.depth, embed_dim=c.embed_dim, num_heads=c.num_heads,
                            mlp_ratio=float(c.mlp_ratio), text_channels=c.text_channels, vae_bits=c.vae_bits,
                            patchify=c.patchify, text_maxlen=c.text_maxlen, pool_head=c.pool_head,
                            context_len=context_len(c),
                            patch_nums=tuple(model.patch_nums) if model.layout.hw is None else None,
                            downsample=pixels_per_token(model))

    def schedule_of(self, model) -> tuple[int, ...]:
        if model.layout.hw is not None:
            raise UserError(f"this Infinity runs an aspect-ratio schedule {model.hw}; profiles and plans price "
                            "square (1:1) schedules only")
        return tuple(model.patch_nums)

    def device_of(self, model) -> torch.device:
        return model.pos_start.device

    def attention_modules(self, model) -> list:
        return [b.sa for b in model.blocks]

    def conditions(self, model, n: int):
        from litevar.models.infinity.model import random_text
        return random_text(n, context_len(model.cfg), model.cfg.text_channels, seed=0)

    def conditions_from_text(self, model, text: str | None, per: int):
        """--prompts FILE: prompt embeddings saved with torch.save({'emb': (N, T, C), 'lens': [N]}) by the
        user's own text encoder; default: random stand-ins of CONTEXT_LEN tokens."""
        from litevar.models.infinity.model import TextCond, random_text
        if text is None:
            return random_text(per, context_len(model.cfg), model.cfg.text_channels, seed=0)
        try:
            obj = torch.load(text, map_location="cpu", weights_only=True)
            cond = TextCond(obj["emb"].float(), obj["lens"])
        except Exception as e:
            raise UserError(f"--prompts {text}: not a prompt-embedding file ({type(e).__name__}); save "
                            "{'emb': (N, T, C) tensor, 'lens': [N lengths]} with torch.save") from None
        if cond.emb_BTC.shape[-1] != model.cfg.text_channels:
            raise UserError(f"--prompts {text}: embeddings are {cond.emb_BTC.shape[-1]} wide; this model's text "
                            f"encoder gives {model.cfg.text_channels}")
        idx = [i for i in range(len(cond)) for _ in range(per)]
        return TextCond(cond.emb_BTC[idx], [cond.lens[i] for i in idx])

    def _generate(self, model, conds, seed, sampling, dtype_name, callback=None, prefix=None):
        s = {**SAMPLING, **{k: v for k, v in sampling.items() if k in SAMPLING}}
        with autocast(self.device_of(model), dtype_name):
            return model.generate(conds, g_seed=seed, cfg=s["cfg"], tau=s["tau"], top_k=s["top_k"], top_p=s["top_p"],
                                  callback=callback, prefix_bits=prefix)

    def sample(self, vae, model, conds, seed: int, cfg: float, batch: int, desc: str = "generate"):
        from tqdm import tqdm
        imgs, bits = [], []
        for i, b in enumerate(tqdm(range(0, len(conds), batch), desc=desc, unit="batch", leave=False)):
            codes, bb = self._generate(model, conds[b:b + batch], seed + i, {"cfg": cfg}, "fp32")
            imgs.append(vae.decode(codes).add(1).mul(0.5).cpu())
            bits.append([t.cpu() for t in bb])
        return torch.cat(imgs), [torch.cat(ts) for ts in zip(*bits)]

    def teacher_forced(self, vae, model, conds, tokens, cfg: float, dtype_name: str = "fp32"):
        dev = self.device_of(model)
        x = model.teacher_inputs([t.to(dev) for t in tokens])
        with autocast(dev, dtype_name):
            logits = model(conds, x, cfg_double=True)
        B, tau = len(conds), SAMPLING["tau"]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / tau
        return cfg * logits[:B] + (1 - cfg) * logits[B:]

    def token_kl(self, ref_logits, test_logits):
        """Mean over a token's bits of KL(ref || test) of each bit's 2-way distribution, and the share of
        its bits whose most likely value agrees."""
        lp = ref_logits.unflatten(-1, (-1, 2)).log_softmax(-1)
        lq = test_logits.unflatten(-1, (-1, 2)).log_softmax(-1)
        kl = (lp.exp() * (lp - lq)).sum(-1).mean(-1)
        return kl, (lp.argmax(-1) == lq.argmax(-1)).float().mean(-1)

    def images(self, vae, model, conds, seed: int, sampling: dict, dtype_name: str = "fp32", progress: bool = True):
        from tqdm import tqdm
        bar = tqdm(total=len(model.hw), desc="scales", unit="scale", disable=not progress, leave=False)
        codes, _ = self._generate(model, conds, seed, sampling, dtype_name, callback=lambda si, _: bar.update(1))
        bar.close()
        return vae.decode(codes).add(1).mul(0.5)

    def generation(self, model, batch: int, dtype_name: str):
        vae = model.vae_proxy[0] if hasattr(model, "vae_proxy") else None
        conds = self.conditions(model, batch)
        if vae is None:
            raise UserError("this Infinity has no VAE attached (build it with litevar.models.infinity.build)")
        return lambda: vae.decode(self._generate(model, conds, 0, {}, dtype_name)[0])

    def transformer_phase(self, model, batch: int, dtype_name: str, callback=None, conds=None):
        """A generation of `conds` (default: stand-in prompt embeddings) stopped before the decode."""
        conds = self.conditions(model, batch) if conds is None else conds
        each_scale = None if callback is None else (lambda si, _: callback(si))
        return lambda: self._generate(model, conds, 0, {}, dtype_name, callback=each_scale)[0]

    def encode_text(self, model, encoder_dir: str | None, prompts: list[str], per: int):
        """Prompts through the T5 encoder of a local directory (bf16, as the official pipeline), at
        most text_maxlen tokens each; the TextCond repeats each prompt `per` times."""
        from litevar.models.infinity.model import TextCond
        from litevar.models.infinity.t5 import Tokenizer, encode_prompts, load_t5_encoder
        if not encoder_dir:
            raise UserError("--prompt needs --text-encoder DIR: a local T5 v1.1 / Flan-T5 model directory "
                            "(google/flan-t5-xl for the official Infinity); or pass --classes EMBEDDINGS.pt")
        encoder = load_t5_encoder(encoder_dir, self.device_of(model))
        if encoder.cfg.d_model != model.cfg.text_channels:
            raise UserError(f"--text-encoder {encoder_dir}: its states are {encoder.cfg.d_model} wide; this model "
                            f"reads {model.cfg.text_channels}")
        ids, mask = Tokenizer(encoder_dir)(list(prompts), model.cfg.text_maxlen)
        cond = encode_prompts(encoder, ids, mask)
        idx = [i for i in range(len(cond)) for _ in range(per)]
        return TextCond(cond.emb_BTC[idx].float(), [cond.lens[i] for i in idx]), encoder

    def random_text_encoder(self, model, seed: int = 0):
        """A random-init T5 encoder of the model's text width, stored in bf16 as the official pipeline
        keeps it (what a plan's text-encoder decision is measured with when no checkpoint is at hand)."""
        from litevar.models.infinity.t5 import T5Encoder
        cfg = _t5_config(model.cfg.text_channels)
        if cfg is None:
            raise UserError(f"no known T5 encoder gives {model.cfg.text_channels}-wide states (Flan-T5-XL: 2048)")
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device(self.device_of(model)):
                return T5Encoder(cfg).init_weights(torch.Generator().manual_seed(seed)).eval()
        finally:
            torch.set_default_dtype(old)

    def encode_ids(self, encoder, ids_BT, mask_BT):
        """The conditions of token ids through `encoder` (models.infinity.t5.encode_prompts)."""
        from litevar.models.infinity.t5 import encode_prompts
        return encode_prompts(encoder, ids_BT, mask_BT)

    def stand_in_prompts(self, model, batch: int, seed: int = 0):
        """(ids, mask) of `batch` stand-in prompts of CONTEXT_LEN token ids each."""
        g = torch.Generator().manual_seed(seed)
        n = context_len(model.cfg)
        return torch.randint(2, 32000, (batch, n), generator=g), torch.ones(batch, n, dtype=torch.bool)

    def decode(self, vae, latent):
        return vae.decode(latent)

    def random_latent(self, vae, side: int, device):
        d = side // vae.downsample
        s = 1.0 / vae.bits ** 0.5
        return (torch.randint(0, 2, (1, vae.bits, d, d), device=device).float() * 2 - 1) * s

    def model_for_schedule(self, vae, model, schedule):
        """The model itself, running `schedule` (a square one): nothing of Infinity's weights depends on
        the schedule (no absolute positions), so one copy serves every resolution."""
        from litevar.models.var.var import shared_copy
        pns = tuple(int(p) for p in schedule)
        if pns == tuple(model.patch_nums) and model.layout.hw is None:
            return vae, model
        twin = shared_copy(model)
        twin.set_schedule(square_hw(pns))
        return vae, twin

    def shared_copy(self, model):
        from litevar.models.var.var import shared_copy
        return shared_copy(model)

    def compiled(self, model):
        for b in model.blocks:
            b.ffn = torch.compile(b.ffn, dynamic=True)
        return model

    def load(self, flags: ModelFlags, device):
        """--random-init --depth 32|40: an untrained official architecture (another depth: 64 channels per block);
        --ckpt/--vae:
        the released checkpoints (architecture from their shapes). Infinity ships no default model."""
        from litevar.models.infinity.build import build, load
        from litevar.models.infinity.model import CONFIGS, InfinityConfig
        hw = square_hw(self.schedule_for(flags.resolution or 1024)) if flags.patch_nums is None \
            else square_hw(flags.patch_nums)
        if flags.random_init:
            if flags.depth is None:
                raise UserError("--random-init for Infinity needs --depth: 32 (2B), 40 (8B), or any other depth for "
                                "a narrow model of 64 channels per block")
            size = flags.extra.get("size") or {c.depth: k for k, c in CONFIGS.items()}.get(flags.depth)
            cfg = None if size else InfinityConfig(depth=flags.depth, embed_dim=64 * flags.depth,
                                                   num_heads=flags.depth)
            vae, model = build(size or "2b", hw=hw, device=device, cfg=cfg)
        elif flags.ckpt and flags.vae:
            vae, model = load(flags.ckpt, flags.vae, device=device, hw=hw)
        else:
            raise UserError("the infinity family ships no default model: pass --ckpt (transformer) and --vae "
                            "(BSQ VAE), or --random-init --depth 32|40")
        model.vae_proxy = (vae,)
        return vae, model
