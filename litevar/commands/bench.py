"""`litevar bench --plan PLAN [--plan PLAN ...] [--baseline bf16 ...]`: measured against promised,
in one run.

Loads the model, keeps it as the dense baseline (at --dtype), applies each plan to a copy
(sharing the VAE; each at its own runtime dtype, the plan's `dtype`), adds each --baseline (the
dense model at another dtype, optionally torch.compile'd: the single global knobs a user tries
first), and times end-to-end generation (the family's generation: sampling + decode, batch = the
plans' batch, CFG 4, top-k 900, top-p 0.95, seed 0) of all of them as the profiler's e2e stage
times the generations it fits the planner's cost model on. The models alternate, one timed run
each per round, so that drift of a shared machine hits all alike (each round starts at another
model); latency is the median over --repeats rounds after --warmup untimed runs each (at least
1). Memory, from the generation after the warm-up: the allocator's peak (parameters and buffers
of the model and its VAE plus what one generation allocates: what plans predict and budgets
govern) and, from the same run, the process's peak (CPU: the resident set's growth; GPU: the
caching allocator's reserve). MiB = 2**20 bytes, GiB = 2**30. With --quality N each model's
quality loss is measured too, in the profile's unit, at its own dtype (profiler.quality.loss_of
on N calibration samples of the dense model, CFG 4, seed --seed): the figure the planner
predicts as `loss`.

JSON (--json): a result file (litevar.commands.results, kind "bench", with the command, git
revision, machine and date); its data, version 3: batch, resolution, repeats, warmup, kernel,
dtype, quality ({n, cfg, seed} or null), dense {latency_ms, latency_ms_runs, peak_mb,
process_peak_mb, model_mb, loss, top1, dtype}, baselines [{name, dtype, compile, measured
{as dense}, speedup}], plans [{plan, plan_name, plan_sha256, tier, device, measured {as dense},
predicted (latency_ms, memory_mb, process_memory_mb, loss, dense_latency_ms, dense_memory_mb,
speedup), speedup {measured, promised, of_medians}, prediction_error {latency, memory, loss,
dense_latency, dense_memory} = (predicted - measured) / measured, latency_drift_corrected}];
missing figures are null. A family with a text encoder (Infinity) runs on stand-in conditions, no
encoder loaded: each prediction is compared without the encoder (without_text_encoder), and
text_encoder_mb says how many MB that left out.

The measured speedup is paired: the median over rounds of dense ms / plan ms of the same round.
A shared VM's speed moves by +-25% within seconds to minutes, so whole rounds run slow; the
ratio of the two medians (`of_medians`, kept for comparison) takes each median from its own mix
of slow and fast rounds, the paired ratio cancels what a round's two runs share.

latency_drift_corrected (table: "adj") is the error of the predicted latency relative to dense:
measured / promised speedup - 1 written as (pred / pred_dense) x measured speedup - 1: the
latency error with the prediction scaled by the measured dense latency. A machine whose speed
drifts between profiling and benching moves every raw error alike; the dense model, timed in the
same rounds, is the reference that cancels it.
"""
from __future__ import annotations

import argparse
import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from litevar.commands.args import COUNT, NONNEG_INT, SEED
from litevar.commands.common import add_model_arguments, load_model
from litevar.kernels.select import KernelChoice
from litevar.models.core.errors import UserError

log = logging.getLogger(__name__)
MB = 2 ** 20
VERSION = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--plan", action="append", default=[],
                   help="plan JSON written by `litevar plan`; repeat to bench several side by side")
    p.add_argument("--baseline", action="append", default=[], metavar="DTYPE[+compile]",
                   help="also time the dense model at this dtype (fp32, bf16, fp16), torch.compile'd with +compile "
                   "(e.g. bf16, bf16+compile); repeatable")
    p.add_argument("--json", help="write every figure here (a result file)")
    p.add_argument("--repeats", type=COUNT, default=5, help="timed runs per model; the median is reported (default 5)")
    p.add_argument("--warmup", type=NONNEG_INT, default=1, help="untimed runs first, per model (default 1, at least 1)")
    p.add_argument("--quality", type=NONNEG_INT, default=0, metavar="N",
                   help="also measure each model's quality loss on N calibration samples (default 0: skip)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the --quality calibration samples (default 0)")
    p.add_argument("--kernel", default="auto", choices=[k.value for k in KernelChoice],
                   help="kernels of the planned models (default auto: the fastest available)")
    p.add_argument("--strict-device", action="store_true", help="refuse a plan made on another device")


# ---------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Model:
    vae: object
    model: object
    dtype: str


