"""The default model's quality stages by one process and by torchrun's N processes: wall times,
and how far apart the tables are.

    python benchmarks/distributed_profile.py --nproc 2 --json docs/results/distributed-profile-cpu.json

Runs `litevar profile --stages sensitivity,coverage,cfg --fresh` once as one process (torch's
default threads: every core) and once under `torchrun --standalone --nproc-per-node N` (one
thread per process, torchrun's default), each into its own file, then compares every table
column by column: the largest relative difference of the losses and of the other numbers.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = "sensitivity,coverage,cfg"


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def largest_differences(a, b) -> dict:
    """Per table, the largest relative difference |a - b| / max(|a|, 1e-12) of its float columns."""
    import numpy as np
    out = {}
    for name in a.tables:
        ta, tb = a.table(name), b.table(name)
        cols = [c for c in ta.columns if ta[c].dtype.kind == "f"]
        if len(ta) != len(tb) or not cols:
            out[name] = None if len(ta) != len(tb) else 0.0
            continue
        x, y = ta[cols].to_numpy(float), tb[cols].to_numpy(float)
        out[name] = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))
    return out


def main(argv=None) -> int:
    from litevar.commands.results import provenance, write_result
    from litevar.profiler.profile import Profile
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    from litevar.models.core.host_memory import retain_freed_memory
    retain_freed_memory()  # as `litevar` runs: the provenance records the policy its timings run under
    started = provenance("cpu", argv)
    with tempfile.TemporaryDirectory() as d:
        one, many = Path(d) / "one.json", Path(d) / "many.json"
        base = ["-m", "litevar", "profile", "--stages", STAGES, "--fresh"]
        env = dict(os.environ)
        t_one = timed([sys.executable, *base, "--out", str(one)], env)
        t_many = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                        str(args.nproc), *base, "--out", str(many)], env)
        a, b = Profile.load(one), Profile.load(many)
        diff = largest_differences(a, b)
    out = {"stages": STAGES, "nproc": args.nproc, "seconds_one_process": t_one, "seconds_torchrun": t_many,
           "largest_relative_difference": diff}
    write_result(args.json, "distributed-profile", out, started=started)
    print(f"one process {t_one:.0f} s, torchrun x{args.nproc} {t_many:.0f} s ({t_one / t_many:.2f}x); "
          f"largest relative difference per table: {diff}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
