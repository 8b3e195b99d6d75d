"""Build, load and generate times of a random-init official architecture (default d30) on CPU.

    python benchmarks/build_load_generate.py --depth 30 [--resolution 256] [--tmp DIR]

Builds on the meta device and materialises in place, saves the state dicts in the official
layout, loads them back with strict=True from memory-mapped files (assign=True), then generates
one image (CFG batch of 2). Prints one table row per step with wall time and peak RSS."""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

import litevar
from litevar.models.core.host_memory import retain_freed_memory
from litevar.models.var.schedules import schedule_for


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    retain_freed_memory()  # as the `litevar` command runs
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--tmp", default=None, help="where to write the checkpoints (default: a temp dir)")
    args = p.parse_args()
    pns = schedule_for(args.resolution)
    rows = []
    t = time.perf_counter()
    vae, var = litevar.build_vae_var("cpu", patch_nums=pns, depth=args.depth, shared_aln=args.depth >= 36)
    rows.append(("build (random init)", time.perf_counter() - t, peak_rss_gb()))
    n_params = sum(p.numel() for p in var.parameters())
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        var_path, vae_path = Path(tmp) / "var.pth", Path(tmp) / "vae.pth"
        torch.save(litevar.official_state_dict(var), var_path)
        torch.save(vae.state_dict(), vae_path)
        del vae, var
        t = time.perf_counter()
        vae, var = litevar.load_vae_var(var_path, vae_path)
        rows.append(("load (strict, mmap, assign)", time.perf_counter() - t, peak_rss_gb()))
        t = time.perf_counter()
        var.autoregressive_infer_cfg(1, torch.tensor([0]), g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
        rows.append(("generate 1 image (fp32)", time.perf_counter() - t, peak_rss_gb()))
    print(f"d{args.depth} ({n_params / 1e6:.1f}M params), {args.resolution} px, {torch.get_num_threads()} threads")
    print(f"{'step':32s} {'seconds':>8s} {'peak RSS GB':>12s}")
    for name, s, rss in rows:
        print(f"{name:32s} {s:8.1f} {rss:12.1f}")


if __name__ == "__main__":
    main()
