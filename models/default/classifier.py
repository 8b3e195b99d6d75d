"""A small CNN classifier of the procedural dataset (litevar.models.default.data): class accuracy of generated
images, and its penultimate features for a Frechet distance (our stand-in for FID).

Trained from scratch on CPU in a few minutes; `train_classifier` with the same seed, recipe,
torch build, thread count and CPU ISA reproduces the shipped weights bit for bit (see
classifier.json). Inputs are float (B, 3, 64, 64) in [-1, 1] (`litevar.models.default.data.to_float`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from litevar.models.core.atomic import atomic_path, write_text
from litevar.models.default import data

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_PATH = ASSETS / "classifier.safetensors"  # + classifier.json beside it


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture: conv3x3-BN-ReLU blocks (`widths`, `strides`, a 2x2 max-pool after the
    blocks in `pools`), global average pooling, a `feature_dim` ReLU layer (the features), a
    linear head."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 128)
    strides: tuple[int, ...] = (2, 1, 1, 1, 1)
    pools: tuple[bool, ...] = (False, True, True, True, False)  # 64 -> 32 -> 16 -> 8 -> 4
    feature_dim: int = 128
    num_classes: int = data.NUM_CLASSES

    def __post_init__(self):
        if not len(self.widths) == len(self.strides) == len(self.pools) > 0:
            raise ValueError("widths, strides and pools need the same (non-zero) length")


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that defines the trained weights (with the torch build, threads and CPU)."""

    seed: int = 0
    steps: int = 800
    batch: int = 64
    lr: float = 3e-3  # AdamW peak; linear warm-up over warmup steps, then cosine to 0
    warmup: int = 30
    weight_decay: float = 5e-4
    n_train: int = 12000  # first n_train samples of the train split, with random D4 flips
    n_test: int = 5000  # first n_test samples of the test split, for the reported accuracy
    bf16: bool = True  # bf16 autocast + channels_last for training (about 2x on AVX512-BF16)
    # Conv weight gradients and channels_last BatchNorm reduce per-thread partial sums, so the
    # thread count is part of the recipe: the same seed with other threads gives other weights.
    threads: int = 2


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 3
        for c_out, stride, pool in zip(cfg.widths, cfg.strides, cfg.pools):
            layers += [_conv_block(c_in, c_out, stride)] + ([nn.MaxPool2d(2)] if pool else [])
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cfg.widths[-1], cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def features(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim), non-negative (after ReLU)."""
        h_BC = self.body(x_B3HW).mean(dim=(2, 3))
        return F.relu(self.fc(h_BC))

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for images in [-1, 1]."""
        return self.head(self.features(x_B3HW))


# ---------------------------------------------------------------- load / save

def load_classifier(path: str | os.PathLike = DEFAULT_PATH) -> Classifier:
    """The trained classifier in eval mode (fp32). Raises FileNotFoundError if absent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no classifier weights at {path}; train them with "
                                f"litevar.models.default.classifier.train_classifier(out_path={str(path)!r})")
    meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() \
        else {}
    cfg = ClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in meta.get("config", {}).items()})
    model = Classifier(cfg)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


def save_classifier(model: Classifier, path: str | os.PathLike, info: dict) -> None:
    """Weights as safetensors (contiguous fp32) and `info` as JSON beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp)
    write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------- training

@contextmanager
def _num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _d4(x_B3HW: torch.Tensor, bits_B3: np.ndarray) -> torch.Tensor:
    """Random dihedral transform per image: bits = (flip H, flip W, transpose)."""
    b = torch.from_numpy(bits_B3).view(-1, 3, 1, 1, 1)
    x = torch.where(b[:, 0], x_B3HW.flip(-2), x_B3HW)
    x = torch.where(b[:, 1], x.flip(-1), x)
    return torch.where(b[:, 2], x.transpose(-1, -2), x)


