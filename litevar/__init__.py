"""litevar: hardware-aware compression planner and runtime for VAR image models.

Public entry points keep the official VAR names: `build_vae_var`, `VAR.forward`,
`VAR.autoregressive_infer_cfg`, `VQVAE.img_to_idxBl`, `VQVAE.idxBl_to_img`, `VQVAE.fhat_to_img`.
"""
from litevar.attention import AttnCall, DenseAttention, KVCache, ScaleLayout, set_attention_backend
from litevar.build import build_vae_var, load_checkpoint, load_vae_var, official_state_dict
from litevar.schedules import SCHEDULES
from litevar.var import VAR, VARConfig
from litevar.vqvae import VQVAE

__all__ = ["AttnCall", "DenseAttention", "KVCache", "ScaleLayout", "set_attention_backend", "build_vae_var",
           "load_checkpoint", "load_vae_var", "official_state_dict", "SCHEDULES", "VAR", "VARConfig", "VQVAE",
           "apply_plan"]


def __getattr__(name: str):
    if name == "apply_plan":  # lazy: the runtime pulls in kernels, planner and profiler
        from litevar.runtime import apply_plan
        return apply_plan
    raise AttributeError(f"module 'litevar' has no attribute {name!r}")
