"""Teacher forcing (all scales in one call) must equal one call per scale with the KV cache's
visible keys: the dense backend's masked multi-scale path against the per-scale path."""
import pytest
import torch

from litevar.models.core.attention import AttnCall, DenseAttention, ScaleLayout, attend_per_scale


@pytest.mark.parametrize("patch_nums,scales", [((1, 2, 3, 4), range(4)), ((1, 2, 3, 5), range(1)),
                                               ((1, 2, 4), range(2)), ((1, 3), range(1, 2))])
def test_multiscale_dense_equals_per_scale(patch_nums, scales):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    layout = ScaleLayout(patch_nums)
    L = layout.end[scales[-1]]
    q = torch.randn(2, 3, L - layout.begin[scales[0]], 8, generator=g)
    k, v = torch.randn(2, 3, L, 8, generator=g), torch.randn(2, 3, L, 8, generator=g)
    ctx = AttnCall(0, scales[0], layout, 8 ** -0.5)
    backend = DenseAttention()
    got = backend.attend_scales(q, k, v, ctx, scales)
    want = attend_per_scale(backend, q, k, v, ctx, scales)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
