"""The model shipped in models/default/assets loads and generates (what README's first command runs)."""
import time

import torch

from litevar.models.default import default_paths, load_default


def test_shipped_model_loads_and_generates_8_images_fast():
    t = time.perf_counter()
    vae, var = load_default("cpu")
    a = var.autoregressive_infer_cfg(8, torch.arange(8), g_seed=3, cfg=4.0, top_k=900, top_p=0.95)
    elapsed = time.perf_counter() - t
    b = var.autoregressive_infer_cfg(8, torch.arange(8), g_seed=3, cfg=4.0, top_k=900, top_p=0.95)
    assert a.shape == (8, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert elapsed < 60, f"load + 8 images took {elapsed:.1f} s"


def test_shipped_weights_fit_the_size_budget():
    total = sum(p.stat().st_size for p in default_paths().values())
    total += (default_paths()["var"].parent / "classifier.safetensors").stat().st_size
    assert total <= 25 * 2**20


def test_shipped_files_load_as_checkpoints_too():
    """`--ckpt/--vae` on the shipped files infers the architecture (the VQVAE backbone included)
    from the keys and gives the same model as load_default."""
    from safetensors.torch import load_file

    from litevar.models.var.build import infer_vae_config, load_vae_var
    paths = default_paths()
    cfg = infer_vae_config(load_file(str(paths["vae"])))
    vae, var = load_vae_var(paths["var"], paths["vae"])
    ref_vae, ref_var = load_default("cpu")
    assert cfg["backbone"] == ("compact" if type(ref_vae.encoder).__name__ == "CompactEncoder" else "var")
    assert vae.encoder.__class__ is ref_vae.encoder.__class__ and vae.ch_mult == ref_vae.ch_mult
    x = var.autoregressive_infer_cfg(2, torch.arange(2), g_seed=1, cfg=4.0, top_k=900, top_p=0.95)
    y = ref_var.autoregressive_infer_cfg(2, torch.arange(2), g_seed=1, cfg=4.0, top_k=900, top_p=0.95)
    assert torch.equal(x, y)
