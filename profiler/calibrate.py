"""`litevar calibrate`: a short microbenchmark sweep that describes a device by measuring it.

It times, through the kernels the runtime runs: the linears of every format that runs natively
here (and fp) at the model family's layer shapes and a few row counts; dense attention at a few
shapes, and the other attention backends (a cache of each KV-cache format, QK8, windows) at the
model's own scales; a memory copy (bandwidth); a tiny op (the host's dispatch per op). Each kernel
family is fitted as

    t = overhead + max(flops / throughput, bytes / bandwidth)

(profiler.devices.Throughput; on a GPU the throughput over the catalogue peak is its efficiency),
on two thirds of the shapes; the rest are held out and their median error is the calibration's
own check, and the guard a plan priced from it takes. A minute or two on a CPU, well under two
on a GPU; `--budget-s` caps it.

Isolated calls miss what a model adds around them (caches shared with the other operators; on a
CPU that emulates a dtype, the conversions around every operator). So, given a profile, the last
fifth of the budget times one dense generation of its model at each runtime dtype
(generation_point), and a plan priced from the calibration scales its dense kernels by the
factor that makes that generation come out as measured (profiler.devices.in_model_factors). A
shared machine's speed drifts in spells, so one of the sweep's calls is timed again beside the
generation, and the generation is scaled by that paired ratio to the sweep's speed.
"""
from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from litevar.models.core.device import device_of
from litevar.models.core.errors import UserError
from litevar.models.core.inference import DTYPES, autocast
from litevar.profiler.devices import Throughput, spec_for

log = logging.getLogger(__name__)

FORMAT, VERSION = "litevar-calibration", 2  # 2: a fit per runtime dtype (runtimes)


def layer_shapes(family, arch) -> list[tuple[int, int]]:
    """Distinct (K, N) of the family's linears at `arch`."""
    return sorted({(s.K, s.N) for s in family.linears(arch)})


def _time(dev, fn, budget) -> float:
    return dev.time_ms(fn, warmup=1, repeats=3 if budget > 0 else 1, min_batch_ms=2.0)


def gemm_points(dev, dtype: str, shapes, rows, formats, deadline: float,
                failed: dict | None = None) -> list[dict]:
    """ms of one linear call per (format, K, N, M), through linear_in_format as the runtime runs it.
    A format whose kernel fails on this device (a compile or launch error) is left out, its error
    kept in `failed` (format -> message): the calibration says so instead of ending."""
    out = []
    for fmt in formats:
        try:
            out += _format_points(dev, dtype, fmt, shapes, rows, deadline)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
            log.warning("calibrate: the %s kernel fails here at %s (%s); %s is left out", fmt, dtype, e, fmt)
            if failed is not None:
                failed[fmt] = " ".join(str(e).split())[:300]
            out = [p for p in out if p["format"] != fmt]
        if time.monotonic() > deadline:
            break
    return out


def _format_points(dev, dtype: str, fmt: str, shapes, rows, deadline: float) -> list[dict]:
    from litevar.kernels.qlinear import linear_in_format
    out = []
    for K, N in shapes:
        lin = nn.Linear(K, N, device=dev.torch).requires_grad_(False)
        try:
            layer = linear_in_format(lin, fmt)
        except Exception as e:  # noqa: BLE001 - a width the format cannot take (group size)
            log.debug("calibrate: %s at K=%d skipped (%s)", fmt, K, e)
            continue
        for M in rows:
            if time.monotonic() > deadline:
                return out
            ms = _linear_ms(dev, dtype, layer, K, M, deadline - time.monotonic())
            out.append({"format": fmt, "K": K, "N": N, "M": M, "ms": ms})
    return out


def _linear_ms(dev, dtype: str, layer, K: int, M: int, budget: float) -> float:
    """ms of one call of `layer` on M random rows of K features at runtime `dtype`: how the sweep
    times every linear (and _probe times one of them again)."""
    x = torch.randn(M, K, device=dev.torch)
    with autocast(dev.torch, dtype), torch.no_grad():
        return _time(dev, lambda: layer(x), budget)