@dataclass
class E2E:
    latency_ms: float  # median of the timed runs
    latency_ms_runs: list[float]
    peak_mb: float  # the allocator's peak of one generation, model included (see the module docstring)
    process_peak_mb: float | None  # the process's peak of the same generation, model included
    model_mb: float  # parameters and buffers of the model and its VAE
    dtype: str = "fp32"
    loss: float | None = None  # profile loss unit, with --quality
    top1: float | None = None  # share of calibration tokens whose argmax is unchanged


def measure_interleaved(models: dict[str, Model], batch: int, device, repeats: int, warmup: int) -> dict[str, E2E]:
    """{name: E2E}: `warmup` untimed generations each (at least one: the first call allocates caches
    the later ones reuse, and compiles what is compiled), both peaks of the next, then
    kernels.bench_gemm.interleaved_ms (one more warm-up, then one timed generation each per round)."""
    from litevar.kernels.bench_gemm import interleaved_ms
    from litevar.models.core.family import family_of_model
    from litevar.profiler.cost import generation_peak_mb, module_bytes
    runs, peaks, samples = {}, {}, {}
    for name, m in models.items():
        runs[name] = family_of_model(m.model).generation(m.model, batch, m.dtype)
        for _ in range(max(1, warmup)):
            runs[name]()
        rss: dict = {}
        peaks[name] = (generation_peak_mb(m.vae, m.model, runs[name], device, rss), rss.get("mb"))
    med = interleaved_ms(runs, repeats, device, samples=samples,
                         rounds=lambda r: tqdm(r, desc=f"bench {len(models)} models",
                                               disable=repeats * len(models) < 4))
    return {name: E2E(med[name], samples[name], *peaks[name], module_bytes(m.vae, m.model) / MB, m.dtype)
            for name, m in models.items()}


def measure_quality(models: dict[str, Model], n: int, seed: int, cfg: float = 4.0) -> dict[str, tuple[float, float]]:
    """{name: (loss, top1)}: profiler.quality.loss_of, each at its dtype, against the first model's
    calibration set (fp32 reference logits)."""
    from litevar.profiler.quality import calibrate, loss_of
    ref = next(iter(models.values()))
    calib = calibrate(ref.vae, ref.model, n, cfg, seed)
    return {name: loss_of(m.vae, m.model, calib, m.dtype) for name, m in
            tqdm(models.items(), desc="quality loss", total=len(models))}


def parse_baseline(text: str) -> tuple[str, bool]:
    """'bf16+compile' -> ('bf16', True)."""
    dtype, _, rest = text.partition("+")
    if dtype not in ("fp32", "bf16", "fp16") or rest not in ("", "compile"):
        raise UserError(f"--baseline {text!r}: give a dtype (fp32, bf16, fp16), optionally +compile, e.g. bf16+compile")
    return dtype, rest == "compile"


# ---------------------------------------------------------------------------------------------
# Report


def rel_err(predicted, measured) -> float | None:
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def paired_speedup(dense_runs: list[float], runs: list[float]) -> float:
    """Median over rounds of dense ms / model ms, the two timed in the same round."""
    if len(dense_runs) != len(runs) or not runs:
        raise ValueError(f"paired runs must be equally many and not empty, got {len(dense_runs)} and {len(runs)}")
    return statistics.median(d / m for d, m in zip(dense_runs, runs))


def drift_corrected_err(pred_ms, pred_dense_ms, measured_speedup) -> float | None:
    """Error of the predicted latency relative to dense: (pred / pred_dense) vs 1 / measured speedup."""
    if None in (pred_ms, pred_dense_ms) or not measured_speedup:
        return None
    return pred_ms / pred_dense_ms * measured_speedup - 1


def without_text_encoder(plan, encoder_mb: float):
    """The plan's prediction as the bench measures it: the family's generation on stand-in
    conditions, no text encoder loaded or reloaded. The encoder's MB leave the allocator peaks (the
    plan's, rebuilt from its phases; dense's, where it is resident as shipped). A freed encoder's
    reload, which the bench does not run, is inside the predicted latency, and a device's reserve
    on the encoder's MB inside the process figure: those two are left unpredicted (None)."""
    import dataclasses
    pred = plan.predicted
    if not encoder_mb:
        return pred
    from litevar.planner.plan import phase_peaks_mb
    phases = phase_peaks_mb(pred.memory_breakdown_mb)
    te = (pred.memory_breakdown_mb or {}).get("text_encoder", 0.0)
    freed = (plan.text_encoder or {}).get("mode") == "freed"
    return dataclasses.replace(
        pred, memory_mb=max(phases["transformer"] - te, phases["decode"] - te if phases["decode"] else 0.0)
        if phases else None,
        dense_memory_mb=None if pred.dense_memory_mb is None else pred.dense_memory_mb - encoder_mb,
        latency_ms=None if freed else pred.latency_ms, speedup=None if freed else pred.speedup,
        process_memory_mb=None)


