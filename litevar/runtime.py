"""Run a VAR under a plan: `apply_plan(vae, var, plan)` quantizes and rewires it once, at load.

- refuses a plan made for another model (architecture, weights) or schedule, naming the mismatch;
- warns when the plan was made on another device (its latency figures may not hold here);
- swaps the planned linear layers for QuantLinear (int8 / packed INT4 weights, quantized once)
  or CastLinear (BF16: weights stored in bf16);
- routes the attention of the planned blocks through make_mdwa_backend (windows, QK INT8, CFG
  sharing); blocks the plan does not touch keep DenseAttention;
- gives each block whose KV cache the plan sets (a KV format, a keep rule, or CFG sharing, whose
  cache holds the conditional half only) a kernels.kvcache.PlannedKVCache at inference.
"""
from __future__ import annotations

import copy
import logging
import os

import torch

from litevar.kernels.kvcache import reads_codes, set_kv_caches
from litevar.kernels.mdwa import LayerOptions, make_mdwa_backend
from litevar.kernels.qlinear import is_planned_layer, swap_linears
from litevar.kernels.select import KernelChoice
from litevar.kernels.windows import WindowConfig
from litevar.models.core.attention import set_attention_backend
from litevar.models.core.device import device_mismatch, fingerprint
from litevar.models.core.errors import UserError
from litevar.models.core.family import family_of_model
from litevar.planner.plan import Plan

log = logging.getLogger(__name__)


def layer_options(plan: Plan) -> dict[int, LayerOptions]:
    """Per-block attention options of a plan (blocks with neither option are left out)."""
    blocks = set(plan.qk_int8) | set(plan.cfg_shared)
    return {b: LayerOptions(qk_int8=b in plan.qk_int8, share_cfg=b in plan.cfg_shared)
            for b in sorted(blocks)}


def attention_layers(plan: Plan) -> list[int]:
    """Blocks whose attention the plan changes (windows, QK INT8, CFG sharing, or a quantized KV
    cache, which the Triton kernel reads directly on CUDA)."""
    windowed = set() if plan.windows is None else set(plan.windows.widths)
    kv = {layer for layer in plan.kv if reads_codes(plan.kv_spec(layer))}
    return sorted(windowed | set(plan.qk_int8) | set(plan.cfg_shared) | kv)


def _check_device(plan: Plan, device: torch.device, strict: bool) -> None:
    """One line when the plan was priced for another device, naming both and how to re-plan."""
    if not plan.device:
        return
    here = fingerprint(device)
    diff = device_mismatch(plan.device, here)
    if diff is None or _same_catalogue_device(plan.device, here):
        return
    tier = plan.device.get("tier") or plan.predicted.tier or "profiled"
    msg = (f"plan {plan.name!r} was priced for {plan.device.get('name')} ({tier} tier), this is {here.get('name')} "
           f"({diff}): its latency and memory figures may not hold here")
    fix = (f"re-plan for this device: `litevar calibrate --device {here.get('type')} --profile PROFILE --out "
           "devices/here.json`, then "
           f"`litevar plan --device devices/here.json ...` (or profile it: `litevar profile`)")
    if strict or plan.device.get("type") != here.get("type"):  # another kind of device: refused
        raise UserError(f"{msg}; {fix}")
    log.warning("%s; %s", msg, fix)


def _same_catalogue_device(plan_device: dict, here: dict) -> bool:
    """A plan priced for a catalogue GPU, run on that GPU (the catalogue's name is not the driver's)."""
    if plan_device.get("tier") not in ("spec", "calibrated"):
        return False
    from litevar.profiler.devices import spec_for
    spec = spec_for(here)
    return spec is not None and spec.name == plan_device.get("name")


def _check_unplanned(model) -> None:
    if any(is_planned_layer(m) for m in model.modules()):
        raise UserError("this model already has quantized layers (a plan was applied); load the "
                        "full-precision model again before applying a plan")


def apply_plan(vae, var, plan: Plan | str | os.PathLike, device: torch.device | str | None = None,
               kernel: KernelChoice | str = KernelChoice.AUTO, strict_device: bool = False,
               check_weights: bool = True):
    """Apply `plan` (a Plan or a plan file) to a full-precision `var` in place and return it.

    `device`: move vae and var there first (default: where var is). `kernel`: the linear and
    attention kernels (AUTO: the fastest available; TORCH / EMULATED: reference paths).
    `strict_device`: refuse, rather than warn, when the plan was priced for another device of the
    same type (a plan priced for another type, a GPU plan on a CPU, is always refused).
    `check_weights`: compare the weights' sha256 with the plan's (skipped when False).
    """
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    kernel = KernelChoice(kernel)
    family = family_of_model(var)
    if device is not None:
        device = torch.device(device)
        var.to(device)
        if vae is not None:
            vae.to(device)
    device = family.device_of(var)
    _check_unplanned(var)
    plan.check_model(family.arch_of(var).to_dict(), family.weights_sha256(var) if check_weights else None,
                     family.schedule_of(var))
    _check_device(plan, device, strict_device)
    swap_linears(var, plan.formats, kernel)
    attn = family.attention_modules(var)
    _set_attention(attn, plan, kernel, device)
    set_kv_caches(attn, plan.patch_nums, {layer: plan.kv_spec(layer) for layer in range(len(attn))})
    quantized = sum(f != "fp" for f in plan.formats.values())
    log.info("applied plan %r: %d quantized linear layers, attention changed in blocks %s, KV cache in blocks %s",
             plan.name, quantized, attention_layers(plan), sorted(plan.kv))
    return var


def planned_copy(vae, var, plan: Plan | str | os.PathLike, **kw):
    """apply_plan on a copy of `var` (the dense model stays usable beside it). The copy shares
    `vae` and every tensor of `var` that the plan leaves as is, so it costs only its swapped
    layers; one moved to another device (`device=`) is a full copy."""
    device = kw.get("device")
    family = family_of_model(var)
    moved = device is not None and torch.device(device) != family.device_of(var)
    twin = copy.deepcopy(var, memo={id(vae): vae}) if moved else family.shared_copy(var)
    return apply_plan(vae, twin, plan, **kw)


def _set_attention(attn_modules, plan: Plan, kernel: KernelChoice, device: torch.device) -> None:
    layers = attention_layers(plan)
    if not layers:
        return
    windows = plan.windows or WindowConfig(plan.patch_nums)  # no windows: dense in every layer
    backend = make_mdwa_backend(windows, kernel, device, layer_options(plan))
    set_attention_backend(attn_modules, backend, layers=set(layers))
