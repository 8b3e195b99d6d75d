"""Quality of generated images of the default model's dataset: class accuracy and Frechet
distance in the shipped classifier's feature space, fidelity of a model to a reference with the
same seeds, where the class shows scale by scale, and real FID / IS when their weights are cached."""
from __future__ import annotations

import numpy as np
import torch

from litevar.models.core.errors import UserError
from litevar.models.var.inference import balanced_labels, cfg_logits, sample


def balanced_images(var, n: int, seed: int, cfg: float, top_k: int, top_p: float, batch: int,
                    dtype_name: str = "fp32", desc: str = "generate"):
    """(images, labels) of n samples balanced over the classes (batch i with seed + i)."""
    labels = balanced_labels(n, var.num_classes)
    imgs, _ = sample(var, labels, seed, cfg, top_k, top_p, batch, dtype_name, desc)
    return imgs, labels


def fidelity(ref, test, vae, labels: list[int], seed: int, cfg: float, top_k: int, top_p: float, batch: int,
             test_dtype: str = "fp32", ref_out=None) -> dict:
    """How close `test` stays to `ref` with the same seeds (both VARs share the VQVAE)."""
    from litevar.models.core.distributed import run_sharded
    from litevar.models.default import metrics
    ref_img, ref_tok = ref_out or sample(ref, labels, seed, cfg, top_k, top_p, batch, desc="reference")
    img, tok = sample(test, labels, seed, cfg, top_k, top_p, batch, test_dtype, desc="evaluated")

    def kl(b):  # one batch's per-scale KL (under torchrun: batch i on rank i mod size)
        lab = torch.tensor(labels[b:b + batch])
        toks_b = [t[b:b + batch] for t in ref_tok]
        p = cfg_logits(ref, vae, lab, toks_b, cfg)
        q = cfg_logits(test, vae, lab, toks_b, cfg, test_dtype)
        return per_scale_kl(p, q, ref.patch_nums)
    kls = run_sharded(kl, list(range(0, len(labels), batch)))
    kl_scales = torch.tensor(kls).mean(0).tolist()
    return {"token_agreement_per_scale": metrics.token_agreement_per_scale(tok, ref_tok),
            "psnr_db": float(metrics.psnr(img, ref_img)), "cfg_kl_per_scale": kl_scales,
            "cfg_kl_sum": float(sum(kl_scales))}



def per_scale_kl(p_BLV: torch.Tensor, q_BLV: torch.Tensor, patch_nums) -> list[float]:
    """Mean over tokens of KL(softmax p || softmax q), per scale (nats)."""
    from litevar.models.default import metrics
    sizes = [pn * pn for pn in patch_nums]
    return metrics.cfg_logits_kl(p_BLV.split(sizes, dim=1), q_BLV.split(sizes, dim=1)).per_scale



