"""An Infinity at toy size through the four steps, by the public commands: profiled (every stage),
planned under a memory budget, explained, benched; and a cost-only profile planned with losses
borrowed from the shipped VAR's profile. The family's `load` is the only thing the test replaces
(a toy architecture and VAE instead of the official 2B / 8B)."""
from __future__ import annotations

import json

import pytest
import torch

from litevar.models.core import family as fam
from litevar.models.infinity.family import InfinityFamily
from litevar.models.infinity.model import InfinityConfig
from litevar.models.infinity.schedules import square_hw
from litevar.planner.plan import Plan
from litevar.profiler.profile import Profile
from tests.cli_util import assert_one_line_error, run_cli

TOY = InfinityConfig(depth=2, embed_dim=64, num_heads=2, text_channels=32, text_maxlen=16, vae_bits=4, pool_head=16)


class ToyInfinity(InfinityFamily):
    schedules = {4: (1, 2), 8: (1, 2, 4), 12: (1, 2, 4, 6)}  # a 2x-downsampling VAE: 2 px per token

    def load(self, flags, device):
        from litevar.models.infinity.build import build
        from litevar.models.infinity.vae import BSQVAE, BSQConfig
        _, model = build(cfg=TOY, hw=square_hw(self.schedules[flags.resolution or 8]), device=device, seed=3)
        vae = BSQVAE(BSQConfig(bits=4, ch=32, ch_mult=(1, 2), num_res_blocks=1))
        vae.init_weights(torch.Generator().manual_seed(1))
        vae.eval().requires_grad_(False)
        model.vae_proxy = (vae,)
        return vae.to(device), model


@pytest.fixture
def toy_family():
    real = fam.FAMILIES.get("infinity") or fam.get_family("infinity")
    fam.FAMILIES["infinity"] = ToyInfinity()
    try:
        yield
    finally:
        fam.FAMILIES["infinity"] = real


@pytest.mark.slow
def test_toy_infinity_profiled_planned_explained_and_benched(toy_family, tmp_path, capsys):
    torch.manual_seed(0)
    prof = tmp_path / "inf.json"
    rc, out, err = run_cli(capsys, "profile", "--family", "infinity", "--out", prof, "--calib", 8, "--calib-loss", 4,
                           "--batches", 1, "--e2e-repeats", 1, "--no-mdwa-timing", "--resolutions", "1,2;1,2,4")
    assert rc == 0, err
    p = Profile.load(prof)
    assert p.meta["model"]["arch"]["family"] == "infinity"
    sens = p.table("sensitivity")
    assert {"blocks.1.ca.mat_kv", "blocks.0.sa.mat_qkv", "text_proj_for_ca.0", "blocks.1.sa.kv"} <= set(sens["layer"])

    dense = p.cost_model.predict(p.arch, (1, 2, 4), 1)
    plan_path = tmp_path / "plan.json"
    rc, out, err = run_cli(capsys, "plan", "--profile", prof, "--resolution", 8, "--guard", 0,
                           "--max-memory-gib", 0.9 * dense.memory_mb / 1024, "--out", plan_path)
    assert rc == 0, err
    plan = Plan.load(plan_path)
    assert plan.model["arch"]["family"] == "infinity" and any(f != "fp" for f in plan.formats.values())
    rc, out, err = run_cli(capsys, "explain", plan_path, "--profile", prof)
    assert rc == 0 and "blocks.0.ca.mat_q" in out, err

    bench = tmp_path / "bench.json"
    rc, out, err = run_cli(capsys, "bench", "--family", "infinity", "--plan", plan_path, "--repeats", 1,
                           "--quality", 4, "--json", bench)
    assert rc == 0, err
    r = json.loads(bench.read_text())["data"]
    measured = r["plans"][0]["measured"]
    assert measured["latency_ms"] > 0 and measured["peak_mb"] < r["dense"]["peak_mb"]


