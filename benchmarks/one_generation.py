"""One generation of a plan: its wall time and both memory peaks against the plan's prediction.

For runs too long to repeat (d30 at 2048 px takes over an hour on a CPU): the model is built (or
loaded) as `litevar bench` does, the plan applied, and one generation of the plan's batch run in
its two phases, as the memory model splits it: the transformer (KV caches and activations), then
the decode of its latent. The allocator's peak is tracked in each (the device's peak_memory_mb:
with the bytes of the model and its VAE, what the plan's memory budget governs), so the file
says which phase set the peak and checks each phase's prediction; in the same run, the process's
peak (CPU: the resident-set growth, VmHWM; it includes the allocator's overhead, pages freed but
not returned, and the tracker's own records). The time is that of the same tracked run, so it
includes the tracker's small overhead. A plan with a text-encoder decision (Infinity) runs a third
phase first: a random-init text encoder of the model's (bf16, as the official pipeline keeps it)
encodes stand-in prompts, which the generation then uses, and stays alive through the generation
when the plan keeps it resident. The file records the sha256 of the plan's decisions
(Plan.decisions_sha256), so that a page can tell a measurement from a plan re-made since with
other decisions.

    python benchmarks/one_generation.py --random-init --depth 30 --plan plans/d30-cpu-2048-20gib.json \\
        --json docs/results/d30-cpu-2048-20gib-one.json
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from litevar.commands.common import add_model_arguments, load_model
from litevar.commands.results import provenance, write_result
from litevar.models.core.host_memory import retain_freed_memory

MiB = 2 ** 20


def phase_predictions(breakdown: dict | None) -> dict:
    """The plan's predicted peak of each phase (MiB): the transformer's parts and the decode's."""
    from litevar.planner.plan import phase_peaks_mb
    if not breakdown:
        return {}
    return {"predicted_transformer_mib": phase_peaks_mb(breakdown)["transformer"],
            "predicted_decode_mib": breakdown.get("decode_phase"),
            "predicted_encode_mib": breakdown.get("encode_phase")}


def main(argv=None) -> int:
    from litevar.models.core.device import device_of
    from litevar.models.core.family import family_of_model
    from litevar.models.core.inference import autocast
    from litevar.planner.plan import Plan
    from litevar.profiler.cost import module_bytes
    from litevar.runtime import apply_plan
    retain_freed_memory()  # as the `litevar` command runs
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--plan", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    started = provenance(args.device, argv)
    plan = Plan.load(args.plan)
    args.dtype = args.dtype or plan.dtype or "fp32"  # the plan's runtime dtype unless told
    if args.resolution is None:
        args.resolution = plan.resolution
    vae, model = load_model(args)
    model = apply_plan(vae, model, plan)
    family = family_of_model(model)
    device = device_of(family.device_of(model))
    te = plan.text_encoder if family.text_encoder_params(family.arch_of(model)) else None
    resident, latent, held = module_bytes(model, vae) / MiB, [], {}

    def encode():  # a random-init text encoder built, stand-in prompts encoded; kept only if resident
        enc = family.random_text_encoder(model)
        held["conds"] = family.encode_ids(enc, *family.stand_in_prompts(model, plan.batch))
        held["encoder_mib"] = module_bytes(enc) / MiB if te["mode"] == "resident" else 0.0
        held["encoder"] = enc if te["mode"] == "resident" else None

    def transformer():
        extra = {"conds": held["conds"]} if te else {}
        with tqdm(total=len(plan.patch_nums), desc=f"{plan.name}: scales", unit="scale") as bar:
            run = family.transformer_phase(model, plan.batch, args.dtype, callback=lambda si: bar.update(1), **extra)
            latent.append(run())

    def decode():
        with autocast(device.torch, args.dtype):
            family.decode(vae, latent.pop())
    t0 = time.perf_counter()
    with torch.no_grad():  # as a generation runs: no autograd records
        peaks, process = device.phases_peaks_mb(([encode] if te else []) + [transformer, decode])
    seconds = time.perf_counter() - t0
    enc_peak = peaks.pop(0) if te else None
    kept = held.get("encoder_mib", 0.0)  # held through the later phases, allocated before them
    tf, dec = peaks[0] + kept, peaks[1] + kept
    pred = plan.predicted
    peak = resident + max(tf, dec, enc_peak or 0.0)
    data = {"plan": args.plan, "plan_name": plan.name, "decisions_sha256": plan.decisions_sha256(), "dtype": args.dtype,
            "threads": torch.get_num_threads(), "resolution": plan.resolution, "batch": plan.batch,
            "seconds": seconds, "resident_mib": resident, "peak_mib": peak,
            "peak_transformer_mib": resident + tf, "peak_decode_mib": resident + dec,
            **({"text_encoder": te, "peak_encode_mib": resident + enc_peak} if te else {}),
            "process_peak_mib": None if process is None else resident + process, "predicted_mib": pred.memory_mb,
            "memory_err": pred.memory_mb / peak - 1 if pred.memory_mb else None,
            "predicted_s": None if pred.latency_ms is None else pred.latency_ms / 1e3,
            "predicted_breakdown_mib": pred.memory_breakdown_mb,
            **phase_predictions(pred.memory_breakdown_mb), "dense_predicted_mib": pred.dense_memory_mb,
            "budget_gib": plan.budgets.get("max_memory_gib")}
    write_result(args.json, "one-generation", data, started=started)
    print(f"{plan.name}: {seconds:.0f} s (predicted {data['predicted_s'] or float('nan'):.0f} s); allocator peak "
          f"{peak / 1024:.2f} GiB, predicted {pred.memory_mb / 1024:.2f} GiB ({100 * data['memory_err']:+.1f}%); "
          f"process peak {data['process_peak_mib'] / 1024 if process is not None else float('nan'):.2f} GiB; "
          f"phases: transformer {(resident + tf) / 1024:.2f} GiB, decode {(resident + dec) / 1024:.2f} GiB"
          + (f", encode {(resident + enc_peak) / 1024:.2f} GiB (text encoder {te['mode']})" if te else ""))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