class Scorer:
    """Class accuracy and classifier-feature Frechet distance of images against `n_real` held-out
    real ones (the real features, and the real-vs-real floor, computed once)."""

    def __init__(self, n_real: int):
        from litevar.models.default import metrics
        from litevar.models.default.classifier import load_classifier
        from litevar.models.default.data import make_split
        self.clf, self.n_real = load_classifier(), n_real
        self.real, self.real_labels = make_split("test", n_real)
        real_b, _ = make_split("val", n_real)
        self.feats = metrics.classifier_features(self.clf, self.real)
        self.real_vs_real = float(metrics.frechet_distance(metrics.classifier_features(self.clf, real_b), self.feats))

    @property
    def chance(self) -> float:
        """Class accuracy of a guess."""
        return 1 / self.clf.num_classes

    def __call__(self, images: torch.Tensor, labels: list[int]) -> dict:
        """images (N, 3, H, W) in [0, 1]."""
        from litevar.models.default import metrics
        x = images * 2 - 1  # the classifier's input range
        cm = metrics.confusion_matrix(labels, metrics.predict_classes(self.clf, x), self.clf.num_classes)
        per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
        return {"class_accuracy": float(cm.trace() / max(cm.sum(), 1)), "chance": 1 / self.clf.num_classes,
                "per_class_accuracy": per_class.tolist(), "confusion": cm.tolist(),
                "frechet_feature": float(metrics.frechet_distance(metrics.classifier_features(self.clf, x),
                                                                  self.feats)),
                "frechet_feature_real_vs_real": self.real_vs_real, "n_real": self.n_real}

    @torch.no_grad()
    def reconstruction(self, vae, batch: int = 100) -> dict:
        """The ceiling any VAR on this VQVAE can reach: the real images encoded to tokens and
        decoded back, scored like generated ones (plus their PSNR to the originals)."""
        from litevar.models.default import metrics
        from litevar.models.default.data import to_float
        dev = next(vae.parameters()).device
        x = to_float(self.real)
        rec = torch.cat([vae.idxBl_to_img(vae.img_to_idxBl(x[b:b + batch].to(dev)), same_shape=True,
                                          last_one=True).float().cpu() for b in range(0, len(x), batch)])
        r = self((rec + 1) / 2, self.real_labels.tolist())
        return {"psnr_db": float(metrics.psnr((rec + 1) / 2, (x + 1) / 2)), "class_accuracy": r["class_accuracy"],
                "frechet_feature": r["frechet_feature"], "n": len(x)}



@torch.no_grad()
def class_by_scale(var, vae, scorer: Scorer | None, n: int, seed: int, cfg: float, top_k: int, top_p: float, batch: int,
                   dtype_name: str = "fp32") -> dict:
    """Where the class shows, on the first n held-out real test images: `decoded[k-1]`,
    class accuracy of each image decoded from its own first k scales of tokens (k = 1..S);
    `forced[k]`, class accuracy of images generated for their labels with their real tokens
    forced at the first k scales and the rest sampled (k = 0..S-1; k = 0 is plain generation)."""
    from litevar.models.default import metrics
    from litevar.models.default.data import make_split, to_float
    if n < 1:
        raise UserError(f"--by-scale {n}: give the number of real images, e.g. 200")
    dev, S = var.lvl_1L.device, len(var.patch_nums)
    real, labels = make_split("test", n)  # the scorer's real images are the first of the same split
    x = to_float(real)
    per_batch = [vae.img_to_idxBl(x[b:b + batch].to(dev)) for b in range(0, n, batch)]
    tokens = [torch.cat(t).cpu() for t in zip(*per_batch)]  # per scale: (n, pn * pn)
    partial = [vae.idxBl_to_img(ts, same_shape=True, last_one=False) for ts in per_batch]  # per batch, per scale
    scored = scorer is not None  # under torchrun rank 0 scores; the others only generate their share
    decoded = [metrics.class_accuracy(scorer.clf, torch.cat([p[k].float().cpu() for p in partial]), labels)
               for k in range(S)] if scored else []
    forced = []
    for k in range(S):
        imgs, _ = sample(var, labels.tolist(), seed, cfg, top_k, top_p, batch, dtype_name,
                         desc=f"generate, {k} real scales", prefix=tokens[:k])
        forced.append(metrics.class_accuracy(scorer.clf, imgs * 2 - 1, labels) if scored else None)
    return {"n": n, "patch_nums": list(var.patch_nums), "decoded": decoded, "forced": forced}



def quality(images: torch.Tensor, labels: list[int], n_real: int = 500, vae=None, scorer: Scorer | None = None) -> dict:
    """Class accuracy and classifier-feature Frechet distance (with the real-vs-real floor);
    with `vae`, also the VQVAE's reconstruction ceiling on the same real images."""
    scorer = scorer or Scorer(n_real)
    out = scorer(images, labels)
    if vae is not None:
        out["reconstruction"] = scorer.reconstruction(vae)
    out["inception"] = inception(images, scorer.real)
    return out



def inception(images: torch.Tensor, real_u8) -> dict:
    """Real FID / IS when an established library and its cached Inception weights are present."""
    from litevar.models.default import metrics
    fid, message = metrics.inception_metrics(images, real_u8)
    return fid if fid is not None else {"skipped": message}