def plan_entry(plan, path: str, dense: E2E, m: E2E, encoder_mb: float = 0.0) -> dict:
    from litevar.models.core.atomic import file_sha256
    pred = without_text_encoder(plan, encoder_mb)
    promised = pred.speedup
    if promised is None and pred.dense_latency_ms and pred.latency_ms:
        promised = pred.dense_latency_ms / pred.latency_ms
    speedup = paired_speedup(dense.latency_ms_runs, m.latency_ms_runs)
    return {
        "plan": str(path), "plan_name": plan.name, "plan_sha256": file_sha256(path), "measured": asdict(m),
        "tier": pred.tier or "profiled", "device": plan.device,
        "predicted": {k: getattr(pred, k) for k in ("latency_ms", "memory_mb", "process_memory_mb", "loss",
                                                    "dense_latency_ms", "dense_memory_mb", "speedup")},
        "speedup": {"measured": speedup, "promised": promised, "of_medians": dense.latency_ms / m.latency_ms},
        "prediction_error": {
            "latency": rel_err(pred.latency_ms, m.latency_ms),
            "memory": rel_err(pred.memory_mb, m.peak_mb),
            "process_memory": rel_err(pred.process_memory_mb, m.process_peak_mb),
            "loss": rel_err(pred.loss, m.loss),
            "dense_latency": rel_err(pred.dense_latency_ms, dense.latency_ms),
            "dense_memory": rel_err(pred.dense_memory_mb, dense.peak_mb),
            "latency_drift_corrected": drift_corrected_err(pred.latency_ms, pred.dense_latency_ms, speedup)},
    }


def baseline_entry(name: str, dtype: str, compiled: bool, dense: E2E, m: E2E) -> dict:
    return {"name": name, "dtype": dtype, "compile": compiled, "measured": asdict(m),
            "speedup": {"measured": paired_speedup(dense.latency_ms_runs, m.latency_ms_runs),
                        "of_medians": dense.latency_ms / m.latency_ms}}


def report(plans: list, paths: list[str], dense: E2E, measured: list[E2E], baselines: list[dict], args,
           batch: int, resolution: int, encoder_mb: float = 0.0) -> dict:
    return {"version": VERSION, "batch": batch, "resolution": resolution, "repeats": args.repeats,
            "warmup": max(1, args.warmup), "kernel": args.kernel, "dtype": args.dtype,
            "quality": {"n": args.quality, "cfg": 4.0, "seed": args.seed} if args.quality else None,
            "dense": asdict(dense), "baselines": baselines,
            "text_encoder_mb": encoder_mb or None,
            "plans": [plan_entry(p, path, dense, m, encoder_mb) for p, path, m in zip(plans, paths, measured)]}


def _num(x, fmt: str) -> str:
    """x in `fmt` ('8.1%'), or '-' right-aligned to the same width when missing."""
    return format("-", ">" + fmt.split(".")[0]) if x is None else format(x, fmt)


def _gib(mb):
    return None if mb is None else mb / 1024


def format_table(r: dict, device: dict) -> str:
    q = r["quality"]
    title = (f"{device['type']} ({device['name']}), batch {r['batch']}, {r['resolution']} px, median of "
             f"{r['repeats']} interleaved runs after {r['warmup']} warm-up; memory in GiB (2**30 bytes)")
    if q:
        title += f"; loss: profile unit (nats) on {q['n']} calibration samples, seed {q['seed']}"
    names = ["dense"] + [b["name"] for b in r["baselines"]] + [e["plan_name"] or Path(e["plan"]).stem
                                                                 for e in r["plans"]]
    w = max(map(len, names)) + 1
    head = (f"{'model':{w}}{'dtype':>6}{'tier':>11}{'latency ms':>11}{'pred':>9}{'adj':>8}{'alloc GiB':>10}"
            f"{'pred':>8}{'err':>8}{'process':>9}{'speedup':>9}{'promised':>9}{'loss':>9}{'pred':>9}")
    dense = r["dense"]
    pred0 = r["plans"][0]["predicted"] if r["plans"] else {}
    rows = [_row("dense", w, dense, "-", pred0.get("dense_latency_ms"), pred0.get("dense_memory_mb"), 1.0, 1.0,
                 0.0, None)]
    rows += [_row(b["name"], w, b["measured"], "-", None, None, b["speedup"]["measured"], None, None, None)
             for b in r["baselines"]]
    for name, e in zip(names[1 + len(r["baselines"]):], r["plans"]):
        p = e["predicted"]
        rows.append(_row(name, w, e["measured"], e["tier"], p["latency_ms"], p["memory_mb"],
                         e["speedup"]["measured"], e["speedup"]["promised"], p["loss"],
                         e["prediction_error"]["latency_drift_corrected"]))
    return "\n".join([title, head, *rows, "speedup: median over rounds of dense / model ms of the same round; "
                                          "adj: latency error relative to dense (promised / speedup - 1); alloc: "
                                          "the allocator's peak (what plans predict), process: the process's"])


