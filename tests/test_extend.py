"""What a contributor adds, added inside this test alone: a model family, a weight format and a
KV-cache format, each registered here, then profiled (quality and cost at toy size), planned,
applied and benched through the public commands, with no change anywhere else.

The family is a small VAR variant with another layout: its VAR sits under `core.` and its blocks
share one AdaLN (no per-block ada_lin), so every layer name and the per-block set of linears
differ from the shipped families'. The format is a 5-bit weight-only one (no kernel: emulated,
1-byte codes); the KV format keeps 6-bit codes (stored in int8)."""
from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from litevar.kernels import formats as F
from litevar.kernels import kvquant as KV
from litevar.kernels.quant import PerChannel
from litevar.models.core import family as fam
from litevar.models.var.family import VARFamily
from litevar.planner.plan import Plan
from litevar.profiler.profile import Profile
from tests.cli_util import run_cli

PNS = (1, 2, 3, 4)


class ToyModel(nn.Module):
    """A VAR under another name: `core.blocks.i...`; generation and teacher forcing are its VAR's."""

    family_name = "toyvar"

    def __init__(self, var):
        super().__init__()
        self.core = var


class ToyFamily(VARFamily):
    """The VAR family's behaviour on the wrapped model, every name under `core.`."""

    name = "toyvar"
    schedules = {8: PNS}  # 4 latent sides of a 2x-downsampling VAE: 8 px

    def linears(self, arch):
        return [fam.LinearSpec("core." + s.fqn, s.K, s.N, s.kind, s.rows, s.fp32, s.block)
                for s in super().linears(arch)]

    def block_names(self, arch):
        return ["core." + b for b in super().block_names(arch)]

    def arch_of(self, model):
        a = super().arch_of(model.core)
        return self.arch_type(**{**a.to_dict(), "family": self.name})

    def schedule_of(self, model):
        return super().schedule_of(model.core)

    def device_of(self, model):
        return super().device_of(model.core)

    def attention_modules(self, model):
        return super().attention_modules(model.core)

    def conditions(self, model, n):
        return super().conditions(model.core, n)

    def sample(self, vae, model, conds, seed, cfg, batch, desc="generate"):
        return super().sample(vae, model.core, conds, seed, cfg, batch, desc)

    def teacher_forced(self, vae, model, conds, tokens, cfg, dtype_name="fp32"):
        return super().teacher_forced(vae, model.core, conds, tokens, cfg, dtype_name)

    def generation(self, model, batch, dtype_name):
        return super().generation(model.core, batch, dtype_name)

    def transformer_phase(self, model, batch, dtype_name, callback=None):
        return super().transformer_phase(model.core, batch, dtype_name, callback)

    def model_for_schedule(self, vae, model, schedule):
        vae_s, var_s = super().model_for_schedule(vae, model.core, schedule)
        return (vae, model) if var_s is model.core else (vae_s, ToyModel(var_s))

    def shared_copy(self, model):
        memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        memo[id(model.core.vae_proxy)] = model.core.vae_proxy
        return copy.deepcopy(model, memo)

    def load(self, flags, device):
        from litevar.models.var.build import build_vae_var
        vae, var = build_vae_var(device, patch_nums=PNS, V=32, Cvae=8, ch=32, share_quant_resi=4, num_classes=4,
                                 depth=2, shared_aln=True, ch_mult=(1, 2), num_res_blocks=1, seed=3)
        return vae, ToyModel(var)


@pytest.fixture
def registered():
    """The family, W5A16 and KV6 registered as a contributor would, for this test only (taken out of
    the registries after)."""
    fam.register_family(ToyFamily)
    F.register_format(F.QuantFormat("W5A16", 5, F.FLOAT_BITS, PerChannel()))
    KV.register_kv_format(KV.KVFormat("KV6", 6))
    try:
        yield
    finally:
        fam.FAMILIES.pop("toyvar")
        F.FORMATS.pop("W5A16")
        KV.KV_FORMATS.pop("KV6")


@pytest.mark.slow
def test_family_format_and_kv_format_added_in_a_test_run_end_to_end(registered, tmp_path, capsys):
    torch.manual_seed(0)
    prof = tmp_path / "toy.json"
    rc, out, err = run_cli(capsys, "profile", "--family", "toyvar", "--out", prof, "--calib", 8, "--calib-loss", 4,
                           "--batches", 1, "--e2e-repeats", 1, "--no-mdwa-timing", "--resolutions",
                           "1,2;1,2,3;1,2,3,4")
    assert rc == 0, err
    p = Profile.load(prof)
    assert p.meta["model"]["arch"]["family"] == "toyvar" and p.arch.shared_aln
    sens = p.table("sensitivity")
    names = set(sens["layer"])
    assert "core.blocks.1.ffn.fc2" in names and "core.shared_ada_lin.1" in names
    assert not any(n.startswith("blocks.") or n.endswith(".ada_lin.1") and "shared" not in n and "head_nm" not in n
                   for n in names)
    assert {"W5A16", "KV6"} <= set(sens["format"])  # the new formats' losses were measured
    assert ((sens["format"] == "KV6") == sens["layer"].str.endswith(".attn.kv") & (sens["format"] == "KV6")).all()
    assert "dense_kv6" in set(p.table("cost_attn")["backend"])  # and a KV6 cache's call timed
    assert p.cost_model.format_kernel["W5A16"] == "emulated"

    # planned under a memory budget: the new options are priced, and a tight budget takes them
    dense = p.cost_model.predict(p.arch, PNS, 1)
    plan_path = tmp_path / "toy-plan.json"
    rc, out, err = run_cli(capsys, "plan", "--profile", prof, "--resolution", 8, "--guard", 0,
                           "--formats", "W5A16,KV6", "--max-memory-gib", 0.97 * dense.memory_mb / 1024,
                           "--out", plan_path)
    assert rc == 0, err
    plan = Plan.load(plan_path)
    assert plan.model["arch"]["family"] == "toyvar"
    used = set(plan.formats.values()) | {e["format"] for e in plan.kv.values()}
    assert used & {"W5A16", "KV6"} and used <= {"fp", "W5A16", "KV6"}, used
    assert all(name.startswith("core.") for name in plan.formats)
    rc, out, err = run_cli(capsys, "explain", plan_path, "--profile", prof)
    assert rc == 0 and "core.blocks" in out, err

    # applied and benched through the commands
    bench = tmp_path / "bench.json"
    rc, out, err = run_cli(capsys, "bench", "--family", "toyvar", "--plan", plan_path, "--repeats", 1,
                           "--quality", 4, "--json", bench)
    assert rc == 0, err
    r = json.loads(bench.read_text())["data"]
    measured = r["plans"][0]["measured"]
    assert measured["latency_ms"] > 0 and measured["loss"] > 0  # it ran, and changed the model
    assert measured["peak_mb"] < r["dense"]["peak_mb"]  # the budget bought memory