def attention_points(dev, dtype: str, heads: int, head_dim: int, shapes, deadline: float) -> list[dict]:
    """ms of dense attention at each (q_len, kv_len) of `shapes`, smallest first: the first two (what
    a fit needs) whatever the time, the rest within `deadline`."""
    from torch.nn import functional as F
    out = []
    for q_len, kv_len in shapes:
        if len(out) >= 2 and time.monotonic() > deadline:
            break
        q = torch.randn(2, heads, q_len, head_dim, device=dev.torch, dtype=DTYPES[dtype])
        k, v = (torch.randn(2, heads, kv_len, head_dim, device=dev.torch, dtype=DTYPES[dtype]) for _ in "kv")
        with torch.no_grad():
            ms = _time(dev, lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), 1)
        out.append({"B": 2, "H": heads, "D": head_dim, "q_len": q_len, "kv_len": kv_len, "ms": ms})
    return out


def copy_bandwidth_gbs(dev, mib: int) -> float:
    """Read + write GB/s of copying a `mib` MiB tensor."""
    src = torch.empty(mib * 2 ** 18, device=dev.torch)
    dst = torch.empty_like(src)
    ms = _time(dev, lambda: dst.copy_(src), 1)
    return 2 * src.numel() * 4 / (ms * 1e6)


def load_gbs(dev, mib: int = 256, repeats: int = 3) -> float:
    """GB/s of loading a `mib` MiB safetensors file into tensors on the device (every byte read into
    memory the process owns, as loading a model does), median of
    `repeats` after one warm-up: what reloading a freed model's weights (a text encoder between
    prompts) costs per byte. The file was just written, so it is read from the page cache: a
    cold read from disk is slower."""
    import statistics
    import tempfile
    import time

    from safetensors.torch import load_file, save_file
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/w.safetensors"
        save_file({"w": torch.zeros(mib * 2 ** 18)}, path)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            w = load_file(path, device=str(dev.torch))["w"].clone()  # read: the file is mapped, not read, until used
            dev.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
            del w
    return mib * 2 ** 20 / statistics.median(times) / 1e9


def dispatch_ms(dev) -> float:
    """ms per call of a tiny op: what the host spends dispatching one."""
    x = torch.zeros(1, device=dev.torch)
    return dev.time_ms(lambda: x.add_(1.0), warmup=10, repeats=5, min_batch_ms=5.0)


def fit_throughput(flops, nbytes, ms, bandwidth_gbs: float, peak_tflops: float | None = None,
                   segments=None) -> tuple[Throughput, float]:
    """(fitted Throughput, rms relative error) of t = o + max(F / P, B / BW) by least squares on the
    relative residuals, over log P and log o. P is bounded by `peak_tflops` (the catalogue's peak of
    the math, where known): calls whose time is all overhead (small GEMMs on a GPU) leave P free,
    and an unbounded fit then reports a throughput no hardware has. With `segments` (a KV-cache
    call's scales, each assembled on its own), a third term s x segments, s >= 0, is fitted too."""
    from scipy.optimize import least_squares
    F, B, t = (np.asarray(a, float) for a in (flops, nbytes, ms))
    mem = B / (bandwidth_gbs * 1e6)
    n = np.zeros_like(t) if segments is None else np.asarray(segments, float)

    def resid(p):
        o, P = np.exp(p[:2])
        return (o + p[2] * n + np.maximum(F / (P * 1e9), mem)) / t - 1
    hi = np.log(peak_tflops) if peak_tflops else np.inf
    p0 = [*np.log([max(float(t.min()) / 2, 1e-4), max(float(np.median(F / (t * 1e9))), 1e-3)]), 0.0]
    p0[1] = min(p0[1], hi - 1e-6)
    k = 2 if segments is None else 3  # without segments, s stays 0
    r = least_squares(lambda p: resid([*p, 0.0][:3]), p0[:k],
                      bounds=([-np.inf, -np.inf, 0.0][:k], [np.inf, hi, np.inf][:k]))
    x = [*r.x, 0.0][:3]
    o, P = np.exp(x[:2])
    return Throughput(float(P), float(o), float(x[2])), float(np.sqrt(np.mean(resid(x) ** 2)))


