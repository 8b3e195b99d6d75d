#!/usr/bin/env bash
# The CPU evidence run: every result file under docs/results/ that a CPU measures, then the pages.
# About an hour and a half on 2 CPU cores (the d30 2048-px generation alone takes about two more: --flagship;
# Infinity-2B's cost profile, plans and 1024-px generation about an hour and a half more: --infinity).
# Run it on a quiet machine: the timings are ratios measured within each command, but another heavy
# job on the same cores still moves them. Each step logs to $LOG_DIR/NAME.log; the run stops at the
# first failure. --from NAME resumes at a step.
#   bash benchmarks/cpu_evidence.sh [--flagship] [--infinity] [--from NAME]
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-runs/cpu-evidence}
mkdir -p "$LOG_DIR" docs/results
FLAGSHIP=0 INFINITY=0 FROM=""
while [ $# -gt 0 ]; do
  case $1 in
    --flagship) FLAGSHIP=1 ;;
    --infinity) INFINITY=1 ;;
    --from) FROM=$2; shift ;;
    *) echo "unknown flag $1: give --flagship, --infinity or --from NAME" >&2; exit 2 ;;
  esac
  shift
done
step() {
  local name=$1; shift
  if [ -n "$FROM" ] && [ "$FROM" != "$name" ]; then echo "skip $name"; return 0; fi
  FROM=""
  echo "$(date -u +%H:%M:%S) $name: $*"
  "$@" > "$LOG_DIR/$name.log" 2>&1 || { echo "$name failed: see $LOG_DIR/$name.log" >&2; exit 1; }
}
R=docs/results
step host_allocator python benchmarks/host_allocator.py --rounds 7 --json $R/host-allocator-cpu.json
step profile litevar profile --out profiles/default-cpu.json --fresh
step plans_default python benchmarks/make_plans.py --set default
step plans_official python benchmarks/make_plans.py --set official
step vs_b1 python benchmarks/planner_vs_recipes.py --profile profiles/default-cpu.json --plans-dir plans \
  --prefix default-cpu-256 --repeats 15 --quality 80 --json $R/planner-vs-recipes-cpu.json
step bench_default litevar bench $(for p in x05 x10 x15 x20 x25 mem75 mem50 kv8 kv4-keep-s1r1; do
  echo --plan plans/default-cpu-256-$p.json; done) --baseline bf16 --baseline bf16+compile --repeats 21 \
  --quality 80 --json $R/bench-default-cpu.json
for p in dense kv8 w4a16-kv4-keep-s1r1 memhalf; do
  step one_d16_1024_$p python benchmarks/one_generation.py --random-init --depth 16 \
    --plan plans/d16-cpu-1024-$p.json --json $R/d16-cpu-1024-$p-one.json
done
step one_d16_2048 python benchmarks/one_generation.py --random-init --depth 16 --plan plans/d16-cpu-2048-8gib.json \
  --json $R/d16-cpu-2048-8gib-one.json
step one_d30_1024 python benchmarks/one_generation.py --random-init --depth 30 --plan plans/d30-cpu-1024-memhalf.json \
  --json $R/d30-cpu-1024-memhalf-one.json
step profile_b8 litevar profile --out profiles/default-cpu-b8.json --batches 1,2,8 --fresh
step vs_b8 python benchmarks/planner_vs_recipes.py --profile profiles/default-cpu-b8.json --plans-dir plans \
  --prefix default-cpu-256-b8 --batch 8 --recipes bf16,w8a8 --repeats 7 --quality 40 \
  --json $R/planner-vs-recipes-cpu-b8.json
step transfer python benchmarks/transfer_cpu.py --json $R/transfer-cpu.json
step autocast_cache python benchmarks/autocast_cache.py --depth 16 --json $R/autocast-cache-cpu.json
step gpu_fit python benchmarks/gpu_fit.py --json $R/gpu-fit.json
step kernels litevar bench-kernels --device cpu --json $R/bench-kernels-cpu.json
step distributed python benchmarks/distributed_profile.py --nproc 2 --json $R/distributed-profile-cpu.json
step ablate litevar ablate --profile profiles/default-cpu.json --n 60 --out docs/ablation.md --json $R/ablation.json
step eval litevar eval --n 200 --json $R/default-eval.json
step compare_gpus bash -c 'litevar compare plans/gpu/*.json --html docs/compare-gpus.html'
if [ "$FLAGSHIP" = 1 ]; then
  step one_d30_2048 python benchmarks/one_generation.py --random-init --depth 30 \
    --plan plans/d30-cpu-2048-18gib.json --json $R/d30-cpu-2048-18gib-one.json
fi
if [ "$INFINITY" = 1 ]; then
  step profile_infinity litevar profile --family infinity --random-init --depth 32 --resolution 256 \
    --out profiles/infinity-2b-cpu.json --resolutions "1,2,4,6,8,12;1,2,4,6,8,12,16;1,2,4,6,8,12,16,20" \
    --batches 1 --e2e-repeats 1 --fresh
  step plans_infinity python benchmarks/make_plans.py --set infinity
  step gpu_fit_infinity python benchmarks/gpu_fit.py --depths '' --infinity 2b,8b --resolutions 1024 \
    --json $R/gpu-fit-infinity.json
  step one_inf_1024 python benchmarks/one_generation.py --family infinity --random-init --depth 32 \
    --plan plans/infinity-2b-cpu-1024-8gib.json --json $R/infinity-2b-cpu-1024-8gib-one.json
fi
# from the files above, no model run: the memory model and the drift probe against what was measured
step memory_check python benchmarks/memory_check.py --json $R/memory-check.json
step probe_check python benchmarks/probe_check.py --json $R/probe-check.json
step render python benchmarks/render.py
echo "$(date -u +%H:%M:%S) done"
