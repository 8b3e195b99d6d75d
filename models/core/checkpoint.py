"""Reading checkpoints: state dicts from .pth / .safetensors files, nested or not, loaded strictly
with one-line errors (every family's build module uses these)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from litevar.models.core.errors import UserError


def load_checkpoint(path: str | os.PathLike, nested_key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict (.pth/.pt via torch.load with mmap, or .safetensors) with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass the path of a downloaded .pth or .safetensors file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # any parse failure means: not a checkpoint we can read
        raise UserError(f"{path} is not a PyTorch or safetensors checkpoint "
                        f"({type(e).__name__}: {str(e)[:120]})") from None
    sd = _find_state_dict(obj, nested_key)
    if sd is None:
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path} holds no state dict of tensors (top-level keys: {keys})")
    return sd


def _find_state_dict(obj, nested_key):
    """A plain state dict, or one nested in a training checkpoint ({'trainer': {'var_wo_ddp': ...}})."""
    if not isinstance(obj, dict):
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ([nested_key] if nested_key else []) + ["state_dict", "model", "trainer"]:
        if key in obj:
            found = _find_state_dict(obj[key], nested_key)
            if found is not None:
                return found
    return None


def check_finite(sd: dict, what: str) -> None:
    """One line naming the first floating tensor of a checkpoint with a NaN or an infinity (a
    model built from it would sample from non-finite probabilities); an attention mask's -inf
    (attn_bias_for_masking) is what it holds."""
    for name, t in sd.items():
        if not (torch.is_tensor(t) and t.is_floating_point()):
            continue
        ok = ~torch.isnan(t) & (t != float("inf")) if "mask" in name else torch.isfinite(t)
        if not bool(ok.all()):
            bad = int((~ok).sum())
            raise UserError(f"{what} checkpoint tensor {name} has {bad} non-finite value{'s' * (bad != 1)} (NaN or "
                            "inf): the file is corrupt; restore it from its source")


def strict_load(module: torch.nn.Module, sd: dict, what: str, implied: dict, ignored: frozenset = frozenset()) -> None:
    """Load `sd` into `module` (assign=True) with every key and shape checked: one line naming the
    missing, unexpected or mis-shaped keys and the architecture the checkpoint implies. `ignored`:
    keys the checkpoint may carry that the module rebuilds itself (dense masks, derived buffers)."""
    check_finite(sd, what)
    own = set(module.state_dict().keys())
    given = set(sd) - set(ignored)
    missing, unexpected = sorted(own - given), sorted(given - own)
    if missing or unexpected:
        implied_s = ", ".join(f"{k}={v}" for k, v in implied.items())
        raise UserError(f"{what} checkpoint does not match the model: missing keys {missing[:4]}"
                        f"{' ...' if len(missing) > 4 else ''} ({len(missing)}), unexpected keys {unexpected[:4]}"
                        f"{' ...' if len(unexpected) > 4 else ''} ({len(unexpected)}); "
                        f"the checkpoint implies {implied_s}")
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{what} checkpoint shapes do not match the model: {' '.join(first[-2:])[:300]}") from None
