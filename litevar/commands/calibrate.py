"""`litevar calibrate`: describe this device by measuring it (profiler/calibrate.py), for plans
priced at the calibrated tier (`litevar plan --device FILE`)."""
from __future__ import annotations

import argparse

from litevar.commands.args import COUNT, POSITIVE
from litevar.models.core.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", required=True, help="calibration JSON to write, e.g. devices/h100.json")
    p.add_argument("--name", help="the device's name in plans and reports (default: its fingerprint's)")
    p.add_argument("--profile", help="take the layer shapes of this profile's model (default: VAR at --depth), and "
                   "time one dense generation of that model, which sets the kernels' in-model factor when a plan "
                   "prices this profile for the device")
    p.add_argument("--no-generation", action="store_true", help="with --profile: time the kernels only (plans priced "
                   "from the calibration then take the kernels as isolated calls ran)")
    p.add_argument("--depth", type=COUNT, default=16, help="VAR depth whose layer shapes to time (default 16)")
    p.add_argument("--dtypes", help="runtime dtypes to calibrate, comma-separated, e.g. fp32,bf16 (default: the "
                   "device's own, then fp32 or bf16; T4-class GPUs: fp16)")
    p.add_argument("--budget-s", type=POSITIVE, default=None,
                   help="time budget in seconds (default 120 on a GPU, 240 on a CPU)")
    p.add_argument("--refit", metavar="FILE", help="fit a calibration again from the points it recorded (no device "
                   "is timed; any machine): what a change of the fit gives on one already measured")


def run(args) -> int:
    from litevar.commands.common import resolve_device
    from litevar.models.core.device import device_of
    from litevar.models.core.family import arch_from, family_of, get_family
    from litevar.profiler import calibrate as cal
    if args.refit:
        c = cal.refit(_read_calibration(args.refit))
        cal.write(c, args.out)
        _report(args.out, c)
        return 0
    dev = device_of(resolve_device(args.device))
    profile = None
    if args.profile:
        from litevar.profiler.profile import Profile
        profile = Profile.load(args.profile)
        arch = profile.arch
    else:
        arch = arch_from({"family": "var", "depth": args.depth, "embed_dim": 64 * args.depth,
                          "num_heads": args.depth, "V": 4096, "Cvae": 32})
    budget = args.budget_s or (120.0 if dev.accelerator else 240.0)
    if budget < 20:
        raise UserError(f"--budget-s {budget:g}: give at least 20 s (a calibration times a few dozen calls)")
    dtypes = _dtypes(args.dtypes)
    c = cal.calibrate(dev.torch, family_of(arch) if args.profile else get_family("var"), arch, dtypes, budget,
                      args.name, profile=None if args.no_generation else profile)
    cal.write(c, args.out)
    _report(args.out, c)
    return 0


def _read_calibration(path: str) -> dict:
    """A calibration file with its points, or one line naming the fix."""
    from litevar.models.core.atomic import read_json
    c = read_json(path, "--refit", "give a calibration written by `litevar calibrate --out`")
    if not isinstance(c, dict) or c.get("format") != "litevar-calibration" or not isinstance(c.get("points"), dict):
        raise UserError(f"--refit {path}: not a litevar calibration with its points; re-run `litevar calibrate`")
    return c


def _report(out, c: dict) -> None:
    print(f"wrote {out}: {c['name']} ({', '.join(c['runtimes'])}), {c['seconds']:.0f} s; bandwidth "
          f"{c['bandwidth_gbs']:.1f} GB/s, dispatch {1e3 * c['dispatch_ms']:.1f} us per op; held-out median error "
          f"{100 * (c['validation']['latency_err'] or 0):.1f}%")
    for dtype, rt in c["runtimes"].items():
        for fmt, g in rt["gemm"].items():
            eff = "" if g["efficiency"] is None else f", {100 * g['efficiency']:.0f}% of peak"
            print(f"  {dtype:5s} {fmt:6s} {g['tflops']:8.3f} TFLOP/s sustained{eff}, "
                  f"{1e3 * g['overhead_ms']:.1f} us per call")
        a = rt["attention"]
        print(f"  {dtype:5s} {'attn':6s} {a['tflops']:8.3f} TFLOP/s sustained, "
              f"{1e3 * a['overhead_ms']:.1f} us per call")
        for backend, k in rt.get("backends", {}).items():
            print(f"  {dtype:5s} attn {backend:10s} {k['tflops']:8.3f} TFLOP/s sustained (on the pairs it keeps), "
                  f"{1e3 * k['overhead_ms']:.1f} us per call")
        for fmt, why in rt.get("failed", {}).items():
            print(f"  {dtype:5s} {fmt:6s} left out: its kernel fails on this device ({why})")
    for dtype, why in c.get("runtimes_left_out", {}).items():
        print(f"  {dtype:5s} left out: {why}; plans for this device never run in {dtype}")
    gen = c.get("generation")
    for dtype, ms in (gen or {}).get("ms", {}).items():
        raw = gen.get("raw_ms", {}).get(dtype, ms)
        print(f"  {dtype:5s} dense generation (batch 1) {ms:.1f} ms at the kernel sweep's speed (timed {raw:.1f} ms): "
              "sets the dense kernels' in-model factor")
    for dtype, why in (gen or {}).get("skipped", {}).items():
        print(f"  {dtype:5s} dense generation not timed: {why}")


def _dtypes(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    out = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [d for d in out if d not in ("fp32", "bf16", "fp16")]
    if bad or not out:
        raise UserError(f"--dtypes {text}: give runtime dtypes from fp32, bf16, fp16, comma-separated")
    return out
