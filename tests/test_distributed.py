"""Profiling and evaluating under torchrun (gloo on this CPU): the same tables and figures as one
process, whatever the number of ranks. Each run here starts real processes with torchrun; both
sides run one thread per process (torchrun's default), so the float summation order inside each
kernel is the same and results are compared exactly where the order of their own sums is too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from litevar.models.core import distributed as D

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
           *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def alone(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return finished(started(*args), timeout)


def started(*args) -> subprocess.Popen:
    """One process, started: it runs beside a torchrun (most of either is start-up)."""
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_single_process_shards_nothing():
    w = D.world()
    assert (w.rank, w.size, w.main, w.distributed) == (0, 1, True, False) and not D.launched()
    assert w.mine(5) == [0, 1, 2, 3, 4]
    assert D.run_sharded(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]
    assert D.World(1, 3).mine(8) == [1, 4, 7]
    parts = [{"a": torch.tensor([1.0]), "b": 2}, {"a": torch.tensor([3.0])}, {"b": 5}]
    merged = D.merge_in_order(parts)
    assert merged["a"].item() == 4.0 and merged["b"] == 7
    assert not torch.distributed.is_initialized()  # nothing here created a process group


@pytest.mark.heavy  # its functions run inside test_profile_under_torchrun_... too; `python -m pytest -m heavy`
def test_sharded_quality_functions_equal_one_process(tmp_path):
    """Calibration, sensitivity (linears, QK8, KV), attention coverage and CFG sharing, run by 2
    ranks, equal the single process: tokens and losses exactly, coverage sums within 1e-6."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    alone(ROOT / "tests" / "dist_child.py", one)
    torchrun(ROOT / "tests" / "dist_child.py", two)
    a, b = torch.load(one, weights_only=False), torch.load(two, weights_only=False)
    assert (a["world"], b["world"]) == (1, 2)
    assert all(torch.equal(x, y) for x, y in zip(a["tokens"], b["tokens"])) and torch.equal(a["ref"], b["ref"])
    pd.testing.assert_frame_equal(a["sensitivity"], b["sensitivity"], rtol=1e-6, atol=0)
    kinds = a["sensitivity"]["kind"].value_counts()
    assert kinds["attn_qk"] == kinds["attn_kv"] == 4 and kinds["fc2"] == 4 and kinds["head"] == 1
    for name in ("coverage", "sinks", "cfg_share", "similarity"):
        pd.testing.assert_frame_equal(a[name], b[name], rtol=1e-6, atol=1e-9)


def test_eval_under_torchrun_gives_the_same_figures(tmp_path):
    """Samples sharded by batch index (seed + i as alone): the same images, so the same metrics."""
    # --num-images: torchrun would take --n as its own; the ceiling is the VQVAE's alone, not sharded
    args = ["eval", "--num-images", "8", "--batch", "2", "--seed", "3", "--no-ceiling"]
    one = started("-m", "litevar", *args, "--json", tmp_path / "one.json")
    r = torchrun("-m", "litevar", *args, "--json", tmp_path / "two.json")
    finished(one)
    one, two = (json.loads((tmp_path / f).read_text())["data"] for f in ("one.json", "two.json"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    for k in ("images_sha256", "class_accuracy", "frechet_feature", "confusion"):
        assert one[k] == two[k], k
    assert r.stdout.count("images: 8 ") == 1  # rank 0 prints, the other rank does not


def test_profile_under_torchrun_writes_one_profile_equal_to_one_process(tmp_path):
    """`litevar profile --stages coverage,cfg` by 2 ranks: one file, written by rank 0, with the
    tables of the single process; stage caches and shard checkpoints as with one. A rank that
    dies mid-stage fails the run at once (torchrun stops the other rank and names the dead one: no
    hang), and the run started again takes the stage finished before from its cache."""
    args = ["profile", "--stages", "coverage,cfg", "--calib", "4", "--calib-loss", "2"]
    one = started("-m", "litevar", *args, "--out", tmp_path / "one.json")
    child = ROOT / "tests" / "dist_cli.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(child), *args,
           "--out", str(tmp_path / "two.json")]
    died = subprocess.run(cmd, cwd=ROOT, env={**ENV, "LITEVAR_TEST_DIE_AT": "cfg sharing"}, capture_output=True,
                          text=True, timeout=120)
    assert died.returncode != 0 and "rank" in died.stderr and "exitcode" in died.stderr, died.stderr[-2000:]
    assert not (tmp_path / "two.json").exists() and (tmp_path / "two.json.stages" / "coverage.json").is_file()
    again = torchrun(child, *args, "--out", tmp_path / "two.json")
    assert "profile: stage coverage (cached)" in again.stdout and "profile: stage cfg\n" in again.stdout
    finished(one)
    from litevar.profiler.profile import Profile
    a, b = Profile.load(tmp_path / "one.json"), Profile.load(tmp_path / "two.json")
    assert set(a.tables) == set(b.tables) == {"coverage", "sinks", "window_fit", "evict_fit", "cfg", "cfg_share"}
    for name in a.tables:
        pd.testing.assert_frame_equal(a.table(name), b.table(name), rtol=1e-6, atol=1e-9)
    assert b.meta["distributed"]["world_size"] == 2 and "distributed" not in a.meta
    assert not list((tmp_path / "two.json.stages").glob("*.shards"))  # shard checkpoints removed once merged


def test_commands_that_run_alone_refuse_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "litevar",
           "generate", "--out", str(tmp_path / "x.png")]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "runs as one process" in r.stderr


@pytest.mark.parametrize("world_size", [1, 3])
def test_shard_checkpoints_resume_a_stage(tmp_path, world_size, monkeypatch):
    """A named sharded run keeps its results, and a second run with the same key takes them
    instead of measuring (a different key measures again)."""
    from litevar.profiler import quality as Q
    monkeypatch.setattr(Q, "world", lambda: D.World(0, world_size))
    monkeypatch.setattr(D, "world", lambda: D.World(0, world_size))
    monkeypatch.setattr(D, "gather", lambda results, n, group=None: [results.get(i) for i in range(n)])
    calls = []

    def fn(x):
        calls.append(x)
        return x * 10
    with Q.shard_checkpoints(tmp_path, "k1"):
        first = Q.run_sharded(fn, list(range(6)), "job")
        again = Q.run_sharded(fn, list(range(6)), "job")
    with Q.shard_checkpoints(tmp_path, "k2"):
        Q.run_sharded(fn, list(range(6)), "job")
    mine = list(range(0, 6, world_size))
    assert calls == mine + mine and first == again
    assert (tmp_path / f"job.rank0of{world_size}.pt").is_file()
