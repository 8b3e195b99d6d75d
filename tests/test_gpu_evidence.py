"""The GPU evidence run's dry run (benchmarks/gpu_evidence.sh --dry-run): every step runs at toy
sizes on the CPU and every file the real run writes is written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_evidence  # noqa: E402


@pytest.mark.heavy  # about 2 minutes: `python -m pytest -m heavy`
def test_dry_run_writes_every_file_of_the_real_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_evidence.sh"), "--dry-run", "--out-root", str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    summary = json.loads((tmp_path / "docs" / "gpu" / "dry-run-cpu" / "summary.json").read_text())
    assert r.returncode == 0, {k: v.get("why") for k, v in summary["steps"].items()}
    missing = [f for f in gpu_evidence.manifest("dry-run-cpu") if not (tmp_path / f).is_file()]
    assert not missing, missing
    assert all(s["status"] == "ok" for s in summary["steps"].values())
    assert "Dry run on CPU" in (tmp_path / "docs" / "gpu" / "dry-run-cpu" / "summary.md").read_text()


def test_gpu_names_make_folder_names():
    assert gpu_evidence.slug("NVIDIA H200") == "h200"
    assert gpu_evidence.slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"


def test_the_h200_run_is_priced_again_from_its_files(tmp_path):
    """The tiers step re-runs from a GPU run's files on a machine without that GPU (`--only tiers
    --gpu h200`): both tiers price every benched model (plans and dense), and each row's measured
    figures are the bench's."""
    import shutil
    docs = tmp_path / "docs" / "gpu" / "h200"
    shutil.copytree(ROOT / "docs" / "gpu" / "h200", docs)
    (tmp_path / "plans").mkdir()
    for p in (ROOT / "plans").glob("*-h200-*.json"):
        shutil.copy(p, tmp_path / "plans")
    assert gpu_evidence.main(["--out-root", str(tmp_path), "--only", "tiers", "--gpu", "h200"]) == 0
    tiers = json.loads((docs / "tiers.json").read_text())["tiers"]
    assert set(tiers) == {"spec", "calibrated"}
    bench = json.loads((docs / "bench-d16-256.json").read_text())["data"]
    for rows in (t["rows"] for t in tiers.values()):
        assert sorted(r["plan"] for r in rows if r["model"] == "d16") == ["d16-h200-256-memhalf.json", "dense"]
        dense = next(r for r in rows if r["model"] == "d16" and r["plan"] == "dense")
        assert (dense["measured_ms"], dense["measured_mb"]) == (bench["dense"]["latency_ms"], bench["dense"]["peak_mb"])
    with pytest.raises(SystemExit):  # the other steps need the GPU
        gpu_evidence.main(["--out-root", str(tmp_path), "--gpu", "h200"])
