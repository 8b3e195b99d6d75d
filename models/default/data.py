"""Procedural, class-conditional 64x64 RGB images: the dataset litevar trains its small VAR on.

Nothing is downloaded. Sample `index` of a split is fully defined by its label
(`index % NUM_CLASSES`) and its seed (`sample_seed(split, index)`), so any sample can be
rendered on its own with `render(label, seed)`. Splits use disjoint seeds.

Class identity lives in shape and layout (coarse scales); colours from an 8-colour palette,
stripe/checker/ray phases and anti-aliased edges add the rest. Colours come from a palette,
surfaces are flat and shapes sit near the centre, so the entropy of an image is in its shape and
edges. Every class is readable at 6x6-8x8 tokens: stripes, checkers, target rings and sunburst
rays are at least ~10 px wide (2.5 latent cells), because a VAR samples all tokens of a scale
at once and cannot draw a periodic pattern that first appears at the fine scales (with 3-7 px
stripes, a model given the real tokens up to 8x8 still drew mush at 10x10-16x16). History:
continuous colours and value-noise textures left a small model trained for an hour on a CPU at
30% class accuracy; palette colours with fine patterns at 33%.

Shapes are drawn as signed distance fields (normalised units: the image spans [-1, 1]) turned
into coverage with a one-pixel soft edge at `SUPERSAMPLE` x resolution, then box-downsampled.

Rendering is float32 numpy: bit-exact for a given numpy build and CPU; numpy's SIMD-dispatched
sin/cos/arctan2/hypot may differ in the last bit on another CPU, which can move a pixel by 1/255.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

NUM_CLASSES = 10
CLASS_NAMES = ("disc", "square", "triangle", "ring", "cross",
               "stripes", "checker", "target", "two_blobs", "sunburst")
SPLITS = {"train": 0, "val": 1, "test": 2}  # split -> high 32 bits of every sample seed
SUPERSAMPLE = 2  # render at SUPERSAMPLE x size, then average SUPERSAMPLE^2 blocks
PALETTE = np.array([  # RGB in [0, 1]: foreground and background colours
    (0.86, 0.12, 0.12), (1.00, 0.55, 0.05), (0.95, 0.88, 0.10), (0.12, 0.68, 0.22),
    (0.12, 0.25, 0.85), (0.55, 0.15, 0.70), (0.95, 0.95, 0.95), (0.08, 0.08, 0.08)], dtype=np.float32)
GRADIENT_SHARE = 0.0  # share of images with a background gradient
MAX_OFFSET = 0.25  # shapes sit within this distance of the image centre (normalised units)
_CHUNK = 256  # images rendered per vectorised call (bounds memory to ~100 MB)

Params = dict[str, np.ndarray]  # name -> (N,) or (N, k) or (N, g, g) float32, one row per image


def sample_seed(split: str, index: int | np.ndarray) -> int | np.ndarray:
    """Seed of sample `index` of `split`: (split id << 32) | index, disjoint across splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    index = np.asarray(index, dtype=np.int64)
    if (index < 0).any() or (index >= 2**32).any():
        raise ValueError("sample index must be in [0, 2**32)")
    seed = (np.int64(SPLITS[split]) << 32) | index
    return int(seed) if seed.ndim == 0 else seed


def sample_label(index: int | np.ndarray) -> int | np.ndarray:
    """Label of sample `index` (classes cycle, so every split is balanced)."""
    return index % NUM_CLASSES


# ---------------------------------------------------------------- parameter draws (per sample)

def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _draw_style(rng: np.random.Generator) -> dict:
    """Colours and background gradient shared by all classes."""
    while True:  # foreground and background must differ clearly
        fg, bg = PALETTE[rng.integers(0, len(PALETTE), 2)]
        if np.linalg.norm(fg - bg) > 0.5:
            break
    angle = _uniform(rng, 0, 2 * np.pi)
    return {
        "fg": fg, "bg": bg,
        "grad_dir": np.array([np.cos(angle), np.sin(angle)]),
        "grad_amp": _uniform(rng, 0.0, 0.15) * rng.choice([-1, 1], 3) * (rng.uniform() < GRADIENT_SHARE),
    }


