"""The calibration's drift probe against the measured transfers: every committed transfer run priced
again with and without it.

`litevar calibrate --profile` times one dense generation, and beside it one of the kernel sweep's
calls again: the paired ratio says how much slower the machine ran during the generation than
during the sweep, and the generation is scaled by it before it sets the in-model factor
(profiler/calibrate.py). A shared VM drifts in spells, so the probe can help or hurt. This prices
every plan of each committed transfer run (docs/results/transfer-cpu*.json) from its committed
calibration twice: as calibrated (the generation scaled by the probe) and with the generation as
timed (its raw ms), against the latency the run measured. No generation is run.

    python benchmarks/probe_check.py --json docs/results/probe-check.json
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def without_probe(cal: dict) -> dict:
    """The calibration with its dense generation as timed, not scaled to the sweep's speed."""
    out = copy.deepcopy(cal)
    out["generation"]["ms"] = dict(out["generation"]["raw_ms"])
    return out


def prices(profile, cal: dict, rows: list[dict]) -> dict[str, float]:
    """plan -> ms on the profile priced for the calibration (transfer_cpu.row_prices)."""
    import transfer_cpu

    from litevar.profiler.devices import from_calibration, priced
    return transfer_cpu.row_prices(priced(profile, from_calibration(cal)), rows)


def check(name: str, dev: dict, profile) -> dict | None:
    """One device of a transfer run: the median error of its plans (less the calibration's own
    point) and dense's gap, priced with and without the probe; None for a calibration that timed
    no generation."""
    from litevar.profiler.devices import median_rel_err
    cal = json.loads((ROOT / dev["calibration"]).read_text())
    gen = cal.get("generation") or {}
    if not gen.get("raw_ms"):
        return None
    rows = {r["plan"]: r for r in dev["rows"]}
    stats = [r for r in dev["rows"] if r.get("priced_ms") is not None and not r.get("fit_point")]
    out = {"transfer": name, "device": dev["name"], "calibration": dev["calibration"],
           "speed_ratio": gen["speed_ratio"], "plans": len(stats)}
    for key, c in (("probe", cal), ("raw", without_probe(cal))):
        ms = prices(profile, c, dev["rows"])
        out[f"median_err_{key}"] = median_rel_err([ms[r["plan"]] for r in stats], [r["measured_ms"] for r in stats])
        out[f"dense_err_{key}"] = ms["dense"] / rows["dense"]["measured_ms"] - 1
    return out


def check_all() -> list[dict]:
    """check() of every device of every committed transfer run, the runs in the order they ran."""
    from litevar.profiler.profile import Profile
    rows, profiles = [], {}
    runs = {path.stem: json.loads(path.read_text()) for path in (ROOT / "docs" / "results").glob("transfer-cpu*.json")}
    for name, run in sorted(runs.items(), key=lambda kv: kv[1]["provenance"]["date"]):
        data = run["data"]
        if data["profile"] not in profiles:
            profiles[data["profile"]] = Profile.load(ROOT / data["profile"])
        rows += filter(None, (check(name, dev, profiles[data["profile"]]) for dev in data["devices"]))
    return rows


def main(argv=None) -> int:
    from litevar.commands.results import provenance, write_result
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    started = provenance("cpu", argv)
    rows = check_all()
    print(f"{'transfer':24s} {'device':9s} {'speed':>6s} {'plans, with':>12s} {'without':>8s} "
          f"{'dense, with':>12s} {'without':>8s}")
    for r in rows:
        print(f"{r['transfer']:24s} {r['device']:9s} {r['speed_ratio'].get('fp32', float('nan')):6.3f} "
              f"{100 * r['median_err_probe']:11.1f}% {100 * r['median_err_raw']:7.1f}% "
              f"{100 * r['dense_err_probe']:+11.1f}% {100 * r['dense_err_raw']:+7.1f}%")
    print("speed: the probe's fp32 ratio (above 1: the machine ran slower during the generation than during the "
          "sweep); plans: median |error| of the plans' prices; dense: price / measured - 1")
    write_result(args.json, "probe-check", {"rows": rows}, started=started)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
