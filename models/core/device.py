"""Devices: what litevar asks of the machine it measures or runs on, in one place.

A device type is one class registered by name (`@register_device`): the CPU and CUDA here. It
answers for its timing (synchronisation, a median over batched calls), its memory (the
allocator's peak, the process's peak, what is free), its fingerprint (what timings depend on),
its kernels (whether Triton compiles natively, which torch._int_mm shapes it takes, its
collective backend) and its defaults (runtime dtype). Nothing else branches on a device type:
`device_of(torch_device)` gives the object to ask.

A device that is not present (a GPU from the catalogue, priced on paper) is described by data
instead (litevar.models.core.devices): it can be priced, not timed.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import ClassVar

import torch

from litevar.models.core.errors import UserError
from litevar.models.core.host_memory import allocator_policy

log = logging.getLogger(__name__)

MB = 2 ** 20
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# what a plan records of the profiled device and apply_plan compares with the device it runs on
PLAN_KEYS = ("type", "name", "cpu_family", "cpu_model")
# the environment variables that cap which kernels a CPU's libraries pick (tests/test_isa.py, calibration
# of an emulated CPU): oneDNN's ISA, MKL's instructions, ATen's and inductor's vector ISA
ISA_CAPS = {"AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
            "AVX512_CORE": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                            "ATEN_CPU_CAPABILITY": "avx512"}}


class Device:
    """One device of a registered type (see the module docstring)."""

    type: ClassVar[str] = ""
    default_dtype: ClassVar[str] = "fp32"  # the runtime dtype a model runs in unless told otherwise
    dist_backend: ClassVar[str] = "gloo"  # torch.distributed backend of processes on this type
    triton_native: ClassVar[bool] = False  # Triton kernels compile and run here (not the interpreter)
    triton_interpreted: ClassVar[bool] = False  # Triton kernels run on its tensors under TRITON_INTERPRET=1
    accelerator: ClassVar[bool] = False  # a device of its own per process (a GPU), fast enough for the full sets
    _bf16_speedup: float | None = None  # bf16_gemm_speedup, once measured
    # how peak_memory_mb counts, named where it changed what a profile's memory rows hold: part of
    # the cost stage's cache key, so a cache measured another way is measured again
    peak_method: ClassVar[str] = ""

    def __init__(self, dev: torch.device):
        self.torch = dev

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.torch})"

    # -- checks and placement ---------------------------------------------------------------
    def check(self) -> None:
        """Raise UserError naming the fix when this device cannot be used here."""

    def local(self, local_rank: int | None) -> Device:
        """This process's device under torchrun (its own GPU), or itself."""
        return self

    def join(self, local_rank: int) -> None:
        """What a process does on this device before joining a process group."""

    # -- timing ------------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for queued work (a no-op where calls return when done)."""

    def elapsed_ms(self, fn: Callable, n: int) -> float:
        """Wall milliseconds of n back-to-back calls."""
        self.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.synchronize()
        return (time.perf_counter() - t0) * 1e3

    def time_ms(self, fn: Callable, warmup: int, repeats: int, min_batch_ms: float = 1.0,
                max_batch: int = 1000) -> float:
        """Median milliseconds per call of fn() over `repeats` samples after `warmup` calls. A sample
        times a batch of calls, as many as make it last about `min_batch_ms`: a single small launch
        would time the host's launch overhead, not the kernel."""
        for _ in range(warmup):
            fn()
        n = min(max_batch, max(1, math.ceil(min_batch_ms / max(self.elapsed_ms(fn, 1), 1e-6))))
        return statistics.median(self.elapsed_ms(fn, n) / n for _ in range(repeats))

    # -- memory ------------------------------------------------------------------------------
    def peak_memory_mb(self, fn: Callable) -> float:
        """Peak growth (MB) of the bytes the allocator holds while fn() runs (tensors)."""
        raise NotImplementedError

    def process_peak_mb(self, fn: Callable) -> float | None:
        """Peak growth (MB) of what the process holds from the system while fn() runs (None: not
        measurable here)."""
        return None

    def peaks_mb(self, fn: Callable) -> tuple[float, float | None]:
        """(allocator peak, process peak) growth in MB of one run of fn(): both from the same run
        where the device allows (a run too long to repeat)."""
        return self.peak_memory_mb(fn), None

    def phases_peaks_mb(self, fns: list[Callable]) -> tuple[list[float], float | None]:
        """([allocator peak growth of each phase], process peak growth over them all) of one run of
        the phases in order (a run too long to repeat): each phase's peak is counted from what
        the allocator held when it began."""
        out: list[float] = []
        process = self.process_peak_mb(lambda: out.extend(self.peak_memory_mb(f) for f in fns))
        if len(out) < len(fns):  # no process figure here: fns did not run
            out = [self.peak_memory_mb(f) for f in fns]
        return out, process

    def available_bytes(self) -> int:
        """Memory free for new tensors."""
        raise NotImplementedError

    # -- what timings depend on ------------------------------------------------------------------
    def fingerprint(self) -> dict:
        raise NotImplementedError

    def int_mm_shape_ok(self, M: int, K: int, N: int) -> bool:
        """Whether torch._int_mm takes an M x K @ K x N product here as it is."""
        return True

    def bf16_gemm_speedup(self) -> float:
        """fp32 time / bf16 time of one GEMM (256 x 512 @ 512 x 512) at the current thread count,
        measured once per process: above 1 where bf16 has matrix units (AVX512-BF16, AMX, tensor
        cores), far below 1 where it is emulated (an AVX2-only CPU converts every element)."""
        if self._bf16_speedup is None:
            ms, gen = {}, torch.Generator(self.torch).manual_seed(0)  # the global RNG is left as it was
            for dtype in (torch.float32, torch.bfloat16):
                a, b = (torch.randn(256, 512, device=self.torch, generator=gen).to(dtype),
                        torch.randn(512, 512, device=self.torch, generator=gen).to(dtype))
                ms[dtype] = self.time_ms(functools.partial(torch.matmul, a, b), warmup=2, repeats=5)
            self._bf16_speedup = ms[torch.float32] / ms[torch.bfloat16]
        return self._bf16_speedup

    def bf16_faster(self) -> bool:
        """Whether bf16 computes faster than fp32 here (bf16_gemm_speedup above 1): where it does not,
        bf16 is emulated and nothing should be run or timed in it by default."""
        return self.bf16_gemm_speedup() > 1.0