def _centre(rng: np.random.Generator, extent: float) -> dict:
    """Centre near the middle (at most MAX_OFFSET away), so that a shape of radius `extent` stays
    (mostly) inside the image."""
    m = min(max(0.9 - extent, 0.0), MAX_OFFSET)
    return {"cx": _uniform(rng, -m, m), "cy": _uniform(rng, -m, m)}


def _draw_disc(rng):
    r = _uniform(rng, 0.3, 0.6)
    return {"r": r, **_centre(rng, r)}


def _draw_square(rng):
    h = _uniform(rng, 0.35, 0.6)
    return {"h": h, "aspect": _uniform(rng, 0.8, 1.0), "angle": _uniform(rng, 0, np.pi / 2),
            **_centre(rng, 1.2 * h)}


def _draw_triangle(rng):
    r = _uniform(rng, 0.6, 0.9)  # circumradius
    return {"r": r, "angle": _uniform(rng, 0, 2 * np.pi / 3), **_centre(rng, 0.8 * r)}


def _draw_ring(rng):
    r = _uniform(rng, 0.4, 0.65)
    return {"r": r, "width": _uniform(rng, 0.15, 0.25), **_centre(rng, r)}


def _draw_cross(rng):
    arm = _uniform(rng, 0.4, 0.7)
    return {"arm": arm, "half_width": _uniform(rng, 0.12, 0.2),
            "angle": _uniform(rng, 0, np.pi / 2), **_centre(rng, arm)}


def _draw_stripes(rng):
    return {"period": _uniform(rng, 0.6, 1.0), "angle": _uniform(rng, 0, np.pi),
            "phase": _uniform(rng, 0, 1), "cx": 0.0, "cy": 0.0}


def _draw_checker(rng):
    return {"cell": _uniform(rng, 0.45, 0.7), "angle": _uniform(rng, 0, np.pi / 2),
            "phase_u": _uniform(rng, 0, 1), "phase_v": _uniform(rng, 0, 1), "cx": 0.0, "cy": 0.0}


def _draw_target(rng):
    r = _uniform(rng, 0.6, 0.9)
    bands = 2  # filled centre + (bands - 1) rings
    return {"r": r, "period": r / (bands - 0.75), **_centre(rng, 0.7 * r)}


def _draw_two_blobs(rng):
    r1, r2 = _uniform(rng, 0.2, 0.35), _uniform(rng, 0.2, 0.35)
    while True:
        c = rng.uniform(-0.9, 0.9, 4) * np.array([1 - r1, 1 - r1, 1 - r2, 1 - r2])
        if np.hypot(c[0] - c[2], c[1] - c[3]) > r1 + r2 + 0.12:
            return {"r1": r1, "r2": r2, "cx": c[0], "cy": c[1], "cx2": c[2], "cy2": c[3]}


def _draw_sunburst(rng):
    return {"rays": float(rng.integers(4, 8)), "phase": _uniform(rng, 0, 1),
            **_centre(rng, 0.6)}


# ---------------------------------------------------------------- signed distance fields
# Each takes stacked params (values shaped (N, 1, 1)) and pixel-centre grids x, y (S, S);
# returns the signed distance (N, S, S), negative inside the foreground.

def _local(p: Params, x: np.ndarray, y: np.ndarray, angle: bool = True):
    """Pixel coordinates relative to the shape centre, rotated into the shape frame."""
    dx, dy = x - p["cx"], y - p["cy"]
    if not angle:
        return dx, dy
    c, s = np.cos(p["angle"]), np.sin(p["angle"])
    return c * dx + s * dy, c * dy - s * dx


def _sdf_disc(p, x, y):
    u, v = _local(p, x, y, angle=False)
    return np.hypot(u, v) - p["r"]


def _sdf_square(p, x, y):
    u, v = _local(p, x, y)
    return np.maximum(np.abs(u) - p["h"], np.abs(v) - p["h"] * p["aspect"])


def _sdf_triangle(p, x, y):
    u, v = _local(p, x, y)
    d = None
    for k in range(3):  # max over the three edge half-planes; apothem = r / 2
        a = 2 * np.pi * k / 3  # python floats keep the arrays float32
        e = float(np.cos(a)) * u + float(np.sin(a)) * v
        d = e if d is None else np.maximum(d, e)
    return d - p["r"] / 2


