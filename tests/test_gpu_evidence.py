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
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads((tmp_path / "docs" / "gpu" / "dry-run-cpu" / "summary.json").read_text())
    assert r.returncode == 0, {k: v.get("why") for k, v in summary["steps"].items()}
    missing = [f for f in gpu_evidence.manifest("dry-run-cpu") if not (tmp_path / f).is_file()]
    assert not missing, missing
    assert all(s["status"] == "ok" for s in summary["steps"].values())
    assert "Dry run on CPU" in (tmp_path / "docs" / "gpu" / "dry-run-cpu" / "summary.md").read_text()


def test_gpu_names_make_folder_names():
    assert gpu_evidence.slug("NVIDIA H200") == "h200"
    assert gpu_evidence.slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
