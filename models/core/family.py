"""Model families: everything the profiler, planner, runtime and commands ask of a model.

A family is one object registered by name (`@register_family`): VAR is `models/var/family.py`.
Nothing above the model floor names a family's modules, layers or methods; it asks the family of
a profile's or plan's architecture (`family_of(arch)`) or of a live model (`family_of_model`).

A family supplies, as plain data from its architecture (`Arch`, one typed object per family,
serialised as the `arch` of profiles and plans):
    linears(arch)           its quantizable linears: name, in / out features, role, rows per scale
    attention_names(arch)   its blocks' attention modules, in order (per-block decisions hang there:
                            `<name>.qk` is the QK product, `<name>.kv` the KV cache)
    schedules               its token schedules by resolution (patch_nums: sides of square scales)
    other_param_bytes, activation_values   what the memory model counts besides linears and caches
and, on a live model:
    arch_of, schedule_of, device_of, attention_modules, weights_sha256
    conditions / sample / teacher_forced / token_kl   calibration and the family's loss
    generation / transformer_phase / decode / random_latent / model_for_schedule   what the cost
                            stage times and measures (timing_model: a model of an architecture, for
                            `litevar calibrate` to time)
    load(flags)             a model from the command line's model flags

Per-block attention modules carry `backend` (an AttentionBackend), `kv_factory` (None or a
callable making that block's KV cache at inference) and `num_heads`: kernels set them there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from litevar.models.core.errors import UserError

ROW_RULES = ("token", "cond", "next", "context")  # see LinearSpec.rows


@dataclass(frozen=True)
class LinearSpec:
    """One quantizable linear layer of an architecture."""

    fqn: str  # fully-qualified module name, e.g. blocks.3.ffn.fc2
    K: int  # in features
    N: int  # out features
    kind: str  # its role (fc2, mat_qkv, ...): losses transfer and recipes select by role
    # rows one call multiplies at a scale of B images: "token" every token of the scale, CFG-doubled (2B x
    # tokens); "cond" one per CFG row (2B); "next" the next scale's tokens of the B images (0 at the last);
    # "context" the conditioning tokens (2B x Arch.context_len), once per generation
    rows: str = "token"
    fp32: bool = False  # runs outside autocast: float32 whatever the runtime dtype
    block: int | None = None  # the block it belongs to (None: outside the blocks)

    def __post_init__(self):
        if self.rows not in ROW_RULES:
            raise ValueError(f"LinearSpec {self.fqn}: rows={self.rows!r}; use one of {ROW_RULES}")
        if self.K < 1 or self.N < 1:
            raise ValueError(f"LinearSpec {self.fqn}: K={self.K}, N={self.N} must be positive")

    def rows_at(self, schedule, si: int, batch: int, context_len: int = 0) -> int:
        """Rows (M) of a call at scale si; 0 when the layer does not run there."""
        if self.rows == "token":
            return 2 * batch * schedule[si] ** 2
        if self.rows == "cond":
            return 2 * batch
        if self.rows == "context":
            return 2 * batch * context_len if si == 0 else 0
        return batch * schedule[si + 1] ** 2 if si + 1 < len(schedule) else 0


@dataclass(frozen=True)
class Arch:
    """What cost and plans depend on, as plain data. A family subclasses it with its own fields;
    `to_dict` / the family's `arch_from_dict` are the JSON of profiles and plans."""

    family: str
    depth: int  # transformer blocks
    embed_dim: int  # width C
    num_heads: int
    mlp_ratio: float
    head_out: int  # outputs of the head per token (VAR: the codebook size V)
    downsample: int = 16  # image pixels per latent side
    patch_nums: tuple[int, ...] | None = None  # the model's own schedule (None: unknown)
    context_len: int = 0  # conditioning tokens of a context (a text prompt); 0 for a class label

    PLAN_KEYS: ClassVar[tuple[str, ...]] = ("depth", "embed_dim", "num_heads", "mlp_ratio")  # a plan fits when equal

    def __post_init__(self):
        if self.patch_nums is not None:
            object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        for k in ("depth", "embed_dim", "num_heads", "head_out", "downsample"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"arch {k} = {v!r} must be a positive integer")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"arch embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"arch mlp_ratio {self.mlp_ratio!r} must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["patch_nums"] = None if self.patch_nums is None else list(self.patch_nums)
        return {k: v for k, v in d.items() if v is not None}

    def plan_view(self) -> dict:
        """The keys that decide whether a plan fits a model."""
        return {k: getattr(self, k) for k in ("family", *self.PLAN_KEYS)}


