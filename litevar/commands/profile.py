"""`litevar profile`: measure what the planner needs on the target device (docs/profile-schema.md).

Stages: sensitivity, coverage (also CFG similarity), cfg (sharing losses), cost. Each stage's
result is cached next to the output (PROFILE.stages/STAGE.json, keyed by model and settings), so
a run killed or interrupted resumes where it stopped when run again (a stage cut short is measured
again from its start); `--fresh` measures the selected stages again even when cached.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from litevar.commands.args import COUNT, COUNTS, NONNEG, SEED
from litevar.kernels.formats import FORMATS
from litevar.models.core.device import device_of
from litevar.models.core.errors import UserError
from litevar.models.core.family import family_of, family_of_model
from litevar.models.core.host_memory import allocator_policy

log = logging.getLogger(__name__)

STAGES = ("sensitivity", "coverage", "cfg", "cost")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from litevar.commands.common import add_model_arguments
    add_model_arguments(p)
    p.add_argument("--out", required=True, help="profile file to write (JSON), e.g. profiles/default-cpu.json")
    p.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)} to make; other "
                   "stages come from the cache when there (default: every stage; a stage measured before with the "
                   "same model and settings comes from its cache unless --fresh; "
                   "random-init models: cost only)")
    p.add_argument("--calib", type=COUNT, default=80, help="calibration (class, seed) pairs for attention statistics "
                   "(default 80, as in the paper)")
    p.add_argument("--calib-loss", type=COUNT, default=16, help="of those, how many each loss measurement runs "
                   "(default 16; one teacher-forced pass per configuration)")
    p.add_argument("--cfg", type=NONNEG, default=4.0, help="guidance scale of the calibration samples (default 4)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--resolutions", default=None, help="schedules to time for the cost model, e.g. 256,512 "
                   "or 1,2,3;1,2,3,4 "
                   "(default: the model's own schedule and its neighbours)")
    p.add_argument("--batches", type=COUNTS, default="1,2", help="batch sizes to time (default 1,2)")
    p.add_argument("--e2e-repeats", type=COUNT, default=7, help="timed rounds of the cost stage's generations "
                   "(default 7; fewer for large models on slow devices)")
    p.add_argument("--runtime-dtypes", default=None, help="other runtime dtypes to price the whole model at "
                   "(autocast), e.g. bf16: their loss, kernels and generations are measured too, and the planner "
                   "chooses among them (default: bf16 when the runtime dtype is fp32; none to skip)")
    p.add_argument("--no-mdwa-timing", action="store_true", help="skip timing the windowed attention kernels "
                   "(windows are planned from a trained model's coverage; a --random-init profile has none)")
    p.add_argument("--fresh", action="store_true", help="measure the selected stages again even when they are "
                   "cached (e.g. after the machine changed)")
    p.add_argument("--losses-from", help="for a cost-only (--random-init) profile: record the profile of a "
                   "trained model to borrow per-layer losses from, so that `litevar plan` needs no --losses-from "
                   "(planner/transfer.py), e.g. profiles/default-cpu.json; with --refit, recorded in place")
    p.add_argument("--refit", action="store_true", help="refit the cost model on the cost stage's measurements "
                   "(after a change to profiler/costmodel.py) instead of measuring again: those the --out "
                   "profile holds, in place, when it holds them all (seconds, no model loaded); otherwise the "
                   "cached cost stage's, a cache from before the decode-alone sweep getting it measured first "
                   "(about a minute on a CPU)")


def _stage_list(args, random_init: bool) -> tuple[list[str], set[str]]:
    """(stages in the final profile, stages asked for by --stages; empty: every stage)."""
    want = list(STAGES[-1:]) if random_init else list(STAGES)
    if args.stages is None:
        return want, set()
    forced = {s.strip() for s in args.stages.split(",") if s.strip()}
    bad = forced - set(STAGES)
    if bad:
        raise UserError(f"--stages: unknown stage(s) {sorted(bad)}; choose from {','.join(STAGES)}")
    if random_init and forced - {"cost"}:
        raise UserError("a --random-init model has no meaningful sensitivity/coverage/cfg; use --stages cost")
    return want, forced


def _cache_path(out: Path, stage: str) -> Path:
    return out.with_name(out.name + ".stages") / f"{stage}.json"


def _cached(out: Path, stage: str, key: str, arch: dict):
    """The stage's cached result (a Profile holding its tables and meta) if it was made with `key`
    and passes the profile checks (profiler.schema, indices against `arch`); a torn, edited or
    foreign cache is named and the stage measured again, never trusted."""
    from litevar.profiler.profile import Profile
    path = _cache_path(out, stage)
    if not path.is_file():
        return None
    try:
        hit = Profile.load(path, arch=arch)
    except UserError as e:
        print(f"profile: stage {stage}: ignoring the unusable cache {path} ({e}); measuring the stage again")
        return None
    if hit.meta.get("cache_key") != key:
        print(f"profile: stage {stage}: the cache {path} was made for another model, calibration or setting; "
              "measuring the stage again")
        return None
    return hit


def _store(out: Path, stage: str, key: str, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    from litevar.profiler.profile import Profile
    Profile(meta={**meta, "cache_key": key}, tables=tables).save(_cache_path(out, stage))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cost_settings(args, probe: bool = True):
    """litevar.profiler.cost.CostSettings of the command line; probe=False checks the flags only and
    leaves the runtime dtypes' default undecided (deciding it times bf16 here: about a second where
    bf16 is emulated)."""
    from litevar.commands.common import default_dtype
    from litevar.profiler.cost import CostSettings
    try:
        dtype = args.dtype or default_dtype(args.device)
        extra = None if args.runtime_dtypes is None else tuple(
            d.strip() for d in args.runtime_dtypes.split(",") if d.strip() and d.strip() != "none")
        if extra and set(extra) - {"fp32", "bf16", "fp16"}:
            raise UserError(f"--runtime-dtypes {args.runtime_dtypes}: give dtypes from fp32, bf16, fp16, or none")
        if probe and extra is None and dtype == "fp32" and not _cpu_or_gpu(args.device).bf16_faster():
            extra = ()  # the default bf16 would take hours to time here, and no plan would run in it
        return CostSettings(dtype=dtype, e2e_repeats=args.e2e_repeats, mdwa=not args.no_mdwa_timing,
                            runtime_dtypes=extra)
    except ValueError as e:
        raise UserError(f"--e2e-repeats {args.e2e_repeats}: {e}") from None


def _cpu_or_gpu(device):
    """The Device of --device."""
    from litevar.commands.common import resolve_device
    return device_of(resolve_device(device))


def _cost_options(settings) -> list[dict]:
    """The settings the command line sets that differ from CostSettings' defaults (part of the
    cost stage's cache key; empty for the defaults, so caches written before these options
    existed still match)."""
    from litevar.profiler.cost import CostSettings
    default = CostSettings()
    diff = {k: getattr(settings, k) for k in ("dtype", "e2e_repeats", "mdwa", "runtime_dtypes")
            if getattr(settings, k) != getattr(default, k)}
    return [diff] if diff else []


def _cost_key(model: dict, resolutions, batches: str, device, settings) -> str:
    """The cost stage's cache key before its formats: the model, the schedules and batches timed,
    the device type, the settings off their defaults, the host allocator's policy and how the
    device counts a memory peak (a cache measured another way is measured again)."""
    method = device_of(device).peak_method
    return _key(model, resolutions, batches, torch.device(device).type, *_cost_options(settings), allocator_policy(),
                *([method] if method else []))


def _quality_stages(stage: str, vae, var, args, calib_fn) -> tuple[dict, dict]:
    from litevar.profiler import quality as Q
    t = time.perf_counter()
    calib, calib_loss = calib_fn()
    if stage == "sensitivity":
        sens = Q.sensitivity(vae, var, calib_loss)
        joint, rho = Q.joint_check(vae, var, calib_loss, sens, seed=args.seed)
        base = _cost_settings(args, probe=False).dtype  # the losses' own dtype; every other one a plan may run at
        runtime = {d: Q.loss_of(vae, var, calib_loss, d)[0] for d in ("fp32", "bf16", "fp16") if d != base}
        tables, meta = {"sensitivity": sens, "joint": joint}, {"joint_spearman": rho, "runtime_loss": runtime}
    elif stage == "coverage":
        rec = Q.record_attention(vae, var, calib)
        cov, sinks = Q.coverage_tables(rec, var)
        wf, fit = Q.window_fit(vae, var, calib_loss, cov, sinks)
        ef, efit = Q.evict_fit(vae, var, calib_loss, sinks)
        tables = {"coverage": cov, "sinks": sinks, "window_fit": wf, "evict_fit": ef, "cfg": Q.cfg_similarity(rec)}
        meta = {"window_fit": fit, "evict_fit": efit}
    else:  # cfg sharing losses
        tables, meta = {"cfg_share": Q.cfg_share_losses(vae, var, calib_loss)}, {}
    meta["seconds"] = round(time.perf_counter() - t, 1)
    return tables, meta


def cost_groups(out: Path, device: torch.device):
    """(this rank's cost group, the profile file its group writes, whether this rank writes it).

    Kernels must not be timed by two processes sharing a device. On CPU (or one process) rank 0
    runs the cost stage alone while the others wait: no group. On GPUs each rank has its own; the
    ranks whose GPUs have the same fingerprint form a group that shares the kernel timings (each
    shape on one of them) and whose first rank runs the generations, fits and writes the cost
    tables: rank 0's group into `out`, every other GPU model's into OUT.<gpu>.json, with the same
    quality tables (one run profiles several GPU types)."""
    from litevar.models.core.device import fingerprint
    from litevar.models.core.distributed import split, world
    w = world()
    if not device_of(device).accelerator or not w.distributed:  # processes sharing one device: rank 0 alone
        return None, out, w.main
    fp = fingerprint(device)
    group = next(g for g in split({k: fp.get(k) for k in ("name", "memory_mb", "compute_capability")})
                 if w.rank in g.ranks)
    if 0 in group.ranks:
        return group, out, w.main
    slug = "".join(c if c.isalnum() else "-" for c in str(fp.get("name", "gpu")).lower()).strip("-")
    return group, out.with_name(f"{out.stem}.{slug}{out.suffix}"), group.world().main


def _cost_stage(vae, model, arch, args, settings, device) -> tuple[dict, dict]:
    from litevar.models.core.family import arch_from
    from litevar.profiler.cost import run_cost_stage
    t = time.perf_counter()
    arch = arch_from(arch)
    resolutions = parse_schedules(args.resolutions, family_of(arch)) if args.resolutions else None
    tables, cm, validation = run_cost_stage(vae, model, arch, device, resolutions, args.batches, settings=settings)
    return tables, {"cost_model": cm.to_dict() if cm is not None else {}, "validation": validation,
                    "seconds": round(time.perf_counter() - t, 1)}


def parse_schedules(text: str, family) -> list[tuple[int, ...]]:
    """--resolutions: '256,512' (resolutions with a schedule) or '1,2,3;1,2,3,4' (schedules)."""
    from litevar.commands.common import parse_patch_nums
    if ";" in text:
        return [parse_patch_nums(t) for t in text.split(";") if t.strip()]
    schedules = family.schedules
    try:
        return [schedules[int(r)] for r in text.split(",") if r.strip()]
    except (ValueError, KeyError):
        raise UserError(f"--resolutions {text!r}: give resolutions from {sorted(schedules)} (e.g. 256,512), or "
                        "schedules separated by ';' (e.g. 1,2,3;1,2,3,4)") from None


def _refit(hit, arch: dict, device, vae, model) -> dict:
    """The cached cost stage's meta with its cost model refitted on its own measurements (and on
    the decodes alone, measured first when the cache predates them: a minute on a CPU)."""
    from litevar.models.core.family import arch_from
    from litevar.profiler.cost import decode_sides, measure_decodes, refit_cost_model
    arch = arch_from(arch)
    old = hit.meta["cost_model"]
    if "cost_decode" not in hit.tables:
        e2e = hit.tables["cost_e2e"]
        fitted = [tuple(int(p) for p in str(pn).split(",")) for pn in set(e2e[~e2e["held_out"]]["patch_nums"])]
        sides = decode_sides(fitted, arch.downsample)
        print(f"profile: the cached cost stage predates the decodes alone: measuring them at {sides} px")
        hit.tables["cost_decode"] = measure_decodes(vae, model, sides, device, old["dtype"])
    cm, validation = refit_cost_model(hit.tables, arch, old)
    print(f"profile: cost model refitted on the cached measurements (e2e rmse {old['e2e']['rmse_rel']:.1%} "
          f"-> {cm.e2e.rmse_rel:.1%})")
    return {"cost_model": cm.to_dict(), "validation": validation}


def _losses_source(prof, out: Path, losses_from: str) -> dict:
    """meta.losses_source for --losses-from, once the borrowing is known to work (a cost-only
    profile, a source of a family it borrows from)."""
    from litevar.planner.transfer import losses_source_entry, transfer_losses
    from litevar.profiler.profile import Profile
    if "sensitivity" in prof.tables:
        raise UserError("--losses-from: this profile measures its own losses; drop --losses-from")
    transfer_losses(prof, Profile.load(losses_from), losses_from)
    print(f"profile: {out} borrows its losses from {losses_from} (recorded; `litevar plan --losses-from` overrides)")
    return losses_source_entry(out, losses_from)


def _refit_file(prof, out: Path, argv, losses_from: str | None = None) -> None:
    """`--refit` of a profile file that holds its cost stage's tables (decodes alone included):
    its cost model and validation fitted again from them, in place, with no model loaded and no
    stage run; the rest of the profile is kept, and meta.refit says when and at which revision."""
    from litevar.commands.results import command_line, git_revision
    from litevar.profiler.cost import refit_cost_model
    old = prof.meta["cost_model"]
    cm, validation = refit_cost_model(prof.tables, prof.arch, old)
    _measure_missing_host(cm, prof.meta.get("device") or {})
    prof.meta.update(cost_model=cm.to_dict(), validation=validation, refit={
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(argv or [], "litevar"), "git_revision": git_revision()[0]})
    if losses_from:
        prof.meta["losses_source"] = _losses_source(prof, out, losses_from)
    prof.save(out)
    mem = cm.memory
    print(f"profile: {out}: cost model refitted on its own tables (memory rmse {old['memory']['rmse_rel']:.1%} -> "
          f"{mem.rmse_rel:.1%}; e2e rmse {old['e2e']['rmse_rel']:.1%} -> {cm.e2e.rmse_rel:.1%})")
    for v in validation:
        print(v)


def _measure_missing_host(cm, profiled: dict) -> None:
    """A host figure the profile predates (the load rate) measured here, when this is the machine
    it was profiled on (CPU name, family, model and cores alike); otherwise left out, and said."""
    from litevar.models.core.device import fingerprint
    from litevar.profiler.calibrate import load_gbs
    if "load_gbs" in (cm.host or {}) or not cm.host:
        return
    here = fingerprint(cm.device)
    keys = ("type", "name", "cpu_family", "cpu_model", "cores")
    if any(here.get(k) != profiled.get(k) for k in keys):
        print("profile: the load rate (host.load_gbs) is not measured: this is not the profiled machine")
        return
    cm.host = {**cm.host, "load_gbs": load_gbs(device_of(cm.device))}
    print(f"profile: measured the load rate the profile predates: {cm.host['load_gbs']:.2f} GB/s")


def _refits_from_file(args):
    """The --out profile when `--refit` can work from it alone (it holds every cost table), else None."""
    out = Path(args.out)
    if not (args.refit and out.is_file()):
        return None
    from litevar.profiler.profile import Profile
    prof = Profile.load(out)
    whole = prof.meta.get("cost_model") is not None and {"cost_linear", "cost_attn", "cost_e2e",
                                                           "cost_decode"} <= set(prof.tables)
    return prof if whole else None


def run(args) -> int:
    prof = _refits_from_file(args)
    if prof is not None:
        _refit_file(prof, Path(args.out), getattr(args, "_argv", None), args.losses_from)
        return 0
    from litevar.commands.common import load_model
    from litevar.models.core.device import environment, fingerprint
    from litevar.models.core.distributed import barrier, world
    from litevar.profiler import quality as Q
    from litevar.profiler.profile import Profile
    w = world()
    torch.manual_seed(args.seed)
    if args.calib < 1 or not 1 <= args.calib_loss <= args.calib:
        raise UserError(f"--calib {args.calib} / --calib-loss {args.calib_loss}: need 1 <= calib-loss <= calib")
    out = Path(args.out)
    _cost_settings(args, probe=False)  # bad flags fail before the model loads
    vae, var = load_model(args)
    family = family_of_model(var)
    device = family.device_of(var)
    stages, forced = _stage_list(args, args.random_init)
    arch = family.arch_of(var).to_dict()
    sha = None if args.random_init else family.weights_sha256(var)
    model = {"name": "random-init" if args.random_init else (Path(args.ckpt).stem if args.ckpt else "default"),
             "random_init": bool(args.random_init), "weights_sha256": sha, "arch": arch}
    key = _key(model, args.calib, args.calib_loss, args.cfg, args.seed, device.type)
    cached_calib = {}

    def calib_fn():
        if not cached_calib:
            c = Q.calibrate(vae, var, args.calib, args.cfg, args.seed)
            cached_calib["all"] = c
            n = args.calib_loss
            cached_calib["loss"] = Q.Calibration(c.conds[:n], [t[:n] for t in c.tokens], c.ref_logits[:n], c.cfg,
                                                 min(c.batch, n))
        return cached_calib["all"], cached_calib["loss"]

    group, own_out, writer = cost_groups(out, device) if "cost" in stages else (None, out, w.main)
    tables, meta = {}, {"stages": {}}
    for stage in stages:
        where = own_out if stage == "cost" else out  # another GPU model's cost stage: its own file
        if forced and stage not in forced and not _cache_path(where, stage).is_file():
            continue  # not asked for, and no cache to look up: left out before its key is made
        if stage == "cost":
            cost_settings = _cost_settings(args)
        batches = ",".join(map(str, args.batches))
        skey = key if stage != "cost" else _cost_key(model, args.resolutions, batches, device, cost_settings)
        if stage in ("sensitivity", "cost"):  # a new format (BF16, KV8) makes the old tables incomplete
            extra = [Q.kv_quant_formats(), "runtime_loss:fp32,bf16,fp16"] if stage == "sensitivity" else [
                "runtime_dtypes"]
            skey = _key(skey, sorted(FORMATS), *extra)
        if stage == "coverage":  # so does a new measurement (the eviction fit)
            skey = _key(skey, Q.EVICT_FIT_RULES)
        fresh = args.fresh and (not forced or stage in forced)
        hit = None if fresh else _cached(where, stage, skey, arch)
        if hit is None and forced and stage not in forced:
            continue  # not asked for and not cached: leave it out
        measured = hit is None
        if measured:
            print(f"profile: stage {stage}")
            if stage == "cost":
                if args.runtime_dtypes is None and cost_settings.runtime_dtypes == ():  # bf16 emulated
                    print(f"profile: the bf16 runtime is not priced: a bf16 GEMM ran at "
                          f"{_cpu_or_gpu(args.device).bf16_gemm_speedup():.2g}x fp32's speed here (emulated); "
                          "--runtime-dtypes bf16 prices it anyway")
                if group is not None or w.main:  # on CPU the other ranks wait
                    t_s, m_s = _cost_stage(vae, var, arch, args, dataclasses.replace(cost_settings, group=group),
                                           device)
                    if writer:
                        _store(own_out, stage, skey, t_s, m_s)
            else:
                with Q.shard_checkpoints(_cache_path(out, stage).with_suffix(".shards"), _key(skey, w.size)):
                    t_s, m_s = _quality_stages(stage, vae, var, args, calib_fn)
                if w.main:
                    _store(out, stage, skey, t_s, m_s)
            barrier()  # the stage is stored
            hit = _cached(where, stage, skey, arch)
            if hit is None:
                raise RuntimeError(f"stage {stage}: the tables just measured fail the profile checks")
            if w.main:
                shutil.rmtree(_cache_path(out, stage).with_suffix(".shards"), ignore_errors=True)
        else:
            print(f"profile: stage {stage} (cached)")
        stage_meta = dict(hit.meta)
        stage_meta.pop("cache_key")
        if stage == "cost" and args.refit and not measured:
            stage_meta.update(_refit(hit, arch, device, vae, var))
            if writer:
                _store(own_out, stage, skey, hit.tables, stage_meta)
        tables.update(hit.tables)
        meta["stages"][stage] = {"seconds": stage_meta.pop("seconds", None)}
        meta.update(stage_meta)
    meta.update({"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "model": model, "device": fingerprint(device), "env": environment(),
                 "calib": {"n": args.calib, "n_loss": args.calib_loss, "cfg": args.cfg, "seed": args.seed},
                 "loss_unit": family.loss_unit})
    if getattr(args, "_argv", None):
        from litevar.commands.results import command_line, git_revision
        meta["command"] = command_line(args._argv, "litevar")
        meta["git_revision"] = git_revision()[0]
    if w.distributed:
        meta["distributed"] = {"world_size": w.size, "cost_ranks": list(group.ranks) if group else [0]}
    prof = Profile(meta=meta, tables=tables)
    if args.losses_from:
        prof.meta["losses_source"] = _losses_source(prof, out, args.losses_from)
    if writer:
        prof.save(own_out)
    barrier()
    print(f"wrote {out} (stages {', '.join(meta['stages'])}; sha256 {prof.sha256[:12]})")
    if "sensitivity" in tables:
        print(Q.summarize_sensitivity(tables["sensitivity"]).to_string(float_format=lambda v: f"{v:.4f}"))
    for v in meta.get("validation", []):
        print(v)
    return 0
