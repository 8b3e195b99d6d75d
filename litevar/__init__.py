"""litevar: hardware-aware compression planner and runtime for visual autoregressive (VAR) models.

The public API. The model keeps the official VAR names (`build_vae_var`, `VAR.forward`,
`VAR.autoregressive_infer_cfg`, `VQVAE.img_to_idxBl`, `VQVAE.idxBl_to_img`); the runtime adds
`apply_plan` / `planned_copy`, the plan file `Plan` and `autocast` (a plan's runtime dtype);
`load_default` loads the small model shipped in the package; `retain_freed_memory` sets the host
allocator as the `litevar` command does (CPU timings depend on it). Every name is imported on first
use: `import litevar.kernels` (or any part installed under this package) runs nothing else.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("litevar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def _source_tree_parts() -> None:
    """Run from a source tree that was never installed (the GPU machine runs from a copy of the
    tree): the parts installed as litevar.models, litevar.kernels, ... are top-level folders of
    the tree, so they are added to this package's search path. Installed copies are untouched."""
    if __version__ != "0+unknown":  # installed (an editable install maps the parts itself)
        return
    from pathlib import Path
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / "models").is_dir() or not (root / "pyproject.toml").is_file() or not (root / "models").is_dir():
        return
    if 'name = "litevar"' in (root / "pyproject.toml").read_text() and str(root) not in __path__:
        __path__.append(str(root))


_source_tree_parts()

_LAZY = {
    "AttnCall": "litevar.models.core.attention", "DenseAttention": "litevar.models.core.attention",
    "KVCache": "litevar.models.core.attention", "ScaleLayout": "litevar.models.core.attention",
    "set_attention_backend": "litevar.models.core.attention", "UserError": "litevar.models.core.errors",
    "arch_of": "litevar.models.var.build", "build_vae_var": "litevar.models.var.build",
    "load_checkpoint": "litevar.models.var.build", "load_vae_var": "litevar.models.var.build",
    "official_state_dict": "litevar.models.var.build", "weights_sha256": "litevar.models.var.build",
    "SCHEDULES": "litevar.models.var.schedules", "VAR": "litevar.models.var.var", "VARConfig": "litevar.models.var.var",
    "VQVAE": "litevar.models.var.vqvae", "load_default": "litevar.models.default",
    "apply_plan": "litevar.runtime", "planned_copy": "litevar.runtime", "Plan": "litevar.planner.plan",
    "autocast": "litevar.models.core.inference", "retain_freed_memory": "litevar.models.core.host_memory",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'litevar' has no attribute {name!r}")
