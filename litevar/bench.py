"""`litevar bench --plan PLAN`: measured against promised, in one run.

Loads the model, keeps it as the dense full-precision baseline, applies the plan to a copy
(sharing the VQVAE), and times end-to-end generation (`autoregressive_infer_cfg` + VQVAE decode,
batch = the plan's batch, CFG 4, top-k 900, top-p 0.95, seed 0) of both with
profiler.cost.measure_e2e, the very measurement the profiler fits the planner's cost model on.
The two models alternate, one timed run each per round, so that drift of a shared machine hits
both alike; latency is the median over --repeats rounds after --warmup untimed runs each, peak
memory the largest of the rounds, as profiler.cost.measure_e2e defines it (parameters and buffers
of VAR + VQVAE plus the allocator peak of one generation: torch.profiler allocation events on CPU,
max_memory_allocated on CUDA). MB = 2**20 bytes.

JSON (--json): format, version, plan, plan_name, device, batch, resolution, repeats, warmup,
kernel, dtype, dense and planned {latency_ms, latency_ms_runs, peak_mb, model_mb}, predicted
(the plan's latency_ms, memory_mb, dense_latency_ms, dense_memory_mb, speedup), speedup
{measured, promised} and prediction_error {latency, memory, dense_latency, dense_memory} =
(predicted - measured) / measured; missing predictions are null.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from kernels.select import KernelChoice
from litevar.errors import UserError
from litevar.generate import add_model_arguments, load_model

log = logging.getLogger(__name__)
MB = 2 ** 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--plan", required=True, help="plan JSON written by `litevar plan`")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first, per model (default 1)")
    p.add_argument("--kernel", default="auto", choices=[k.value for k in KernelChoice],
                   help="kernels of the planned model (default auto: the fastest available)")
    p.add_argument("--strict-device", action="store_true", help="refuse a plan made on another device")


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class E2E:
    latency_ms: float  # median of the timed runs
    latency_ms_runs: list[float]
    peak_mb: float  # largest over the rounds (see the module docstring)
    model_mb: float  # parameters and buffers of VAR + VQVAE


def measure_interleaved(models: dict, batch: int, device, repeats: int, warmup: int, dtype: str) -> dict[str, E2E]:
    """{name: E2E} of models {name: (vae, var)}, one profiler.cost.measure_e2e run each per round."""
    from profiler.cost import measure_e2e, module_bytes
    runs = {name: [] for name in models}
    peaks = {name: [] for name in models}
    for r in range(repeats):
        for name, (vae, var) in models.items():
            ms, peak = measure_e2e(vae, var, var.patch_nums, batch, device, repeats=1, dtype=dtype,
                                   warmup=warmup if r == 0 else 0)
            runs[name].append(ms)
            peaks[name].append(peak)
    return {name: E2E(statistics.median(runs[name]), runs[name], max(peaks[name]),
                      module_bytes(*models[name]) / MB) for name in models}


# ---------------------------------------------------------------------------------------------
# Report


def rel_err(predicted, measured) -> float | None:
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def report(plan, plan_path: str, dense: E2E, planned: E2E, args, device) -> dict:
    from profiler.device import fingerprint
    pred = plan.predicted
    promised = pred.get("speedup")
    if promised is None and pred.get("dense_latency_ms") and pred.get("latency_ms"):
        promised = pred["dense_latency_ms"] / pred["latency_ms"]
    return {
        "format": "litevar-bench", "version": 1, "plan": str(plan_path), "plan_name": plan.name,
        "device": fingerprint(device), "batch": plan.batch, "resolution": plan.resolution,
        "repeats": args.repeats, "warmup": args.warmup, "kernel": args.kernel, "dtype": args.dtype,
        "dense": asdict(dense), "planned": asdict(planned),
        "predicted": {k: pred.get(k) for k in ("latency_ms", "memory_mb", "dense_latency_ms",
                                               "dense_memory_mb", "speedup")},
        "speedup": {"measured": dense.latency_ms / planned.latency_ms, "promised": promised},
        "prediction_error": {
            "latency": rel_err(pred.get("latency_ms"), planned.latency_ms),
            "memory": rel_err(pred.get("memory_mb"), planned.peak_mb),
            "dense_latency": rel_err(pred.get("dense_latency_ms"), dense.latency_ms),
            "dense_memory": rel_err(pred.get("dense_memory_mb"), dense.peak_mb)},
    }


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(r: dict) -> str:
    d = r["device"]
    pred, err = r["predicted"], r["prediction_error"]
    title = (f"plan {r['plan_name'] or r['plan']!r} on {d['type']} ({d['name']}), batch {r['batch']}, "
             f"{r['resolution']} px, median of {r['repeats']} runs after {r['warmup']} warm-up")
    lines = [title,
             f"{'':8} {'latency ms':>30}   {'peak memory MB':>30}",
             f"{'':8} {'measured':>10}{'predicted':>10}{'error':>10}   {'measured':>10}{'predicted':>10}{'error':>10}"]
    for name, key in (("dense", "dense_"), ("planned", "")):
        m = r[name]
        lines.append(f"{name:8} {_num(m['latency_ms'], '10.1f')}{_num(pred[key + 'latency_ms'], '10.1f')}"
                     f"{_num(err[key + 'latency'], '10.1%')}   "
                     f"{_num(m['peak_mb'], '10.1f')}{_num(pred[key + 'memory_mb'], '10.1f')}"
                     f"{_num(err[key + 'memory'], '10.1%')}")
    s = r["speedup"]
    lines.append(f"speedup: measured {_num(s['measured'], '.2f')}x, promised {_num(s['promised'], '.2f')}x")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Atomic: a temp file in the same folder, then os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Command


def _check_args(args) -> None:
    if args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"--json {args.json}: folder {Path(args.json).resolve().parent} does not exist; create it first")


def run(args) -> int:
    from litevar.runtime import apply_plan
    from planner.plan import Plan, arch_of, weights_sha256
    _check_args(args)
    plan = Plan.load(args.plan)
    vae, var = load_model(args)
    plan.check_model(arch_of(var), weights_sha256(var), var.patch_nums)  # fail before copying
    device = var.lvl_1L.device
    planned_var = copy.deepcopy(var, memo={id(vae): vae})  # the copy shares the VQVAE
    apply_plan(vae, planned_var, plan, kernel=args.kernel, strict_device=args.strict_device, check_weights=False)
    m = measure_interleaved({"dense": (vae, var), "planned": (vae, planned_var)}, plan.batch, device,
                            args.repeats, args.warmup, args.dtype)
    r = report(plan, args.plan, m["dense"], m["planned"], args, device)
    print(format_table(r))
    if args.json:
        write_json(args.json, r)
        print(f"wrote {args.json}")
    return 0
