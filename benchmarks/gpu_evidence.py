"""The GPU evidence run: what litevar claims about a GPU, measured on one in about 8 minutes.

    bash benchmarks/gpu_evidence.sh                      # on a GPU machine (H100 / H200)
    bash benchmarks/gpu_evidence.sh --dry-run --out-root /tmp/ev   # the same steps at toy sizes on CPU

Steps, in order, each with its own time budget; a step that no longer fits the total is skipped,
and the summary is rewritten after every step, so an interrupted run keeps what it did:

 1. fingerprint     the device (litevar.models.core.device.fingerprint)
 2. calibrate       `litevar calibrate` at the default model's layer shapes (at most 2 minutes):
                    the calibrated tier of this GPU, and its context and reserve measured
 3. gpu_tests       `pytest -m gpu`: correctness before speed; when it fails, the timings below
                    are marked invalid in the summary
 3. bench_kernels   `litevar bench-kernels`: the GEMMs at d16..d30 widths against bf16 cuBLAS and
                    torch._int_mm, MDWA against SDPA at 1024 / 2048 px token counts (~10% kept)
 5. d16_profile     a d16 cost-only profile at 256 / 512 px, and plans at 256 / 1024 / 2048 px
                    (--min-speedup 1.2, and memory half-way; losses from the default CPU profile)
 6. d16_bench       `litevar bench` of the 256-px d16 plans against dense
 7. default_model   the same (cost profile, plans, bench) for the shipped default model
 8. tiers           every benched plan priced from the CPU profiles at the spec tier (the
                    catalogue entry of this GPU) and the calibrated tier (step 2), against what
                    the bench measured: how good each tier was, on this GPU

Files (under --out-root, default the repository): docs/gpu/<gpu>/{fingerprint, calibration,
gpu_tests, bench_kernels, bench-d16-256, bench-default-256, tiers, summary}.json, docs/gpu/<gpu>/summary.md,
profiles/{d16,default}-<gpu>.json, plans/{d16,default}-<gpu>-<px>-<budget>.json. `manifest()`
lists them; tests/test_gpu_evidence.py runs the dry run and checks that every one is written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN_PX = (256, 1024, 2048)
BUDGETS = {"x12": ["--min-speedup", "1.2"], "memhalf": None}  # None: memory half-way (see plans())
LOSSES_FROM = ROOT / "profiles" / "default-cpu.json"


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float  # seconds on a GPU
    dry_s: float  # seconds in the dry run (toy sizes on a 2-core CPU)
    what: str


STEPS = (Step("fingerprint", 30, 20, "the device"),
         Step("calibrate", 110, 40, "litevar calibrate: the calibrated tier"),
         Step("gpu_tests", 100, 40, "pytest -m gpu"),
         Step("bench_kernels", 110, 60, "GEMMs and MDWA against cuBLAS / torch._int_mm / SDPA"),
         Step("d16_profile", 150, 80, "d16 cost-only profile at 256/512 px, plans at 256/1024/2048 px"),
         Step("d16_bench", 60, 75, "bench of the 256-px d16 plans against dense"),
         Step("default_model", 120, 80, "the default model: cost profile, plans, bench"),
         Step("tiers", 30, 20, "spec and calibrated tiers against the measured benches"))
# about 10 minutes of a 15-minute loan (start-up and copies aside); the dry run took 202 s on an
# AVX2-only Zen 3 (bf16 emulated, int8 slow), its steps up to 88% of the budgets they had then
TOTAL_S, DRY_TOTAL_S = 600, 300
CPU_PROFILES = {"d16": ROOT / "profiles" / "d16-cpu.json", "default": ROOT / "profiles" / "default-cpu.json"}


def slug(name: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'NVIDIA GeForce RTX 4090' -> 'geforce-rtx-4090'."""
    s = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "gpu"


def manifest(gpu: str) -> list[str]:
    """Every file a complete run writes, relative to the output root."""
    d = f"docs/gpu/{gpu}"
    files = [f"{d}/{n}.json" for n in ("fingerprint", "calibration", "gpu_tests", "bench_kernels", "bench-d16-256",
                                       "bench-default-256", "tiers", "summary")] + [f"{d}/summary.md"]
    files += [f"profiles/{m}-{gpu}.json" for m in ("d16", "default")]
    files += [f"plans/d16-{gpu}-{px}-{b}.json" for px in PLAN_PX for b in BUDGETS]
    files += [f"plans/default-{gpu}-256-{b}.json" for b in BUDGETS]
    return files


