"""The profile file and the quality stages of the profiler, on the shipped default model."""
import json

import pandas as pd
import pytest
import torch

from litevar.commands.cli import main
from litevar.models.core.errors import UserError
from litevar.models.core.family import get_family
from litevar.models.default import load_default
from litevar.profiler import quality as Q
from litevar.profiler.profile import Profile
from tests.cli_util import assert_one_line_error, run_cli


def test_profile_round_trip_and_errors(tmp_path):
    df = pd.DataFrame({"layer": ["head"], "kind": ["head"], "format": ["W8A8"], "loss": [0.5], "kl": [0.5],
                       "top1_agree": [0.9]})
    arch = {"depth": 1, "embed_dim": 64, "num_heads": 1, "mlp_ratio": 4.0, "V": 8, "Cvae": 4, "num_classes": 2,
            "patch_nums": [1, 2]}
    p = Profile(meta={"model": {"name": "x", "arch": arch}}, tables={"sensitivity": df})
    path = p.save(tmp_path / "p.json")
    q = Profile.load(path)
    assert q.meta == p.meta and q.table("sensitivity").equals(df) and q.sha256 == p.sha256
    with pytest.raises(UserError, match="no 'coverage' table"):
        q.table("coverage")
    path.write_text(path.read_text()[:40])
    with pytest.raises(UserError, match="not valid JSON"):
        Profile.load(path)
    d = p.to_dict() | {"version": 9}
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="version 9"):
        Profile.load(path)


@pytest.fixture(scope="module")
def model_and_calib():
    vae, var = load_default()
    return vae, var, Q.calibrate(vae, var, n=4, cfg=4.0, seed=0, batch=4)


def test_loss_is_zero_for_the_model_itself_and_grows_with_fewer_bits(model_and_calib):
    vae, var, calib = model_and_calib
    assert Q.loss_of(vae, var, calib) == (0.0, 1.0)
    losses = {}
    for fmt in ("W8A8", "W4A4"):
        with Q.quantized(var, {"blocks.1.ffn.fc2": fmt}):
            losses[fmt] = Q.loss_of(vae, var, calib)[0]
    assert 0 < losses["W8A8"] < losses["W4A4"]
    assert type(var.blocks[1].ffn.fc2) is torch.nn.Linear  # restored


def test_coverage_curves_are_monotone_and_full_is_one(model_and_calib):
    vae, var, calib = model_and_calib
    rec = Q.record_attention(vae, var, calib, progress=False)
    cov, sinks = Q.coverage_tables(rec, var)
    assert cov.coverage.between(0, 1 + 1e-9).all() and cov.kept.between(0, 1 + 1e-9).all()
    assert (cov[cov.width == -1].coverage > 1 - 1e-9).all()
    for _, g in cov[cov.width >= 0].groupby(["layer", "head", "scale", "part", "family"]):
        assert (g.sort_values("width").coverage.diff().dropna() >= -1e-9).all()
    # every query's mass sums to one over its parts
    assert sinks.groupby(["layer", "head", "scale"]).mass.sum().sub(1).abs().max() < 1e-6
    assert Q.cfg_similarity(rec).similarity.between(-1, 1).all()
    wf, fit = Q.window_fit(vae, var, calib, cov, sinks, ratios=(0.99, 0.8), progress=False)
    assert wf.lost_mass.iloc[0] < wf.lost_mass.iloc[1] and fit["coef"] >= 0
    sinks = sinks.assign(sink=torch.rand(len(sinks), generator=torch.Generator().manual_seed(7)).numpy() < 0.2)
    for r0 in (0.5, 0.9):  # each part's window, row by row: the narrowest width covering r0 (FULL the widest)
        want = {}
        for r in cov[(cov.family == "band") & (cov.coverage >= r0 - 1e-12)].itertuples():
            key, w = (r.layer, r.head, r.scale, r.part), (1 << 30 if r.width == -1 else r.width)
            want[key] = min(want.get(key, w), w)
        for r in sinks[sinks.sink].itertuples():
            want.pop((r.layer, r.head, r.scale, r.part), None)  # sinks stay whole
        got = Q.ratio_windows(cov, var, r0, sinks=sinks).widths
        assert sorted(got) == sorted(cov.layer.unique())
        assert {(l, h, k, j): int(w[h, k, j]) for l, w in got.items() for h, k, j in (w != -1).nonzero().tolist()} == \
            {k: w for k, w in want.items() if w != 1 << 30}


def test_kv_cache_losses_grow_with_fewer_bits(model_and_calib):
    """Sensitivity rows of each block's KV cache (blocks.i.attn.kv, kind attn_kv): KV4 costs more
    than KV8, which costs more than nothing, in every block; the model is left as it was."""
    vae, var, calib = model_and_calib
    sens = Q.sensitivity(vae, var, calib, formats=(), qk8=False, progress=False)
    assert set(sens.kind) == {"attn_kv"} and len(sens) == 2 * len(var.blocks)
    loss = sens.set_index(["layer", "format"]).loss
    for i in range(len(var.blocks)):
        assert 0 < loss[f"blocks.{i}.attn.kv", "KV8"] < loss[f"blocks.{i}.attn.kv", "KV4"], sens
    assert Q.loss_of(vae, var, calib) == (0.0, 1.0)


