"""Profiling survives being killed: a run SIGKILLed mid-stage and run again ends with the same
tables as an uninterrupted run; torn or foreign stage caches are named and measured again."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from litevar.commands.profile import _cache_path, _cached, _store
from litevar.profiler.profile import Profile

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--calib", "4", "--calib-loss", "2", "--stages", "coverage,cfg"]


def profile_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "litevar", "profile", "--out", str(out), *ARGS]


def run_to_end(out: Path) -> str:
    r = subprocess.run(profile_cmd(out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_killed_mid_stage_then_resumed_gives_the_same_tables(tmp_path):
    whole = tmp_path / "whole.json"
    run_to_end(whole)
    cut = tmp_path / "cut.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(profile_cmd(cut), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        for line in proc.stdout:  # coverage done and cached: the cfg stage starts
            if line.startswith("profile: stage cfg"):
                time.sleep(0.3)
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not cut.exists() and _cache_path(cut, "coverage").exists() and not _cache_path(cut, "cfg").exists()
    out = run_to_end(cut)
    assert "stage coverage (cached)" in out and "stage cfg\n" in out
    a, b = Profile.load(whole), Profile.load(cut)
    assert set(a.tables) == set(b.tables) == {"coverage", "sinks", "window_fit", "evict_fit", "cfg", "cfg_share"}
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_exact=True)


def _arch():
    return {"depth": 1, "embed_dim": 64, "num_heads": 1, "mlp_ratio": 4.0, "V": 8, "Cvae": 4, "num_classes": 2,
            "patch_nums": [1, 2]}


def test_torn_and_foreign_caches_are_named_and_not_trusted(tmp_path, capsys):
    out = tmp_path / "p.json"
    cfg = pd.DataFrame({"layer": [0], "loss": [0.5]})
    _store(out, "cfg", "key-a", {"cfg_share": cfg}, {"seconds": 1.0})
    assert _cached(out, "cfg", "key-a", _arch()).tables["cfg_share"].equals(cfg)
    assert _cached(out, "cfg", "key-b", _arch()) is None  # made with other settings
    assert "made for another model, calibration or setting" in capsys.readouterr().out
    path = _cache_path(out, "cfg")
    path.write_text(path.read_text()[:40])  # torn
    assert _cached(out, "cfg", "key-a", _arch()) is None
    assert f"ignoring the unusable cache {path}" in capsys.readouterr().out
    _store(out, "cfg", "key-a", {"cfg_share": cfg.assign(loss=[float("nan")])}, {})  # edited: NaN loss
    assert _cached(out, "cfg", "key-a", _arch()) is None
    assert "loss = nan" in capsys.readouterr().out
