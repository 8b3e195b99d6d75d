"""The memory model against every measured generation: each one-generation result's plan priced
again by the current cost model (the same decisions, the profile as it is now), beside the peak
measured and the prediction the plan carried when it ran.

For a change to profiler/costmodel.py: it says, from committed measurements and without running a
generation, whether the change moves the model toward what the allocator saw. The plan measured
is the plan file on disk when it has the decisions the run recorded (Plan.decisions_sha256, or for
files from before that was recorded, the predicted peak), else the one committed with the result
file (git); a run whose plan neither is is listed as not checkable. The profile of plan NAME-cpu-... is
profiles/NAME-cpu.json.

    python benchmarks/memory_check.py --json docs/results/memory-check.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED_SAME_PLAN_RTOL = 1e-6  # a plan file re-made since the run predicts another peak


def profile_of(plan_name: str) -> Path:
    stem = plan_name.split("-cpu-")[0] + "-cpu"
    return ROOT / "profiles" / f"{stem}.json"


def measured(data: dict, text: str) -> bool:
    """Whether a plan file's text has the decisions the run measured (their sha256; for files from
    before it was recorded, the predicted peak the run carried)."""
    from litevar.planner.plan import Plan
    if data.get("decisions_sha256"):
        return Plan.from_dict(json.loads(text)).decisions_sha256() == data["decisions_sha256"]
    return abs(json.loads(text)["predicted"]["memory_mb"] / data["predicted_mib"] - 1) <= MEASURED_SAME_PLAN_RTOL


def measured_plan_text(result_path: Path, data: dict) -> str | None:
    """The text of the plan the run measured: on disk, or as committed with the result file."""
    import subprocess
    on_disk = ROOT / data["plan"]
    if on_disk.exists() and measured(data, on_disk.read_text()):
        return on_disk.read_text()
    git = ["git", "-C", str(ROOT)]
    rev = subprocess.run([*git, "log", "-1", "--format=%H", "--", str(result_path.relative_to(ROOT))],
                         capture_output=True, text=True).stdout.strip()
    if not rev:
        return None
    text = subprocess.run([*git, "show", f"{rev}:{data['plan']}"], capture_output=True, text=True)
    return text.stdout if text.returncode == 0 and measured(data, text.stdout) else None


def check(result_path: Path, profiles: dict) -> dict:
    from litevar.planner.build import plan_prediction
    from litevar.planner.plan import Plan
    from litevar.profiler.profile import Profile
    data = json.loads(result_path.read_text())["data"]
    row = {"result": result_path.name, "plan": data["plan_name"], "measured_mib": data["peak_mib"],
           "predicted_then_mib": data["predicted_mib"], "error_then": data["memory_err"],
           "measured_transformer_mib": data.get("peak_transformer_mib"),
           "measured_decode_mib": data.get("peak_decode_mib")}
    text = measured_plan_text(result_path, data)
    if text is None:
        return {**row, "checked": False, "why": "the plan measured is neither on disk nor committed with the result"}
    plan = Plan.from_dict(json.loads(text))
    path = profile_of(data["plan_name"])
    if path not in profiles:
        profiles[path] = Profile.load(path)
    pred = plan_prediction(plan, profiles[path])
    return {**row, "checked": True, "profile": str(path.relative_to(ROOT)), "predicted_now_mib": pred.memory_mb,
            "error_now": pred.memory_mb / data["peak_mib"] - 1, "predicted_transformer_mib": pred.transformer_mb,
            "predicted_decode_mib": pred.decode_mb,
            "phase": "decode" if pred.decode_mb > pred.transformer_mb else "transformer"}


def main(argv=None) -> int:
    from litevar.commands.results import provenance, write_result
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    started = provenance("cpu", argv)
    profiles: dict = {}
    rows = [check(r, profiles) for r in sorted((ROOT / "docs" / "results").glob("*-one.json"))]
    print(f"{'plan':36s} {'measured':>9s} {'then':>9s} {'err':>7s} {'now':>9s} {'err':>7s}  (MiB)")
    for r in rows:
        now = (f"{r['predicted_now_mib']:9.0f} {100 * r['error_now']:+6.1f}%" if r["checked"] else
               f"  not checked: {r['why']}")
        print(f"{r['plan']:36s} {r['measured_mib']:9.0f} {r['predicted_then_mib']:9.0f} "
              f"{100 * r['error_then']:+6.1f}% {now}")
    write_result(args.json, "memory-check", {"rows": rows}, started=started)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
