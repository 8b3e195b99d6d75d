"""Device fingerprint and software environment of a profile (meta.device, meta.env).

A profile's timings hold for the device and software they were taken on; the planner and the
runtime compare these dicts to warn when a profile is used elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# what a plan records of the profiled device and apply_plan compares with the device it runs on
PLAN_KEYS = ("type", "name", "cpu_family", "cpu_model")


def fingerprint(device: torch.device | str) -> dict:
    """What the timings depend on: GPU name, memory, driver, clocks, compute capability (CUDA)
    or CPU model name, family and model numbers (a VM's model name often hides the generation),
    cores and ISA flags (CPU)."""
    dev = torch.device(device)
    return _cuda_fingerprint(dev) if dev.type == "cuda" else _cpu_fingerprint()


def _cpu_info() -> dict[str, str]:
    """First processor block of /proc/cpuinfo (empty off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _cpu_fingerprint() -> dict:
    info = _cpu_info()
    flags = set(info.get("flags", "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"type": "cpu", "name": info.get("model name", platform.processor() or platform.machine()),
            "cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "flags": {f: f in flags for f in CPU_FLAGS},
            "memory_mb": _meminfo_mb(), "cpu_family": info.get("cpu family"), "cpu_model": info.get("model")}


def _meminfo_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            line = next(l for l in f if l.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


def _cuda_fingerprint(dev: torch.device) -> dict:
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    out = {"type": "cuda", "index": idx, "name": props.name, "memory_mb": round(props.total_memory / 2 ** 20, 1),
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
