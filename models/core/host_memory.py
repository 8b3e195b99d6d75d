"""How the host allocator treats freed memory: a fact CPU timings depend on, set once per process.

glibc's malloc serves a block larger than its mmap threshold with a fresh mapping and unmaps it
when freed; the threshold starts at 128 KiB and rises to the largest such block freed, up to
32 MiB. It also gives the free top of its heap back to the kernel once that exceeds the trim
threshold (twice the mmap threshold). A generation allocates and frees the same activations at
every layer and scale, so under that policy its pages keep going back to the kernel and coming
back zeroed, one minor fault per 4 KiB page. Measured on the default model at batch 8 (AMD EPYC
Zen 5, 2 cores): about 90,000 faults per fp32 generation, and twice that with W8A8 linears, whose
quantize-GEMM-dequantize path allocates more; docs/benchmarks.md section 6 has the timings.

`retain_freed_memory()` fixes the mmap threshold at 32 MiB (the moving threshold's own ceiling)
and the trim threshold at 1 GiB: blocks up to 32 MiB come from the heap and the heap keeps what is
freed, so the next generation reuses the same pages. Blocks above 32 MiB are mapped and unmapped
as before. The resident set then stays near its peak between generations instead of shrinking;
the peak itself is what the generation needs either way.

The `litevar` command sets it at start (LITEVAR_MALLOC=default keeps glibc's policy), and the CPU
fingerprint records the policy in force, so a profile says which one its timings were taken under.
Nothing here runs at import.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: every glibc accepts it
TRIM_THRESHOLD = 1 << 30
ENV = "LITEVAR_MALLOC"  # "default": keep glibc's policy

_state: dict = {"policy": "default"}


def allocator_policy() -> dict:
    """The policy in force in this process: {"policy": "default"} (the C library's own, or not
    glibc), {"policy": "retain", "mmap_threshold_mib": .., "trim_threshold_mib": ..}, or
    {"policy": "tunables", "glibc_tunables": ..} where the user set glibc's malloc tunables."""
    if _state["policy"] == "default" and _malloc_tunables():
        return {"policy": "tunables", "glibc_tunables": os.environ["GLIBC_TUNABLES"]}
    return dict(_state)


def _malloc_tunables() -> bool:
    """Whether the user set glibc's malloc tunables (GLIBC_TUNABLES), which this leaves alone."""
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def retain_freed_memory() -> dict:
    """Set glibc's malloc to keep freed memory for reuse (see the module docstring) unless
    LITEVAR_MALLOC=default or GLIBC_TUNABLES already sets malloc; returns allocator_policy().
    A no-op off glibc. Idempotent."""
    if _state["policy"] == "retain":
        return allocator_policy()
    if os.environ.get(ENV, "").lower() == "default":
        log.info("host allocator: glibc's policy kept (%s=default)", ENV)
        return allocator_policy()
    if _malloc_tunables():
        log.info("host allocator: GLIBC_TUNABLES sets malloc; left as it is")
        return allocator_policy()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        log.info("host allocator: not glibc (%s); left as it is", platform.libc_ver()[0] or platform.system())
        return allocator_policy()
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        log.warning("host allocator: glibc refused mallopt; its default policy stays (timings may "
                    "include page faults on freed memory)")
        return allocator_policy()
    _state.update(policy="retain", mmap_threshold_mib=MMAP_THRESHOLD >> 20, trim_threshold_mib=TRIM_THRESHOLD >> 20)
    log.info("host allocator: freed memory kept for reuse (mmap threshold %d MiB, trim threshold %d MiB)",
             MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return allocator_policy()
