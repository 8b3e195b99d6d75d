"""What autocast's weight cache adds to a generation's peak: the same random-init VAR at a
lower-precision runtime dtype, its parameters frozen (as every model litevar loads is) and
trainable (as `--random-init` built it before they were frozen).

Autocast keeps the low-precision copy of a float32 parameter that requires grad for as long as
the autocast region lasts (a whole generation), so a trainable model holds a bf16 copy of every
fp32 linear weight on top of the weights themselves: half their bytes. The memory model prices a
frozen model, which casts each weight per call and keeps no copy. Each phase's allocator peak is
measured as the cost stage measures it (profiler.cost.phase_peaks_mb).

    python benchmarks/autocast_cache.py --depth 16 --json docs/results/autocast-cache-cpu.json
    python benchmarks/autocast_cache.py --depth 16 --device cuda --json docs/results/autocast-cache-cuda.json
"""
from __future__ import annotations

import argparse

import torch

from litevar.commands.results import provenance, write_result
from litevar.models.core.family import ModelFlags, get_family
from litevar.models.core.host_memory import retain_freed_memory
from litevar.profiler.cost import MB, module_bytes, phase_peaks_mb


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=16, help="VAR depth (random init; default 16)")
    p.add_argument("--resolution", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"), help="autocast dtype (default bf16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json", required=True, help="the result file to write")
    return p.parse_args(argv)


def measure(args) -> dict:
    device = torch.device(args.device)
    family = get_family("var")
    vae, var = family.load(ModelFlags(family="var", random_init=True, depth=args.depth, resolution=args.resolution),
                           device)
    linear_mib = sum(m.weight.numel() * m.weight.element_size() for m in var.modules()
                     if isinstance(m, torch.nn.Linear)) / MB
    rows = []
    for trainable in (False, True):
        var.requires_grad_(trainable)
        tf, dec = phase_peaks_mb(vae, var, 1, args.dtype, device)
        rows.append({"parameters": "trainable" if trainable else "frozen", "transformer_mib": tf, "decode_mib": dec})
    var.requires_grad_(False)
    return {"depth": args.depth, "resolution": args.resolution, "dtype": args.dtype, "batch": 1,
            "resident_mib": module_bytes(var, vae) / MB, "linear_weights_fp32_mib": linear_mib,
            "rows": rows, "cache_mib": rows[1]["transformer_mib"] - rows[0]["transformer_mib"]}


def main(argv=None) -> int:
    retain_freed_memory()  # as the `litevar` command runs
    args = parse_args(argv)
    started = provenance(args.device)
    data = measure(args)
    write_result(args.json, "autocast-cache", data, args.device, started=started)
    print(f"d{data['depth']} at {data['resolution']} px, {data['dtype']} autocast; fp32 linear weights "
          f"{data['linear_weights_fp32_mib'] / 1024:.2f} GiB")
    print("| parameters | transformer phase GiB | decode phase GiB |")
    print("|---|---|---|")
    for r in data["rows"]:
        print(f"| {r['parameters']} | {r['transformer_mib'] / 1024:.2f} | {r['decode_mib'] / 1024:.2f} |")
    print(f"the cache: {data['cache_mib'] / 1024:.2f} GiB "
          f"({data['cache_mib'] / data['linear_weights_fp32_mib']:.2f} of the fp32 linear weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
