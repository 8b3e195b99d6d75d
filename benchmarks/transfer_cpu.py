"""Cost transfer across CPUs, measured on one machine: plans priced for a device from a profile
measured on another.

A second "device" is made here without new hardware: oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA=AVX2:
the GEMMs of a CPU without AVX-512) and the thread count (OMP_NUM_THREADS=1) change the machine's
throughput per format. For each such device, in a child process under its settings:

1. `litevar calibrate --profile PROFILE --out devices/NAME.json` describes it by measuring it;
2. `litevar plan --device devices/NAME.json --max-latency-ms B` plans a budget for it (B: 90% of
   the dense model's latency priced for it, or, where the tier's guard puts that out of reach, the
   tightest budget a plan can be promised there);
3. one `litevar bench` run times the dense model, the shipped plans and that budget plan there.

A third, `host`, is this machine as it is: a real other CPU where the profile was measured on
another one (the shipped profile is an AMD Zen 5's; run on an AVX2-only AMD Zen 3 it tests the
transfer on hardware the profile never saw). Its calibration is named by the CPU's family and model.

Then every plan is priced for the device from the profile (measured at full ISA and both cores)
and the calibration (profiler.devices.priced), and set against its measured latency: the median
absolute error, and Spearman's rank correlation over the plans (and dense, unless the calibration
timed its generation to set the in-model factor: then dense is the calibration's own point).
Beside it, the error of not re-pricing at all (the profile's own predictions: what a user of the
shipped plans on that device is told). A CPU has no spec tier: it is never taken from a table.

    python benchmarks/transfer_cpu.py --profile profiles/default-cpu.json --json docs/results/transfer-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from litevar.commands.results import provenance, read_result, write_result
from litevar.models.core.host_memory import retain_freed_memory
from litevar.profiler.devices import median_rel_err

ROOT = Path(__file__).resolve().parents[1]
DEVICES = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "1-thread": {"OMP_NUM_THREADS": "1"}, "host": {}}
PLANS = ("x05", "x10", "x15", "x25", "mem75", "mem50", "kv8", "recipe-bf16", "recipe-w8a8", "recipe-paper")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="profiles/default-cpu.json")
    p.add_argument("--prefix", default="plans/default-cpu-256", help="the shipped plans: PREFIX-NAME.json")
    p.add_argument("--plans", default=",".join(PLANS))
    p.add_argument("--devices", default=",".join(DEVICES))
    p.add_argument("--calibration-dir", default="devices")
    p.add_argument("--budget-s", type=float, default=150.0, help="calibration budget per device")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", required=True)
    return p.parse_args(argv)


def litevar(env: dict, *argv) -> str:
    """`litevar ARGV` in a child with `env` on top of ours; its stdout (exit on failure)."""
    cmd = [sys.executable, "-m", "litevar.commands.cli", *map(str, argv)]
    r = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    print(r.stdout, end="")
    return r.stdout


def priced_ms(prof, plan) -> float:
    """The plan's latency on `prof` (a profile priced for the device)."""
    from litevar.planner.build import plan_prediction
    return plan_prediction(plan, prof).latency_ms


def dense_ms(prof) -> float:
    arch = prof.arch
    return prof.cost_model.predict(arch, arch.patch_nums, 1, dtype="fp32").latency_ms


def row_prices(dev_prof, rows: list[dict]) -> dict[str, float]:
    """plan -> ms of a transfer run's rows on `dev_prof` (a profile priced for the device): dense at
    batch 1 in fp32, each priced plan as plans/ holds it now; rows left unpriced left out."""
    from litevar.planner.plan import Plan
    return {r["plan"]: dense_ms(dev_prof) if r["plan"] == "dense" else
            priced_ms(dev_prof, Plan.load(ROOT / "plans" / f"{r['plan']}.json"))
            for r in rows if r["plan"] == "dense" or r.get("priced_ms") is not None}


def latency_budget(prof, target) -> tuple[float, str]:
    """(ms, how it was chosen) on `prof`, the profile priced for `target`: 90% of dense, or, where
    no plan reaches that with the guard the calibrated tier implies, 2% above the least latency
    any plan reaches there times (1 + guard): the tightest budget a plan can be promised for."""
    from litevar.commands.plan import offered_formats, planned_dtypes
    from litevar.planner.build import build_problem, parse_formats
    from litevar.planner.solve import reachable_minima
    formats = parse_formats(None, offered_formats(prof, target))
    reach = min(reachable_minima(build_problem(prof, 256, 1, formats, dtype=d))[0]
                for d in planned_dtypes(prof, "auto"))
    dense, guard = dense_ms(prof), target.guard["latency"]
    floor = 1.02 * reach * (1 + guard)
    if 0.9 * dense >= floor:
        return 0.9 * dense, "90% of dense priced for the device"
    return floor, (f"90% of dense ({0.9 * dense:.1f} ms) is out of reach with the calibrated tier's {100 * guard:.0f}% "
                   f"guard: 2% above the least reachable ({reach:.1f} ms) x (1 + guard)")


def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def _file_name(name: str) -> str:
    """The calibration's file name: the CPU's family and model, then the device made on it
    (`host`: none, the CPU as it is)."""
    from litevar.models.core.device import fingerprint
    fp = fingerprint("cpu")
    cpu = f"cpu-family{fp['cpu_family']}-model{fp['cpu_model']}"
    return cpu if name == "host" else f"{cpu}-{name}"