def _lr_at(step: int, r: TrainRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(r.steps - r.warmup, 1)
    return r.lr * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def accuracy(model: Classifier, x_N3HW: torch.Tensor, labels_N: torch.Tensor,
             batch: int = 500) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `model` in eval mode, fp32."""
    model.eval()
    correct = sum(int((model(x_N3HW[i:i + batch]).argmax(1) == labels_N[i:i + batch]).sum())
                  for i in range(0, len(labels_N), batch))
    return correct / max(len(labels_N), 1)


def train_classifier(seed: int = 0, steps: int = TrainRecipe.steps, batch: int = TrainRecipe.batch,
                     out_path: str | os.PathLike | None = DEFAULT_PATH, progress: bool = True,
                     **recipe) -> tuple[Classifier, dict]:
    """Train from scratch; save weights + JSON to `out_path` (None: don't save).

    Extra keyword arguments override TrainRecipe fields. Returns (model in eval mode, info)."""
    r = TrainRecipe(seed=seed, steps=steps, batch=batch, **recipe)
    cfg = ClassifierConfig()
    with _num_threads(r.threads):
        t0 = time.perf_counter()
        model, train_s = _train(r, cfg, progress)
        x_test, y_test = data.make_split("test", r.n_test)
        acc = accuracy(model, data.to_float(x_test), torch.from_numpy(y_test))
    info = {
        "config": asdict(cfg), "recipe": asdict(r), "test_accuracy": acc,
        "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - t0, 1),
        "machine": _machine(),
        "params": sum(p.numel() for p in model.parameters()),
        "weights_sha256": state_sha256(model),
        "reproduce": _reproduce_command(r),
    }
    log.info("classifier: test accuracy %.4f on %d images, trained in %.0f s",
             acc, r.n_test, train_s)
    if out_path is not None:
        save_classifier(model, out_path, info)
    return model, info


def _train(r: TrainRecipe, cfg: ClassifierConfig, progress: bool) -> tuple[Classifier, float]:
    """The training loop; returns (model in eval mode, seconds including data rendering)."""
    t0 = time.perf_counter()
    torch.manual_seed(r.seed)
    model = Classifier(cfg)
    fmt = torch.channels_last if r.bf16 else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    images, labels = data.make_split("train", r.n_train)
    images_N3HW = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 view
    labels = torch.from_numpy(labels)
    rng = np.random.default_rng(r.seed)
    bar = tqdm(range(r.steps), desc="classifier", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, r.n_train, r.batch))
        x = images_N3HW[idx].float().div_(127.5).sub_(1.0)
        x = _d4(x, rng.integers(0, 2, (r.batch, 3)).astype(bool)).contiguous(memory_format=fmt)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, r)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == r.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, time.perf_counter() - t0


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of the state dict's names, dtypes, shapes and raw bytes (sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _reproduce_command(r: TrainRecipe) -> str:
    cmd = f"python -m litevar.models.default.classifier --seed {r.seed} --steps {r.steps} --batch {r.batch}"
    if asdict(r) != asdict(TrainRecipe(seed=r.seed, steps=r.steps, batch=r.batch)):
        return f"litevar.models.default.classifier.train_classifier(**recipe) with recipe = {asdict(r)}"
    return cmd


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "numpy": np.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main(argv: list[str] | None = None) -> int:
    """`python -m litevar.models.default.classifier`: train and save the shipped classifier."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m litevar.models.default.classifier", description=main.__doc__)
    p.add_argument("--seed", type=int, default=TrainRecipe.seed)
    p.add_argument("--steps", type=int, default=TrainRecipe.steps)
    p.add_argument("--batch", type=int, default=TrainRecipe.batch)
    p.add_argument("--out", default=str(DEFAULT_PATH), help="weights path (.json beside it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _, info = train_classifier(args.seed, args.steps, args.batch, args.out)
    print(json.dumps({k: info[k] for k in ("test_accuracy", "train_seconds", "params")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
