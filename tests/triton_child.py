"""Run a test module's Triton tests in a child process under TRITON_INTERPRET=1.

triton 3.9 decorates triton.language's own helpers (tl.zeros, ...) when triton is first
imported, so the variable must be set before any import of triton (torch.compile imports it
too): on a CPU-only machine the Triton checks therefore run in a fresh process."""
import os
import subprocess
import sys

import pytest
import torch

from litevar.kernels.select import interpret_mode, triton_available


def run_triton_tests_in_child(test_file: str) -> None:
    if torch.cuda.is_available() or interpret_mode() or not triton_available():
        pytest.skip("Triton tests run in this process (CUDA or interpreter) or triton is missing")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(test_file), "-q", "-k", "triton",
           "-p", "no:cacheprovider"]
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
