"""litevar: hardware-aware compression planner and runtime for visual autoregressive (VAR) models.

The public API. The model keeps the official VAR names (`build_vae_var`, `VAR.forward`,
`VAR.autoregressive_infer_cfg`, `VQVAE.img_to_idxBl`, `VQVAE.idxBl_to_img`); the runtime adds
`apply_plan` / `planned_copy` and the plan file `Plan`; `load_default` loads the small model
shipped in the package. The runtime names are imported on first use (they pull in the kernels,
the planner's plan file and the profiler's device fingerprint).
"""
from importlib.metadata import PackageNotFoundError, version

from litevar.model.attention import AttnCall, DenseAttention, KVCache, ScaleLayout, set_attention_backend
from litevar.model.build import (
    arch_of,
    build_vae_var,
    load_checkpoint,
    load_vae_var,
    official_state_dict,
    weights_sha256,
)
from litevar.model.errors import UserError
from litevar.model.schedules import SCHEDULES
from litevar.model.var import VAR, VARConfig
from litevar.model.vqvae import VQVAE

try:
    __version__ = version("litevar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"apply_plan": "litevar.runtime", "planned_copy": "litevar.runtime", "Plan": "planner.plan",
         "load_default": "litevar.default_model"}

__all__ = ["AttnCall", "DenseAttention", "KVCache", "ScaleLayout", "set_attention_backend", "arch_of",
           "build_vae_var", "load_checkpoint", "load_vae_var", "official_state_dict", "weights_sha256", "UserError",
           "SCHEDULES", "VAR", "VARConfig", "VQVAE", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'litevar' has no attribute {name!r}")