def _row(name, width, m, tier, pred_ms, pred_mb, speedup, promised, pred_loss, adj) -> str:
    return (f"{name:{width}}{m.get('dtype', 'fp32'):>6}{tier:>11}{_num(m['latency_ms'], '11.1f')}"
            f"{_num(pred_ms, '9.1f')}{_num(adj, '8.1%')}{_num(_gib(m['peak_mb']), '10.3f')}"
            f"{_num(_gib(pred_mb), '8.3f')}{_num(rel_err(pred_mb, m['peak_mb']), '8.1%')}"
            f"{_num(_gib(m.get('process_peak_mb')), '9.3f')}{_num(speedup, '8.2f')}x{_num(promised, '8.2f')}x"
            f"{_num(m.get('loss'), '9.4f')}{_num(pred_loss, '9.4f')}")


# ---------------------------------------------------------------------------------------------
# Command


def _check_args(args) -> None:
    if not args.plan and not args.baseline:
        raise UserError("give at least one --plan (or a --baseline) to bench against the dense model")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"--json {args.json}: folder {Path(args.json).resolve().parent} does not exist; "
                        "create it first")


def _check_same_shape(plans: list, paths: list[str]) -> None:
    if not plans:
        return
    first = plans[0]
    for p, path in zip(plans[1:], paths[1:]):
        if (p.batch, p.patch_nums) != (first.batch, first.patch_nums):
            raise UserError(f"--plan {path} is for batch {p.batch} at {p.resolution} px, {paths[0]} for batch "
                            f"{first.batch} at {first.resolution} px; bench plans of one batch and resolution together")


def run(args) -> int:
    from litevar.commands.results import write_command_result
    from litevar.models.core.device import fingerprint
    from litevar.models.core.family import family_of_model
    from litevar.planner.plan import Plan
    from litevar.profiler.costmodel import text_encoder_mb
    from litevar.runtime import planned_copy
    _check_args(args)
    baselines = [parse_baseline(b) for b in args.baseline]
    plans = [Plan.load(p) for p in args.plan]
    _check_same_shape(plans, args.plan)
    vae, var = load_model(args)
    family = family_of_model(var)
    sha, arch = family.weights_sha256(var), family.arch_of(var).to_dict()
    for p in plans:
        p.check_model(arch, sha, family.schedule_of(var))  # fail before copying
    device = family.device_of(var)
    models = {"dense": Model(vae, var, args.dtype)}
    names = []
    for dtype, compiled in baselines:
        name = f"{dtype}{' + compile' if compiled else ''}"
        names.append(name)
        models[name] = Model(vae, family.compiled(family.shared_copy(var)) if compiled else var, dtype)
    for i, p in enumerate(plans):
        models[i] = Model(vae, planned_copy(vae, var, p, kernel=args.kernel, strict_device=args.strict_device,
                                            check_weights=False), p.dtype or args.dtype)
    batch = plans[0].batch if plans else 1
    resolution = plans[0].resolution if plans else family.resolution_of(family.schedule_of(var))
    m = measure_interleaved(models, batch, device, args.repeats, args.warmup)
    if args.quality:
        for name, (loss, top1) in measure_quality(models, args.quality, args.seed).items():
            m[name].loss, m[name].top1 = loss, top1
    base = [baseline_entry(n, d, c, m["dense"], m[n]) for n, (d, c) in zip(names, baselines)]
    encoder_mb = text_encoder_mb(family.arch_of(var))
    if encoder_mb and plans:
        print(f"the bench holds no text encoder ({encoder_mb / 1024:.2f} GiB): predictions are compared without it")
    r = report(plans, args.plan, m["dense"], [m[i] for i in range(len(plans))], base, args, batch, resolution,
               encoder_mb)
    print(format_table(r, fingerprint(device)))
    if args.json:
        write_command_result(args, "bench", r, device)
        print(f"wrote {args.json}")
    return 0
