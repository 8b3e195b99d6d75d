"""Write every shipped plan from the shipped profiles (the commands behind plans/).

    python benchmarks/make_plans.py --set default     # plans/default-cpu-256-*.json (but the recipe
                                                      # and vs-* ones: benchmarks/planner_vs_recipes.py)
    python benchmarks/make_plans.py --set official    # plans/d{16,30}-cpu-*.json

default (profiles/default-cpu.json, 256 px): x05 / x10 / x15 / x20 / x25 (`--min-speedup` 1.05 ...
1.25), mem75 and mem50 (`--max-memory-gib` 75% / 50% of the dense model's predicted peak), and
the KV-cache recipes kv8 (INT8 cache in every block) and kv4-keep-s1r1 (INT4, each block keeping
the first scale and the latest).

official (profiles/dD-cpu.json, cost only, losses borrowed from profiles/default-cpu.json): at
256, 1024 and 2048 px, x12 (`--min-speedup 1.2`) and memhalf (`--max-memory-gib` half-way between
the dense peak and the least reachable one, planner.solve.reachable_minima); for d16 at 1024 px
also dense (the recipe fp) and the recipes kv8 (INT8 cache) and w4a16-kv4-keep-s1r1 (INT4 weights,
INT4 cache keeping the first and the latest scale: the weights and the VQVAE decode set the floor), for d16 at 2048 px
`--max-memory-gib 8` (8gib) and for d30 at 2048 px `--max-memory-gib 18` (18gib: what this 24 GB
machine can run, with room for the process). A depth whose profile is missing is skipped.
infinity (profiles/infinity-2b-cpu.json, cost only, losses borrowed from the VAR default): Infinity-2B at
1024 px in 8 GiB and in 12 GiB, and dense; Infinity-8B at 1024 px in 24 GiB, priced from the 2B profile
(`--config 8b`: its wider shapes extrapolated).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from litevar.commands.cli import main as litevar_main

SOURCE = "profiles/default-cpu.json"  # where cost-only profiles borrow their losses


def cli(*argv) -> None:
    rc = litevar_main([str(a) for a in argv])
    if rc:
        raise SystemExit(f"litevar {' '.join(map(str, argv))} failed ({rc})")


def _profile(profile: str, losses_from: str | None = None):
    """The profile as `litevar plan` loads it (with --losses-from's losses when given)."""
    from argparse import Namespace

    from litevar.commands.plan import load_profile
    return load_profile(Namespace(profile=profile, losses_from=losses_from))


def dense_gib(profile: str, resolution: int) -> float:
    from litevar.planner.build import build_problem
    return build_problem(_profile(profile), resolution).dense_memory_mb / 1024


def halfway_gib(profile: str, resolution: int, losses_from: str | None = None) -> float:
    """Half-way between the dense peak and the least peak any plan reaches (GiB)."""
    from litevar.planner.build import build_problem
    from litevar.planner.solve import reachable_minima
    prof = _profile(profile, losses_from)
    problem = build_problem(prof, resolution)
    _, least = reachable_minima(problem)
    return (problem.dense_memory_mb + least) / 2 / 1024


def default_plans(out: Path) -> None:
    prof, r = "profiles/default-cpu.json", 256
    name = f"{out}/default-cpu-{r}"
    for x in ("05", "10", "15", "20", "25"):
        cli("plan", "--profile", prof, "--resolution", r, "--min-speedup", f"1.{x}", "--out", f"{name}-x{x}.json")
    dense = dense_gib(prof, r)
    for pct in (75, 50):
        cli("plan", "--profile", prof, "--resolution", r, "--max-memory-gib", f"{dense * pct / 100:.5f}",
            "--out", f"{name}-mem{pct}.json")
    for spec in ("kv8", "kv4+keep-s1r1"):
        out_path = f"{name}-{spec.replace('+', '-')}.json"
        cli("plan", "--profile", prof, "--resolution", r, "--recipe", spec, "--out", out_path)


def official_plans(out: Path, depths) -> None:
    for d in depths:
        prof = f"profiles/d{d}-cpu.json"
        if not Path(prof).exists():
            print(f"skipping d{d}: no {prof}")
            continue
        for r in (256, 1024, 2048):
            name = f"{out}/d{d}-cpu-{r}"
            common = ("--profile", prof, "--losses-from", SOURCE, "--resolution", r)
            cli("plan", *common, "--min-speedup", "1.2", "--out", f"{name}-x12.json")
            half = halfway_gib(prof, r, SOURCE)
            cli("plan", *common, "--max-memory-gib", f"{half:.4f}", "--out", f"{name}-memhalf.json")
            budget = {(16, 2048): 8, (30, 2048): 18}.get((d, r))
            if budget:
                cli("plan", *common, "--max-memory-gib", budget, "--out", f"{name}-{budget}gib.json")
            if (d, r) == (16, 1024):
                for spec, stem in (("fp", "dense"), ("kv8", "kv8"), ("w4a16+kv4+keep-s1r1", "w4a16-kv4-keep-s1r1")):
                    cli("plan", "--profile", prof, "--losses-from", SOURCE, "--resolution", r, "--recipe", spec,
                        "--out", f"{name}-{stem}.json")


INFINITY = "profiles/infinity-2b-cpu.json"


def infinity_plans(out: Path) -> None:
    """Infinity-2B at 1024 px in 8 and 12 GiB (cost-only profile, losses borrowed from the VAR default)."""
    if not Path(INFINITY).exists():
        print(f"skipping Infinity: no {INFINITY}")
        return
    for budget in (8, 12):
        cli("plan", "--profile", INFINITY, "--losses-from", SOURCE, "--resolution", 1024, "--max-memory-gib",
            budget, "--out", f"{out}/infinity-2b-cpu-1024-{budget}gib.json")
    cli("plan", "--profile", INFINITY, "--losses-from", SOURCE, "--resolution", 1024, "--recipe", "fp",
        "--out", f"{out}/infinity-2b-cpu-1024-dense.json")
    cli("plan", "--profile", INFINITY, "--config", "8b", "--losses-from", SOURCE, "--resolution", 1024,
        "--max-memory-gib", 24, "--out", f"{out}/infinity-8b-cpu-1024-24gib.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=("default", "official", "infinity", "all"), default="all")
    p.add_argument("--depths", default="16,30")
    p.add_argument("--out", default="plans")
    args = p.parse_args(argv)
    if args.set in ("default", "all"):
        default_plans(Path(args.out))
    if args.set in ("official", "all"):
        official_plans(Path(args.out), [int(d) for d in args.depths.split(",")])
    if args.set in ("infinity", "all"):
        infinity_plans(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