@pytest.mark.slow
def test_cost_only_infinity_borrows_the_var_losses(toy_family, tmp_path, capsys):
    prof = tmp_path / "inf-cost.json"
    rc, out, err = run_cli(capsys, "profile", "--family", "infinity", "--out", prof, "--stages", "cost",
                           "--batches", 1, "--e2e-repeats", 1, "--no-mdwa-timing", "--resolutions", "1,2;1,2,4",
                           "--runtime-dtypes", "none")
    assert rc == 0, err
    plan_path = tmp_path / "plan.json"
    dense = Profile.load(prof).cost_model.predict(Profile.load(prof).arch, (1, 2, 4), 1)
    rc, out, err = run_cli(capsys, "plan", "--profile", prof, "--resolution", 8, "--guard", 0,
                           "--losses-from", "profiles/default-cpu.json", "--max-memory-gib",
                           0.9 * dense.memory_mb / 1024,
                           "--out", plan_path)
    assert rc == 0, err
    plan = Plan.load(plan_path)
    assert plan.solver["losses_from"]["family"] == "var"
    # another configuration of the family priced from this profile's cost model: recorded as such
    rc, out, err = run_cli(capsys, "plan", "--profile", prof, "--config", "8b", "--resolution", 8, "--guard", 0,
                           "--losses-from", "profiles/default-cpu.json", "--max-memory-gib", 64, "--out", plan_path)
    assert rc == 0, err
    plan = Plan.load(plan_path)
    assert plan.model["arch"]["depth"] == 40 and plan.solver["priced_from"]["arch"]["depth"] == 2
    rc, out, err = run_cli(capsys, "plan", "--profile", prof, "--config", "20b", "--resolution", 8,
                           "--losses-from", "profiles/default-cpu.json", "--max-memory-gib", 64, "--out", plan_path)
    assert_one_line_error(rc, err, "--config")
    # no borrowing from a family that lends nothing: one line
    rc, out, err = run_cli(capsys, "plan", "--profile", "profiles/d16-cpu.json", "--resolution", 256,
                           "--losses-from", prof, "--max-memory-gib", 4, "--out", tmp_path / "x.json")
    assert_one_line_error(rc, err, "--losses-from")


def test_generate_from_text_prompts_through_a_t5_directory(toy_family, tmp_path, capsys):
    """`litevar generate --prompt ... --text-encoder DIR`: the prompts tokenized and encoded by the
    directory's T5 (here a toy one, SentencePiece vocabulary trained on the spot) and generated;
    the same prompt twice gives the same image, another prompt other conditions; a missing directory, or
    a width the model does not read, gets one line."""
    spm = pytest.importorskip("sentencepiece")
    from safetensors.torch import save_file

    from litevar.models.infinity.t5 import T5Config, T5Encoder
    from tests.test_t5 import _hf_config
    cfg = T5Config(vocab=24, d_model=TOY.text_channels, d_kv=8, num_heads=2, d_ff=16, num_layers=1, buckets=8,
                   max_distance=16)
    enc = T5Encoder(cfg).init_weights(torch.Generator().manual_seed(0))
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(cfg)))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"a {w} cat on a {v} mat" for w in ("red", "blue", "green") for v in ("big", "soft")))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=24,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    common = ("generate", "--family", "infinity", "--random-init", "--depth", 2, "--resolution", 8,
              "--text-encoder", tmp_path)
    outs = []
    for i, prompt in enumerate(("a red cat", "a red cat", "a soft blue mat")):
        rc, out, err = run_cli(capsys, *common, "--prompt", prompt, "--out", tmp_path / f"{i}.png")
        assert rc == 0, err
        assert f"prompts ['{prompt}']" in out
        outs.append((tmp_path / f"{i}.png").read_bytes())
    assert outs[0] == outs[1], "same prompt, same seed: another image"
    from litevar.models.infinity.build import build
    _, model = build(cfg=TOY, hw=square_hw((1, 2, 4)), seed=3)
    family = fam.FAMILIES["infinity"]
    (a, _), (b, _) = (family.encode_text(model, tmp_path, [t], 1) for t in ("a red cat", "a blue mat"))
    assert a.lens != b.lens or not torch.equal(a.emb_BTC, b.emb_BTC)  # the prompt reaches the conditions
    rc, _, err = run_cli(capsys, *common[:-1], tmp_path / "nowhere", "--prompt", "a cat", "--out", tmp_path / "x.png")
    assert_one_line_error(rc, err, "no config.json")
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(T5Config(**{**cfg.__dict__, "d_model": 16}))))
    rc, _, err = run_cli(capsys, *common, "--prompt", "a cat", "--out", tmp_path / "x.png")
    assert rc == 2 and "Traceback" not in err


@pytest.mark.parametrize("name", ["var", "infinity"])
def test_transformer_phase_reports_each_scale_and_samples_the_same(name, toy_family):
    """The progress callback sees every scale once, in order, and does not change what is sampled
    (same seed, same latent: equal to the last bit)."""
    from litevar.models.core.family import ModelFlags, get_family
    family = get_family(name)
    flags = ModelFlags(family=name, random_init=True, depth=2, patch_nums=(1, 2, 3) if name == "var" else None)
    vae, model = family.load(flags, torch.device("cpu"))
    seen: list[int] = []
    with torch.no_grad():
        plain = family.transformer_phase(model, 1, "fp32")()
        watched = family.transformer_phase(model, 1, "fp32", callback=seen.append)()
    n_scales = len(model.patch_nums) if name == "var" else len(model.hw)
    assert seen == list(range(n_scales))
    assert torch.equal(plain, watched)


