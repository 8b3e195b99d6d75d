"""Image grids written as PNG, atomically (a temp file in the target directory, then os.replace)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from litevar.models.core.atomic import atomic_path


def as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (N, H, W, 3) as is; float (N, 3, H, W) in [0, 1] (numpy or torch) -> uint8 NHWC.

    Floats are clamped to [0, 1] and rounded; map [-1, 1] data with (x + 1) / 2 first."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy() if images.is_floating_point() \
            else images.cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images (4 dims), got shape {images.shape}")
    if images.dtype == np.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {images.shape}")
        return images
    if images.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) in [0, 1], got {images.shape}")
    x = np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5
    return x.astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray | torch.Tensor, nrow: int, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """Tile images into rows of `nrow` images with `pad` pixels between them -> uint8 (H, W, 3)."""
    x = as_uint8_nhwc(images)
    n, h, w, _ = x.shape
    if nrow < 1:
        raise ValueError("nrow must be >= 1")
    rows, cols = -(-n // nrow), min(nrow, n)
    grid = np.full((pad + rows * (h + pad), pad + cols * (w + pad), 3), pad_value, np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = x[i]
    return grid


def save_png(image_HW3: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 (H, W, 3) image as PNG atomically; creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(image_HW3).save(tmp, format="PNG")
    return path


def save_grid(images: np.ndarray | torch.Tensor, path: str | os.PathLike, nrow: int) -> Path:
    """Save a batch (uint8 NHWC, or float NCHW in [0, 1]) as a PNG grid of `nrow` images per row."""
    return save_png(make_grid(images, nrow), path)
