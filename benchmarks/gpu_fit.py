"""GPUs on paper: which plan fits which catalogue GPU, at what speed and memory, for the official
VAR depths at 256, 1024 and 2048 px, and Infinity-2B / 8B at 1024 px (spec tier: the catalogue's
datasheet figures and assumed efficiencies; no GPU measured them).

For each depth with a shipped cost-only profile (losses borrowed from the default model), each
resolution and each catalogue GPU: the dense model at the GPU's tensor-core dtype priced for it,
and `litevar plan --device GPU --dtype DTYPE --max-memory-gib MEM` (MEM: the GPU's memory; the
budget covers the process: the allocator's peak, its reserve and the CUDA context), the least-loss
plan that fits. The plans go to plans/gpu/, the table to a result file (kind "gpu-fit"), and
`litevar compare plans/gpu/*.json --html docs/compare-gpus.html` sets them side by side.

    python benchmarks/gpu_fit.py --json docs/results/gpu-fit.json
    python benchmarks/gpu_fit.py --depths '' --infinity 2b,8b --resolutions 1024 \\
        --json docs/results/gpu-fit-infinity.json
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from litevar.commands.cli import main as litevar_main
from litevar.commands.results import provenance, write_result

SOURCE = "profiles/default-cpu.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="16,30", help="VAR depths with a profiles/dD-cpu.json (none: '')")
    p.add_argument("--infinity", default="", help="Infinity configurations priced from profiles/infinity-2b-cpu.json, "
                   "e.g. 2b,8b (8b: its shapes extrapolated from 2B's; `litevar plan --config`)")
    p.add_argument("--resolutions", default="256,1024,2048")
    p.add_argument("--devices", default=None, help="catalogue keys (default: all)")
    p.add_argument("--out", default="plans/gpu")
    p.add_argument("--json", required=True)
    return p.parse_args(argv)


INFINITY = "profiles/infinity-2b-cpu.json"


def models(args) -> list[tuple[str, str, list[str]]]:
    """(label, profile path, extra `litevar plan` flags) of every model to fit."""
    out = [(f"VAR-d{d}", f"profiles/d{d}-cpu.json", []) for d in args.depths.split(",") if d]
    out += [(f"Infinity-{c.upper()}", INFINITY, [] if c == "2b" else ["--config", c])
            for c in args.infinity.split(",") if c]
    return out


def model_profile(path: str, extra: list[str]):
    from litevar.commands.plan import with_config
    from litevar.profiler.profile import Profile
    profile = Profile.load(path)
    return with_config(profile, extra[1], path) if extra else profile


def dense(profile, target, resolution: int) -> tuple[float, float]:
    """(ms, process MiB) of the dense model at the target's dtype, its text encoder (if any) resident."""
    from litevar.models.core.family import family_of
    from litevar.profiler.costmodel import as_shipped
    from litevar.profiler.devices import priced
    p = priced(profile, target)
    pns = family_of(p.arch).schedule_for(resolution)
    pred = p.cost_model.predict(p.arch, pns, 1, as_shipped(p.arch))  # as every plan counts it: an encoder resident
    return pred.latency_ms, target.process_mib(pred.memory_mb)


def least_mib(profile, target, resolution: int) -> float:
    """The least process memory any plan reaches on the target (MiB)."""
    from litevar.planner.build import build_problem
    from litevar.planner.solve import reachable_minima
    from litevar.profiler.devices import priced
    prof = priced(_borrowed(profile), target)
    _, least = reachable_minima(build_problem(prof, resolution, dtype=target.dtype))
    return target.process_mib(least)


def _borrowed(profile):
    from litevar.planner.transfer import transfer_losses
    from litevar.profiler.profile import Profile
    return transfer_losses(profile, Profile.load(SOURCE), SOURCE)


def main(argv=None) -> int:
    from litevar.planner.plan import Plan
    from litevar.profiler.devices import catalogue, from_spec
    args = parse_args(argv)
    started = provenance("cpu", argv)
    keys = args.devices.split(",") if args.devices else list(catalogue())
    out, rows = Path(args.out), []
    out.mkdir(parents=True, exist_ok=True)
    for label, prof_path, extra in models(args):
        profile = model_profile(prof_path, extra)
        for res in (int(r) for r in args.resolutions.split(",")):
            for key in keys:
                spec = catalogue()[key]
                target = from_spec(spec)
                ms, mib = dense(profile, target, res)
                path = out / f"{label.lower().removeprefix('var-')}-{res}-{key.lower()}.json"
                budget = f"{math.floor(spec.memory_gib * 100) / 100:.2f}"  # rounded down: never above capacity
                rc = litevar_main(["plan", "--profile", prof_path, *extra, "--losses-from", SOURCE, "--resolution",
                                   str(res), "--device", key, "--dtype", target.dtype, "--max-memory-gib", budget,
                                   "--out", str(path)])
                row = {"model": label, "resolution": res, "device": spec.name, "catalogue": key,
                       "device_gib": spec.memory_gib, "dtype": target.dtype, "dense_ms": ms, "dense_mb": mib,
                       "dense_fits": mib <= spec.memory_gib * 1024, "plan_kind": f"--max-memory-gib {budget}"}
                if rc == 0:
                    plan = Plan.load(path)
                    pr = plan.predicted
                    row["plan"] = {"path": str(path), "dtype": plan.dtype, "latency_ms": pr.latency_ms,
                                   "memory_mb": pr.process_memory_mb, "loss": pr.loss, "speedup": pr.speedup,
                                   "kv_blocks": len(plan.kv),
                                   "quantized": sum(f != "fp" for f in plan.formats.values())}
                else:
                    path.unlink(missing_ok=True)
                    row["plan"], row["least_mb"] = None, least_mib(profile, target, res)
                    if row["least_mb"] <= float(budget) * 1024:  # it fits on paper: the failure is ours
                        sys.exit(f"litevar plan failed for {key} at {res} px though a plan of "
                                 f"{row['least_mb'] / 1024:.2f} GiB fits {budget} GiB (see above)")
                rows.append(row)
    write_result(args.json, "gpu-fit", {"rows": rows, "source": SOURCE}, started=started)
    print(f"wrote {args.json} and {len([r for r in rows if r['plan']])} plans under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