def _split(points: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every third point held out."""
    return [p for i, p in enumerate(points) if i % 3 != 2], [p for i, p in enumerate(points) if i % 3 == 2]


def calibrate(device, family, arch, dtypes: tuple[str, ...] | None = None, budget_s: float = 120.0,
              name: str | None = None, progress: bool = True, profile=None) -> dict:
    """The calibration of `device` for the layer shapes of `family` at `arch`, at each runtime dtype
    of `dtypes` (default: the device's own first, then fp32 or bf16; see the module docstring).
    With `profile` (of a model of `arch`), the last fifth of the budget times its dense
    generations (generation_point)."""
    t0 = time.monotonic()
    kernel_budget = budget_s * (GENERATION_START if profile is not None else 1.0)
    dev = device_of(device)
    dtypes = tuple(dtypes or dict.fromkeys((dev.default_dtype, "bf16" if dev.default_dtype == "fp32" else "fp32")))
    fp = dev.fingerprint()
    spec = spec_for(fp) if dev.accelerator else None
    bw = copy_bandwidth_gbs(dev, 1024 if dev.accelerator else 256)
    disp = dispatch_ms(dev)
    runtimes, errs, points, left_out = {}, [], {}, {}
    from litevar.profiler.cost import progress_bar
    for i, dtype in enumerate(progress_bar(dtypes, "calibrate", progress, len(dtypes))):  # each a share of the rest
        share = (t0 + kernel_budget - time.monotonic()) / (len(dtypes) - i)
        runtime, held, points[dtype] = _calibrate_dtype(dev, spec, family, arch, dtype, bw, share)
        if "fp" not in runtime["gemm"]:  # an emulated dtype (bf16 on an AVX2-only CPU): plans never run in it
            left_out[dtype] = (f"its dense GEMMs too slow here to time 3 in its {share:.0f} s share of the budget "
                               "(raise --budget-s to price it anyway)")
            log.warning("calibrate: runtime dtype %s left out: %s", dtype, left_out[dtype])
            continue
        runtimes[dtype] = runtime
        errs += held
    if not runtimes:
        raise UserError(f"calibrate: no runtime dtype could be timed in --budget-s {budget_s:g}; raise it")
    from litevar.kernels.gemm import int8_gemm_path
    out = {"format": FORMAT, "version": VERSION, "name": name or fp.get("name"), "device": fp,
           "spec": None if spec is None else spec.key, "dtype": next(iter(runtimes)),
           "memory_gib": _memory_gib(dev, fp), "bandwidth_gbs": bw, "dispatch_ms": disp, "runtimes": runtimes,
           "runtimes_left_out": left_out,
           "validation": {"latency_err": float(np.median(np.abs(errs))) if errs else None, "held_out": len(errs)},
           "kernels": {"int8_gemm": int8_gemm_path(dev.type)}, "points": points,
           "shapes_of": {"family": family.name, "arch": arch.to_dict()},
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out.update(_fixed_costs(dev))
    if profile is not None:
        out["generation"] = generation_point(dev, family, arch, out, profile, t0 + budget_s)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


GENERATION_START = 0.8  # share of the budget the kernels get when a generation is timed after them


def generation_point(dev, family, arch, cal: dict, profile, deadline: float) -> dict:
    """One dense generation of `arch` (batch 1, its own schedule) timed at each runtime dtype of
    `cal`, on a model of that architecture (family.timing_model): the point that sets the
    calibrated tier's in-model factor (profiler.devices.in_model_factors). A dtype is skipped
    where the calibration itself prices a warm-up and one timed run beyond `deadline`, or the
    generation's memory beyond what the device has free; the model is built only if a dtype is
    left. Each generation is scaled to the kernel sweep's speed (_probe). {'arch', 'batch', 'ms':
    {dtype: ms at the sweep's speed}, 'raw_ms': {dtype: ms as timed}, 'speed_ratio': {dtype: the
    machine's speed then over the sweep's}, 'skipped': {dtype or 'all': why}}."""
    from litevar.profiler.devices import from_calibration, priced
    out = {"arch": arch.to_dict(), "batch": 1, "ms": {}, "raw_ms": {}, "speed_ratio": {}, "skipped": {}}
    cm = priced(profile, from_calibration(cal)).cost_model
    est = {d: cm.predict(arch, arch.patch_nums, 1, dtype=d) for d in cal["runtimes"]}
    for dtype, p in est.items():
        if why := _generation_out_of_reach(dev, p, deadline):
            out["skipped"][dtype] = why
            log.warning("calibrate: dense generation at %s not timed: %s", dtype, why)
    if len(out["skipped"]) == len(est):
        return out
    models = family.timing_model(arch, dev.torch)
    if models is None:
        out["skipped"] = {"all": f"the {family.name} family builds no model of this architecture to time"}
        return out
    for dtype, p in est.items():
        if dtype in out["skipped"]:
            continue
        if why := _generation_out_of_reach(dev, p, deadline):  # building the model took the time
            out["skipped"][dtype] = why
            continue
        probe = _probe(dev, dtype, cal["points"][dtype]["gemm"])
        before = probe()
        raw = _generation_ms(dev, family.generation(models[1], 1, dtype), deadline)
        ratio = (before + probe()) / 2  # the machine's speed now over the sweep's, at one of its calls
        out["ms"][dtype], out["raw_ms"][dtype], out["speed_ratio"][dtype] = raw / ratio, raw, ratio
        if abs(ratio - 1) > 0.05:
            log.warning("calibrate: this machine ran %.0f%% %s while the %s generation was timed than during the "
                        "kernel sweep; the generation is scaled to the sweep's speed", 100 * abs(ratio - 1),
                        "slower" if ratio > 1 else "faster", dtype)
    return out


def _probe(dev, dtype: str, points: list[dict]):
    """() -> the ms of one fp linear call of the kernel sweep (the one of median work) timed again,
    over the ms the sweep measured for it: how much slower (above 1) the machine runs now. A
    shared VM's speed drifts in spells; the generation is expressed at the sweep's speed, so the
    in-model factor compares the two at one speed."""
    from litevar.kernels.qlinear import linear_in_format
    fp = sorted((p for p in points if p["format"] == "fp"), key=lambda p: p["M"] * p["K"] * p["N"])
    p = fp[len(fp) // 2]
    layer = linear_in_format(nn.Linear(p["K"], p["N"], device=dev.torch).requires_grad_(False), "fp")
    return lambda: _linear_ms(dev, dtype, layer, p["K"], p["M"], 1) / p["ms"]


def _generation_out_of_reach(dev, pred, deadline: float) -> str | None:
    """Why a generation priced `pred` (before any in-model factor) is not timed, or None."""
    left_ms = 1e3 * (deadline - time.monotonic())
    if 2 * pred.latency_ms > left_ms:
        return (f"a generation priced at {pred.latency_ms / 1e3:.1f} s, {max(left_ms, 0) / 1e3:.0f} s of the budget "
                "left (raise --budget-s to time it)")
    free_mib = dev.available_bytes() / 2 ** 20
    if pred.memory_mb > 0.9 * free_mib:
        return (f"a generation needs about {pred.memory_mb / 1024:.1f} GiB, {free_mib / 1024:.1f} GiB free here "
                "(free memory, or pass --no-generation)")
    return None


def _generation_ms(dev, run, deadline: float) -> float:
    """Median ms of up to 3 runs after a warm-up, as many as the time left holds at the warm-up's
    pace (the price can be far off: an emulated dtype); none left: the warm-up's own time, which a
    first run's allocations can only lengthen."""
    import statistics
    warm = dev.elapsed_ms(run, 1)
    n = max(0, min(3, int(1e3 * (deadline - time.monotonic()) // max(warm, 1e-6))))
    return statistics.median(dev.elapsed_ms(run, 1) for _ in range(n)) if n else warm


def _calibrate_dtype(dev, spec, family, arch, dtype: str, bw: float, budget_s: float
                     ) -> tuple[dict, list[float], dict]:
    """({'gemm': {format: fit}, 'attention': fit}, held-out relative errors, the points) at one
    runtime dtype, within `budget_s`: GEMMs get 75% of it, dense attention 10%, the other
    attention backends (backend_points) the rest."""
    from litevar.kernels.formats import FORMATS, capability
    from litevar.profiler import costmodel as C
    t0 = time.monotonic()
    rows = (64, 512, 4096) if dev.accelerator else (16, 256, 2048)
    formats = ["fp"] + [f for f in FORMATS if f != "fp" and capability(f, dev.torch).native
                        and not (FORMATS[f].casts and C.DTYPE_BYTES.get(dtype) == 2)]
    failed = {}
    points = gemm_points(dev, dtype, layer_shapes(family, arch), rows, formats, t0 + 0.75 * budget_s, failed)
    H, D = arch.num_heads, arch.head_dim
    att_shapes = [(256, 680), (1024, 3000), (4096, 9451)] if dev.accelerator else [(64, 150), (256, 680), (1024, 2500)]
    apts = attention_points(dev, dtype, H, D, att_shapes, t0 + 0.85 * budget_s)
    bpts = backend_points(dev, dtype, arch, max(q * kv for q, kv in att_shapes), t0 + budget_s)
    runtime, errs = fit_runtime(spec, dtype, formats, points, apts, bw, bpts)
    runtime["failed"] = failed
    return runtime, errs, {"gemm": points, "attention": apts, "backends": bpts}


def fit_runtime(spec, dtype: str, formats, points: list[dict], apts: list[dict], bw: float,
                bpts: list[dict] = ()) -> tuple[dict, list[float]]:
    """({'gemm': {format: fit}, 'attention': fit, 'backends': {backend: fit}}, held-out relative
    errors) of the timed points at one runtime dtype (every third point of a format held out)."""
    from litevar.profiler import costmodel as C
    from litevar.profiler.devices import linear_bytes
    act = C.DTYPE_BYTES[dtype]
    gemm, errs = {}, []
    for fmt in formats:
        pts = [p for p in points if p["format"] == fmt]
        if len(pts) < 3:
            log.warning("calibrate: too few %s points at %s in the time budget; %s left out", fmt, dtype, fmt)
            continue
        fit_pts, held = _split(pts)
        peak = _peak(spec, fmt, dtype)
        tp, rms = fit_throughput([2.0 * p["M"] * p["K"] * p["N"] for p in fit_pts],
                                 [linear_bytes(p["K"], p["N"], p["M"], fmt, act) for p in fit_pts],
                                 [p["ms"] for p in fit_pts], bw, peak)
        held_err = [tp.ms(2.0 * p["M"] * p["K"] * p["N"], linear_bytes(p["K"], p["N"], p["M"], fmt, act), bw)
                    / p["ms"] - 1 for p in held]
        errs += held_err
        gemm[fmt] = {"tflops": tp.tflops, "overhead_ms": tp.overhead_ms, "rmse_rel": rms, "n": len(fit_pts),
                     "held_out_median_err": float(np.median(np.abs(held_err))) if held_err else None,
                     "efficiency": None if peak is None else tp.tflops / peak}
    backends = {}
    for backend in dict.fromkeys(p["backend"] for p in bpts):
        pts = [p for p in bpts if p["backend"] == backend]
        if len(pts) >= 2:
            tp, rms = _fit_attention(pts, act, bw, _peak(spec, "fp", dtype), by_segment=len(pts) >= 3 and all(
                "segments" in p for p in pts))
            backends[backend] = {"tflops": tp.tflops, "overhead_ms": tp.overhead_ms,
                                 "per_segment_ms": tp.per_segment_ms, "rmse_rel": rms, "n": len(pts)}
    a_tp, a_rms = _fit_attention(apts, act, bw, _peak(spec, "fp", dtype))
    return {"gemm": gemm, "attention": {"tflops": a_tp.tflops, "overhead_ms": a_tp.overhead_ms,
                                        "rmse_rel": a_rms, "n": len(apts)}, "backends": backends}, errs


def _fit_attention(pts: list[dict], act: int, bw: float, peak: float | None, by_segment: bool = False
                   ) -> tuple[Throughput, float]:
    """The roofline fit of attention calls: the flops of the (query, key) pairs each call keeps
    (profiler.devices.attention_work, as a plan prices them); `by_segment`: with a cost per scale
    a KV-cache call assembles (the points' `segments`)."""
    from litevar.profiler.devices import attention_work
    work = [attention_work(p["B"], p["H"], p["D"], p["q_len"], p["kv_len"], p.get("kept", 1.0), act) for p in pts]
    return fit_throughput([f for f, _ in work], [b for _, b in work], [p["ms"] for p in pts], bw, peak,
                          [p["segments"] for p in pts] if by_segment else None)


# attention backends timed beside dense SDPA (kept target; None: every key): a call on each KV-cache
# format's cache (costmodel.kv_backends), QK8, and windows (MDWA) with and without QK8
WINDOW_KEPT = (0.3, 0.7)


def backend_jobs() -> list[tuple[str, float | None]]:
    from litevar.profiler import costmodel as C
    kv = sorted(set(C.kv_backends().values()), key=lambda b: b != "dense_kv8")  # KV8 first: the one plans use most
    return ([(b, None) for b in kv] + [("dense_qk8", None)]
            + [(b, k) for b in ("mdwa", "mdwa_qk8") for k in WINDOW_KEPT])


def backend_scales(pns, max_work: int, windowed: bool) -> list[int]:
    """The scales of schedule `pns` a backend is timed at, among those whose q_len x kv_len is at
    most `max_work`: windows at the three largest from the fifth on (where they apply); a backend
    every scale's call runs (a KV cache's, QK8) at five spread from the first to the largest. A
    cache's fixed cost grows with the scales it assembles (its fit has a term per scale), so a fit
    through the largest calls alone puts their fixed cost into the small ones, which a generation
    makes as many of."""
    ends = np.cumsum([p * p for p in pns])
    fits = [s for s in range(len(pns)) if pns[s] ** 2 * ends[s] <= max_work]
    if windowed:
        return [s for s in fits if s >= 5][-3:]
    return sorted({fits[round(i)] for i in np.linspace(0, len(fits) - 1, min(5, len(fits)))})


def backend_points(dev, dtype: str, arch, max_work: int, deadline: float) -> list[dict]:
    """ms of one attention call on each backend of backend_jobs, as the profile's cost stage times
    it (profiler.cost.measure_attention: a KV-cache format's call writes its segment, assembles
    the kept keys and attends; a windowed one keeps about its target of the keys), at the scales of
    `arch`'s schedule that backend_scales picks; none once `deadline` has passed. A backend that
    fails here is left out and, as one without two points, priced as dense attention."""
    from litevar.profiler import costmodel as C
    from litevar.profiler.cost import measure_attention
    pns = tuple(arch.patch_nums or family_schedule(arch))
    ends = np.cumsum([p * p for p in pns])
    out, kv = [], set(C.kv_backends().values())
    for backend, target in backend_jobs():
        for s in backend_scales(pns, max_work, target is not None):
            if time.monotonic() > deadline:
                return out
            try:
                ms, kept = measure_attention(pns, s, 2, arch.num_heads, arch.head_dim, backend, dev.torch, dtype,
                                             target, warmup=1, repeats=3)
            except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
                log.warning("calibrate: the %s attention backend fails here at %s (%s); priced as dense", backend,
                            dtype, e)
                out = [p for p in out if p["backend"] != backend]
                break
            out.append({"backend": backend, "B": 2, "H": arch.num_heads, "D": arch.head_dim,
                        "q_len": pns[s] ** 2, "kv_len": int(ends[s]), "kept": kept, "ms": ms,
                        **({"segments": s + 1} if backend in kv else {})})  # a cache keeping every scale
    return out


def family_schedule(arch) -> tuple[int, ...]:
    from litevar.models.core.family import family_of
    fam = family_of(arch)
    return fam.schedule_for(min(fam.schedules))


def _peak(spec, fmt: str, dtype: str) -> float | None:
    """The catalogue's dense peak (TFLOP/s) of the math a format runs at `dtype` (GPUs in the catalogue only)."""
    if spec is None:
        return None
    from litevar.kernels.formats import capability
    kernel = capability(fmt, "cuda").kernel
    math_fmt = "int8" if kernel in ("w8a8", "w4a8") else ("bf16" if kernel == "bf16" else dtype)
    peak = spec.peaks.get(math_fmt)
    return None if peak is None else peak.value


def refit(cal: dict) -> dict:
    """`cal` fitted again from the points it recorded (no device needed): what a change of the fit
    gives on a calibration already measured. The points, fingerprint and fixed costs are kept."""
    from litevar.profiler.devices import catalogue
    spec = catalogue().get(cal.get("spec") or "")
    out, errs = dict(cal), []
    out["runtimes"] = {}
    for dtype, pts in cal["points"].items():
        if dtype not in cal["runtimes"]:  # left out when measured (runtimes_left_out)
            continue
        formats = list(dict.fromkeys(p["format"] for p in pts["gemm"]))
        out["runtimes"][dtype], held = fit_runtime(spec, dtype, formats, pts["gemm"], pts["attention"],
                                                   cal["bandwidth_gbs"], pts.get("backends", []))
        out["runtimes"][dtype]["failed"] = cal["runtimes"].get(dtype, {}).get("failed", {})
        errs += held
    out["validation"] = {"latency_err": float(np.median(np.abs(errs))) if errs else None, "held_out": len(errs)}
    out["refitted"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return out


def _memory_gib(dev, fp: dict) -> float | None:
    mb = fp.get("memory_mb")
    return None if mb is None else mb / 1024


def _fixed_costs(dev) -> dict:
    """The CUDA context's bytes (what the device holds beyond the allocator's reserve), measured."""
    if not dev.accelerator:
        return {"context_mib": 0.0, "reserve_frac": 0.0}
    free, total = torch.cuda.mem_get_info(dev.torch)
    used = total - free - torch.cuda.memory_reserved(dev.torch)
    return {"context_mib": used / 2 ** 20, "reserve_frac": 0.1,
            "fixed_source": "context: device memory in use beyond the allocator's reserve, measured; reserve: assumed"}


def write(cal: dict, path) -> Path:
    from litevar.models.core.atomic import write_json
    return write_json(path, cal)