DEVICE_TYPES: dict[str, type[Device]] = {}


def register_device(cls: type[Device]) -> type[Device]:
    DEVICE_TYPES[cls.type] = cls
    return cls


@functools.cache
def _device(dev: torch.device) -> Device:
    if dev.type not in DEVICE_TYPES:
        raise UserError(f"device type {dev.type!r} is not supported; use one of {', '.join(DEVICE_TYPES)}")
    return DEVICE_TYPES[dev.type](dev)


def device_of(device: Device | torch.device | str | torch.Tensor) -> Device:
    """The Device of a torch device, its name ('cpu', 'cuda:1') or a tensor's."""
    if isinstance(device, Device):
        return device
    if isinstance(device, torch.Tensor):
        device = device.device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use one of {', '.join(DEVICE_TYPES)} (e.g. cpu, cuda:0)") from None
    return _device(dev)


# ---------------------------------------------------------------------------------------------
# The CPU


@register_device
class CPUDevice(Device):
    type = "cpu"
    triton_interpreted = True
    peak_method = "growth from the first tracked event"

    def peak_memory_mb(self, fn: Callable) -> float:
        """The CPU allocator's peak growth while fn() runs: torch.profiler's allocation events carry
        the running total of the bytes allocated while memory profiling was on (tensors,
        compiled-kernel buffers and aten scratch alike; the allocator's own overhead not included).
        That total lives as long as the process: a tensor allocated under an earlier profiler and
        freed outside one stays in it. Hence the growth over the total the first event found;
        deterministic and additive."""
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _silent_fd2():  # some torch builds log a line to fd 2 at profiler start and stop
            prof.start()
        try:
            fn()
        finally:
            with _silent_fd2():
                prof.stop()
        events, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while todo:
            node = todo.pop()
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.total_allocated, node.extra_fields.alloc_size))
            todo += node.children
        if not events:
            return 0.0
        _, total, size = min(events)
        before = total - size  # the running total before the first event (a free's size is negative)
        return max(0, max(t for _, t, _ in events) - before) / MB

    def process_peak_mb(self, fn: Callable) -> float | None:
        """Growth of the process's peak resident set (VmHWM after clear_refs; Linux): allocator
        overhead, freed pages not yet returned, library buffers included."""
        if not os.path.exists("/proc/self/clear_refs"):
            return None
        gc.collect()
        _malloc_trim()
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        return max(_status_kb("VmHWM") - before, 0) / 1024

    def peaks_mb(self, fn: Callable) -> tuple[float, float | None]:
        """Both peaks of one run: the resident-set peak is read around the allocator-tracked run
        (the tracker's own event records, ~100 bytes per allocation, count in it)."""
        out = {}
        process = self.process_peak_mb(lambda: out.setdefault("alloc", self.peak_memory_mb(fn)))
        return out["alloc"], process

    def available_bytes(self) -> int:
        try:
            with open("/proc/meminfo") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            return 1 << 62  # unknown

    def fingerprint(self) -> dict:
        """CPU model name, family and model numbers (a VM's model name often hides the generation),
        cores, ISA flags, memory, the host allocator's policy (host_memory) and the ISA caps in
        force (ISA_CAPS' variables)."""
        info = _cpu_info()
        flags = set(info.get("flags", "").split())
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        caps = {k: os.environ[k] for k in sorted({k for c in ISA_CAPS.values() for k in c}) if k in os.environ}
        return {"type": "cpu", "name": info.get("model name", platform.processor() or platform.machine()),
                "cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
                "machine": platform.machine(), "flags": {f: f in flags for f in CPU_FLAGS},
                "memory_mb": _meminfo_mb(), "cpu_family": info.get("cpu family"), "cpu_model": info.get("model"),
                "host_allocator": allocator_policy(), **({"isa_caps": caps} if caps else {})}


