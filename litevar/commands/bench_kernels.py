"""`litevar bench-kernels`: every kernel against its dense reference at VAR's real shapes.

GEMMs (kernels/bench_gemm.py) and attention (kernels/bench_attention.py) are timed in the same
run as their references (median of repeats, warm-up excluded) and printed as one table each;
`--json` writes every row as a result file (litevar.commands.results: command, git revision,
machine, date)."""
from __future__ import annotations

import argparse

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", help="write all rows and the device fingerprint here")
    p.add_argument("--only", choices=["gemm", "attention"], help="run one family only")
    p.add_argument("--set", dest="which", choices=("quick", "full", "evidence"), default="quick",
                   help="shapes: a quick subset (default), every VAR shape, or the GPU evidence run's (d16..d30 "
                   "GEMMs and MDWA at 1024 / 2048 px)")


def device_name(device: str) -> str:
    from litevar.models.core.device import fingerprint
    fp = fingerprint(device)
    return fp["name"] + (f" ({fp['cores']} cores)" if fp.get("cores") else "")


def run(args) -> int:
    from litevar.commands.common import resolve_device
    dev = str(resolve_device(args.device))
    report = {"device": device_name(dev), "torch": torch.__version__, "set": args.which}
    if args.only in (None, "gemm"):
        from litevar.kernels.bench_gemm import bench_gemm, print_table
        report["gemm"] = bench_gemm(dev, args.which)
        print_table(report["gemm"])
    if args.only in (None, "attention"):
        from litevar.kernels.bench_attention import bench_attention, print_table
        report["attention"] = bench_attention(dev, args.which)
        print_table(report["attention"])
    if args.json:
        from litevar.commands.results import write_command_result
        write_command_result(args, "bench-kernels", report, dev, default=str)
        print(f"wrote {args.json}")
    return 0