class ToyInfinityWithT5(ToyInfinity):
    """The toy with a text encoder of its width (a one-layer T5 with the real vocabulary, ~2 MiB in
    bf16), so that plans carry a text-encoder decision."""

    def _t5(self):
        from litevar.models.infinity.t5 import T5Config
        return T5Config(d_model=TOY.text_channels, d_kv=8, num_heads=2, d_ff=16, num_layers=1, buckets=8,
                        max_distance=16)

    def text_encoder_params(self, arch) -> int:
        return self._t5().param_count()

    def random_text_encoder(self, model, seed: int = 0):
        from litevar.models.infinity.t5 import T5Encoder
        enc = T5Encoder(self._t5()).init_weights(torch.Generator().manual_seed(seed))
        return enc.to(torch.bfloat16).eval()


@pytest.mark.slow
def test_one_generation_counts_a_resident_encoder_once(tmp_path, capsys):
    """benchmarks/one_generation.py on plans that differ only in keeping the text encoder: the
    encoding phase peaks alike, and the generation phases of the resident plan measure the
    encoder's bytes more than the freed plan's, no more (the allocator peak of a phase is its
    growth from where it began, plus what earlier phases keep), which is what the two plans
    predict apart. Same seeds and shapes, so the allocations match to the byte; the bound is a
    thousandth of a MiB."""
    from benchmarks import one_generation
    from litevar.profiler.costmodel import TEXT_ENCODER_BYTES
    real = fam.FAMILIES.get("infinity") or fam.get_family("infinity")
    fam.FAMILIES["infinity"] = family = ToyInfinityWithT5()
    try:
        prof = tmp_path / "inf-cost.json"
        rc, out, err = run_cli(capsys, "profile", "--family", "infinity", "--out", prof, "--stages", "cost",
                               "--batches", 1, "--e2e-repeats", 1, "--no-mdwa-timing", "--resolutions", "1,2;1,2,4",
                               "--runtime-dtypes", "none")
        assert rc == 0, err
        runs, plans = {}, {}
        for mode in ("resident", "freed"):
            plans[mode] = tmp_path / f"{mode}.json"
            rc, out, err = run_cli(capsys, "plan", "--profile", prof, "--resolution", 8, "--guard", 0,
                                   "--losses-from", "profiles/default-cpu.json", "--max-memory-gib", 64,
                                   "--text-encoder", mode, "--out", plans[mode])
            assert rc == 0, err
            assert one_generation.main(["--family", "infinity", "--plan", str(plans[mode]),
                                        "--json", str(tmp_path / f"{mode}-one.json")]) == 0
            runs[mode] = json.loads((tmp_path / f"{mode}-one.json").read_text())["data"]
    finally:
        fam.FAMILIES["infinity"] = real
    res, freed = runs["resident"], runs["freed"]
    assert res["text_encoder"]["mode"] == "resident" and freed["text_encoder"]["mode"] == "freed"
    enc_mib = family.text_encoder_params(None) * TEXT_ENCODER_BYTES / 2 ** 20
    assert enc_mib > 1
    assert res["peak_encode_mib"] == pytest.approx(freed["peak_encode_mib"], abs=1e-3)
    for phase in ("transformer", "decode"):
        measured = res[f"peak_{phase}_mib"] - freed[f"peak_{phase}_mib"]
        predicted = res[f"predicted_{phase}_mib"] - freed[f"predicted_{phase}_mib"]
        assert measured == pytest.approx(enc_mib, abs=1e-3), phase
        assert predicted == pytest.approx(enc_mib, abs=1e-3), phase


@pytest.mark.parametrize("fmt", ["BF16", "W8A8"])
def test_a_swapped_context_projection_keeps_the_runtime_dtype(fmt):
    """Infinity's cross-attention K/V projection (mat_kv, with a float32 V bias added after it) gives
    the text keys and values in the runtime dtype when swapped, as dense does: under bf16 the
    cached context stays bf16. Dtypes are exact."""
    from litevar.kernels.qlinear import linear_in_format
    from litevar.models.infinity.build import build
    _, model = build(cfg=TOY, hw=square_hw((1, 2, 4)), seed=3)
    ca = model.blocks[0].ca
    ctx_BTD = torch.randn(2, 5, ca.mat_kv.in_features)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        want = [t.dtype for t in ca.context_kv(ctx_BTD)]
        ca.mat_kv = linear_in_format(ca.mat_kv, fmt)
        got = [t.dtype for t in ca.context_kv(ctx_BTD)]
    assert got == want == [torch.bfloat16] * 2
