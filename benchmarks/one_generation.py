"""One generation of a plan, its wall time and its peak memory against the plan's prediction.

For runs too long to repeat (d16 at 2048 px takes tens of minutes on a CPU): the model is built
(or loaded) as `litevar bench` does, the plan applied, and one generation of `batch` images run
while the allocator's peak is tracked (profiler.cost.generation_peak_mb: parameters and buffers
of the model and its VAE plus the peak of what the call allocates). Its time is that of the same tracked
run, so it includes the tracker's small overhead.

    python benchmarks/one_generation.py --random-init --depth 16 --plan plans/d16-cpu-2048-8gb.json \
        --json docs/bench/d16-cpu-2048-8gb.json
"""
from __future__ import annotations

import argparse
import datetime
import time

import torch

from litevar.commands.common import add_model_arguments, load_model
from litevar.models.core.atomic import write_json


def main(argv=None) -> int:
    from litevar.models.core.device import fingerprint
    from litevar.models.core.family import family_of_model
    from litevar.planner.plan import Plan
    from litevar.profiler.cost import generation_peak_mb
    from litevar.runtime import apply_plan
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--plan", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    args.dtype = args.dtype or "fp32"
    plan = Plan.load(args.plan)
    if args.resolution is None:
        args.resolution = plan.resolution
    vae, var = load_model(args)
    var = apply_plan(vae, var, plan)
    family = family_of_model(var)
    device = family.device_of(var)
    run = family.generation(var, plan.batch, args.dtype)
    t0 = time.perf_counter()
    peak = generation_peak_mb(vae, var, run, device)
    seconds = time.perf_counter() - t0
    pred = plan.predicted
    out = {"plan": args.plan, "plan_name": plan.name, "created": datetime.datetime.now(datetime.timezone.utc)
           .isoformat(timespec="seconds"), "device": fingerprint(device), "dtype": args.dtype,
           "threads": torch.get_num_threads(), "resolution": plan.resolution, "batch": plan.batch,
           "seconds": seconds, "peak_mb": peak, "predicted_mb": pred.memory_mb,
           "memory_err": pred.memory_mb / peak - 1 if pred.memory_mb else None,
           "predicted_ms": pred.latency_ms, "predicted_breakdown_mb": pred.memory_breakdown_mb,
           "dense_predicted_mb": pred.dense_memory_mb}
    write_json(args.json, out)
    print(f"{plan.name}: {seconds:.0f} s, peak {peak / 1024:.2f} GB, predicted {pred.memory_mb / 1024:.2f} GB "
          f"({100 * out['memory_err']:+.1f}%), dense predicted {pred.dense_memory_mb / 1024:.2f} GB")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