@dataclass(frozen=True)
class ModelFlags:
    """The command line's model selection (litevar.commands.common)."""

    family: str = "var"
    ckpt: str | None = None
    vae: str | None = None
    depth: int | None = None
    random_init: bool = False
    resolution: int | None = None
    patch_nums: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)  # family-specific flags (e.g. a text encoder's folder)


class ModelFamily:
    """The interface of a model family (see the module docstring). Subclass it, set `name`, and
    register an instance with @register_family."""

    name: ClassVar[str] = ""
    arch_type: ClassVar[type[Arch]] = Arch
    schedules: ClassVar[dict[int, tuple[int, ...]]] = {}
    loss_unit: ClassVar[str] = ""
    # e2e configurations of the cost stage: fitted on (each native kernel family in a few layer roles)
    # and held out; '<FORMAT>:<kind>,...' or '<KV format>:<keep rule>' (profiler.costmodel.config_spec)
    fit_configs: ClassVar[tuple[str, ...]] = ()
    validate_configs: ClassVar[tuple[str, ...]] = ()

    # -- plain data -----------------------------------------------------------------------
    def arch_from_dict(self, d: dict) -> Arch:
        names = {f.name for f in dataclasses.fields(self.arch_type)}
        try:
            return self.arch_type(**{k: v for k, v in d.items() if k in names and k != "family"}, family=self.name)
        except TypeError as e:
            raise ValueError(f"{self.name} arch {d!r:.120}: {e}") from None

    def linears(self, arch: Arch) -> list[LinearSpec]:
        raise NotImplementedError

    def block_names(self, arch: Arch) -> list[str]:
        """The blocks' module names, in order (what explain and compare call a block)."""
        raise NotImplementedError

    def attention_names(self, arch: Arch) -> list[str]:
        raise NotImplementedError

    def other_param_bytes(self, arch: Arch, schedule, fp_bytes: int = 4) -> int:
        """Bytes of the parameters and buffers outside the quantizable linears' weights."""
        raise NotImplementedError

    def activation_values(self, arch: Arch, schedule, batch: int) -> int:
        """Values (float32) of the activations alive at the last scale: the memory model's feature."""
        raise NotImplementedError

    def encode_text(self, model, encoder_dir: str | None, prompts: list[str], per: int):
        """(conditions, the text encoder) of text prompts, each `per` times, encoded by the encoder in
        `encoder_dir` (a family with a text encoder)."""
        raise UserError(f"the {self.name} family takes no text prompts: drop --prompt")

    def text_encoder_params(self, arch: Arch) -> int:
        """Parameters of the text encoder a generation needs beside the model (0: none). A plan may
        keep it resident or free it after encoding (the text-encoder lever)."""
        return 0

    def schedule_for(self, resolution: int) -> tuple[int, ...]:
        if resolution not in self.schedules:
            raise UserError(f"{self.name}: no token schedule for {resolution} px; choose one of "
                            f"{sorted(self.schedules)}")
        return self.schedules[resolution]

    def resolution_of(self, schedule) -> int | None:
        pns = tuple(int(p) for p in schedule)
        return next((r for r, s in self.schedules.items() if s == pns), None)

    def linear_names(self, arch: Arch) -> list[str]:
        return [s.fqn for s in self.linears(arch)]

    def block_of(self, arch: Arch, name: str) -> int | None:
        """The block a layer or per-block decision name belongs to (None: outside the blocks)."""
        table = _block_table(self, arch)
        return table.get(name)

    def site_names(self, arch: Arch, site: str) -> list[str]:
        """Per-block decision names, in block order: `<attention name>.<site>` (site: qk, kv)."""
        return [f"{a}.{site}" for a in self.attention_names(arch)]

    # named official configurations: name -> arch dict fields (what `litevar plan --config` prices)
    configs: ClassVar[dict[str, dict]] = {}
    # roles of another family whose trained model may lend this one its losses: {family: {our role: its role}}
    # (a role not listed maps to itself; a layer outside the blocks is looked up by name)
    borrow_roles: ClassVar[dict[str, dict[str, str]]] = {}

    def renamed(self, name: str, arch: Arch, source: Arch) -> str:
        """The name in `source` of the same role at the nearest relative depth (borrowed losses): a
        block's linear by its kind (kinds are unique within a block), a per-block decision by its site.
        A source of another family is read through that family, roles mapped by `borrow_roles`."""
        block = self.block_of(arch, name)
        if block is None:
            return name
        src_family = family_of(source)
        b = 0 if arch.depth == 1 else round(block * (source.depth - 1) / (arch.depth - 1))
        role = roles(self, arch)[name]
        role = self.borrow_roles.get(src_family.name, {}).get(role, role)
        return {r: n for n, r in roles(src_family, source).items()
                if src_family.block_of(source, n) == b}.get(role, name)

    # -- a live model ----------------------------------------------------------------------
    def arch_of(self, model) -> Arch:
        raise NotImplementedError

    def schedule_of(self, model) -> tuple[int, ...]:
        raise NotImplementedError

    def device_of(self, model):
        return next(model.parameters()).device

    def attention_modules(self, model) -> list:
        raise NotImplementedError

    def weights_sha256(self, model) -> str:
        """sha256 over the state dict (sorted names, dtype, shape, raw bytes): same weights, same hash."""
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def conditions(self, model, n: int) -> Any:
        """n calibration conditions (a sliceable batch: class labels, prompt embeddings)."""
        raise NotImplementedError

    def sample(self, vae, model, conds, seed: int, cfg: float, batch: int, desc: str = "generate"):
        """(images, per-scale tokens) of the conditions, batch by batch (batch i with seed + i)."""
        raise NotImplementedError

    def teacher_forced(self, vae, model, conds, tokens, cfg: float, dtype_name: str = "fp32"):
        """CFG-guided logits (B, L, ...) on given tokens, as sampling would see them."""
        raise NotImplementedError

    def token_kl(self, ref_logits, test_logits):
        """KL(ref || test) per token (B, L) in the family's loss unit, and argmax agreement (B, L)."""
        raise NotImplementedError

    def conditions_from_text(self, model, text: str | None, per: int):
        """Conditions the user asked for on the command line (VAR: class ids; default: a spread)."""
        raise NotImplementedError

    def images(self, vae, model, conds, seed: int, sampling: dict, dtype_name: str = "fp32", progress: bool = True):
        """Images (B, 3, H, W) in [0, 1] of the conditions; sampling: cfg, top_k, top_p (and family extras)."""
        raise NotImplementedError

    def generation(self, model, batch: int, dtype_name: str):
        """One timed unit of work: () -> images of `batch` default conditions."""
        raise NotImplementedError

    def transformer_phase(self, model, batch: int, dtype_name: str, callback=None):
        """A generation stopped before the decode: () -> its latent. `callback(scale_index)`, if
        given, is called as each scale is sampled (a progress bar)."""
        raise NotImplementedError

    def decode(self, vae, latent):
        raise NotImplementedError

    def random_latent(self, vae, side: int, device):
        """A latent that decodes to a side x side image."""
        raise NotImplementedError

    def model_for_schedule(self, vae, model, schedule):
        """(vae, model) running `schedule`, sharing the weights that do not depend on it."""
        raise NotImplementedError

    def shared_copy(self, model):
        """A copy of the module tree sharing every tensor (a plan swaps layers of the copy)."""
        raise NotImplementedError

    def compiled(self, model):
        """`model` with its blocks torch.compile'd (the global knob a user tries first)."""
        raise NotImplementedError

    def load(self, flags: ModelFlags, device):
        """(vae, model) from the command line's flags."""
        raise NotImplementedError

    def timing_model(self, arch: Arch, device):
        """(vae, model) of exactly `arch` whose generations take the time any model of it takes (the
        weights do not change a generation's work), or None: the family's shipped default model where
        it is that architecture, else an untrained one of its depth and schedule (loaded on the meta
        device first, so a mismatch costs nothing). `litevar calibrate` times it."""
        if self.name in DEFAULT_MODELS:
            vae, model = load_default_model(self.name, device)
            if self.arch_of(model) == arch:
                return vae, model
        flags = ModelFlags(family=self.name, depth=arch.depth, random_init=True,
                           patch_nums=None if arch.patch_nums is None else tuple(arch.patch_nums))
        try:
            if self.arch_of(self.load(flags, torch.device("meta"))[1]) != arch:
                return None
        except (UserError, NotImplementedError, RuntimeError, ValueError):
            return None
        return self.load(flags, device)


