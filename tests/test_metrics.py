import math

import numpy as np
import pytest
import torch

from litevar.models.default import classifier as clf
from litevar.models.default import data, metrics

# ---------------------------------------------------------------- Frechet distance

def _samples_with_stats(mu, cov, n=500, seed=0):
    """Samples whose sample mean and unbiased covariance are exactly mu and cov."""
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten exactly
    return z @ np.linalg.cholesky(cov).T + mu


def _random_spd(d, seed):
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _sqrt_psd(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_identical_sets_is_zero():
    feats = np.random.default_rng(0).standard_normal((300, 16))
    assert abs(metrics.frechet_distance(feats, feats)) < 1e-8
    assert abs(metrics.frechet_distance(torch.from_numpy(feats), feats)) < 1e-8


def test_frechet_diagonal_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = 1 + 0 + 4 + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # 5 + 1 + 1 + 0.25
    got = metrics.frechet_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, abs=1e-10)


def test_frechet_of_samples_matches_gaussian_closed_form():
    d = 6
    mu_a, mu_b = np.arange(d, dtype=float), np.ones(d)
    cov_a, cov_b = _random_spd(d, 1), _random_spd(d, 2)  # do not commute
    sa = _sqrt_psd(cov_a)
    expected = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(_sqrt_psd(sa @ cov_b @ sa)))
    got = metrics.frechet_distance(_samples_with_stats(mu_a, cov_a, seed=3),
                                   _samples_with_stats(mu_b, cov_b, seed=4))
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_singular_covariances_stay_finite():
    feats = np.random.default_rng(0).standard_normal((5, 32))  # rank 4 covariance in 32 dims
    assert math.isfinite(metrics.frechet_distance(feats, feats + 0.01))


# ---------------------------------------------------------------- tokens, PSNR, KL

def test_token_agreement_per_scale():
    a = [torch.tensor([[1, 2]]), torch.tensor([[1, 2, 3, 4]])]
    b = [torch.tensor([[1, 0]]), torch.tensor([[1, 2, 3, 0]])]
    assert metrics.token_agreement_per_scale(a, b) == [0.5, 0.75]
    assert metrics.token_agreement_per_scale(a, a) == [1.0, 1.0]


def test_psnr_hand_made():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    per_image, mean = metrics.psnr(a, b)
    assert per_image[0].item() == pytest.approx(20.0)
    assert per_image[1].item() == pytest.approx(100.0)  # identical: capped at max_db
    assert mean == pytest.approx(60.0)
    assert float(metrics.psnr(a.numpy(), b.numpy())) == pytest.approx(60.0)


def test_cfg_logits_kl_hand_made():
    p = torch.zeros(1, 1, 2)  # softmax (1/2, 1/2)
    q = torch.tensor([[[math.log(3.0), 0.0]]])  # softmax (3/4, 1/4)
    per_scale, mean = metrics.cfg_logits_kl([p, p.repeat(2, 4, 1)], [q, p.repeat(2, 4, 1)])
    expected = 0.5 * math.log(4 / 3)
    assert per_scale == pytest.approx([expected, 0.0], abs=1e-6)
    assert mean == pytest.approx(expected / 2, abs=1e-6)  # unweighted mean over scales
    assert float(metrics.cfg_logits_kl(q, q)) == pytest.approx(0.0, abs=1e-7)
    assert float(metrics.cfg_logits_kl(p, q)) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- classifier

class _AlwaysZero(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()


def test_class_accuracy_and_input_conventions():
    images, labels = data.make_split("val", 20)
    assert metrics.class_accuracy(_AlwaysZero(), images, labels) == pytest.approx(0.1)
    x = data.to_float(images)  # float input: [-1, 1], the classifier's own convention
    assert metrics.class_accuracy(_AlwaysZero(), x, torch.from_numpy(labels)) == pytest.approx(0.1)
    assert torch.equal(metrics.classifier_input(images), x)
    assert torch.equal(metrics.classifier_input(x * 3), (x * 3).clamp(-1, 1))


def test_confusion_matrix_hand_made():
    cm = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], torch.tensor([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics.predict_classes(_AlwaysZero(), data.make_split("val", 5)[0]).tolist() == [0] * 5
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        metrics.confusion_matrix([0, 1, 2], [0, 1], 3)


def test_classifier_shapes():
    model = clf.Classifier().eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, data.NUM_CLASSES)
    assert model.features(x).shape == (2, model.cfg.feature_dim)
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert n_bytes < 2e6


def test_classifier_training_is_bit_reproducible():
    kw = dict(steps=2, batch=8, out_path=None, progress=False, n_train=32, n_test=10)
    a, _ = clf.train_classifier(seed=5, **kw)
    b, _ = clf.train_classifier(seed=5, **kw)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_classifier_save_load_round_trip(tmp_path):
    model, info = clf.train_classifier(seed=1, steps=1, batch=8, out_path=tmp_path / "c.safetensors",
                                       progress=False, n_train=16, n_test=10)
    loaded = clf.load_classifier(tmp_path / "c.safetensors")
    x = torch.randn(3, 3, 64, 64)
    assert torch.equal(loaded(x), model.eval()(x))
    assert (tmp_path / "c.json").exists() and info["recipe"]["seed"] == 1


@pytest.mark.skipif(not clf.DEFAULT_PATH.exists(), reason="shipped classifier weights absent")
def test_shipped_classifier_accuracy_and_features():
    model = clf.load_classifier()
    index = np.arange(10_000, 10_200)  # test-split samples not used for the reported accuracy
    labels = data.sample_label(index)
    images = data.render_many(labels, data.sample_seed("test", index))
    assert metrics.class_accuracy(model, images, labels) >= 0.90
    feats = metrics.classifier_features(model, images)
    assert feats.shape == (200, model.cfg.feature_dim)


# ---------------------------------------------------------------- optional Inception metrics

def test_inception_metrics_without_weights_says_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images = np.zeros((4, 64, 64, 3), np.uint8)
    result, message = metrics.inception_metrics(images, images)
    assert result is None
    assert str(tmp_path / "hub" / "checkpoints" / metrics.TORCH_FIDELITY_WEIGHTS[0]) in message
    assert metrics.PYTORCH_FID_WEIGHTS[1] in message