def _cpu_info() -> dict[str, str]:
    """First processor block of /proc/cpuinfo (empty off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _meminfo_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            line = next(x for x in f if x.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may include freed heap pages
        log.debug("malloc_trim unavailable; the RSS peak may be underestimated")


@contextlib.contextmanager
def settled_heap():
    """Objects alive now are left out of the cyclic collector's passes until the block ends
    (gc.freeze), so each process_peak_mb's collection scans only what the block made: 0.19 s a
    call in a long-lived process (a test session) becomes a few ms. Garbage cycles among the
    frozen objects wait for the block's end; reference-counted frees happen as ever."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _silent_fd2():
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# ---------------------------------------------------------------------------------------------
# CUDA


@register_device
class CUDADevice(Device):
    type = "cuda"
    default_dtype = "bf16"  # tensor cores, and what the GPU cost stage must price
    dist_backend = "nccl"
    triton_native = True
    accelerator = True

    def check(self) -> None:
        if not torch.cuda.is_available():
            raise UserError(f"--device {self.torch}: no CUDA device is available on this machine; use --device cpu")
        if self.torch.index is not None and self.torch.index >= torch.cuda.device_count():
            raise UserError(f"--device {self.torch}: only {torch.cuda.device_count()} CUDA device(s) here")

    def local(self, local_rank: int | None) -> Device:
        if self.torch.index is None and local_rank is not None:
            return device_of(torch.device("cuda", local_rank))
        return self

    def join(self, local_rank: int) -> None:
        torch.cuda.set_device(local_rank)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch)

    def elapsed_ms(self, fn: Callable, n: int) -> float:
        """Between two CUDA events around the n calls."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize(self.torch)
        return start.elapsed_time(end)

    def peak_memory_mb(self, fn: Callable) -> float:
        """max_memory_allocated after reset_peak_memory_stats, minus what was allocated before."""
        torch.cuda.synchronize(self.torch)
        before = torch.cuda.memory_allocated(self.torch)
        torch.cuda.reset_peak_memory_stats(self.torch)
        fn()
        torch.cuda.synchronize(self.torch)
        return (torch.cuda.max_memory_allocated(self.torch) - before) / MB

    def peaks_mb(self, fn: Callable) -> tuple[float, float | None]:
        """(allocated peak growth, process peak growth) of one run. The process figure is what a
        process holding only this run's tensors would hold on the device beyond them: the caching
        allocator's reserved peak less what was allocated before (the allocator's cache emptied
        first), plus the CUDA context (device memory in use beyond the allocator's reserve, read
        before the run; on a GPU other processes also use, theirs counts in it)."""
        torch.cuda.synchronize(self.torch)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.torch)
        alloc0, res0 = torch.cuda.memory_allocated(self.torch), torch.cuda.memory_reserved(self.torch)
        context = total - free - res0
        torch.cuda.reset_peak_memory_stats(self.torch)
        fn()
        torch.cuda.synchronize(self.torch)
        return ((torch.cuda.max_memory_allocated(self.torch) - alloc0) / MB,
                (torch.cuda.max_memory_reserved(self.torch) - alloc0 + context) / MB)

    def phases_peaks_mb(self, fns: list[Callable]) -> tuple[list[float], float | None]:
        """Each phase's allocated peak growth and the reserved peak growth over them all."""
        torch.cuda.synchronize(self.torch)
        reserved0, out, reserved = torch.cuda.memory_reserved(self.torch), [], 0
        for fn in fns:
            before = torch.cuda.memory_allocated(self.torch)
            torch.cuda.reset_peak_memory_stats(self.torch)
            fn()
            torch.cuda.synchronize(self.torch)
            out.append((torch.cuda.max_memory_allocated(self.torch) - before) / MB)
            reserved = max(reserved, torch.cuda.max_memory_reserved(self.torch) - reserved0)
        return out, reserved / MB

    def process_peak_mb(self, fn: Callable) -> float | None:
        """The caching allocator's reserved peak growth (what the process holds on the GPU; the CUDA
        context is fixed and comes on top)."""
        torch.cuda.synchronize(self.torch)
        before = torch.cuda.memory_reserved(self.torch)
        torch.cuda.reset_peak_memory_stats(self.torch)
        fn()
        torch.cuda.synchronize(self.torch)
        return (torch.cuda.max_memory_reserved(self.torch) - before) / MB

    def available_bytes(self) -> int:
        return torch.cuda.mem_get_info(self.torch)[0]

    def int_mm_shape_ok(self, M: int, K: int, N: int) -> bool:
        """cuBLASLt's int8 GEMM: M > 16, K and N multiples of 8."""
        return M > 16 and K % 8 == 0 and N % 8 == 0

    def fingerprint(self) -> dict:
        """GPU name, memory, compute capability, SM count, driver and clocks (NVML)."""
        idx = self.torch.index if self.torch.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        out = {"type": "cuda", "index": idx, "name": props.name, "memory_mb": round(props.total_memory / MB, 1),
               "compute_capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
               "cuda": torch.version.cuda}
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            out["uuid"] = f"GPU-{uuid}"
        out.update(_nvml(out.get("uuid")))
        return out


