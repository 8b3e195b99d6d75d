"""`litevar train`: train the shipped default model (classifier, VQVAE, VAR) from scratch, seeded and
resumable (models/default/train.py)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from litevar.commands.args import COUNT, POSITIVE, SEED
from litevar.models.core.atomic import atomic_path, file_sha256, write_text
from litevar.models.core.errors import UserError
from litevar.models.default.train import (
    ASSETS,
    AUTOCASTS,
    TrainConfig,
    build_small_vae,
    checkpoint_step,
    dataset_images,
    resolve_autocast,
    scaled,
    shipped_var_state,
    tokenize,
    train_vae,
    train_var,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", default=str(ASSETS), help="where the trained weights go (default: the shipped assets)")
    p.add_argument("--work-dir", default="runs/train", help="resumable checkpoints (default runs/train)")
    p.add_argument("--ckpt-every", type=COUNT, default=250, help="checkpoint every N steps")
    p.add_argument("--stages", default="classifier,vae,var", help="comma-separated subset of classifier,vae,var")
    p.add_argument("--scale", type=POSITIVE, default=1.0,
                   help="multiply every stage's steps (e.g. 0.01 for a smoke run)")
    p.add_argument("--threads", type=COUNT, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", choices=AUTOCASTS, default="auto",
                   help="compute dtype of every stage: auto takes bf16 where a bf16 GEMM measures faster than fp32 "
                        "on --device (AVX512-BF16, AMX, GPUs), else fp32 (an AVX2-only CPU emulates bf16)")



def run(args) -> int:
    from safetensors.torch import load_file, save_file
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    if not stages <= {"classifier", "vae", "var"}:
        raise UserError(f"--stages {args.stages!r}: choose from classifier,vae,var")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast, why = resolve_autocast(args.autocast, device)
    print(f"train: computing in {autocast} ({why})")
    cfg = scaled(TrainConfig(seed=args.seed, autocast=autocast), args.scale)
    out, work = Path(args.out), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    times, resumed = {}, {}
    if "classifier" in stages:
        from litevar.models.default.classifier import train_classifier
        t = time.perf_counter()
        train_classifier(seed=cfg.seed, steps=cfg.classifier_steps, out_path=str(out / "classifier.safetensors"),
                         bf16=autocast == "bf16")
        times["classifier_s"] = round(time.perf_counter() - t, 1)
    if "vae" in stages:
        t = time.perf_counter()
        resumed["vae"] = checkpoint_step(work / "vae.pt")
        vae = train_vae(cfg, work, device, args.ckpt_every)
        with atomic_path(out / "vae.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp)
        times["vae_s"] = round(time.perf_counter() - t, 1)
    if "var" in stages:
        t = time.perf_counter()
        vae = build_small_vae(cfg)
        vae.load_state_dict(load_file(str(out / "vae.safetensors")))
        vae.eval().requires_grad_(False)
        x_all, labels = dataset_images(cfg, cfg.n_images)
        tokens = tokenize(vae, x_all)
        del x_all
        resumed["var"] = checkpoint_step(work / "var.pt")
        var = train_var(cfg, vae, tokens, labels, work, device, args.ckpt_every)
        with atomic_path(out / "var.safetensors") as tmp:
            save_file(shipped_var_state(var), tmp)
        times["var_s"] = round(time.perf_counter() - t, 1)
    card = {"recipe": asdict(cfg), "autocast_chosen": why, "seconds": times, "threads": torch.get_num_threads(),
            "resumed_at_step": {k: v for k, v in resumed.items() if v},  # seconds then cover the rest only
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__}
    card_path = out / "train.json"
    if card_path.exists():  # keep the times of stages not re-run now
        old = json.loads(card_path.read_text())
        card["seconds"] = {**old.get("seconds", {}), **times}
        kept = {k: v for k, v in old.get("resumed_at_step", {}).items() if f"{k}_s" not in times}
        card["resumed_at_step"] = {**kept, **card["resumed_at_step"]}
    card["files_sha256"] = {name: file_sha256(out / name) for name in ("var.safetensors", "vae.safetensors")
                            if (out / name).exists()}  # the weights this card describes
    write_text(card_path, json.dumps(card, indent=1))
    print(f"trained {sorted(stages)} into {out}: {card['seconds']}")
    return 0
