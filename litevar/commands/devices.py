"""`litevar devices`: the GPUs litevar prices on paper (the spec tier), each figure's source, and
what litevar's kernels can run on each."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sources", action="store_true", help="print every figure's source")


def run(args) -> int:
    from litevar.profiler.devices import capabilities, catalogue
    head = f"{'device':10s} {'name':26s} {'sm':>5s} {'mem GiB':>8s} {'GB/s':>6s} {'bf16':>7s} {'fp16':>7s} " \
           f"{'int8':>7s}  not offered"
    print(head)
    for key, s in catalogue().items():
        caps = capabilities(s)
        off = sorted(f for f, why in caps.formats.items() if why) + (["windows", "QK8"] if caps.windows else [])

        def peak(m, s=s):
            return f"{s.peaks[m].value:7.0f}" if m in s.peaks else f"{'-':>7s}"
        print(f"{key:10s} {s.name[:26]:26s} {s.compute_capability:>5s} {s.memory_gib:8.1f} "
              f"{s.bandwidth_gbs.value:6.0f} {peak('bf16')} {peak('fp16')} {peak('int8')}  {', '.join(off) or '-'}")
        if args.sources:
            for what, f in (("memory", s.memory_gb), ("bandwidth", s.bandwidth_gbs), *s.peaks.items()):
                how = "its 2:4-sparse figure halved" if f.from_sparse else "dense"
                print(f"    {what}: {f.value:g} ({how}): {f.source}")
    print("peaks: dense TFLOP/s (TOPS for int8); W4A8 runs at the int8 rate everywhere (litevar's kernel unpacks "
          "INT4 to INT8). A CPU is not in the table: describe it with `litevar calibrate --device cpu --profile "
          "PROFILE`.")
    return 0
