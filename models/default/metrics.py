"""Quality metrics for compressed VAR models: pure functions of tensors / arrays.

Images: uint8 (N, H, W, 3) everywhere. Floats (N, 3, H, W): in [-1, 1] for the classifier
metrics (the classifier's own input, `litevar.models.default.data.to_float`); in [0, 1] (what VAR returns)
for `psnr` and `inception_metrics`.
Token indices: one LongTensor (B, l_k) per scale. Logits: one tensor (B, l_k, V) per scale.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from litevar.models.core.imageio import as_uint8_nhwc
from litevar.models.default import data

log = logging.getLogger(__name__)

# Inception weights of the optional libraries, as their code names them; both libraries load
# them with torch.hub.load_state_dict_from_url, which uses <torch.hub.get_dir()>/checkpoints/
# (default ~/.cache/torch/hub/checkpoints, moved by $TORCH_HOME) and downloads only when the
# file is missing: we call them only when it is there.
TORCH_FIDELITY_WEIGHTS = ("weights-inception-2015-12-05-6726825d.pth",
                          "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                          "weights-inception-2015-12-05-6726825d.pth")
PYTORCH_FID_WEIGHTS = ("pt_inception-2015-12-05-6726825d.pth",
                       "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                       "pt_inception-2015-12-05-6726825d.pth")


# ---------------------------------------------------------------- Frechet distance

def frechet_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray,
                       eps: float = 1e-6) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b), in squared feature units:
    |mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)).

    If the product is singular (non-finite sqrtm), eps * I is added to both covariances. A
    complex square root with imaginary parts above 1e-3 (relative) raises ValueError."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"shape mismatch: mu {mu_a.shape} vs {mu_b.shape}, "
                         f"cov {cov_a.shape} vs {cov_b.shape}")
    covmean = _sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        log.warning("frechet: singular covariance product; adding %g to the diagonal", eps)
        offset = np.eye(len(cov_a)) * eps
        covmean = _sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        scale = max(np.abs(covmean).max(), 1e-12)
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"frechet: sqrtm has a large imaginary part "
                             f"({np.abs(covmean.imag).max():.3g}); too few samples for the "
                             f"feature dimension?")
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's sqrtm without its singular-matrix warning: ReLU features with dead units give
    singular covariances routinely, and the caller checks the result itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def frechet_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor
                     ) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D):
    means and unbiased covariances in float64. Units: squared feature units (FID-like)."""
    a, b = (_as_f64(f) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets, got {a.shape} and {b.shape}")
    return frechet_from_stats(a.mean(0), np.cov(a, rowvar=False),
                              b.mean(0), np.cov(b, rowvar=False))


def _as_f64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------- classifier-based metrics

def classifier_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]; float (N, 3, H, W) in [-1, 1] is
    clamped to that range and returned as float32."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        return data.to_float(images)
    x = torch.as_tensor(images).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) or float (N, 3, H, W), got {tuple(x.shape)}")
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def classifier_features(classifier: torch.nn.Module, images: np.ndarray | torch.Tensor,
                        batch: int = 500) -> np.ndarray:
    """Penultimate features `classifier.features` of images -> float64 (N, D)."""
    x = classifier_input(images)
    classifier.eval()
    return np.concatenate([classifier.features(x[i:i + batch]).double().numpy()
                           for i in range(0, len(x), batch)])