class Run:
    def __init__(self, args):
        self.dry, self.out = args.dry_run, Path(args.out_root).resolve()
        self.device = "cpu" if self.dry else "cuda"
        self.python = os.environ.get("PYTHON", sys.executable)
        self.t0, self.results = time.perf_counter(), {}
        self.gpu = "dry-run-cpu" if self.dry else (args.gpu or slug(self._gpu_name()))
        self.docs = self.out / "docs" / "gpu" / self.gpu
        for d in (self.docs, self.out / "profiles", self.out / "plans"):
            d.mkdir(parents=True, exist_ok=True)
        self.total = args.total_s or (DRY_TOTAL_S if self.dry else TOTAL_S)

    def _gpu_name(self) -> str:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("gpu_evidence: no CUDA device here; use --dry-run on a CPU machine")
        return torch.cuda.get_device_name()

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.t0)

    def litevar(self, *argv, timeout: float, log: str) -> subprocess.CompletedProcess:
        """`python -m litevar ARGV` in the repository, output appended to docs/gpu/<gpu>/<log>.log."""
        return self.sh([self.python, "-m", "litevar", *map(str, argv)], timeout=timeout, log=log)

    def sh(self, cmd: list, timeout: float, log: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONUNBUFFERED": "1"}
        r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=max(1.0, timeout))
        with open(self.docs / f"{log}.log", "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}\n[exit {r.returncode}]\n")
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{Path(str(cmd[2] if len(cmd) > 2 else cmd[0])).name} exited {r.returncode}: {tail}")
        return r

    # -- steps ---------------------------------------------------------------------------------
    def fingerprint(self, budget):
        r = self.sh([self.python, "-c", "import json; from litevar.models.core.device import fingerprint, environment; "
                     f"print(json.dumps({{'device': fingerprint('{self.device}'), 'env': environment()}}))"],
                    timeout=budget, log="fingerprint")
        self._write("fingerprint.json", json.loads(r.stdout))
        return {"name": json.loads(r.stdout)["device"]["name"]}

    def calibrate(self, budget):
        out = self.docs / "calibration.json"
        self.litevar("calibrate", "--device", self.device, "--profile", CPU_PROFILES["default"], "--budget-s",
                     max(20, int(budget * 0.8)), "--out", out, timeout=budget, log="calibrate")
        c = json.loads(out.read_text())
        return {"seconds_calibrate": c["seconds"], "held_out_err": c["validation"]["latency_err"],
                "context_mib": c.get("context_mib"), "dtypes": list(c["runtimes"])}

    def tiers(self, budget):
        """Each benched plan's dense and plans priced for this GPU from the CPU profiles, per tier."""
        from litevar.planner.build import plan_prediction
        from litevar.planner.plan import Plan
        from litevar.profiler.devices import catalogue, from_calibration, from_spec, priced, spec_for
        from litevar.profiler.profile import Profile
        fp = json.loads((self.docs / "fingerprint.json").read_text())["device"]
        spec = spec_for(fp)
        targets = {"calibrated": from_calibration(json.loads((self.docs / "calibration.json").read_text()))}
        if spec is not None:
            targets["spec"] = from_spec(catalogue()[spec.key])
        out = {"spec_entry": None if spec is None else spec.key, "tiers": {}}
        for tier, target in targets.items():
            rows = []
            for model in ("d16", "default"):
                if not (self.docs / f"bench-{model}-256.json").is_file():
                    continue  # its bench was skipped or failed (summary.json says which)
                bench = json.loads((self.docs / f"bench-{model}-256.json").read_text())["data"]
                prof = priced(Profile.load(CPU_PROFILES[model]), target)
                for e in bench["plans"]:
                    plan = Plan.load(self._plan_path(e["plan"]))
                    plan.dtype = e["measured"].get("dtype") or plan.dtype
                    rows.append(_tier_row(model, Path(e["plan"]).name, e["measured"], plan_prediction(plan, prof),
                                          target))
                shape = Plan.load(self._plan_path(bench["plans"][0]["plan"]))  # the schedule and batch benched
                dense = prof.cost_model.predict(prof.arch, shape.patch_nums, shape.batch,
                                                dtype=bench["dense"].get("dtype"))  # no decisions
                rows.append(_tier_row(model, "dense", bench["dense"], dense, target))
            if not rows:
                raise RuntimeError("no bench ran: nothing to price")
            out["tiers"][tier] = {
                "rows": rows, "context_mib": target.context_mib, "reserve_frac": target.reserve_frac,
                "median_err": _median_err_of(rows, "predicted_ms", "measured_ms"),
                "memory_median_err": _median_err_of(rows, "predicted_mb", "measured_mb"),
                "process_median_err": _median_err_of(rows, "predicted_process_mb", "measured_process_mb")}
        self._write("tiers.json", out)
        return {t: {k: None if v[k] is None else round(v[k], 4) for k in
                    ("median_err", "memory_median_err", "process_median_err")} for t, v in out["tiers"].items()}

    def _plan_path(self, recorded: str) -> Path:
        """A benched plan's file: where the bench read it, else under this run's plans/ (the bench
        ran on the GPU machine's copy of the tree)."""
        path = Path(recorded)
        return path if path.is_file() else self.out / "plans" / path.name

    def gpu_tests(self, budget):
        junit = self.docs / "gpu_tests.xml"
        cmd = [self.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               "tests"]
        try:
            self.sh(cmd, timeout=budget, log="gpu_tests")
            ok = True
        except RuntimeError:
            ok = False
        counts = _junit_counts(junit)
        junit.unlink(missing_ok=True)
        self._write("gpu_tests.json", {"passed_all": ok, **counts})
        if not ok:
            raise RuntimeError(f"GPU tests failed ({counts}): the timings below are invalid")
        return counts

    def bench_kernels(self, budget):
        out = self.docs / "bench_kernels.json"
        extra = ["--only", "gemm"] if self.dry else ["--set", "evidence"]
        self.litevar("bench-kernels", "--device", self.device, *extra, "--json", out, timeout=budget,
                     log="bench_kernels")
        return _kernel_summary(json.loads(out.read_text())["data"])

    def d16_profile(self, budget):
        prof = self.out / "profiles" / f"d16-{self.gpu}.json"
        toy = ["--depth", "1", "--patch-nums", "1,2,3,4", "--e2e-repeats", "1", "--runtime-dtypes", "none"]
        size = (toy if self.dry
                else ["--depth", "16", "--resolution", "256", "--resolutions", "256,512", "--e2e-repeats", "3"])
        t = time.perf_counter()
        self.litevar("profile", "--random-init", *size, "--batches", 1, "--no-mdwa-timing",
                     "--device", self.device, "--out", prof, timeout=budget * 0.7, log="d16_profile")
        plans = self.plans("d16", prof, PLAN_PX, budget - (time.perf_counter() - t))
        return {"profile": str(prof.relative_to(self.out)), "plans": plans}

    def plans(self, model: str, prof: Path, pxs, budget) -> list[dict]:
        out = []
        for px in pxs:
            for name, flags in BUDGETS.items():
                path = self.out / "plans" / f"{model}-{self.gpu}-{px}-{name}.json"
                flags = flags or ["--max-memory-gib", str(self._memory_half_way(prof, px))]
                if self.dry and name == "x12":  # toy models reach no speedup: any feasible budget will do
                    flags = ["--min-speedup", "0.5", "--guard", "0"]
                try:
                    self.litevar("plan", "--profile", prof, "--losses-from", LOSSES_FROM, "--resolution", px,
                                 *flags, "--out", path, timeout=max(30.0, budget / 6), log=f"{model}_plans")
                except RuntimeError as e:  # no plan meets the budget on this device: a finding, kept
                    out.append({"plan": path.name, "failed": " ".join(str(e).split())[:300]})
                    continue
                p = json.loads(path.read_text())["predicted"]
                out.append({"plan": path.name, "speedup": p["speedup"], "latency_ms": p["latency_ms"],
                            "memory_mb": p["memory_mb"], "loss": p["loss"]})
        return out

    def _memory_half_way(self, prof: Path, px: int) -> float:
        """GB half-way between dense and the least memory any plan reaches, at least what the
        profile's memory guard leaves reachable."""
        from litevar.commands.plan import load_profile
        from litevar.planner.build import build_problem, guard_band
        from litevar.planner.solve import reachable_minima
        p = load_profile(argparse.Namespace(profile=str(prof), losses_from=str(LOSSES_FROM)))
        problem = build_problem(p, px)
        _, least = reachable_minima(problem)
        guard = guard_band(p.meta.get("validation") or [])["memory"]
        mb = max((problem.dense_memory_mb + least) / 2, least * (1 + guard) * 1.001)
        return round(mb / 1024, 6)

    def d16_bench(self, budget):
        return self.bench("d16", ["--random-init", "--resolution", "256", "--depth", "1" if self.dry else "16"],
                          budget)

    def bench(self, model: str, model_flags: list, budget) -> dict:
        out = self.docs / f"bench-{model}-256.json"
        paths = [self.out / "plans" / f"{model}-{self.gpu}-256-{name}.json" for name in BUDGETS]
        plans = [f for path in paths if path.is_file() for f in ("--plan", path)]
        if not plans:
            raise RuntimeError(f"no 256-px {model} plan was made: nothing to bench")
        self.litevar("bench", *model_flags, *plans, "--repeats", 1 if self.dry else 7, "--device", self.device,
                     "--json", out, timeout=budget, log=f"{model}_bench")
        r = json.loads(out.read_text())["data"]  # a result file (litevar.commands.results)
        return {"dense_ms": r["dense"]["latency_ms"],
                "plans": [{"plan": Path(e["plan"]).name, "measured_speedup": e["speedup"]["measured"],
                           "promised": e["speedup"]["promised"], "latency_err": e["prediction_error"]["latency"],
                           "memory_err": e["prediction_error"]["memory"]} for e in r["plans"]]}

    def default_model(self, budget):
        prof = self.out / "profiles" / f"default-{self.gpu}.json"
        size = (["--resolutions", "1,2,3;1,2,3,4", "--e2e-repeats", "1", "--runtime-dtypes", "none"] if self.dry
                else ["--e2e-repeats", "5"])
        t = time.perf_counter()
        self.litevar("profile", "--stages", "cost", *size, "--batches", 1, "--no-mdwa-timing", "--device",
                     self.device, "--out", prof, timeout=budget * 0.5, log="default_profile")
        plans = self.plans("default", prof, (256,), budget * 0.2)
        rest = budget - (time.perf_counter() - t)
        return {"profile": str(prof.relative_to(self.out)), "plans": plans, "bench": self.bench("default", [], rest)}

    # -- driver --------------------------------------------------------------------------------
    def run(self, only: set[str] | None = None) -> int:
        """Every step in order; with `only`, those steps, the others' results kept from the last run's
        summary.json (a second try of the steps that failed, inside one loan)."""
        if only:
            last = self.docs / "summary.json"
            self.results = json.loads(last.read_text())["steps"] if last.is_file() else {}
        for step in STEPS:
            budget = step.dry_s if self.dry else step.budget_s
            if only and step.name not in only:
                self.results.setdefault(step.name, {"status": "skipped", "why": "not run (--only)"})
                continue
            if self.left() < 0.5 * budget:
                self.results[step.name] = {"status": "skipped", "why": f"{self.left():.0f} s left of the run"}
            else:
                t = time.perf_counter()
                try:
                    out = getattr(self, step.name)(min(budget, self.left()))
                    self.results[step.name] = {"status": "ok", **(out or {})}
                except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as e:
                    self.results[step.name] = {"status": "failed", "why": " ".join(str(e).split())[:300]}
                self.results[step.name]["seconds"] = round(time.perf_counter() - t, 1)
            self.summarize()
            print(f"gpu_evidence: {step.name}: {self.results[step.name]['status']}", flush=True)
        return 0 if all(r["status"] == "ok" for r in self.results.values()) else 1

    def summarize(self) -> None:
        valid = self.results.get("gpu_tests", {}).get("status") == "ok"
        summary = {"gpu": self.gpu, "dry_run": self.dry, "timings_valid": valid,
                   "date": time.strftime("%Y-%m-%d"), "steps": self.results}
        self._write("summary.json", summary)
        (self.docs / "summary.md").write_text(summary_markdown(summary))

    def _write(self, name: str, data) -> None:
        from litevar.models.core.atomic import write_json
        write_json(self.docs / name, data, default=str)


