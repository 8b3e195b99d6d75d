"""The plan file (docs/plan-schema.md): one dataclass, validated on every way in.

`Plan.load(path)` and `Plan.from_dict(d)` check everything a runtime relies on and raise
UserError with one line naming the bad field and the fix; `Plan.from_dict(p.to_dict()) == p`.
`Plan.check_model` compares a plan with a model's fingerprints (litevar.models.var.build.arch_of,
weights_sha256).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from litevar.kernels.formats import FORMATS, get_format
from litevar.kernels.windows import WindowConfig
from litevar.models.core.atomic import read_json, write_text
from litevar.models.core.errors import UserError
from litevar.models.core.family import Arch, arch_from, family_of

FORMAT = "litevar-plan"
VERSION = 3  # 3: dtype, predicted tier / process memory; 2: KV-cache decisions (kv, kv_layout)
READS = (1, 2, 3)
REPLAN = "re-run `litevar plan` for this model"


def describe_schedule(patch_nums, family=None) -> str:
    res = family.resolution_of(patch_nums) if family is not None else None
    pns = ",".join(str(p) for p in patch_nums)
    return f"{res} px (patch_nums {pns})" if res else f"custom patch_nums {pns}"


@dataclass
class Predicted:
    """A plan's predicted figures (the planner's, from its profile's cost model and losses). Time in
    ms, memory in MB (2**20 bytes), loss in the profile's unit; None where not predicted."""

    latency_ms: float | None = None
    memory_mb: float | None = None
    loss: float | None = None
    dense_latency_ms: float | None = None
    dense_memory_mb: float | None = None
    speedup: float | None = None
    attn_kept: float | None = None
    attn_flops: float | None = None
    avg_bits: float | None = None
    memory_breakdown_mb: dict | None = None  # part -> MB of the transformer phase, and decode_phase
    process_memory_mb: float | None = None  # what the process holds (memory_mb is the allocator's peak)
    memory_covers: str | None = None  # what the memory budget governed, and why
    tier: str | None = None  # spec | calibrated | profiled: what priced these figures

    @classmethod
    def from_dict(cls, d) -> Predicted:
        if not isinstance(d, dict):
            raise UserError(f"plan predicted must be an object, got {type(d).__name__}; {REPLAN}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise UserError(f"plan predicted has unknown field(s) {', '.join(extra)}; {REPLAN}")
        for k, v in d.items():
            if k not in ("memory_breakdown_mb", "memory_covers", "tier") and v is not None and not (
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise UserError(f"plan predicted.{k} = {v!r:.40}: not a finite number; {REPLAN}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def phase_peaks_mb(breakdown: dict | None) -> dict[str, float]:
    """MB of each phase's predicted peak from a memory breakdown (Predicted.memory_breakdown_mb, or a
    result file's copy): `transformer` (its parts summed), `decode` and `encode` (0 where a phase is
    not modelled); {} without a breakdown."""
    if not breakdown:
        return {}
    return {"transformer": float(sum(v for k, v in breakdown.items() if not k.endswith("_phase"))),
            "decode": float(breakdown.get("decode_phase", 0.0)), "encode": float(breakdown.get("encode_phase", 0.0))}


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(eq=False)
class Plan:
    """One compression plan for one model, schedule, batch and device. See docs/plan-schema.md."""

    model: dict  # {"name", "weights_sha256" (str or None), "arch": the model family's architecture}
    resolution: int
    patch_nums: tuple[int, ...]
    formats: dict[str, str]  # fully-qualified linear name -> format name ("fp": full precision)
    name: str = ""
    batch: int = 1
    device: dict = field(default_factory=dict)  # {"type": "cpu", "name": "..."}
    profile_sha256: str | None = None
    budgets: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)
    predicted: Predicted = field(default_factory=Predicted)
    qk_int8: list[int] = field(default_factory=list)
    windows: WindowConfig | None = None
    cfg_shared: list[int] = field(default_factory=list)
    kv: dict = field(default_factory=dict)  # block -> {"format": "KV8", "keep": {"sinks": s, "recent": m}}
    kv_layout: dict = field(default_factory=dict)  # {"heads", "head_dim"} of the cache the kv decisions are for
    dtype: str | None = None  # the runtime dtype it was priced for (None: the profile's)
    # a family with a text encoder: {"mode": "resident" | "freed", "images_per_prompt": n}; None: not counted
    text_encoder: dict | None = None
    version: int = VERSION

    def __post_init__(self):
        for what in ("model", "device", "budgets", "solver"):  # plain JSON data, copied
            setattr(self, what, _json_data(what, getattr(self, what)))
        if "max_memory_gb" in self.budgets:  # plans before GiB was named: the figure was GiB already
            self.budgets["max_memory_gib"] = self.budgets.pop("max_memory_gb")
        if not isinstance(self.predicted, Predicted):
            self.predicted = Predicted.from_dict(_json_data("predicted", self.predicted))
        self.patch_nums = tuple(_int_list("patch_nums", self.patch_nums, "[1, 2, 3, 4, 5, 6, 8, 10, 13, 16]"))
        if not isinstance(self.formats, dict):
            raise UserError(f"plan formats must map layer names to format names, got "
                            f"{type(self.formats).__name__}; {REPLAN}")
        self.formats = {str(k): getattr(v, "name", v) for k, v in self.formats.items()}
        self.qk_int8 = sorted(set(_int_list("qk_int8", self.qk_int8, "[0, 3]")))
        self.cfg_shared = sorted(set(_int_list("cfg_shared", self.cfg_shared, "[2, 3]")))
        if isinstance(self.windows, dict):
            self.windows = _windows_from_dict(self.windows)
        self.kv = _kv_entries(self.kv)
        self.kv_layout = _json_data("kv_layout", self.kv_layout)
        self.version = VERSION  # older files read as version 3 with no KV decisions / dtype
        if self.dtype not in (None, "fp32", "bf16", "fp16"):
            raise UserError(f"plan dtype {self.dtype!r}: use fp32, bf16, fp16 or null; {REPLAN}")
        self.text_encoder = _text_encoder_entry(self.text_encoder)
        self.validate()

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    # -- validation ---------------------------------------------------------------------------
    @property
    def arch(self) -> dict:
        return self.model["arch"]

    @property
    def typed_arch(self) -> Arch:
        """The plan's architecture as its family reads it."""
        return arch_from(self.arch)

    @property
    def family(self):
        return family_of(self.arch)

    def validate(self) -> None:
        """Raise UserError naming the first inconsistent field and how to fix it."""
        _check_model_entry(self.model)
        _check_schedule(self.family, self.resolution, self.patch_nums)
        if not isinstance(self.batch, int) or self.batch < 1:
            raise UserError(f"plan batch {self.batch!r}: use a positive number of images")
        depth = self.arch["depth"]
        linears = set(self.family.linear_names(self.typed_arch))
        for fqn, fmt in self.formats.items():
            if fqn not in linears:
                raise UserError(f"plan formats name unknown layer {fqn!r}: this {self.family.name} architecture "
                                f"(blocks 0..{depth - 1}) has no such quantizable layer; they are e.g. "
                                f"{', '.join(self.family.linear_names(self.typed_arch)[:4])}; {REPLAN}")
            try:
                get_format(fmt)
            except UserError:
                raise UserError(f"plan formats[{fqn!r}] = {fmt!r}: unknown format; use one of "
                                f"{', '.join(FORMATS)}") from None
        for what in ("qk_int8", "cfg_shared"):
            bad = [i for i in getattr(self, what) if not 0 <= i < depth]
            if bad:
                raise UserError(f"plan {what} names block(s) {bad}, but the model has blocks "
                                f"0..{depth - 1}; {REPLAN}")
        if self.windows is not None:
            self._check_windows()
        self._check_kv()

    def kv_spec(self, layer: int):
        """litevar.kernels.kvcache.KVSpec of one block (fp, every scale kept unless the plan says otherwise)."""
        from litevar.kernels.kvcache import KeepRule, KVSpec
        e = self.kv.get(layer, {})
        return KVSpec(e.get("format", "fp"), KeepRule(**e.get("keep", {})), layer in self.cfg_shared)

    def _check_kv(self) -> None:
        depth, S = self.arch["depth"], len(self.patch_nums)
        bad = [layer for layer in self.kv if not 0 <= layer < depth]
        if bad:
            raise UserError(f"plan kv names block(s) {bad}, but the model has blocks 0..{depth - 1}; {REPLAN}")
        if self.kv and sorted(self.kv_layout) != ["head_dim", "heads"]:
            raise UserError(f"plan kv_layout {self.kv_layout!r:.80} must be {{'heads': H, 'head_dim': c}} of the "
                            f"cache its kv decisions are for; {REPLAN}")
        if self.windows is None:
            return
        from litevar.kernels.windows import EMPTY
        for layer, w in self.windows.widths.items():
            keep = self.kv_spec(layer).keep
            for k in range(S):
                evicted = set(keep.evicted(k))
                for j in range(k + 1):
                    empty = bool((w[:, k, j] == EMPTY).all())
                    if j in evicted and not empty:
                        raise UserError(f"plan evicts scale {j} from block {layer}'s KV cache, but its window at "
                                        f"scale {k} reads that scale; make the window EMPTY (-2) there or keep "
                                        f"the scale; {REPLAN}")
                    if j not in evicted and bool((w[:, k, j] == EMPTY).any()):
                        raise UserError(f"plan window of block {layer} at scale {k} is EMPTY on scale {j}, which the "
                                        f"block's KV cache keeps: EMPTY means evicted; set the block's kv keep rule "
                                        f"or use a width; {REPLAN}")

    def _check_windows(self) -> None:
        w, depth = self.windows, self.arch["depth"]
        if w.patch_nums != self.patch_nums:
            raise UserError(f"plan windows are for patch_nums {list(w.patch_nums)}, the plan for "
                            f"{list(self.patch_nums)}; {REPLAN}")
        bad = [layer for layer in w.widths if not 0 <= layer < depth]
        if bad:
            raise UserError(f"plan windows name layer(s) {bad}, but the model has blocks "
                            f"0..{depth - 1}; {REPLAN}")
        if w.num_heads is not None and w.num_heads != self.arch["num_heads"]:
            raise UserError(f"plan windows have {w.num_heads} heads per layer, the model "
                            f"{self.arch['num_heads']}; give every layer an [H, S, S] table "
                            f"with H = {self.arch['num_heads']}")

    # -- model match --------------------------------------------------------------------------
    def mismatches(self, arch: dict, weights_sha256: str | None, patch_nums) -> list[str]:
        """What differs between this plan and a model (empty: the plan fits)."""
        out = []
        keys = ("family", *self.typed_arch.PLAN_KEYS)
        mine, theirs = self.typed_arch.plan_view(), arch_from(arch).plan_view()
        diff = [k for k in keys if mine.get(k) != theirs.get(k)]
        if diff:
            out.append("architecture differs (" + ", ".join(
                f"{k}: plan {mine.get(k)}, model {theirs.get(k)}" for k in diff) + ")")
        if self.kv and not diff:
            heads, head_dim = int(arch["num_heads"]), int(arch["embed_dim"]) // int(arch["num_heads"])
            if (self.kv_layout.get("heads"), self.kv_layout.get("head_dim")) != (heads, head_dim):
                out.append(f"KV cache layout differs (plan {self.kv_layout.get('heads')} heads x "
                           f"{self.kv_layout.get('head_dim')}, model {heads} x {head_dim})")
        mine = self.model.get("weights_sha256")
        if not diff and mine and weights_sha256 and mine != weights_sha256:
            out.append(f"weights differ (plan sha256 {mine[:12]}..., model {weights_sha256[:12]}...)")
        pns = tuple(int(p) for p in patch_nums)
        if pns != self.patch_nums:
            out.append(f"schedule differs (plan {describe_schedule(self.patch_nums, self.family)}, model "
                       f"{describe_schedule(pns, self.family)})")
        return out

    def check_model(self, arch: dict, weights_sha256: str | None, patch_nums) -> None:
        """UserError naming every mismatch between this plan and the model it is applied to."""
        problems = self.mismatches(arch, weights_sha256, patch_nums)
        if problems:
            label = f"plan {self.name!r}" if self.name else "the plan"
            raise UserError(f"{label} was made for another model: {'; '.join(problems)}; "
                            f"{REPLAN} (or load the model it was made for)")

    # -- (de)serialisation --------------------------------------------------------------------
    RUN_KEYS = ("model", "resolution", "patch_nums", "batch", "formats", "qk_int8", "windows", "cfg_shared", "kv",
                "kv_layout", "dtype", "text_encoder")

    def decisions_sha256(self) -> str:
        """sha256 of what a run of the plan executes (the model, schedule, batch, runtime dtype and
        every decision; a text-encoder decision when there is one), not of how it was priced: a
        plan re-made with the same decisions keeps it."""
        d = self.to_dict()
        run = {k: d.get(k) for k in self.RUN_KEYS if k != "text_encoder" or d.get(k) is not None}
        return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": self.version, "name": self.name,
                "model": self.model, "resolution": self.resolution,
                "patch_nums": list(self.patch_nums), "batch": self.batch, "device": self.device,
                "profile_sha256": self.profile_sha256, "budgets": self.budgets,
                "solver": self.solver, "predicted": self.predicted.to_dict(), "formats": self.formats,
                "qk_int8": self.qk_int8,
                "windows": None if self.windows is None else self.windows.to_dict(),
                "cfg_shared": self.cfg_shared, "kv": {str(k): v for k, v in sorted(self.kv.items())},
                "kv_layout": self.kv_layout, "dtype": self.dtype,
                **({"text_encoder": self.text_encoder} if self.text_encoder is not None else {})}

    @classmethod
    def from_dict(cls, d) -> Plan:
        if not isinstance(d, dict):
            raise UserError(f"a plan is a JSON object, got {type(d).__name__}; {REPLAN}")
        if d.get("format") != FORMAT:
            raise UserError(f"not a litevar plan (format {d.get('format')!r}, expected {FORMAT!r}); "
                            "pass a file written by `litevar plan`")
        if d.get("version") not in READS:
            raise UserError(f"plan version {d.get('version')!r}: this litevar reads versions "
                            f"{', '.join(map(str, READS))}; {REPLAN}")
        missing = [k for k in ("model", "resolution", "patch_nums", "formats") if k not in d]
        if missing:
            raise UserError(f"plan is missing field(s) {', '.join(missing)}; {REPLAN}")
        known = {f for f in cls.__dataclass_fields__} | {"format"}
        extra = sorted(set(d) - known)
        if extra:
            raise UserError(f"plan has unknown field(s) {', '.join(extra)}; remove them or {REPLAN}")
        kw = {k: v for k, v in d.items() if k != "format"}
        try:
            return cls(**kw)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise UserError(f"invalid plan: {_one_line(e)}; {REPLAN}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON atomically (temp file in the same folder, then os.replace)."""
        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = Path(path)
        d = read_json(path, "plan file", "pass the JSON written by `litevar plan --out`")
        try:
            return cls.from_dict(d)
        except UserError as e:
            raise UserError(f"plan file {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Field checks


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _json_data(what: str, value):
    """`value` as JSON would read it back (tuples -> lists, numpy scalars -> numbers): a copy."""
    def plain(o):
        if hasattr(o, "tolist"):  # numpy / torch scalars and arrays
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON data")
    try:
        return json.loads(json.dumps(value, default=plain))
    except (TypeError, ValueError) as e:
        raise UserError(f"plan {what} must be JSON data (numbers, strings, lists, dicts): {e}") from None


def _int_list(what: str, value, example: str) -> list[int]:
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value)
    if not ok:
        raise UserError(f"plan {what} {value!r:.80} must be a list of integers, e.g. {example}")
    return [int(v) for v in value]


def _kv_entries(kv) -> dict[int, dict]:
    """plan kv: block (int) -> {"format": name, "keep": {"sinks", "recent"}}, checked."""
    from litevar.kernels.kvcache import KeepRule
    from litevar.kernels.kvquant import KV_FORMATS
    if not isinstance(kv, dict):
        raise UserError(f"plan kv must map blocks to KV-cache decisions, got {type(kv).__name__}; {REPLAN}")
    out = {}
    for key, e in kv.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise UserError(f"plan kv key {key!r}: use a block index; {REPLAN}") from None
        if not isinstance(e, dict) or set(e) - {"format", "keep"}:
            raise UserError(f"plan kv[{layer}] = {e!r:.80}: use {{'format': 'KV8', 'keep': {{'sinks': 1, "
                            f"'recent': 2}}}}; {REPLAN}")
        fmt = e.get("format", "fp")
        if fmt not in KV_FORMATS:
            raise UserError(f"plan kv[{layer}] format {fmt!r}: unknown KV-cache format; use one of "
                            f"{', '.join(KV_FORMATS)}")
        keep = e.get("keep", {})
        if not isinstance(keep, dict) or set(keep) - {"sinks", "recent"}:
            raise UserError(f"plan kv[{layer}] keep {keep!r:.80}: use {{'sinks': s, 'recent': m}}; {REPLAN}")
        try:
            KeepRule(**keep)
        except TypeError as err:
            raise UserError(f"plan kv[{layer}] keep {keep!r:.80}: {err}; {REPLAN}") from None
        out[layer] = {"format": fmt, "keep": dict(keep)} if keep else {"format": fmt}
    return out


def _text_encoder_entry(te) -> dict | None:
    if te is None:
        return None
    from litevar.profiler.costmodel import TEXT_ENCODER_MODES
    ok = isinstance(te, dict) and te.get("mode") in TEXT_ENCODER_MODES and isinstance(
        te.get("images_per_prompt", 1), int) and te.get("images_per_prompt", 1) >= 1
    if not ok:
        raise UserError(f"plan text_encoder {te!r}: give {{\"mode\": one of {list(TEXT_ENCODER_MODES)}, "
                        f"\"images_per_prompt\": n >= 1}}; {REPLAN}")
    return {"mode": te["mode"], "images_per_prompt": int(te.get("images_per_prompt", 1))}


def _windows_from_dict(d) -> WindowConfig:
    if not isinstance(d, dict):
        raise UserError(f"plan windows must be an object (WindowConfig.to_dict()) or null, got "
                        f"{type(d).__name__}; {REPLAN}")
    try:
        return WindowConfig.from_dict(d)
    except UserError as e:
        raise UserError(f"plan windows: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        why = f"missing key {e}" if isinstance(e, KeyError) else _one_line(e)
        raise UserError(f"plan windows are malformed ({why}): expected {{'version': 1, "
                        f"'patch_nums': [...], 'family': 'band'|'spatial', 'widths': {{layer: "
                        f"[H][S][S]}}}}; {REPLAN}") from None


def _check_model_entry(model) -> None:
    if not isinstance(model, dict) or not isinstance(model.get("arch"), dict):
        raise UserError(f"plan model must be {{'name', 'weights_sha256', 'arch': {{...}}}}, got "
                        f"{model!r:.80}; {REPLAN}")
    try:
        arch = arch_from(model["arch"])
    except (ValueError, TypeError) as e:
        raise UserError(f"plan model.arch: {e}; {REPLAN}") from None
    missing = [k for k in arch.PLAN_KEYS if k not in model["arch"]]
    if missing:
        raise UserError(f"plan model.arch is missing {', '.join(missing)}; {REPLAN}")
    sha = model.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise UserError(f"plan model.weights_sha256 {sha!r:.80} is not a sha256 hex digest; "
                        f"use the model family's weights_sha256(model) or null")


def _check_schedule(family, resolution, patch_nums: tuple[int, ...]) -> None:
    if resolution not in family.schedules:
        raise UserError(f"plan resolution {resolution!r}: the {family.name} family has no token schedule for it; "
                        f"use one of {sorted(family.schedules)}")
    if patch_nums != family.schedules[resolution]:
        raise UserError(f"plan patch_nums {list(patch_nums)} are not the {resolution} px schedule "
                        f"{list(family.schedules[resolution])}; fix resolution or patch_nums, or {REPLAN}")