def test_eviction_loss_grows_with_the_evicted_mass(model_and_calib):
    """The eviction fit: keeping fewer scales evicts more attention mass and loses more."""
    vae, var, calib = model_and_calib
    rec = Q.record_attention(vae, var, calib, families=(Q.WindowFamily.BAND,), progress=False)
    _, sinks = Q.coverage_tables(rec, var)
    ef, fit = Q.evict_fit(vae, var, calib, sinks, rules=((5, 3), (1, 1)), progress=False)
    assert ef.lost_mass.iloc[0] < ef.lost_mass.iloc[1] and ef.measured.iloc[0] < ef.measured.iloc[1]
    assert fit["coef"] > 0


def test_profile_command_caches_stages(tmp_path, capsys, monkeypatch):
    from litevar.models.core.device import device_of
    monkeypatch.setattr(device_of("cpu"), "_bf16_speedup", None)
    out = tmp_path / "p.json"
    args = ["profile", "--out", str(out), "--calib", "2", "--calib-loss", "2", "--stages", "cfg"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "stage cfg" in first and "(cached)" not in first
    assert device_of("cpu")._bf16_speedup is None  # no cost stage: bf16 was not timed
    assert main(["profile", "--out", str(out), "--calib", "2", "--calib-loss", "2", "--stages", "coverage"]) == 0
    second = capsys.readouterr().out
    assert "stage cfg (cached)" in second
    prof = Profile.load(out)
    assert set(prof.tables) == {"cfg_share", "coverage", "sinks", "window_fit", "evict_fit", "cfg"}
    assert prof.meta["evict_fit"]["coef"] >= 0 and len(prof.table("evict_fit")) == len(Q.EVICT_FIT_RULES)
    assert prof.meta["model"]["weights_sha256"] and prof.meta["loss_unit"] == get_family("var").loss_unit
    assert main(["profile", "--out", str(out), "--stages", "bogus"]) == 2


def test_cost_stage_cache_key_names_how_a_peak_is_counted(monkeypatch):
    """A cost stage cached while the device counted memory peaks another way (the CPU's once carried
    tensors of earlier measurements into later ones) holds other memory rows: its key differs, so
    the stage is measured again; a device type that never changed its count adds nothing."""
    import argparse

    from litevar.commands.profile import _cost_key, _cost_settings, add_arguments
    from litevar.models.core.device import CPUDevice
    p = argparse.ArgumentParser()
    add_arguments(p)
    settings = _cost_settings(p.parse_args(["--out", "x.json"]))
    key = _cost_key({"name": "default"}, None, "1,2", "cpu", settings)
    assert CPUDevice.peak_method
    monkeypatch.setattr(CPUDevice, "peak_method", "")
    assert _cost_key({"name": "default"}, None, "1,2", "cpu", settings) != key
    monkeypatch.setattr(CPUDevice, "peak_method", "another count")
    assert _cost_key({"name": "default"}, None, "1,2", "cpu", settings) not in (key, "")


def test_cost_stage_cache_key_names_non_default_settings(tmp_path, capsys, monkeypatch):
    """dtype, e2e repeats and MDWA timing change the cost stage's cache key only when they differ
    from the defaults (caches written before the options existed keep matching). Where bf16 is
    emulated (slower than fp32: an AVX2-only CPU), the default leaves the bf16 runtime out."""
    import argparse

    from litevar.commands.profile import _cost_options, _cost_settings, add_arguments
    from litevar.models.core.device import device_of
    p = argparse.ArgumentParser()
    add_arguments(p)
    monkeypatch.setattr(device_of("cpu"), "_bf16_speedup", 1.7)
    assert _cost_options(_cost_settings(p.parse_args(["--out", "x.json"]))) == []
    monkeypatch.setattr(device_of("cpu"), "_bf16_speedup", 0.012)
    assert _cost_options(_cost_settings(p.parse_args(["--out", "x.json"]))) == [{"runtime_dtypes": ()}]
    asked = p.parse_args(["--out", "x.json", "--runtime-dtypes", "bf16"])
    assert _cost_settings(asked).extra_dtypes() == ("bf16",)  # asked for: priced anyway
    args = p.parse_args(["--out", "x.json", "--dtype", "bf16", "--e2e-repeats", "2", "--no-mdwa-timing"])
    assert _cost_options(_cost_settings(args)) == [{"dtype": "bf16", "e2e_repeats": 2, "mdwa": False}]
    rc, _, err = run_cli(capsys, "profile", "--random-init", "--depth", "1", "--resolution", "256",
                         "--e2e-repeats", "0", "--out", tmp_path / "p.json")
    assert_one_line_error(rc, err, "--e2e-repeats: 0 is out of range")
