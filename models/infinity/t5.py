"""Infinity's text encoder: the encoder of a T5 v1.1 / Flan-T5 model (Flan-T5-XL for the official
2B and 8B), written from the T5 equations, loaded strictly from a local model directory.

    T5Config                   the encoder's shape (T5_CONFIGS: "xl", the official one; any other by
                               its config.json)
    T5Encoder(cfg)(ids, mask)  last hidden states (B, T, d_model) in float32
    load_t5_encoder(dir)       the encoder of a local directory (config.json + *.safetensors or
                               pytorch_model*.bin, sharded or not), every encoder key checked
    Tokenizer(dir)             its SentencePiece vocabulary (spiece.model; needs `sentencepiece`)
    encode_prompts(...)        a TextCond of prompts (what Infinity cross-attends to)

The layer: x + Attn(RMS(x)), then x + FFN(RMS(x)); attention scores are q k^T with no 1/sqrt(d)
(T5 folds it into the initialisation) plus a learned bias per head and relative-position bucket
(shared by every layer, held by the first); the FFN is gated: wo(gelu_tanh(wi_0 x) * wi_1 x). A
full T5 checkpoint's decoder and LM head are not read. Nothing is downloaded.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from litevar.models.core.errors import UserError


@dataclass(frozen=True)
class T5Config:
    vocab: int = 32128
    d_model: int = 2048
    d_kv: int = 64
    num_heads: int = 32
    d_ff: int = 5120
    num_layers: int = 24
    buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    def __post_init__(self):
        if min(self.vocab, self.d_model, self.d_kv, self.num_heads, self.d_ff, self.num_layers) < 1:
            raise UserError(f"T5 config {self}: every size must be positive")
        if self.buckets < 4 or self.buckets % 2 or self.max_distance <= self.buckets // 4:
            raise UserError(f"T5 config: {self.buckets} buckets up to distance {self.max_distance}: give an even "
                            "number of buckets >= 4 and a max distance above a quarter of them (T5: 32, 128)")

    @property
    def inner(self) -> int:
        return self.num_heads * self.d_kv

    def param_count(self) -> int:
        """The encoder's parameters: the token embedding, per layer the four attention projections,
        the gated FFN and two norms, the bucket bias and the final norm."""
        layer = 4 * self.d_model * self.inner + 3 * self.d_model * self.d_ff + 2 * self.d_model
        return self.vocab * self.d_model + self.num_layers * layer + self.buckets * self.num_heads + self.d_model

    @classmethod
    def from_hf(cls, d: dict, where: str) -> T5Config:
        """From a model directory's config.json (a gated-GELU T5: v1.1, Flan-T5)."""
        act = d.get("feed_forward_proj", "relu")
        if act not in ("gated-gelu",):
            raise UserError(f"{where}: feed_forward_proj {act!r}; litevar reads the gated-GELU T5 encoders "
                            "(T5 v1.1, Flan-T5) that Infinity uses")
        try:
            return cls(vocab=int(d["vocab_size"]), d_model=int(d["d_model"]), d_kv=int(d["d_kv"]),
                       num_heads=int(d["num_heads"]), d_ff=int(d["d_ff"]), num_layers=int(d["num_layers"]),
                       buckets=int(d.get("relative_attention_num_buckets", 32)),
                       max_distance=int(d.get("relative_attention_max_distance", 128)),
                       eps=float(d.get("layer_norm_epsilon", 1e-6)))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: not a T5 config.json ({type(e).__name__}: {e}); point at the directory "
                            "of a T5 v1.1 / Flan-T5 model") from None


T5_CONFIGS = {"xl": T5Config()}  # google/flan-t5-xl, the official Infinity text encoder


