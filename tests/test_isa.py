"""The numerics tests on other x86 CPUs' kernels, emulated on this one.

torch picks its CPU kernels by what the CPU offers: oneDNN (int8 GEMMs, some fp32 / bf16 ones) up
to ONEDNN_MAX_CPU_ISA, MKL (fp32 GEMMs) up to MKL_ENABLE_INSTRUCTIONS, ATen's vectorised loops and
inductor's generated code at ATEN_CPU_CAPABILITY. Capping all three makes this machine run what an
AVX2-only CPU (AMD Zen 2/3) or an AVX-512 CPU without VNNI (Skylake-class Xeons) runs, so that no
kernel choice decides a test: the probes (tests/test_probes.py) and the numerics tests (runtime,
KV cache, quantizers, GEMMs) run again in a child process per cap, the two side by side at one
thread each. The variables are read when the libraries load, hence the children. Left out there:
the Triton interpreter tests (numpy, whatever the caps) and the slowest eval test. A cap runs only
where this CPU has more than it: on an AVX2-only CPU (AMD Zen 3) the suite itself is the AVX2 run.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from litevar.models.core.device import ISA_CAPS

ROOT = Path(__file__).resolve().parents[1]
NUMERICS = ["tests/test_probes.py", "tests/test_runtime.py", "tests/test_kvcache.py", "tests/test_quant.py",
            "tests/test_gemm.py"]
LEFT_OUT = "not interpreter and not eval_by_scale"
# a cap emulates a lesser CPU only where this one has more: what it keeps out (ATen told to run
# AVX-512 code on a CPU without it dies of an illegal instruction)
ABOVE = {"AVX2": ("avx512f",), "AVX512_CORE": ("avx512f", "avx512_vnni")}


def caps_below_this_cpu() -> list[str]:
    from litevar.models.core.device import fingerprint
    flags = fingerprint("cpu")["flags"]
    return [cap for cap, need in ABOVE.items() if all(flags.get(f) for f in need)]


def capped_env(cap: str, cache_root: Path) -> dict:
    """The environment of a child under `cap`, with its own inductor cache: inductor keys compiled
    kernels without the ISA, so a kernel compiled under one cap and loaded under another computes
    garbage."""
    env = {**os.environ, **ISA_CAPS[cap], "TORCHINDUCTOR_CACHE_DIR": str(cache_root / f"inductor-{cap}"),
           "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    return env


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86 ISA caps")
def test_probes_and_numerics_pass_under_every_cap(tmp_path):
    caps = caps_below_this_cpu()
    if not caps:
        pytest.skip("this CPU has no ISA above AVX2: the suite itself runs the lowest cap's kernels")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NUMERICS, "-k", LEFT_OUT]
    procs = {cap: subprocess.Popen(cmd, cwd=ROOT, env=capped_env(cap, tmp_path), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for cap in caps}
    deadline, failed = time.monotonic() + 540, {}
    for cap, p in procs.items():
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        if p.returncode != 0 or " passed" not in out:
            failed[cap] = out[-4000:]
    assert not failed, failed
