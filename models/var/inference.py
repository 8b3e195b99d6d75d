"""Inference helpers of the VAR family: batched class-conditional sampling and the teacher-forced
CFG logits every quality measurement compares (profiler, eval, bench)."""
from __future__ import annotations

import torch

from litevar.models.core.inference import autocast


def generate(var, labels: list[int], seed: int, cfg: float, top_k: int, top_p: float, more_smooth: bool = False,
             dtype_name: str = "fp32", progress: bool = True) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W), with a progress bar over scales."""
    from tqdm import tqdm
    dev = var.lvl_1L.device
    bar = tqdm(total=len(var.patch_nums), desc="scales", unit="scale", disable=not progress, leave=False)
    label_B = torch.tensor(labels, device=dev)
    with autocast(dev, dtype_name):
        img = var.autoregressive_infer_cfg(len(labels), label_B, g_seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
                                           more_smooth=more_smooth, callback=lambda si, _: bar.update(1))
    bar.close()
    return img.float()


def balanced_labels(n: int, num_classes: int) -> list[int]:
    return [i % num_classes for i in range(n)]



@torch.no_grad()
def sample(var, labels: list[int], seed: int, cfg: float, top_k: int, top_p: float, batch: int,
           dtype_name: str = "fp32", desc: str = "generate", prefix: list[torch.Tensor] | None = None):
    """Images (N, 3, H, W) in [0, 1] and per-scale tokens; batch i uses seed + i. `prefix`:
    token ids (N, pn * pn) forced at the first len(prefix) scales. Under torchrun batch i runs
    on rank i mod size and every rank gets all of them: the same images whatever the number of
    ranks (litevar.models.core.distributed)."""
    from tqdm import tqdm

    from litevar.models.core.distributed import gather, world
    dev, w = var.lvl_1L.device, world()
    starts = list(range(0, len(labels), batch))
    out = {}
    for i in tqdm(w.mine(len(starts)), desc=desc, unit="batch", disable=not w.main):
        b = starts[i]
        label_B = torch.tensor(labels[b:b + batch], device=dev)
        with autocast(dev, dtype_name):
            img, tokens = var.autoregressive_infer_cfg(len(label_B), label_B, g_seed=seed + i, cfg=cfg, top_k=top_k,
                                                       top_p=top_p, return_tokens=True,
                                                       prefix_tokens=[t[b:b + batch] for t in prefix or []])
        out[i] = (img.float().cpu(), [t.cpu() for t in tokens])
    parts = gather(out, len(starts))
    return torch.cat([img for img, _ in parts]), [torch.cat(ts) for ts in zip(*[t for _, t in parts])]



@torch.no_grad()
def cfg_logits(var, vae, labels_B: torch.Tensor, tokens: list[torch.Tensor], cfg: float,
               dtype_name: str = "fp32") -> torch.Tensor:
    """Teacher-forced CFG-combined logits (B, L, V) on given tokens, as sampling would see them."""
    dev = var.lvl_1L.device
    x = vae.quantize.idxBl_to_var_input([t.to(dev) for t in tokens])
    B = labels_B.shape[0]
    both = torch.cat([labels_B.to(dev), torch.full_like(labels_B.to(dev), var.num_classes)])
    with autocast(dev, dtype_name):
        logits = var(both, x.repeat(2, 1, 1), cfg_batch=B)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 (float64 in a float64 model)
    t_L = torch.cat([torch.full((pn * pn,), cfg * si / (len(var.patch_nums) - 1), device=dev, dtype=logits.dtype)
                     for si, pn in enumerate(var.patch_nums)]).view(1, -1, 1)
    return (1 + t_L) * logits[:B] - t_L * logits[B:]