def plan_levers(plan) -> dict:
    """What a plan spends its loss on: its predicted loss and how many of each lever it pulls."""
    kept = plan.predicted.attn_kept
    return {"loss": plan.predicted.loss, "quantized": sum(f != "fp" for f in plan.formats.values()),
            "cfg_shared": len(plan.cfg_shared), "kv": len(plan.kv),
            "qk8": len(plan.qk_int8), "attn_kept": 1.0 if kept is None else kept}


def run_device(args, name: str, env: dict, profile) -> dict:
    from litevar.planner.plan import Plan
    from litevar.profiler.devices import load_target, priced
    cal = Path(args.calibration_dir) / f"{_file_name(name)}.json"
    cal.parent.mkdir(parents=True, exist_ok=True)
    litevar(env, "calibrate", "--device", "cpu", "--profile", args.profile, "--name", f"this CPU, {name}",
            "--budget-s", args.budget_s, "--out", cal)
    calib = json.loads(cal.read_text())
    target = load_target(str(cal))
    dev_prof = priced(profile, target)  # the profile priced for this device, once
    budget, budget_rule = latency_budget(dev_prof, target)
    with tempfile.TemporaryDirectory() as tmp:
        budget_plan = Path(tmp) / f"budget-{name}.json"
        litevar(env, "plan", "--profile", args.profile, "--resolution", 256, "--device", cal,
                "--max-latency-ms", f"{budget:.3f}", "--out", budget_plan)
        paths = [f"{args.prefix}-{p}.json" for p in args.plans.split(",")] + [str(budget_plan)]
        bench = Path(tmp) / "bench.json"
        litevar(env, "bench", *(a for p in paths for a in ("--plan", p)), "--repeats", args.repeats,
                "--json", bench)
        data = read_result(bench, "bench")["data"]
        plans = {e["plan"]: Plan.load(e["plan"]) for e in data["plans"]}
        in_model = dev_prof.meta["target"]["in_model"]
        # dense at batch 1 is the generation the calibration timed to set its in-model factor: its
        # own point, not a test of the transfer
        rows = [{"plan": "dense", "measured_ms": data["dense"]["latency_ms"], "priced_ms": dense_ms(dev_prof),
                 "asis_ms": dense_ms(profile), "fit_point": "fp32" in in_model}]
        for e in data["plans"]:
            if e["plan"] == str(budget_plan):
                continue
            row = {"plan": Path(e["plan"]).stem, "measured_ms": e["measured"]["latency_ms"],
                   "asis_ms": plans[e["plan"]].predicted.latency_ms}
            try:
                row["priced_ms"] = priced_ms(dev_prof, plans[e["plan"]])
            except KeyError as err:  # a format the device does not offer: the planner never plans it there
                row.update(priced_ms=None, not_priced=str(err).strip('"'))
            rows.append(row)
        b = next(e for e in data["plans"] if e["plan"] == str(budget_plan))
        bp = {"budget_ms": budget, "budget_rule": budget_rule, "predicted_ms": b["predicted"]["latency_ms"],
              "measured_ms": b["measured"]["latency_ms"], "guard": plans[str(budget_plan)].solver["guard"],
              "dtype": plans[str(budget_plan)].dtype, "met": b["measured"]["latency_ms"] <= budget,
              **plan_levers(plans[str(budget_plan)])}
    # the statistics: plans the device is offered, less the calibration's own point
    priced_rows = [r for r in rows if r["priced_ms"] is not None and not r.get("fit_point")]
    meas = [r["measured_ms"] for r in priced_rows]
    pri = [r["priced_ms"] for r in priced_rows]
    asis = [r["asis_ms"] for r in priced_rows]
    return {"name": name, "env": env, "calibration": str(cal), "calibration_s": calib["seconds"],
            "calibration_held_out_err": calib["validation"]["latency_err"], "rows": rows,
            "runtimes_left_out": calib.get("runtimes_left_out", {}), "in_model": in_model,
            "in_model_note": dev_prof.meta["target"]["in_model_note"],
            "median_err": median_rel_err(pri, meas), "spearman": spearman(pri, meas),
            "asis_median_err": median_rel_err(asis, meas), "asis_spearman": spearman(asis, meas),
            "budget_plan": bp}


def main(argv=None) -> int:
    from litevar.profiler.profile import Profile
    args = parse_args(argv)
    retain_freed_memory()  # as the `litevar` children run: the provenance records their policy
    started = provenance("cpu", argv)
    profile = Profile.load(args.profile)
    devices = []
    for name in args.devices.split(","):
        print(f"== {name}: {DEVICES[name]}")
        devices.append(run_device(args, name, DEVICES[name], profile))
        d = devices[-1]
        print(f"{name}: median error {100 * d['median_err']:.1f}% calibrated "
              f"(as is {100 * d['asis_median_err']:.1f}%), "
              f"Spearman {d['spearman']:.2f}; budget {d['budget_plan']['budget_ms']:.1f} ms, measured "
              f"{d['budget_plan']['measured_ms']:.1f}")
    src = profile.meta.get("device", {})
    write_result(args.json, "transfer", {"profile": args.profile, "source_threads": src.get("torch_threads"),
                                         "devices": devices}, started=started)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