def _sdf_ring(p, x, y):
    u, v = _local(p, x, y, angle=False)
    return np.abs(np.hypot(u, v) - p["r"]) - p["width"] / 2


def _sdf_cross(p, x, y):
    u, v = (np.abs(a) for a in _local(p, x, y))
    bar_u = np.maximum(u - p["arm"], v - p["half_width"])
    bar_v = np.maximum(u - p["half_width"], v - p["arm"])
    return np.minimum(bar_u, bar_v)


def _periodic(s: np.ndarray, period) -> np.ndarray:
    """Bands of width period / 2 centred on the integers of s (in periods): signed distance."""
    return (np.abs(s - np.round(s)) - 0.25) * period


def _sdf_stripes(p, x, y):
    u, _ = _local(p, x, y)
    return _periodic(u / p["period"] + p["phase"], p["period"])


def _sdf_checker(p, x, y):
    u, v = _local(p, x, y)
    su, sv = u / p["cell"] + p["phase_u"], v / p["cell"] + p["phase_v"]
    edge = np.minimum(np.abs(su - np.round(su)), np.abs(sv - np.round(sv))) * p["cell"]
    odd = (np.floor(su) + np.floor(sv)) % 2 == 1
    return np.where(odd, -edge, edge)


def _sdf_target(p, x, y):
    r = np.hypot(*_local(p, x, y, angle=False))
    return np.maximum(_periodic(r / p["period"], p["period"]), r - p["r"])


def _sdf_two_blobs(p, x, y):
    d1 = np.hypot(x - p["cx"], y - p["cy"]) - p["r1"]
    d2 = np.hypot(x - p["cx2"], y - p["cy2"]) - p["r2"]
    return np.minimum(d1, d2)


def _sdf_sunburst(p, x, y):
    u, v = _local(p, x, y, angle=False)
    r = np.hypot(u, v)
    s = np.arctan2(v, u) * p["rays"] / (2 * np.pi) + p["phase"]
    return _periodic(s, 2 * np.pi * r / p["rays"])


_CLASSES = (  # (draw, sdf) per class, in CLASS_NAMES order
    (_draw_disc, _sdf_disc), (_draw_square, _sdf_square), (_draw_triangle, _sdf_triangle),
    (_draw_ring, _sdf_ring), (_draw_cross, _sdf_cross), (_draw_stripes, _sdf_stripes),
    (_draw_checker, _sdf_checker), (_draw_target, _sdf_target),
    (_draw_two_blobs, _sdf_two_blobs), (_draw_sunburst, _sdf_sunburst),
)


# ---------------------------------------------------------------- vectorised rendering