NVML_FIELDS = {  # fingerprint key -> query(pynvml, handle)
    "driver": lambda nv, h: _text(nv.nvmlSystemGetDriverVersion()),
    "nvml_name": lambda nv, h: _text(nv.nvmlDeviceGetName(h)),
    "sm_clock_max_mhz": lambda nv, h: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
    "mem_clock_max_mhz": lambda nv, h: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM),
    "sm_clock_mhz": lambda nv, h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
    "power_limit_w": lambda nv, h: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
}


def _nvml(uuid: str | None) -> dict:
    """Driver and clocks via nvidia-ml-py, for the GPU with this UUID (torch's index is not NVML's
    under CUDA_VISIBLE_DEVICES). A field the GPU does not report is left out, with the others kept."""
    try:
        import pynvml
    except ImportError:
        log.warning("nvidia-ml-py is not installed (pip install nvidia-ml-py): no driver/clock info "
                    "in the device fingerprint")
        return {}
    if uuid is None:
        log.warning("this torch reports no GPU UUID: no driver/clock info in the device fingerprint")
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.warning("NVML does not start (%s): no driver/clock info in the device fingerprint", e)
        return {}
    out, missing = {}, []
    try:
        h = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        for key, query in NVML_FIELDS.items():
            try:
                out[key] = query(pynvml, h)
            except pynvml.NVMLError:
                missing.append(key)
    except pynvml.NVMLError as e:
        log.warning("NVML has no GPU %s (%s): no driver/clock info in the device fingerprint", uuid, e)
    finally:
        pynvml.nvmlShutdown()
    if missing:
        log.info("NVML does not report %s for %s", ", ".join(missing), uuid)
    return out


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------------------------------
# Helpers every device shares


def fingerprint(device) -> dict:
    """What a device's timings depend on (its Device.fingerprint)."""
    return device_of(device).fingerprint()


def environment() -> dict:
    """Python, torch, triton (None if absent) versions, and a sha256 over them."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
           "cuda": torch.version.cuda, "numpy": _version("numpy"), "scipy": _version("scipy")}
    env["sha256"] = hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()
    return env


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return None


def device_mismatch(plan_device: dict, here: dict) -> str | None:
    """How a plan's device differs from `here` (a fingerprint), compared by PLAN_KEYS where the plan
    has them, in one line; None when they match."""
    keys = [k for k in PLAN_KEYS if plan_device.get(k) is not None]
    diff = [k for k in keys if plan_device[k] != here.get(k)]
    if not diff:
        return None
    return ", ".join(f"{k}: plan {plan_device[k]!r}, here {here.get(k)!r}" for k in diff)
