"""The model shipped in litevar/assets loads and generates (what README's first command runs)."""
import time

import torch

from litevar.default_model import default_paths, load_default


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
