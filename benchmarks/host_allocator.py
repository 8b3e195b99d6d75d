"""The default model's generations under glibc's own malloc policy and under the one `litevar` sets
(models/core/host_memory.py: freed memory kept for reuse), timed in one run.

Two child processes hold the model, one per policy (a policy is per process). Each round times
every (batch, configuration) once in each child, the two children's order alternating by round;
a child idles on its pipe while the other runs. Reported per cell: the median ms and minor page
faults per generation under each policy, the paired ratio (glibc's ms / the kept policy's ms, the
median over rounds), and W8A8's and bf16's paired speedup over fp32 within each policy (the same
child, the same round). Configurations: fp32 (dense), bf16 (the whole model under autocast), and
W8A8 (every linear of the blocks, at fp32).

    python benchmarks/host_allocator.py --rounds 7 --json docs/results/host-allocator-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from litevar.commands.results import provenance, write_result

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("fp32", "bf16", "w8a8")
POLICIES = ("default", "retain")


def child(policy: str) -> None:
    """Serve generations: a line "CONFIG BATCH" in, a line {"ms", "faults"} out."""
    import copy
    import resource
    import time

    import torch

    from litevar.kernels.qlinear import swap_linears
    from litevar.models.core.device import fingerprint
    from litevar.models.core.host_memory import retain_freed_memory
    from litevar.models.core.inference import autocast
    from litevar.models.default import load_default
    if policy == "retain":
        retain_freed_memory()
    _, dense = load_default("cpu")
    w8a8 = copy.deepcopy(dense)
    swap_linears(w8a8, {n: "W8A8" for n, m in w8a8.named_modules() if isinstance(m, torch.nn.Linear)
                        and n.startswith("blocks.")})
    models = {"fp32": (dense, "fp32"), "bf16": (dense, "bf16"), "w8a8": (w8a8, "fp32")}
    print(json.dumps({"policy": fingerprint("cpu")["host_allocator"]}), flush=True)
    for line in sys.stdin:
        config, batch = line.split()
        model, dtype = models[config]
        B = int(batch)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        with torch.no_grad(), autocast(torch.device("cpu"), dtype):
            model.autoregressive_infer_cfg(B, torch.arange(B) % 10, g_seed=0, cfg=4.0, top_k=900, top_p=0.95)
        ms = (time.perf_counter() - t) * 1e3
        print(json.dumps({"ms": ms, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}),
              flush=True)


class Child:
    def __init__(self, policy: str):
        env = {**os.environ, "LITEVAR_MALLOC": "default"} if policy == "default" else dict(os.environ)
        self.p = subprocess.Popen([sys.executable, __file__, "--child", policy], cwd=ROOT, env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.policy = json.loads(self.p.stdout.readline())["policy"]

    def run(self, config: str, batch: int) -> dict:
        self.p.stdin.write(f"{config} {batch}\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)


def measure(batches: list[int], rounds: int) -> dict:
    from tqdm import tqdm
    children = {p: Child(p) for p in POLICIES}
    runs = {(p, b, c): [] for p in POLICIES for b in batches for c in CONFIGS}
    try:
        cells = [(b, c) for b in batches for c in CONFIGS]
        for b, c in cells:  # warm-up, not recorded
            for ch in children.values():
                ch.run(c, b)
        for r in tqdm(range(rounds), desc="rounds"):
            order = POLICIES if r % 2 == 0 else POLICIES[::-1]
            for b, c in cells:
                for p in order:
                    runs[p, b, c].append(children[p].run(c, b))
    finally:
        for ch in children.values():
            ch.close()
    rows = []
    for b in batches:
        for c in CONFIGS:
            row = {"batch": b, "config": c}
            for p in POLICIES:
                ms = [x["ms"] for x in runs[p, b, c]]
                row[p] = {"ms": statistics.median(ms), "faults": statistics.median(x["faults"] for x in runs[p, b, c]),
                          "runs_ms": ms}
                fp = [x["ms"] for x in runs[p, b, "fp32"]]
                row[p]["speedup_vs_fp32"] = statistics.median(f / m for f, m in zip(fp, ms))
            row["ratio"] = statistics.median(d / k for d, k in zip(row["default"]["runs_ms"], row["retain"]["runs_ms"]))
            rows.append(row)
    return {"rounds": rounds, "batches": batches, "policies": {p: ch.policy for p, ch in children.items()},
            "rows": rows}


def table(data: dict) -> str:
    out = ["| batch | configuration | glibc's policy: ms | faults | vs fp32 | freed memory kept: ms | faults | "
           "vs fp32 | glibc / kept |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        d, k = r["default"], r["retain"]
        cells = [f"{x['ms']:.1f} | {x['faults']:,.0f} | {x['speedup_vs_fp32']:.2f}x" for x in (d, k)]
        out.append(f"| {r['batch']} | {r['config']} | {cells[0]} | {cells[1]} | {r['ratio']:.2f}x |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7; one warm-up before)")
    p.add_argument("--batches", default="1,8", help="batch sizes (default 1,8)")
    p.add_argument("--json", help="the result file to write")
    p.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    started = provenance("cpu")
    data = measure([int(b) for b in args.batches.split(",")], args.rounds)
    print(table(data))
    if args.json:
        write_result(args.json, "host-allocator", data, "cpu", started=started)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
