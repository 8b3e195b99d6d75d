"""The training command is seeded and reproducible (tiny smoke run, twice, bit-identical)."""
import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from litevar.commands import train as train_cmd
from litevar.models.core.errors import UserError
from litevar.models.default import train


def run_train(out, work, stages="vae,var"):
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    args = p.parse_args(["--out", str(out), "--work-dir", str(work), "--stages", stages, "--scale", "0.002",
                         "--ckpt-every", "2"])
    assert train_cmd.run(args) == 0


def _small_batches(cfg, s):
    """The recipe at scale s, with batches of 2 to 4 samples (reproducibility does not depend on
    their size; the recipe's own batches take 3.6 s a VAR step on an AVX2-only CPU)."""
    cfg = train.scaled(cfg, s)
    cfg.vae.batch, cfg.var.batch, cfg.var.prefix_batch, cfg.var.coarse_batch = 4, 2, 2, 3
    return cfg


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(train_cmd, "scaled", _small_batches)
    for i in (1, 2):
        run_train(tmp_path / f"out{i}", tmp_path / f"work{i}")
    card = json.loads((tmp_path / "out1" / "train.json").read_text())
    assert card["recipe"]["autocast"] in ("bf16", "fp32") and card["autocast_chosen"]  # auto, resolved here
    for name in ("vae.safetensors", "var.safetensors"):
        a, b = load_file(tmp_path / "out1" / name), load_file(tmp_path / "out2" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = train.scaled(train.TrainConfig(), 0.003)  # 4 VQVAE steps
    cfg.vae.restart_every = 2  # exercise the dead-code restart (which draws from the data RNG)
    cfg.vae.batch = 4  # of 16: resuming does not depend on it
    real_restart = train._restart_dead_codes  # on 32 of the 256 images it draws (the same draws, an 8th the work)
    monkeypatch.setattr(train, "_restart_dead_codes", lambda vae, x, gen: real_restart(vae, x[:32], gen))
    cpu = torch.device("cpu")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = train.train_vae(cfg, tmp_path / "a", cpu, ckpt_every=1, progress=False)
    real_lr = train._cosine_lr

    def interrupt_at_2(step, *a):
        if step == 2:
            raise KeyboardInterrupt
        return real_lr(step, *a)

    monkeypatch.setattr(train, "_cosine_lr", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt):
        train.train_vae(cfg, tmp_path / "b", cpu, ckpt_every=1, progress=False)
    assert torch.load(tmp_path / "b" / "vae.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(train, "_cosine_lr", real_lr)
    resumed = train.train_vae(cfg, tmp_path / "b", cpu, ckpt_every=1, progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k



def test_auto_takes_bf16_only_where_it_measured_faster(monkeypatch):
    from litevar.models.core.device import device_of
    cpu = device_of("cpu")
    monkeypatch.setattr(cpu, "_bf16_speedup", None)
    rng = torch.get_rng_state()
    assert cpu.bf16_gemm_speedup() > 0 and cpu.bf16_gemm_speedup() is cpu.bf16_gemm_speedup()  # measured once
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run is the same whether it measures or not
    for speedup, dtype in ((1.8, "bf16"), (0.02, "fp32")):
        monkeypatch.setattr(cpu, "_bf16_speedup", speedup)
        assert train.resolve_autocast("auto", "cpu")[0] == dtype
        assert train.resolve_autocast("bf16", "cpu")[0] == "bf16"  # asked for: not measured
    with pytest.raises(UserError, match="autocast 'fp16'"):
        train.TrainConfig(autocast="fp16")


def test_a_checkpoint_resumes_only_in_its_own_dtype(tmp_path):
    cfg = train.scaled(train.TrainConfig(autocast="fp32"), 0.003)
    torch.save({"step": 1, "autocast": "bf16"}, tmp_path / "vae.pt")
    with pytest.raises(UserError, match="trained in bf16.*--autocast bf16"):
        train.train_vae(cfg, tmp_path, torch.device("cpu"), ckpt_every=1, progress=False)


def _tiny_var_cfg():
    cfg = train.TrainConfig()
    cfg.var.steps, cfg.var.warmup, cfg.var.batch, cfg.var.prefix_batch = 3, 1, 2, 2
    cfg.var.coarse_steps, cfg.var.coarse_warmup, cfg.var.coarse_batch = 2, 1, 3
    return cfg


def test_var_resumes_across_the_coarse_phase_to_the_same_weights(tmp_path, monkeypatch):
    """Interrupted at the coarse phase's first step, the run resumes to the weights of an
    uninterrupted one (the shipped VAR resumed from its main-phase checkpoint)."""
    cfg, cpu = _tiny_var_cfg(), torch.device("cpu")
    vae = train.build_small_vae(cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    tokens = torch.randint(0, cfg.vae.V, (8, sum(p * p for p in cfg.patch_nums)), generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = train.train_var(cfg, vae, tokens, labels, tmp_path / "a", cpu, ckpt_every=100, progress=False)
    real_lr = train._cosine_lr

    def interrupt_coarse(step, total, *a):
        if total == cfg.var.coarse_steps:
            raise KeyboardInterrupt
        return real_lr(step, total, *a)

    monkeypatch.setattr(train, "_cosine_lr", interrupt_coarse)
    with pytest.raises(KeyboardInterrupt):
        train.train_var(cfg, vae, tokens, labels, tmp_path / "b", cpu, ckpt_every=100, progress=False)
    assert torch.load(tmp_path / "b" / "var.pt", weights_only=False)["step"] == cfg.var.steps
    monkeypatch.setattr(train, "_cosine_lr", real_lr)
    resumed = train.train_var(cfg, vae, tokens, labels, tmp_path / "b", cpu, ckpt_every=100, progress=False)
    assert torch.load(tmp_path / "b" / "var.pt", weights_only=False)["step"] == 5
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_coarse_phase_trains_only_the_coarse_scales(tmp_path, monkeypatch):
    """The coarse phase's loss covers the scales up to prefix_side, nothing finer."""
    cfg = _tiny_var_cfg()
    cfg.var.steps = 0
    seen = []
    real = train._weighted_ce

    def spy(var, vae, tokens_NL, labels_N, patch_nums, *a):
        seen.append((len(tokens_NL), tuple(patch_nums)))
        return real(var, vae, tokens_NL, labels_N, patch_nums, *a)

    monkeypatch.setattr(train, "_weighted_ce", spy)
    vae = train.build_small_vae(cfg).eval().requires_grad_(False)
    tokens = torch.randint(0, cfg.vae.V, (4, sum(p * p for p in cfg.patch_nums)))
    train.train_var(cfg, vae, tokens, torch.randint(0, 10, (4,)), tmp_path, torch.device("cpu"), 100, False)
    side = cfg.patch_nums[:cfg.patch_nums.index(cfg.var.prefix_side) + 1]
    assert seen == [(cfg.var.coarse_batch, side)] * cfg.var.coarse_steps


def test_coarse_phase_settings_are_checked():
    with pytest.raises(UserError, match="coarse_steps -1"):
        train.GPTConfig(coarse_steps=-1)
    with pytest.raises(UserError, match="coarse_batch 0"):
        train.GPTConfig(coarse_steps=5, coarse_batch=0)


def test_sincos_position_init_is_the_same_function_of_image_position_on_every_scale():
    patch_nums = (1, 2, 3, 5, 16)
    pos_LC = train.sincos_pos_init(patch_nums, C=64, amp=0.1)[0]
    begin = [sum(p * p for p in patch_nums[:i]) for i in range(len(patch_nums))]
    centre_3, centre_5 = begin[2] + 4, begin[3] + 12  # the middle token of the 3x3 and 5x5 scales
    assert pos_LC.shape == (sum(p * p for p in patch_nums), 64)
    torch.testing.assert_close(pos_LC[centre_3], pos_LC[0])  # all at image position (0.5, 0.5)
    torch.testing.assert_close(pos_LC[centre_5], pos_LC[0])
    assert pos_LC.abs().max() <= 0.1 + 1e-6
    fine = pos_LC[begin[4]:]  # distinct positions of the finest scale get distinct embeddings
    assert torch.cdist(fine, fine).add(torch.eye(256)).min() > 1e-3
    with pytest.raises(Exception, match="divisible by 4"):
        train.sincos_pos_init(patch_nums, C=66, amp=0.1)


@pytest.mark.parametrize("scheme", ["uniform", "inv_side"])
def test_token_loss_weights_mean_one_and_per_scale_share(scheme):
    pns = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    w = train.token_loss_weights(pns, scheme)
    assert w.shape == (sum(p * p for p in pns),) and torch.isclose(w.mean(), torch.tensor(1.0))
    per_scale = torch.stack([s.sum() for s in w.split([p * p for p in pns])])
    expected = torch.tensor([float(p * p if scheme == "uniform" else p) for p in pns])
    torch.testing.assert_close(per_scale / per_scale.sum(), expected / expected.sum())


def test_unknown_scale_loss_is_refused_with_the_choices():
    with pytest.raises(Exception, match="uniform"):
        train.GPTConfig(scale_loss="per_pixel")


def _tiny_vae_var():
    from litevar.models.var.build import build_vae_var
    vae, var = build_vae_var("cpu", patch_nums=(1, 2, 3, 4), V=32, Cvae=8, ch=32, share_quant_resi=4,
                             num_classes=4, depth=2, ch_mult=(1, 2), num_res_blocks=1)
    var.init_weights()
    return vae.eval(), var.eval()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_prefix_forward_equals_the_first_logits_of_a_full_call(n):
    """The coarse-scale batches train on the first n scales alone: attention is block-causal, so
    their logits must equal the first tokens' logits of the teacher-forced call over all scales."""
    vae, var = _tiny_vae_var()
    pns, B = vae.quantize.patch_nums, 3
    gt = [torch.randint(0, 32, (B, pn * pn)) for pn in pns]
    label = torch.randint(0, 4, (B,))
    with torch.no_grad():
        full = var(label, vae.quantize.idxBl_to_var_input(gt))
        x_prefix = vae.quantize.idxBl_to_var_input(gt[:n])
        part = var(label, x_prefix if x_prefix is not None else full.new_zeros(B, 0, 8), n_scales=n)
    L = sum(pn * pn for pn in pns[:n])
    assert part.shape == (B, L, 32)
    torch.testing.assert_close(part, full[:, :L], rtol=1e-5, atol=1e-5)


def test_prefix_forward_refuses_a_wrong_scale_count_or_length():
    vae, var = _tiny_vae_var()
    gt = [torch.randint(0, 32, (2, pn * pn)) for pn in vae.quantize.patch_nums]
    x = vae.quantize.idxBl_to_var_input(gt)
    with pytest.raises(ValueError, match="n_scales=5"):
        var(torch.zeros(2, dtype=torch.long), x, n_scales=5)
    with pytest.raises(ValueError, match="the first 2 scales need 4"):
        var(torch.zeros(2, dtype=torch.long), x, n_scales=2)


def test_prefix_side_must_be_a_scale():
    with pytest.raises(UserError, match="prefix_side 7"):
        train.TrainConfig(var=train.GPTConfig(prefix_side=7))


def test_shipped_weights_come_from_the_default_recipe():
    """The card next to the shipped weights records the recipe that trained them: it must be the
    one `litevar train` runs by default, or the shipped model is not what the command produces."""
    import json
    from dataclasses import asdict

    from litevar.models.core.atomic import file_sha256
    card = json.loads((train.ASSETS / "train.json").read_text())
    recipe, default = dict(card["recipe"]), json.loads(json.dumps(asdict(train.TrainConfig())))
    assert recipe.pop("autocast") in ("bf16", "fp32") and default.pop("autocast") == "auto"  # what auto chose
    assert recipe == default
    # and it describes these weights: a weight file replaced without its card fails here
    for name, sha in card["files_sha256"].items():
        assert file_sha256(train.ASSETS / name) == sha, name