def _draw(cls: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {**_draw_style(rng), **_CLASSES[cls][0](rng)}


def _stack(draws: list[dict]) -> Params:
    return {k: np.asarray([d[k] for d in draws], dtype=np.float32) for k in draws[0]}


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (n, n) float32 in (-1, 1)."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    return tuple(np.meshgrid(c, c, indexing="ij"))


def _coverage(cls: int, q: Params, size: int) -> np.ndarray:
    """Anti-aliased foreground coverage (N, size, size) in [0, 1]: one-pixel soft edge of the
    signed distance at SUPERSAMPLE x resolution, then a box filter."""
    s, k = size * SUPERSAMPLE, SUPERSAMPLE
    y, x = _grid(s)
    cov = np.clip(0.5 - _CLASSES[cls][1](q, x, y) * (s / 2), 0.0, 1.0)
    out = sum(cov[:, i::k, j::k] for i in range(k) for j in range(k))
    return out * (1.0 / (k * k))


def _render_params(cls: int, p: Params, size: int) -> np.ndarray:
    """Render N images of class `cls` from stacked params -> uint8 (N, size, size, 3).

    Works channel-first (N, 3, S, S) so numpy's inner loops run over whole rows of pixels."""
    q = {k: v.reshape(-1, 1, 1) for k, v in p.items() if v.ndim == 1}
    rgb = {k: p[k][:, :, None, None] for k in ("bg", "fg", "grad_amp")}  # (N, 3, 1, 1)
    cov = _coverage(cls, q, size)[:, None]
    y, x = _grid(size)  # colour fields are smooth: no supersampling needed
    ramp = x * p["grad_dir"][:, 0, None, None] + y * p["grad_dir"][:, 1, None, None]
    img = ramp[:, None] * rgb["grad_amp"]  # (N, 3, S, S), in place from here on
    img += rgb["bg"]
    fg = rgb["fg"] - img
    fg *= cov
    img += fg  # bg + (fg - bg) * coverage
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return img.astype(np.uint8).transpose(0, 2, 3, 1)  # truncating x + 0.5 rounds (x >= 0)


def render_many(labels: np.ndarray, seeds: np.ndarray, size: int = 64,
                workers: int | None = None) -> np.ndarray:
    """Render images for (label, seed) pairs -> uint8 (N, size, size, 3).

    Chunks render on `workers` threads (numpy releases the GIL; default: torch's intra-op thread
    count). The output does not depend on `workers`."""
    labels, seeds = np.asarray(labels, dtype=np.int64), np.asarray(seeds, dtype=np.int64)
    if labels.shape != seeds.shape or labels.ndim != 1:
        raise ValueError("labels and seeds must be 1-D arrays of the same length")
    if ((labels < 0) | (labels >= NUM_CLASSES)).any():
        raise ValueError(f"labels must be in [0, {NUM_CLASSES})")
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)

    def run(cls: int, idx: np.ndarray) -> None:
        out[idx] = _render_params(cls, _stack([_draw(cls, int(seeds[i])) for i in idx]), size)

    chunks = [(int(cls), where[i:i + _CHUNK])
              for cls in np.unique(labels) for where in [np.flatnonzero(labels == cls)]
              for i in range(0, len(where), _CHUNK)]
    workers = min(workers or torch.get_num_threads(), len(chunks))
    if workers <= 1:
        for chunk in chunks:
            run(*chunk)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda chunk: run(*chunk), chunks))
    return out


def render(cls: int, seed: int, size: int = 64) -> np.ndarray:
    """One image of class `cls` from `seed` -> uint8 (size, size, 3)."""
    return render_many(np.array([cls]), np.array([seed]), size)[0]


def make_split(split: str, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """First `n` samples of `split` -> (images uint8 (n, size, size, 3), labels int64 (n,))."""
    index = np.arange(n, dtype=np.int64)
    labels = sample_label(index)
    return render_many(labels, sample_seed(split, index), size), labels


def preview(per_class: int = 10, split: str = "val", size: int = 64) -> np.ndarray:
    """`per_class` images of every class, class-major (row k = class k) -> uint8 (N, H, W, 3)."""
    index = (np.arange(per_class)[None, :] * NUM_CLASSES + np.arange(NUM_CLASSES)[:, None]).ravel()
    return render_many(sample_label(index), sample_seed(split, index), size)


# ---------------------------------------------------------------- torch helpers

def to_float(images_NHWC: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 tensor (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images_NHWC)).permute(0, 3, 1, 2)
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x_N3HW: torch.Tensor) -> np.ndarray:
    """float tensor (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) (clamped, rounded)."""
    x = ((x_N3HW.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class SplitDataset(torch.utils.data.Dataset):
    """The first `n` samples of a split, rendered once on construction and held as float32
    (48 KiB per 64 px image; for large n prefer `iterate_batches`).

    Items are (x (3, H, W) float32 in [-1, 1], label int64 scalar tensor)."""

    def __init__(self, split: str, n: int, size: int = 64):
        images, labels = make_split(split, n, size)
        self.x = to_float(images)
        self.y = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def iterate_batches(split: str, n: int, batch: int, size: int = 64, shuffle_seed: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x (B, 3, H, W) float in [-1, 1], y (B,) int64) over the first `n` samples of a split,
    rendering batch by batch (no full split in memory); shuffled when `shuffle_seed` is given."""
    order = np.arange(n, dtype=np.int64)
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(n)
    for start in range(0, n, batch):
        index = order[start:start + batch]
        labels = sample_label(index)
        images = render_many(labels, sample_seed(split, index), size)
        yield to_float(images), torch.from_numpy(labels)