@torch.no_grad()
def predict_classes(classifier: torch.nn.Module, images: np.ndarray | torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The classifier's class (int64 (N,)) for each image."""
    x = classifier_input(images)
    classifier.eval()
    if not len(x):
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([classifier(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def class_accuracy(classifier: torch.nn.Module, images: np.ndarray | torch.Tensor,
                   labels: np.ndarray | torch.Tensor, batch: int = 500) -> float:
    """Fraction (in [0, 1]) of images the classifier assigns to their intended label."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    pred = predict_classes(classifier, images, batch)
    return float((pred == labels).double().mean()) if len(labels) else float("nan")


def confusion_matrix(labels: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor,
                     num_classes: int) -> np.ndarray:
    """int64 (C, C): row = intended class, column = predicted class."""
    labels, pred = np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if labels.shape != pred.shape:
        raise ValueError(f"{len(labels)} labels but {len(pred)} predictions")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


# ---------------------------------------------------------------- token / logit / pixel metrics

def token_agreement_per_scale(idx_a: list[torch.Tensor], idx_b: list[torch.Tensor]) -> list[float]:
    """Per scale, the fraction (in [0, 1]) of token indices (B, l_k) equal in both runs."""
    if len(idx_a) != len(idx_b):
        raise ValueError(f"{len(idx_a)} scales vs {len(idx_b)}")
    out = []
    for k, (a, b) in enumerate(zip(idx_a, idx_b)):
        if a.shape != b.shape:
            raise ValueError(f"scale {k}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
        out.append(float((a == b).double().mean()))
    return out


class PSNR(NamedTuple):
    per_image: torch.Tensor  # (N,) float64, dB
    mean: float  # mean of per_image, dB; float(result) gives it

    def __float__(self) -> float:
        return self.mean


def psnr(img_a: torch.Tensor | np.ndarray, img_b: torch.Tensor | np.ndarray,
         max_db: float = 100.0) -> PSNR:
    """PSNR in dB of images in [0, 1], shaped (N, ...) -> PSNR(per_image (N,), mean).

    Identical images give `max_db` (MSE is floored at 10^(-max_db / 10))."""
    a, b = (torch.from_numpy(_as_f64(x)) for x in (img_a, img_b))
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two equal-shaped batches (N, ...), got {a.shape} and {b.shape}")
    mse = (a - b).square().flatten(1).mean(1).clamp_min(10 ** (-max_db / 10))
    per_image = -10 * torch.log10(mse)
    return PSNR(per_image, float(per_image.mean()))


class ScaleKL(NamedTuple):
    per_scale: list[float]  # nats per token, mean over the tokens of each scale
    mean: float  # unweighted mean over scales; float(result) gives it

    def __float__(self) -> float:
        return self.mean


def cfg_logits_kl(logits_p: list[torch.Tensor] | torch.Tensor,
                  logits_q: list[torch.Tensor] | torch.Tensor) -> ScaleKL:
    """KL(softmax(p) || softmax(q)) over the vocabulary, in nats per token.

    Takes one (B, l_k, V) tensor per scale (or a single tensor: one scale); p is the reference
    (e.g. uncompressed CFG logits), q the approximation. Returns ScaleKL(per_scale = mean over
    the tokens of each scale, mean = unweighted mean of those: every scale counts the same,
    however many tokens it has). Computed in float32 with log_softmax."""
    if isinstance(logits_p, torch.Tensor):
        logits_p, logits_q = [logits_p], [logits_q]
    if len(logits_p) != len(logits_q) or not logits_p:
        raise ValueError(f"{len(logits_p)} scales vs {len(logits_q)}")
    per_scale = []
    for k, (p, q) in enumerate(zip(logits_p, logits_q)):
        if p.shape != q.shape:
            raise ValueError(f"scale {k}: shapes {tuple(p.shape)} vs {tuple(q.shape)}")
        logp, logq = F.log_softmax(p.float(), -1), F.log_softmax(q.float(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)  # (B, l_k)
        per_scale.append(float(kl.mean()))
    return ScaleKL(per_scale, sum(per_scale) / len(per_scale))


# ---------------------------------------------------------------- optional real FID / IS

def inception_weights_path(filename: str) -> Path:
    """Where torch.hub.load_state_dict_from_url looks for `filename` (no download)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def inception_metrics(images: np.ndarray | torch.Tensor, real_images: np.ndarray | torch.Tensor
                      ) -> tuple[dict | None, str]:
    """Real FID (+ Inception Score) with torch-fidelity, else FID with pytorch-fid, only when
    the library is installed and its Inception weights are already in the torch hub cache.
    Never downloads. Returns ({"fid", "isc_mean", "isc_std"}, "") or (None, what to install
    and which file to put where). isc_* are None with pytorch-fid."""
    fake, real = as_uint8_nhwc(images), as_uint8_nhwc(real_images)
    for lib, weights, run in (("torch_fidelity", TORCH_FIDELITY_WEIGHTS, _torch_fidelity),
                              ("pytorch_fid", PYTORCH_FID_WEIGHTS, _pytorch_fid)):
        path = inception_weights_path(weights[0])
        if importlib.util.find_spec(lib) is not None and path.is_file():
            log.info("inception metrics with %s (%s)", lib, path)
            return run(fake, real, path), ""
    return None, _missing_message()


def _missing_message() -> str:
    lines = ["real FID/IS skipped: no Inception backend available offline. Either:"]
    for pkg, lib, (name, url) in (("torch-fidelity", "torch_fidelity", TORCH_FIDELITY_WEIGHTS),
                                  ("pytorch-fid", "pytorch_fid", PYTORCH_FID_WEIGHTS)):
        have = "installed" if importlib.util.find_spec(lib) is not None else "not installed"
        where = inception_weights_path(name)
        state = "present" if where.is_file() else "missing"
        lines.append(f"  - pip install {pkg} ({have}) and put {url} at {where} ({state})")
    return "\n".join(lines)


class _Uint8CHW(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) as a dataset of uint8 (3, H, W) tensors (torch-fidelity's input)."""

    def __init__(self, images_NHWC: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(images_NHWC)).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i].contiguous()


def _torch_fidelity(fake: np.ndarray, real: np.ndarray, weights: Path) -> dict:
    import torch_fidelity

    out = torch_fidelity.calculate_metrics(
        input1=_Uint8CHW(fake), input2=_Uint8CHW(real), cuda=torch.cuda.is_available(),
        isc=True, fid=True, cache=False, verbose=False,
        feature_extractor_weights_path=str(weights))
    return {"fid": float(out["frechet_inception_distance"]),
            "isc_mean": float(out["inception_score_mean"]),
            "isc_std": float(out["inception_score_std"])}


@torch.no_grad()
def _pytorch_fid(fake: np.ndarray, real: np.ndarray, weights: Path, batch: int = 50) -> dict:
    from pytorch_fid.inception import InceptionV3  # finds `weights` in the hub cache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    def feats(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
        return np.concatenate([model(x[i:i + batch].to(device))[0].flatten(1).double().cpu().numpy()
                               for i in range(0, len(x), batch)])

    return {"fid": frechet_distance(feats(fake), feats(real)), "isc_mean": None, "isc_std": None}