FAMILIES: dict[str, ModelFamily] = {}
# families shipped with litevar, imported when first asked for (no import at start-up)
BUILTIN = {"var": "litevar.models.var.family", "infinity": "litevar.models.infinity.family"}
# a family's default model (no checkpoint given): "module:function(device) -> (vae, model)"
DEFAULT_MODELS = {"var": "litevar.models.default:load_default"}
DEFAULT_FAMILY = "var"  # profiles and plans written before families were recorded are VAR's


def register_family(cls):
    """Class decorator: register one instance of a ModelFamily subclass under cls.name."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: set the class attribute `name` before registering it")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; known: {', '.join(sorted(set(FAMILIES) | set(BUILTIN)))}")
    return FAMILIES[name]


def load_default_model(family: str, device):
    """(vae, model) of a family's default model (DEFAULT_MODELS), or one line saying it has none."""
    if family not in DEFAULT_MODELS:
        raise UserError(f"the {family} family ships no default model; pass its checkpoints (--ckpt/--vae) or "
                        "--random-init")
    module, _, fn = DEFAULT_MODELS[family].partition(":")
    return getattr(importlib.import_module(module), fn)(device)


def family_of(arch: Arch | dict) -> ModelFamily:
    """The family of an architecture (an Arch, or the arch dict of a profile or plan)."""
    name = arch.family if isinstance(arch, Arch) else (arch or {}).get("family", DEFAULT_FAMILY)
    return get_family(name)