def _tier_row(model: str, name: str, measured: dict, pred, target) -> dict:
    """One benched model priced at a tier: latency, the allocator's peak, and what the process holds
    (the tier's reserve and context on top: the device's fixed costs, checked here)."""
    return {"model": model, "plan": name, "measured_ms": measured["latency_ms"], "predicted_ms": pred.latency_ms,
            "measured_mb": measured["peak_mb"], "predicted_mb": pred.memory_mb,
            "measured_process_mb": measured.get("process_peak_mb"),
            "predicted_process_mb": target.process_mib(pred.memory_mb)}


def _median_err_of(rows: list[dict], pred: str, meas: str) -> float | None:
    from litevar.profiler.devices import median_rel_err
    pairs = [(r[pred], r[meas]) for r in rows if r[pred] is not None and r[meas]]
    return median_rel_err(*zip(*pairs)) if pairs else None


def _junit_counts(path: Path) -> dict:
    if not path.is_file():
        return {}
    text = path.read_text()
    m = re.search(r'<testsuite[^>]*?errors="(\d+)"[^>]*?failures="(\d+)"[^>]*?skipped="(\d+)"[^>]*?tests="(\d+)"', text)
    if not m:
        return {}
    errors, failures, skipped, tests = map(int, m.groups())
    return {"tests": tests, "failed": errors + failures, "skipped": skipped,
            "passed": tests - errors - failures - skipped}


