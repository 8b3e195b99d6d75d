"""The training command is seeded and reproducible (tiny smoke run, twice, bit-identical)."""
import argparse

import pytest
import torch
from safetensors.torch import load_file

from litevar import train


def run_train(out, work, stages="vae,var"):
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    args = p.parse_args(["--out", str(out), "--work-dir", str(work), "--stages", stages, "--scale", "0.002",
                         "--ckpt-every", "2"])
    assert train.run(args) == 0


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path):
    for i in (1, 2):
        run_train(tmp_path / f"out{i}", tmp_path / f"work{i}")
    for name in ("vae.safetensors", "var.safetensors"):
        a, b = load_file(tmp_path / "out1" / name), load_file(tmp_path / "out2" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = train._scaled(train.TrainConfig(), 0.003)  # 4 VQVAE steps
    cfg.vae.restart_every = 2  # exercise the dead-code restart (which draws from the data RNG)
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