def family_of_model(model) -> ModelFamily:
    """The family of a live model (its class sets `family_name`)."""
    name = getattr(model, "family_name", None)
    if name is None:
        raise UserError(f"{type(model).__name__} names no model family (set its class attribute family_name)")
    return get_family(name)


def arch_from(arch: Arch | dict) -> Arch:
    """An Arch from an Arch or a profile's / plan's arch dict, validated (ValueError naming the fix)."""
    return arch if isinstance(arch, Arch) else family_of(arch).arch_from_dict(arch)


def roles(family: ModelFamily, arch: Arch) -> dict[str, str]:
    """Block-level name -> its role within the block: a linear's kind, a decision's site."""
    key = ("roles", family.name, arch)
    if key not in _BLOCKS:
        roles = {s.fqn: s.kind for s in family.linears(arch) if s.block is not None}
        for site in ("qk", "kv"):
            roles.update({n: site for n in family.site_names(arch, site)})
        _BLOCKS[key] = roles
    return _BLOCKS[key]


def _block_table(family: ModelFamily, arch: Arch) -> dict[str, int]:
    key = (family.name, arch)
    if key not in _BLOCKS:
        table = {s.fqn: s.block for s in family.linears(arch) if s.block is not None}
        for site in ("qk", "kv"):
            table.update({n: i for i, n in enumerate(family.site_names(arch, site))})
        table.update({n: i for i, n in enumerate(family.attention_names(arch))})
        _BLOCKS[key] = table
    return _BLOCKS[key]


_BLOCKS: dict = {}