def relative_buckets(q_len: int, k_len: int, buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """(q_len, k_len) bucket of each key's offset from its query, both directions: half the buckets
    per sign; within each half, exact offsets below a quarter of the buckets, then logarithmic bins
    up to max_distance (farther offsets share the last bin)."""
    rel = torch.arange(k_len, device=device)[None] - torch.arange(q_len, device=device)[:, None]
    half = buckets // 2
    out = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    far = exact + (torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return out + torch.where(dist < exact, dist, far.clamp(max=half - 1))


class T5Norm(nn.Module):
    """x / rms(x) * weight, in float32 (no mean, no bias)."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(C)), eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


class T5Attention(nn.Module):
    def __init__(self, cfg: T5Config, has_bias: bool):
        super().__init__()
        self.cfg = cfg
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, cfg.inner, bias=False) for _ in "qkv")
        self.o = nn.Linear(cfg.inner, cfg.d_model, bias=False)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(cfg.buckets, cfg.num_heads)

    def position_bias(self, T: int, device) -> torch.Tensor:
        """(1, H, T, T) learned bias of each head and relative-position bucket."""
        b = relative_buckets(T, T, self.cfg.buckets, self.cfg.max_distance, device)
        return self.relative_attention_bias(b).permute(2, 0, 1)[None].float()

    def forward(self, x_BTC, bias_1HTT, keep_BT):
        B, T, _ = x_BTC.shape
        H, c = self.cfg.num_heads, self.cfg.d_kv
        q, k, v = (m(x_BTC).view(B, T, H, c).transpose(1, 2) for m in (self.q, self.k, self.v))
        scores = (q.float() @ k.float().transpose(-1, -2)) + bias_1HTT
        scores = scores.masked_fill(~keep_BT[:, None, None, :], float("-inf"))
        o = scores.softmax(-1).to(v.dtype) @ v
        return self.o(o.transpose(1, 2).reshape(B, T, H * c))


class T5FFN(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class _Sub(nn.Module):
    """A sublayer as T5 names it: its norm and its attention or FFN."""

    def __init__(self, cfg: T5Config, body: nn.Module, name: str):
        super().__init__()
        self.layer_norm = T5Norm(cfg.d_model, cfg.eps)
        self.add_module(name, body)
        self.body_name = name

    def forward(self, x, *args):
        return x + getattr(self, self.body_name)(self.layer_norm(x), *args)


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config, first: bool):
        super().__init__()
        self.layer = nn.ModuleList([_Sub(cfg, T5Attention(cfg, first), "SelfAttention"),
                                    _Sub(cfg, T5FFN(cfg), "DenseReluDense")])

    def forward(self, x, bias_1HTT, keep_BT):
        return self.layer[1](self.layer[0](x, bias_1HTT, keep_BT))


class _Stack(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.block = nn.ModuleList([T5Block(cfg, i == 0) for i in range(cfg.num_layers)])
        self.final_layer_norm = T5Norm(cfg.d_model, cfg.eps)


class T5Encoder(nn.Module):
    """ids (B, T) and mask (B, T) -> the last hidden states (B, T, d_model), float32 (padding rows
    included: Infinity reads each prompt's first `len` tokens)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab, cfg.d_model)
        self.encoder = _Stack(cfg)

    def forward(self, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        x = self.shared(ids_BT)
        bias = self.encoder.block[0].layer[0].SelfAttention.position_bias(ids_BT.shape[1], ids_BT.device)
        keep = mask_BT.bool()
        for blk in self.encoder.block:
            x = blk(x, bias, keep)
        return self.encoder.final_layer_norm(x).float()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> T5Encoder:
        """T5's initialisation scales (a random-init stand-in of the right shapes and magnitudes)."""
        d, kv = self.cfg.d_model, self.cfg.d_kv
        for name, p in self.named_parameters():
            if name.endswith("layer_norm.weight"):
                continue
            role = name.split(".")[-2]
            std = {"q": (d * kv) ** -0.5, "k": d ** -0.5, "v": d ** -0.5, "o": self.cfg.inner ** -0.5,
                   "wi_0": d ** -0.5, "wi_1": d ** -0.5, "wo": self.cfg.d_ff ** -0.5,
                   "relative_attention_bias": d ** -0.5, "shared": 1.0}[role]
            p.normal_(0.0, std, generator=generator)
        return self


def encoder_keys(sd: dict) -> dict:
    """The encoder's tensors of a T5 state dict: the decoder and LM head dropped, the tied token
    embedding under `shared.weight` (a checkpoint may hold it as encoder.embed_tokens.weight)."""
    out = {k: v for k, v in sd.items() if not k.startswith(("decoder.", "lm_head."))}
    tied = out.pop("encoder.embed_tokens.weight", None)
    if "shared.weight" not in out and tied is not None:
        out["shared.weight"] = tied
    return out


def _read_dir(path: Path) -> dict:
    from litevar.models.core.checkpoint import load_checkpoint
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"--text-encoder {path}: no *.safetensors or pytorch_model*.bin in it; point at a local "
                        "T5 v1.1 / Flan-T5 model directory (e.g. a copy of google/flan-t5-xl)")
    sd: dict = {}
    for f in files:
        sd.update(load_checkpoint(f))
    return sd


def load_t5_encoder(path: str | Path, device="cpu", dtype: torch.dtype = torch.bfloat16) -> T5Encoder:
    """The encoder of a local T5 model directory, every encoder key and shape checked (one line on
    a mismatch), its weights in `dtype` (bf16 by default, as the official Infinity pipeline keeps
    it) on `device`."""
    from litevar.models.core.checkpoint import strict_load
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"--text-encoder {path}: no config.json; point at a local T5 v1.1 / Flan-T5 model directory")
    try:
        cfg = T5Config.from_hf(json.loads((path / "config.json").read_text()), str(path / "config.json"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path / 'config.json'} is not JSON ({e.msg}); point at a T5 model directory") from None
    with torch.device("meta"):
        enc = T5Encoder(cfg)
    sd = {k: v.to(dtype) for k, v in encoder_keys(_read_dir(path)).items()}
    strict_load(enc, sd, f"T5 encoder {path}", {"d_model": cfg.d_model, "layers": cfg.num_layers})
    return enc.to(device).eval()


class Tokenizer:
    """A T5 SentencePiece vocabulary (spiece.model): text -> ids ending with </s> (id 1), pad 0."""

    PAD, EOS = 0, 1

    def __init__(self, path: str | Path):
        try:
            import sentencepiece
        except ImportError:
            raise UserError("tokenizing prompts needs the sentencepiece package (pip install sentencepiece); or "
                            "pass prompt embeddings with --prompts FILE.pt") from None
        model = Path(path) / "spiece.model"
        if not model.is_file():
            raise UserError(f"--text-encoder {path}: no spiece.model (the T5 vocabulary) in it")
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model))

    def __call__(self, prompts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.sp.encode(p)[:max_len - 1] + [self.EOS] for p in prompts]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), self.PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, torch.arange(T)[None] < torch.tensor([len(r) for r in rows])[:, None]


@torch.no_grad()
def encode_prompts(encoder: T5Encoder, ids_BT: torch.Tensor, mask_BT: torch.Tensor):
    """The TextCond Infinity cross-attends to: the encoder's states and each prompt's length."""
    from litevar.models.infinity.model import TextCond
    dev = next(encoder.parameters()).device
    emb = encoder(ids_BT.to(dev), mask_BT.to(dev))
    return TextCond(emb, mask_BT.sum(1).tolist())
