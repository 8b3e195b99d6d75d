"""Checkpoint compatibility and numerical parity with the formulas of the official VAR."""
import copy
import math

import pytest
import torch

import litevar
from litevar.models.var.build import infer_var_config, load_vae_var, official_state_dict
from tests import var_formulas as ref

PATCH_NUMS = (1, 2, 3, 4, 6)  # a small schedule; the latent is 6x6, images 12x12 (ch_mult (1, 2))
SMALL_VAE = dict(V=64, Cvae=8, ch=32, ch_mult=(1, 2))


def randomize_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial random weights (not the near-identity init): every float tensor ~ N(0, 1/fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p.shape[-1] if p.dim() >= 2 else 4
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            if name.endswith("scale_mul_1H11"):
                p.add_(math.log(4.0))


def make_small(tmp_path, depth=3, shared_aln=False, attn_l2_norm=True, seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    vae, var = litevar.build_vae_var("cpu", patch_nums=PATCH_NUMS, depth=depth, shared_aln=shared_aln,
                                     attn_l2_norm=attn_l2_norm, num_classes=10, **SMALL_VAE)
    randomize_(vae, gen), randomize_(var, gen)
    var_path, vae_path = tmp_path / "var.pth", tmp_path / "vae.pth"
    torch.save(official_state_dict(var), var_path)
    torch.save(vae.state_dict(), vae_path)
    return var_path, vae_path


def official_keys(depth, shared_aln=False, attn_l2_norm=True):
    keys = {"word_embed.weight", "word_embed.bias", "class_emb.weight", "pos_start", "pos_1LC", "lvl_embed.weight",
            "lvl_1L", "attn_bias_for_masking", "head_nm.ada_lin.1.weight", "head_nm.ada_lin.1.bias",
            "head.weight", "head.bias"}
    if shared_aln:
        keys |= {"shared_ada_lin.1.weight", "shared_ada_lin.1.bias"}
    for i in range(depth):
        p = f"blocks.{i}."
        keys |= {p + "attn.scale_mul_1H11"} if attn_l2_norm else set()
        keys |= {p + k for k in ("attn.q_bias", "attn.v_bias", "attn.zero_k_bias",
                                 "attn.mat_qkv.weight", "attn.proj.weight", "attn.proj.bias", "ffn.fc1.weight",
                                 "ffn.fc1.bias", "ffn.fc2.weight", "ffn.fc2.bias")}
        keys |= {p + "ada_gss"} if shared_aln else {p + "ada_lin.1.weight", p + "ada_lin.1.bias"}
    return keys


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("shared_aln,attn_l2_norm", [(False, True), (True, True), (False, False)])
def test_logits_match_formulas(tmp_path, shared_aln, attn_l2_norm):
    depth = 3
    var_path, vae_path = make_small(tmp_path, depth, shared_aln, attn_l2_norm)
    sd = torch.load(var_path)
    assert set(sd) == official_keys(depth, shared_aln, attn_l2_norm)
    vae, var = load_vae_var(var_path, vae_path)  # strict
    C = 64 * depth
    assert sd["blocks.0.attn.mat_qkv.weight"].shape == (3 * C, C)
    assert sd["blocks.0.ffn.fc2.weight"].shape == (C, 4 * C)
    assert sd["attn_bias_for_masking"].shape == (1, 1, 66, 66)
    B = 3
    label_B = torch.randint(0, 10, (B,))
    x_BLCv = torch.randn(B, 66 - 1, SMALL_VAE["Cvae"])
    ours = var(label_B, x_BLCv)
    theirs = ref.var_logits(sd, label_B, x_BLCv, PATCH_NUMS, depth, attn_l2_norm, shared_aln)
    assert ours.shape == (B, 66, SMALL_VAE["V"])
    assert rel_err(ours, theirs) <= 1e-5


def test_greedy_sampling_matches_formulas(tmp_path):
    """Greedy (top-1) sampling picks, at every position, the argmax of the formulas' CFG-guided
    logits given the tokens before it (teacher-forced with our tokens: one pass, block-causal).
    The two paths sum in different orders; in float32 a guided logit differs between them by a few
    2^-24 roundings per term, amplified at most (1 + 2t) by guidance, so a position may pick
    another token only where the formulas' top two lie within TIE of each other (1e-4 relative,
    over 10x that rounding); a wrong sampler misses by the logits' spread, O(1)."""
    depth, B, cfg, TIE = 2, 2, 3.0, 1e-4
    var_path, vae_path = make_small(tmp_path, depth)
    sd, vsd = torch.load(var_path), torch.load(vae_path)
    vae, var = load_vae_var(var_path, vae_path)
    labels = torch.randint(0, 10, (B,))
    img, tokens = var.autoregressive_infer_cfg(B, labels, g_seed=0, cfg=cfg, top_k=1, return_tokens=True)
    both, SN = torch.cat([labels, torch.full_like(labels, 10)]), len(PATCH_NUMS)
    x = ref.var_input({**sd, **vsd}, tokens, PATCH_NUMS).repeat(2, 1, 1)
    logits = ref.var_logits(sd, both, x, PATCH_NUMS, depth)
    ties = 0
    for si, ours in enumerate(tokens):
        b, e = sum(p * p for p in PATCH_NUMS[:si]), sum(p * p for p in PATCH_NUMS[:si + 1])
        t = cfg * si / (SN - 1)
        cond, uncond = logits[:B, b:e], logits[B:, b:e]
        guided = (1 + t) * cond - t * uncond
        tie = TIE * (1 + 2 * t) * torch.maximum(cond.abs().amax(-1), uncond.abs().amax(-1))
        gap = guided.amax(-1) - guided.gather(-1, ours[..., None])[..., 0]  # 0 where ours is the argmax
        assert (gap <= tie).all(), (si, gap.max().item(), tie.max().item())
        ties += int((ours != guided.argmax(-1)).sum())
    assert ties <= 2, f"{ties} of {sum(t.numel() for t in tokens)} tokens differ from the argmax within rounding"
    # the image is the decoder applied to f_hat rebuilt from the tokens. The two paths build f_hat in
    # different orders; in float32 that alone moves the decoded image by up to ~1e-5 relative (the
    # decoder amplifies the rounding), so both run in float64 (the same tokens forced), where the
    # rounding is ~1e-15 and 1e-5 can only be missed by a wrong f_hat
    assert img.shape == (B, 3, 12, 12)
    var64 = copy.deepcopy(var).double()
    vae64 = var64.vae_proxy[0].double()
    img64 = var64.autoregressive_infer_cfg(B, labels, g_seed=0, cfg=cfg, top_k=1, prefix_tokens=tokens)
    expect = vae64.idxBl_to_img(tokens, same_shape=True, last_one=True).add(1).mul(0.5)
    assert rel_err(img64, expect) <= 1e-5


def test_same_seed_same_image(tmp_path):
    var_path, vae_path = make_small(tmp_path, 2)
    vae, var = load_vae_var(var_path, vae_path)
    a = var.autoregressive_infer_cfg(2, torch.tensor([1, 2]), g_seed=7, cfg=2.0, top_k=20, top_p=0.9)
    b = var.autoregressive_infer_cfg(2, torch.tensor([1, 2]), g_seed=7, cfg=2.0, top_k=20, top_p=0.9)
    c = var.autoregressive_infer_cfg(2, torch.tensor([1, 2]), g_seed=8, cfg=2.0, top_k=20, top_p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_quantizer_matches_formulas(tmp_path):
    var_path, vae_path = make_small(tmp_path, 2)
    vsd = torch.load(vae_path)
    vae, _ = load_vae_var(var_path, vae_path)
    f = torch.randn(2, SMALL_VAE["Cvae"], 6, 6)
    ours = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=False)
    theirs = ref.quantize_f(vsd, f, PATCH_NUMS)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert rel_err(vae.quantize.idxBl_to_var_input(ours), ref.var_input(vsd, theirs, PATCH_NUMS)) <= 1e-5
    img = torch.rand(2, 3, 12, 12) * 2 - 1
    idx = vae.img_to_idxBl(img)
    assert [i.shape[1] for i in idx] == [p * p for p in PATCH_NUMS]


def test_phi_schedule_for_ten_scales():
    _, var = litevar.build_vae_var("meta")
    vae = var.vae_proxy[0]
    picks = [list(vae.quantize.quant_resi.qresi_ls).index(vae.quantize.phi(si)) for si in range(10)]
    assert picks == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3] == [ref.phi_index(si, 10) for si in range(10)]


@pytest.mark.parametrize("depth,shared_aln,resolution,millions", [
    (16, False, 256, 310.3), (20, False, 256, 600.9), (24, False, 256, 1033.4), (30, False, 256, 2010.0),
    (36, True, 512, 2353.9)])
def test_official_parameter_counts(depth, shared_aln, resolution, millions):
    vae, var = litevar.build_vae_var("meta", patch_nums=litevar.SCHEDULES[resolution], depth=depth,
                                     shared_aln=shared_aln)
    n = sum(p.numel() for p in var.parameters())
    assert round(n / 1e6, 1) == millions
    C = 64 * depth
    block = sum(p.numel() for p in var.blocks[0].parameters())
    assert block == (18 * C * C + 14 * C + depth if not shared_aln else 12 * C * C + 14 * C + depth)
    assert set(var.state_dict()) | {"attn_bias_for_masking"} == official_keys(depth, shared_aln)


def test_official_vae_shape():
    vae, _ = litevar.build_vae_var("meta")
    def count(m):
        return round(sum(t.numel() for t in m.state_dict().values()) / 1e6, 1)  # params + the EMA buffer
    assert (count(vae), count(vae.encoder), count(vae.decoder)) == (109.0, 44.1, 64.7)
    sd = vae.state_dict()
    assert sd["quantize.embedding.weight"].shape == (4096, 32)
    assert sd["encoder.down.4.attn.1.qkv.weight"].shape == (1920, 640, 1, 1)
    assert sd["decoder.up.4.attn.2.proj_out.weight"].shape == (640, 640, 1, 1)
    assert sd["encoder.down.3.downsample.conv.weight"].shape == (320, 320, 3, 3)
    assert sd["decoder.up.1.upsample.conv.weight"].shape == (160, 160, 3, 3)
    assert sd["quantize.quant_resi.qresi_ls.3.weight"].shape == (32, 32, 3, 3)
    assert sd["quantize.ema_vocab_hit_SV"].shape == (10, 4096)


def test_infer_config_from_checkpoint(tmp_path):
    var_path, _ = make_small(tmp_path, 3, shared_aln=True)
    cfg = infer_var_config(torch.load(var_path))
    assert (cfg["depth"], cfg["shared_aln"], cfg["attn_l2_norm"], cfg["num_classes"]) == (3, True, True, 10)


def test_random_init_big_model_is_built_in_place():
    """Building on meta then materialising keeps one copy: parameters are not meta, buffers are right."""
    vae, var = litevar.build_vae_var("cpu", depth=2, patch_nums=(1, 2, 4), V=64, Cvae=8, ch=32, ch_mult=(1, 2))
    assert all(p.device.type == "cpu" for p in var.parameters())
    assert var.lvl_1L.tolist() == [[0, 1, 1, 1, 1] + [2] * 16]
    assert torch.count_nonzero(var.blocks[0].attn.zero_k_bias) == 0


def test_masked_and_per_scale_attention_paths_agree(tmp_path):
    """Teacher forcing runs dense attention as one block-causal masked call (small L) or one call
    per scale (large L, and every windowed backend): both give the same logits."""
    from litevar.models.core.attention import DenseAttention, set_attention_backend
    var_path, vae_path = make_small(tmp_path, 2)
    _, var = load_vae_var(var_path, vae_path)
    label_B, x = torch.randint(0, 10, (2,)), torch.randn(2, 65, SMALL_VAE["Cvae"])
    masked = var(label_B, x)
    per_scale = DenseAttention()
    per_scale.max_masked_L = 0
    set_attention_backend(var, per_scale)
    assert rel_err(var(label_B, x), masked) <= 1e-5


def test_prefix_tokens_are_forced_and_the_rest_sampled_as_usual(tmp_path):
    var_path, vae_path = make_small(tmp_path, 2)
    vae, var = load_vae_var(var_path, vae_path)
    labels, kw = torch.tensor([1, 2, 3]), dict(cfg=2.0, top_k=20, top_p=0.9, return_tokens=True)
    img_a, tok_a = var.autoregressive_infer_cfg(3, labels, g_seed=7, **kw)
    img_b, tok_b = var.autoregressive_infer_cfg(3, labels, g_seed=8, prefix_tokens=[], **kw)
    assert torch.equal(img_b, var.autoregressive_infer_cfg(3, labels, g_seed=8, **kw)[0])
    k = 2
    _, tok_f = var.autoregressive_infer_cfg(3, labels, g_seed=8, prefix_tokens=tok_a[:k], **kw)
    assert all(torch.equal(f, a) for f, a in zip(tok_f[:k], tok_a[:k]))
    assert any(not torch.equal(f, b) for f, b in zip(tok_f[k:], tok_b[k:]))  # the sampled rest follows the prefix
    img_all, tok_all = var.autoregressive_infer_cfg(3, labels, g_seed=8, prefix_tokens=tok_a, **kw)
    assert all(torch.equal(f, a) for f, a in zip(tok_all, tok_a)) and torch.allclose(img_all, img_a, atol=1e-6)
    with pytest.raises(ValueError, match=r"prefix_tokens\[1\] has shape \(3, 9\); scale 1 needs"):
        var.autoregressive_infer_cfg(3, labels, g_seed=8, prefix_tokens=[tok_a[0], tok_a[2]], **kw)


def test_lean_decoder_equals_the_decoder(monkeypatch):
    """Decoder.forward_lean (inference on large images: GroupNorm statistics over the whole map,
    norm, SiLU and conv a strip of rows at a time) and the SDPA attention block equal the plain
    decoder up to float summation order; strips of 1-3 rows, so every border case is hit."""
    from litevar.models.var import vqvae
    vae, _ = litevar.build_vae_var("cpu", patch_nums=PATCH_NUMS, depth=1, num_classes=10, **SMALL_VAE)
    randomize_(vae, torch.Generator().manual_seed(torch.seed() % 2**31))
    z = torch.randn(2, SMALL_VAE["Cvae"], 7, 5)
    with torch.enable_grad():
        ref = vae.decoder(z).detach()  # training path: bmm attention, whole maps
    # The two paths differ by float32 summation order (each ~1e-6-1e-5 from a float64 run of the
    # same weights, depending on the draw) and by where GroupNorm's statistics are summed (~1e-7
    # in float64). What this test exists to catch, a strip border that drops or repeats a row of
    # the map, moves the output by ~1e-1 relative. 1e-4 sits far from both.
    tol = 1e-4
    for strip in (1, 2 * 32 * 10 * 4, 3 * 2 * 32 * 10 * 4):  # bytes: strips of ~1, 2 and 3 rows
        monkeypatch.setattr(vqvae, "STRIP_BYTES", strip)
        with torch.no_grad():
            lean = vae.decoder.forward_lean(z)
        assert rel_err(lean, ref) < tol, strip
    with torch.no_grad():  # forward() at inference is the lean path
        assert rel_err(vae.decoder(z), ref) < tol


def test_generation_without_decode_returns_the_latent(tmp_path):
    vae, var = litevar.build_vae_var("cpu", patch_nums=PATCH_NUMS, depth=1, num_classes=10, **SMALL_VAE)
    img = var.autoregressive_infer_cfg(2, g_seed=3)
    f_hat = var.autoregressive_infer_cfg(2, g_seed=3, decode=False)
    assert f_hat.shape == (2, SMALL_VAE["Cvae"], PATCH_NUMS[-1], PATCH_NUMS[-1])
    torch.testing.assert_close(vae.fhat_to_img(f_hat).add(1).mul(0.5), img)
