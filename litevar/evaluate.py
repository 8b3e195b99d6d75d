"""`litevar eval`: quality of a model on N generated images.

- class accuracy of the generated images by the shipped classifier (chance = 1 / classes);
- Frechet distance in that classifier's feature space against held-out real images, next to
  the real-vs-real figure (two disjoint real sets of the same size) as the floor;
- fidelity to the full-precision model with the same seeds (when the evaluated model differs:
  a lower --dtype, later a plan): token agreement per scale, PSNR of the images, and the KL of
  the CFG logits with both models teacher-forced on the reference tokens;
- real FID / IS through an established library when its Inception weights are already cached;
- with --by-scale N, where the class shows, scale by scale, on N held-out real images: the class
  accuracy of each image decoded from its first k scales of tokens (what any VAR on this VQVAE
  can show by then) and of images generated with those real tokens forced at the first k scales
  and the rest sampled (where the sampled layout goes wrong).
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from litevar.atomic import write_json
from litevar.errors import UserError
from litevar.generate import add_model_arguments, autocast, load_model

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--n", type=int, default=200, help="images to generate (balanced over classes; default 200)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--plan", help="compression plan JSON (`litevar plan`): evaluate the planned model, and its "
                   "fidelity to the dense full-precision one with the same seeds")
    p.add_argument("--by-scale", type=int, default=0, metavar="N",
                   help="also: where the class shows, scale by scale, on N held-out real images (their first k "
                   "scales decoded; generation with their real tokens forced at the first k scales); 0 = off")
    p.add_argument("--json", help="write every figure here")


def balanced_labels(n: int, num_classes: int) -> list[int]:
    return [i % num_classes for i in range(n)]


@torch.no_grad()
def sample(var, labels: list[int], seed: int, cfg: float, top_k: int, top_p: float, batch: int,
           dtype_name: str = "fp32", desc: str = "generate", prefix: list[torch.Tensor] | None = None):
    """Images (N, 3, H, W) in [0, 1] and per-scale tokens; batch i uses seed + i. `prefix`:
    token ids (N, pn * pn) forced at the first len(prefix) scales."""
    from tqdm import tqdm
    dev = var.lvl_1L.device
    imgs, toks = [], []
    for i, b in enumerate(tqdm(range(0, len(labels), batch), desc=desc, unit="batch")):
        label_B = torch.tensor(labels[b:b + batch], device=dev)
        with autocast(dev, dtype_name):
            img, tokens = var.autoregressive_infer_cfg(len(label_B), label_B, g_seed=seed + i, cfg=cfg, top_k=top_k,
                                                       top_p=top_p, return_tokens=True,
                                                       prefix_tokens=[t[b:b + batch] for t in prefix or []])
        imgs.append(img.float().cpu())
        toks.append([t.cpu() for t in tokens])
    return torch.cat(imgs), [torch.cat(ts) for ts in zip(*toks)]


@torch.no_grad()
def cfg_logits(var, vae, labels_B: torch.Tensor, tokens: list[torch.Tensor], cfg: float,
               dtype_name: str = "fp32") -> torch.Tensor:
    """Teacher-forced CFG-combined logits (B, L, V) on given tokens, as sampling would see them."""
    dev = var.lvl_1L.device
    x = vae.quantize.idxBl_to_var_input([t.to(dev) for t in tokens])
    B = labels_B.shape[0]
    both = torch.cat([labels_B.to(dev), torch.full_like(labels_B.to(dev), var.num_classes)])
    with autocast(dev, dtype_name):
        logits = var(both, x.repeat(2, 1, 1), cfg_batch=B).float()
    t_L = torch.cat([torch.full((pn * pn,), cfg * si / (len(var.patch_nums) - 1), device=dev)
                     for si, pn in enumerate(var.patch_nums)]).view(1, -1, 1)
    return (1 + t_L) * logits[:B] - t_L * logits[B:]


def fidelity(ref, test, vae, labels: list[int], seed: int, cfg: float, top_k: int, top_p: float, batch: int,
             test_dtype: str = "fp32", ref_out=None) -> dict:
    """How close `test` stays to `ref` with the same seeds (both VARs share the VQVAE)."""
    from litevar import metrics
    ref_img, ref_tok = ref_out or sample(ref, labels, seed, cfg, top_k, top_p, batch, desc="reference")
    img, tok = sample(test, labels, seed, cfg, top_k, top_p, batch, test_dtype, desc="evaluated")
    kls = []
    for b in range(0, len(labels), batch):
        lab = torch.tensor(labels[b:b + batch])
        toks_b = [t[b:b + batch] for t in ref_tok]
        p = cfg_logits(ref, vae, lab, toks_b, cfg)
        q = cfg_logits(test, vae, lab, toks_b, cfg, test_dtype)
        kls.append(per_scale_kl(p, q, ref.patch_nums))
    kl_scales = torch.tensor(kls).mean(0).tolist()
    return {"token_agreement_per_scale": metrics.token_agreement_per_scale(tok, ref_tok),
            "psnr_db": float(metrics.psnr(img, ref_img)), "cfg_kl_per_scale": kl_scales,
            "cfg_kl_sum": float(sum(kl_scales))}


def per_scale_kl(p_BLV: torch.Tensor, q_BLV: torch.Tensor, patch_nums) -> list[float]:
    """Mean over tokens of KL(softmax p || softmax q), per scale (nats)."""
    from litevar import metrics
    sizes = [pn * pn for pn in patch_nums]
    return metrics.cfg_logits_kl(p_BLV.split(sizes, dim=1), q_BLV.split(sizes, dim=1)).per_scale


class Scorer:
    """Class accuracy and classifier-feature Frechet distance of images against `n_real` held-out
    real ones (the real features, and the real-vs-real floor, computed once)."""

    def __init__(self, n_real: int):
        from litevar import metrics
        from litevar.classifier import load_classifier
        from litevar.data import make_split
        self.clf, self.n_real = load_classifier(), n_real
        self.real, self.real_labels = make_split("test", n_real)
        real_b, _ = make_split("val", n_real)
        self.feats = metrics.classifier_features(self.clf, self.real)
        self.real_vs_real = float(metrics.frechet_distance(metrics.classifier_features(self.clf, real_b), self.feats))

    def __call__(self, images: torch.Tensor, labels: list[int]) -> dict:
        """images (N, 3, H, W) in [0, 1]."""
        from litevar import metrics
        x = images * 2 - 1  # the classifier's input range
        cm = metrics.confusion_matrix(labels, metrics.predict_classes(self.clf, x), self.clf.num_classes)
        per_class = cm.diagonal() / np.maximum(cm.sum(1), 1)
        return {"class_accuracy": float(cm.trace() / max(cm.sum(), 1)), "chance": 1 / self.clf.num_classes,
                "per_class_accuracy": per_class.tolist(), "confusion": cm.tolist(),
                "frechet_feature": float(metrics.frechet_distance(metrics.classifier_features(self.clf, x), self.feats)),
                "frechet_feature_real_vs_real": self.real_vs_real, "n_real": self.n_real}

    @torch.no_grad()
    def reconstruction(self, vae, batch: int = 100) -> dict:
        """The ceiling any VAR on this VQVAE can reach: the real images encoded to tokens and
        decoded back, scored like generated ones (plus their PSNR to the originals)."""
        from litevar import metrics
        from litevar.data import to_float
        dev = next(vae.parameters()).device
        x = to_float(self.real)
        rec = torch.cat([vae.idxBl_to_img(vae.img_to_idxBl(x[b:b + batch].to(dev)), same_shape=True,
                                          last_one=True).float().cpu() for b in range(0, len(x), batch)])
        r = self((rec + 1) / 2, self.real_labels.tolist())
        return {"psnr_db": float(metrics.psnr((rec + 1) / 2, (x + 1) / 2)), "class_accuracy": r["class_accuracy"],
                "frechet_feature": r["frechet_feature"], "n": len(x)}


@torch.no_grad()
def class_by_scale(var, vae, scorer: Scorer, n: int, seed: int, cfg: float, top_k: int, top_p: float, batch: int,
                   dtype_name: str = "fp32") -> dict:
    """Where the class shows, on the first n held-out real test images: `decoded[k-1]`,
    class accuracy of each image decoded from its own first k scales of tokens (k = 1..S);
    `forced[k]`, class accuracy of images generated for their labels with their real tokens
    forced at the first k scales and the rest sampled (k = 0..S-1; k = 0 is plain generation)."""
    from litevar import metrics
    from litevar.data import make_split, to_float
    if n < 1:
        raise UserError(f"--by-scale {n}: give the number of real images, e.g. 200")
    dev, S = var.lvl_1L.device, len(var.patch_nums)
    real, labels = make_split("test", n)  # the scorer's real images are the first of the same split
    x = to_float(real)
    per_batch = [vae.img_to_idxBl(x[b:b + batch].to(dev)) for b in range(0, n, batch)]
    tokens = [torch.cat(t).cpu() for t in zip(*per_batch)]  # per scale: (n, pn * pn)
    partial = [vae.idxBl_to_img(ts, same_shape=True, last_one=False) for ts in per_batch]  # per batch, per scale
    decoded = [metrics.class_accuracy(scorer.clf, torch.cat([p[k].float().cpu() for p in partial]), labels)
               for k in range(S)]
    forced = []
    for k in range(S):
        imgs, _ = sample(var, labels.tolist(), seed, cfg, top_k, top_p, batch, dtype_name,
                         desc=f"generate, {k} real scales", prefix=tokens[:k])
        forced.append(metrics.class_accuracy(scorer.clf, imgs * 2 - 1, labels))
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
    from litevar import metrics
    fid, message = metrics.inception_metrics(images, real_u8)
    return fid if fid is not None else {"skipped": message}


def run(args) -> int:
    if args.n < 2:
        raise UserError(f"--n must be >= 2 (got {args.n})")
    t0 = time.perf_counter()
    plan = None
    if args.plan:  # read it first: a bad plan fails before the model loads
        from planner.plan import Plan
        plan = Plan.load(args.plan)
    vae, dense = load_model(args)
    var = dense
    if plan is not None:
        from litevar.runtime import planned_copy
        var = planned_copy(vae, dense, plan)
    labels = balanced_labels(args.n, var.num_classes)
    imgs, _ = sample(var, labels, args.seed, args.cfg, args.top_k, args.top_p, args.batch, args.dtype)
    scorer = Scorer(max(args.n, 500))
    report = {"n": args.n, "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
              "dtype": args.dtype, "plan": args.plan, **quality(imgs, labels, vae=vae, scorer=scorer)}
    if args.by_scale:
        report["class_by_scale"] = class_by_scale(var, vae, scorer, args.by_scale, args.seed, args.cfg, args.top_k,
                                                  args.top_p, args.batch, args.dtype)
    if plan is not None:  # fidelity of the planned model to the dense fp32 one, same seeds
        report["fidelity_vs_dense"] = fidelity(dense, var, vae, labels, args.seed, args.cfg, args.top_k, args.top_p,
                                               args.batch, args.dtype)
    elif args.dtype != "fp32":  # fidelity of the lower-precision run to the fp32 one, same seeds
        ref_out = sample(var, labels, args.seed, args.cfg, args.top_k, args.top_p, args.batch, "fp32", "fp32 reference")
        report["fidelity_vs_fp32"] = fidelity(var, var, vae, labels, args.seed, args.cfg, args.top_k, args.top_p,
                                              args.batch, args.dtype, ref_out=ref_out)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def print_report(r: dict) -> None:
    print(f"images: {r['n']} (cfg {r['cfg']}, top-k {r['top_k']}, top-p {r['top_p']}, {r['dtype']})")
    print(f"class accuracy: {100 * r['class_accuracy']:.1f}%" + (f" (chance {100 * r['chance']:.0f}%)" if r.get("chance") else ""))
    print(f"Frechet distance (classifier features): {r['frechet_feature']:.3f} "
          f"(real vs real, {r['n_real']} images each: {r['frechet_feature_real_vs_real']:.3f})")
    if "confusion" in r:
        print_confusions(np.array(r["confusion"]), r["per_class_accuracy"])
    if "reconstruction" in r:
        c = r["reconstruction"]
        print(f"VQVAE reconstruction ceiling ({c['n']} real images encoded and decoded): PSNR {c['psnr_db']:.1f} dB, "
              f"class accuracy {100 * c['class_accuracy']:.1f}%, Frechet distance {c['frechet_feature']:.3f}")
    for key in ("fidelity_vs_fp32", "fidelity_vs_dense"):
        if key not in r:
            continue
        f = r[key]
        print(f"{key.replace('_', ' ')}: PSNR {f['psnr_db']:.2f} dB, CFG-logit KL {f['cfg_kl_sum']:.4f} nats (sum over scales), "
              f"token agreement per scale {[round(a, 3) for a in f['token_agreement_per_scale']]}")
    inc = r["inception"]
    print(f"Inception FID/IS: skipped: {inc['skipped']}" if "skipped" in inc else f"Inception FID/IS: {inc}")
    if "class_by_scale" in r:
        print_class_by_scale(r["class_by_scale"])


def class_names(num_classes: int) -> list[str]:
    from litevar.data import CLASS_NAMES
    return list(CLASS_NAMES) if len(CLASS_NAMES) == num_classes else [str(i) for i in range(num_classes)]


def print_confusions(cm: np.ndarray, per_class: list[float], top: int = 5) -> None:
    """Per-class accuracy and the most frequent confusions (intended -> predicted)."""
    names = class_names(len(cm))
    print("per class: " + ", ".join(f"{n} {100 * a:.0f}%" for n, a in zip(names, per_class)))
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
    worst = sorted(off, reverse=True)[:top]
    if worst:
        print("most frequent confusions: " + ", ".join(f"{names[i]} -> {names[j]} ({c})" for c, i, j in worst))


def print_class_by_scale(c: dict) -> None:
    pns = c["patch_nums"]
    print(f"where the class shows ({c['n']} held-out real images; k = scales of their own tokens):")
    print(f"{'k':>3} {'up to':>7} {'decoded from k scales':>22} {'generated, k forced':>20}")
    for k in range(len(pns) + 1):
        side = f"{pns[k - 1]}x{pns[k - 1]}" if k else "-"
        dec = f"{100 * c['decoded'][k - 1]:.1f}%" if k else "-"
        gen = f"{100 * c['forced'][k]:.1f}%" if k < len(pns) else "-"
        print(f"{k:>3} {side:>7} {dec:>22} {gen:>20}")