def _kernel_summary(report: dict) -> dict:
    gemm = [{k: r[k] for k in ("layer", "depth", "M", "N", "K", "kernel", "impl", "speedup_layer", "tops")}
            for r in report.get("gemm", []) if r.get("status") == "ok" and r["kernel"] != "dense"]
    attn = [{k: r.get(k) for k in ("resolution", "backend", "kept", "speedup")}
            for r in report.get("attention", []) if r.get("status", "ok") == "ok"]
    return {"gemm": gemm, "attention": attn}


def summary_markdown(s: dict) -> str:
    lines = [f"# GPU evidence: {s['gpu']}", "",
             f"`bash benchmarks/gpu_evidence.sh{' --dry-run' if s['dry_run'] else ''}`, {s['date']}. "
             + ("Dry run on CPU at toy sizes: no figure here is a GPU figure." if s["dry_run"] else "")
             + ("" if s["timings_valid"] else " **The GPU tests did not pass: the timings below are invalid.**"),
             "", "| step | status | seconds | note |", "|---|---|---:|---|"]
    for name, r in s["steps"].items():
        note = r.get("why", "")
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '-')} | {note} |")
    k = s["steps"].get("bench_kernels", {})
    if k.get("gemm"):
        lines += ["", "GEMMs (speedup of the whole layer over the bf16 linear, measured in the same run):", "",
                  "| layer | depth | M | N | K | kernel | impl | speedup | TOPS |",
                  "|---|---:|---:|---:|---:|---|---|---:|---:|"]
        lines += [f"| {g['layer']} | d{g['depth']} | {g['M']} | {g['N']} | {g['K']} | {g['kernel']} | {g['impl']} | "
                  f"{g['speedup_layer']:.2f}x | {g['tops']:.1f} |" for g in k["gemm"]]
    for model in ("d16_profile", "default_model"):
        plans = s["steps"].get(model, {}).get("plans", [])
        if plans:
            lines += ["", f"Plans ({model}):", "", "| plan | predicted speedup | ms | GiB | loss |",
                      "|---|---:|---:|---:|---:|"]
            lines += [f"| {p['plan']} | {p['speedup']:.2f}x | {p['latency_ms']:.1f} | {p['memory_mb'] / 1024:.2f} | "
                      f"{p['loss']:.4g} |" if "failed" not in p else f"| {p['plan']} | no plan: {p['failed']} | | | |"
                      for p in plans]
    t = s["steps"].get("tiers", {})
    if t.get("status") == "ok":
        lines += ["", "Each benched model priced from the CPU profiles for this GPU, per tier (median relative "
                  "error against the bench; tiers.json has every row):", "",
                  "| tier | latency | allocator peak | process (reserve and context included) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {tier} | " + " | ".join("-" if e.get(k) is None else f"{e[k]:.1%}" for k in
                                              ("median_err", "memory_median_err", "process_median_err")) + " |"
                  for tier, e in t.items() if isinstance(e, dict)]
    for name in ("d16_bench", "default_model"):
        b = s["steps"].get(name, {})
        b = b.get("bench", b)
        if b.get("plans"):
            lines += ["", f"Measured ({name}; dense {b['dense_ms']:.1f} ms):", "",
                      "| plan | measured speedup | promised | latency err | memory err |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {p['plan']} | {p['measured_speedup']:.2f}x | {p['promised']:.2f}x | "
                      f"{p['latency_err']:+.1%} | {p['memory_err']:+.1%} |" for p in b["plans"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps at toy sizes on the CPU")
    ap.add_argument("--out-root", default=str(ROOT), help="where docs/, profiles/ and plans/ go (default: the repo)")
    ap.add_argument("--total-s", type=float, default=None,
                    help=f"seconds for the whole run (default {TOTAL_S}; {DRY_TOTAL_S} dry); steps that no longer "
                         "fit are skipped")
    ap.add_argument("--only", default=None, help="comma-separated steps to run, the others' results kept from the "
                    f"last summary.json ({', '.join(st.name for st in STEPS)})")
    ap.add_argument("--gpu", help="the folder of a GPU's earlier run (docs/gpu/NAME), to re-run --only tiers from its "
                    "files on a machine without that GPU")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if only and only - {st.name for st in STEPS}:
        ap.error(f"--only: unknown steps {sorted(only - {st.name for st in STEPS})}")
    if args.gpu and only != {"tiers"}:
        ap.error("--gpu re-runs the tiers step from files: give it with --only tiers (the other steps need the GPU)")
    return Run(args).run(only)


if __name__ == "__main__":
    sys.exit(main())
