"""Per-layer losses for a profile that measured none: a random-init model's cost-only profile.

A random-init model has no meaningful quantization sensitivity or CFG redundancy, so its profile
holds the cost tables only. To plan it (the official architectures before their checkpoints are
at hand), the losses of a trained model's profile are borrowed layer by layer: a layer of the
same role (the same kind of linear in a block, or the same per-block decision: its QK product, its
KV cache) at the same relative depth (block i of a D-block model takes block
round(i (D' - 1) / (D - 1)) of the D'-block source; the model family's `renamed`), and the layers
outside the blocks by name. Roles carry most of the ranking the planner needs (the FFN's second
linear and low activation bits are expensive everywhere, AdaLN and QK8 cheap; deeper blocks lose
more to CFG sharing; a block's KV-cache precision likewise), but the magnitudes are the source
model's. Attention windows and KV-scale eviction are not transferred: both are priced from a
trained model's measured attention, per head and scale. Plans made this way record the source
profile (`solver.losses_from`); a real checkpoint should be profiled itself.

A cost-only profile may record its loss source (`litevar profile --losses-from`: meta.losses_source,
the path relative to the profile file and its sha256), so that `litevar plan --profile P` borrows
from it without being told; --losses-from still overrides it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from litevar.models.core.atomic import file_sha256
from litevar.models.core.errors import UserError
from litevar.models.core.family import family_of
from litevar.planner.build import profile_sha256

log = logging.getLogger(__name__)

RULE = "same role at the same relative depth: block i of D takes block round(i (D' - 1) / (D - 1)) of D'"


def source_block(i: int, depth: int, source_depth: int) -> int:
    """The source block of target block `i` (nearest relative depth)."""
    return 0 if depth == 1 else round(i * (source_depth - 1) / (depth - 1))


def transfer_losses(target, source, source_path=None):
    """`target` (profiler.profile.Profile, cost only) with the sensitivity and cfg_share tables of
    `source` (read from `source_path`, when given) mapped onto its layers; meta.losses_from names
    the source."""
    if "sensitivity" in target.tables:
        raise UserError("--losses-from: the profile measured its own losses (it has a sensitivity table); "
                        "drop --losses-from")
    if "sensitivity" not in source.tables:
        raise UserError("--losses-from: that profile has no sensitivity table either; give the profile of a "
                        "trained model, e.g. profiles/default-cpu.json")
    arch, src_arch = target.arch, source.arch
    family = family_of(arch)
    src_family = family_of(src_arch)
    if family.name != src_family.name and src_family.name not in family.borrow_roles:
        raise UserError(f"--losses-from: that profile is of the {src_family.name} family, this one of "
                        f"{family.name}, which borrows from {sorted(family.borrow_roles) or 'its own family only'}")
    depth, src_depth = arch.depth, src_arch.depth
    sens = source.table("sensitivity")
    by_name = {name: rows for name, rows in sens.groupby("layer")}
    names = family.linear_names(arch) + family.site_names(arch, "qk") + family.site_names(arch, "kv")
    src_names = (set(by_name) | set(src_family.linear_names(src_arch)) | set(src_family.site_names(src_arch, "qk"))
                 | set(src_family.site_names(src_arch, "kv")))  # layers, and decisions the source may not price
    rows, missing = [], []
    for fqn in names:
        name = family.renamed(fqn, arch, src_arch)
        if name in by_name:
            rows.append(by_name[name].assign(layer=fqn))
        elif name not in src_names:  # no such layer in the source (e.g. shared AdaLN vs per-block AdaLN)
            missing.append(fqn)  # (a source layer it did not profile stays full precision, as there)
    if missing:
        log.warning("no source loss for %d layers (kept full precision): %s", len(missing), missing[:4])
    tables = {**target.tables, "sensitivity": pd.concat(rows, ignore_index=True)}
    if "cfg_share" in source.tables:
        cfg = source.table("cfg_share").set_index("layer")["loss"]
        tables["cfg_share"] = pd.DataFrame({"layer": range(depth), "loss": [
            float(cfg[source_block(i, depth, src_depth)]) for i in range(depth)]})
    unit = source.meta.get("loss_unit")
    if src_family.name != family.name:
        unit = (f"{unit} (borrowed from a {src_family.name} model: it ranks this {family.name} model's layers by "
                f"role; its own unit would be {family.loss_unit})")
    meta = {**target.meta, "loss_unit": unit,
            "losses_from": {"model": source.meta["model"].get("name"), "family": src_family.name,
                            "depth": src_depth,
                            "profile": None if source_path is None else str(source_path),
                            "profile_sha256": None if source_path is None else profile_sha256(source_path),
                            "rule": RULE, "missing": missing}}
    if source.meta.get("runtime_loss"):  # whole-model dtypes' losses, borrowed as they are
        meta["runtime_loss"] = dict(source.meta["runtime_loss"])
    return type(target)(meta=meta, tables=tables)


def losses_source_entry(profile_path, source_path) -> dict:
    """meta.losses_source of a cost-only profile at `profile_path` borrowing from `source_path`."""
    rel = os.path.relpath(Path(source_path).resolve(), Path(profile_path).resolve().parent)
    return {"profile": rel, "profile_sha256": file_sha256(source_path), "rule": RULE}


def recorded_source(profile, profile_path) -> Path | None:
    """The loss source a cost-only profile records (resolved against the profile file's folder), or
    None; a missing file is refused with the fix, one changed since it was recorded is warned of."""
    entry = profile.meta.get("losses_source")
    if not entry:
        return None
    path = Path(profile_path).resolve().parent / entry["profile"]
    if not path.is_file():
        raise UserError(f"{profile_path} borrows its losses from {entry['profile']} (next to it), which is not "
                        "there: pass --losses-from PROFILE of a trained model")
    if file_sha256(path) != entry.get("profile_sha256"):
        log.warning("%s changed since %s recorded it as its loss source (the plan records the sha256 it used)",
                    path, profile_path)
    return path
