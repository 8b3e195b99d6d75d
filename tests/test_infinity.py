"""The Infinity family without weights: configurations, official names, loading, self-consistency.

Names and shapes are checked against the official module tree (FoundationVision/Infinity,
infinity/models/infinity.py and basic.py, as its scripts build it: shared AdaLN, block_chunks=8,
text_channels 2048, text_maxlen 512), written out here by hand from that code.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from litevar.models.core.errors import UserError
from litevar.models.core.family import get_family
from litevar.models.infinity.build import build, load
from litevar.models.infinity.model import (
    CONFIGS,
    Infinity,
    InfinityConfig,
    apply_rope,
    bits_to_codes,
    codes_to_tokens,
    official_names,
    random_text,
    rope_positions,
    up,
)
from litevar.models.infinity.schedules import RATIO_HW, SCHEDULES, schedule_hw, square_hw
from litevar.models.infinity.vae import BSQVAE, VAE_CONFIGS, normalise_vae_keys

TOY = InfinityConfig(depth=4, embed_dim=64, num_heads=2, text_channels=32, text_maxlen=16, vae_bits=8, pool_head=16)
TOY_PATCH = InfinityConfig(depth=2, embed_dim=64, num_heads=2, text_channels=32, text_maxlen=16, vae_bits=4,
                           patchify=True, pool_head=16)
TOY_HW = square_hw((1, 2, 4, 6))


def meta_model(size):
    with torch.device("meta"):
        return Infinity(CONFIGS[size])


def params_from_equations(c: InfinityConfig) -> int:
    """Parameter count of an Infinity configuration from the official module shapes."""
    C, Ct5, hid, H, V, d = c.embed_dim, c.text_channels, c.hidden, c.num_heads, c.V, c.token_bits
    block = (3 * C * C + 2 * C + H) + (C * C + C)  # self-attention: qkv, q/v bias, scale, proj
    block += (C * C + C) + (2 * C * C + C) + (C * C + C)  # cross-attention: q, kv (+ v bias), proj
    block += (C * hid + hid) + (hid * C + C) + 2 * C + 6 * C  # FFN, ca_norm, ada_gss
    top = c.text_maxlen * Ct5 + Ct5  # cfg_uncond, text_norm
    top += C + (2 * C * Ct5 + C) + (C * C + C)  # text pool: query, kv (+ v bias), proj
    top += (Ct5 * C + C) + (C * C + C)  # text_proj_for_ca
    top += C + 15 * C + (d * C + C) + (6 * C * C + 6 * C) + (2 * C * C + 2 * C) + (V * C + V)
    return c.depth * block + top


@pytest.mark.parametrize("size", ["2b", "8b"])
def test_parameter_counts_match_the_configurations(size):
    m = meta_model(size)
    n = sum(p.numel() for p in m.parameters())
    assert n == params_from_equations(CONFIGS[size])
    # the official notebook prints "model size: 8.38B" for Infinity-8B (tools/interactive_infer_8b.ipynb)
    assert f"{n / 1e9:.2f}B" == {"2b": "2.20B", "8b": "8.38B"}[size]


OFFICIAL_TOP = ["cfg_uncond", "pos_start", "text_norm.weight", "text_proj_for_sos.ca.mat_q",
                "text_proj_for_sos.ca.v_bias", "text_proj_for_sos.ca.zero_k_bias",
                "text_proj_for_sos.ca.mat_kv.weight", "text_proj_for_sos.ca.proj.weight",
                "text_proj_for_sos.ca.proj.bias", "text_proj_for_ca.0.weight", "text_proj_for_ca.0.bias",
                "text_proj_for_ca.2.weight", "text_proj_for_ca.2.bias", "lvl_embed.weight", "word_embed.weight",
                "word_embed.bias", "shared_ada_lin.1.weight", "shared_ada_lin.1.bias", "head_nm.ada_lin.1.weight",
                "head_nm.ada_lin.1.bias", "head.weight", "head.bias"]
OFFICIAL_BLOCK = ["ada_gss", "sa.scale_mul_1H11", "sa.q_bias", "sa.v_bias", "sa.zero_k_bias", "sa.mat_qkv.weight",
                  "sa.proj.weight", "sa.proj.bias", "ca.mat_q.weight", "ca.mat_q.bias", "ca.mat_kv.weight",
                  "ca.v_bias", "ca.zero_k_bias", "ca.proj.weight", "ca.proj.bias", "ffn.fc1.weight", "ffn.fc1.bias",
                  "ffn.fc2.weight", "ffn.fc2.bias", "ca_norm.weight", "ca_norm.bias"]


@pytest.mark.parametrize("size,per", [("2b", 4), ("8b", 5)])
def test_state_dict_names_are_the_official_ones(size, per):
    m = meta_model(size)
    names = official_names(m.state_dict().keys(), CONFIGS[size].depth, block_chunks=8)
    expected = set(OFFICIAL_TOP) | {f"block_chunks.{c}.module.{j}.{k}" for c in range(8) for j in range(per)
                                    for k in OFFICIAL_BLOCK}
    assert set(names.values()) == expected


@pytest.mark.parametrize("size,shapes", [
    ("2b", {"word_embed.weight": (2048, 32), "head.weight": (64, 2048), "text_proj_for_sos.ca.mat_q": (1, 16, 128),
            "text_proj_for_sos.ca.mat_kv.weight": (4096, 2048), "blocks.0.ffn.fc1.weight": (8192, 2048),
            "blocks.0.sa.scale_mul_1H11": (1, 16, 1, 1), "blocks.0.ada_gss": (1, 1, 6, 2048),
            "cfg_uncond": (512, 2048), "lvl_embed.weight": (15, 2048)}),
    ("8b", {"word_embed.weight": (3584, 56), "head.weight": (112, 3584), "text_proj_for_sos.ca.mat_q": (1, 16, 224),
            "blocks.0.ffn.fc1.weight": (14336, 3584), "blocks.0.ca.mat_kv.weight": (7168, 3584),
            "blocks.0.sa.scale_mul_1H11": (1, 28, 1, 1)}),
])
def test_official_shapes(size, shapes):
    sd = meta_model(size).state_dict()
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes


# -- schedules and RoPE ---------------------------------------------------------------------------------

def test_schedules():
    assert SCHEDULES[1024] == (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)
    assert sum(p * p for p in SCHEDULES[1024]) == 10521
    assert SCHEDULES[256][-1] * 16 == 256 and SCHEDULES[512][-1] * 16 == 512
    assert schedule_hw(0.5)[-1] == (45, 90) and schedule_hw(2.0)[-1] == (90, 45)
    assert all(len(v) == 13 for v in RATIO_HW.values())


def test_rope_positions_round_half_to_even_against_the_final_grid():
    hw = schedule_hw(1.333)  # final grid (72, 54); scale 5 is (16, 12): rows at i * 4.5
    r, c = rope_positions(hw, hw[-1])
    start = sum(h * w for h, w in hw[:5])
    rows = r[start:start + 16 * 12].view(16, 12)[:, 0].tolist()
    assert rows[:6] == [0, 4, 9, 14, 18, 22]  # 4.5 -> 4, 13.5 -> 14, 22.5 -> 22
    cols = c[start:start + 12].tolist()
    assert cols == [round(j * 54 / 12) for j in range(12)]
    for si, (h, w) in enumerate(hw):  # every scale spans the grid from 0
        b = sum(a * bb for a, bb in hw[:si])
        assert r[b:b + h * w].max() < 72 and c[b:b + h * w].max() < 54 and r[b] == 0


def test_shorter_schedules_share_the_1m_positions():
    m = Infinity(TOY, square_hw(SCHEDULES[256]))
    assert m.rope_grid(m.hw) == (64, 64)
    r, _ = rope_positions(m.hw, (64, 64))
    assert r[-16 * 16:].view(16, 16)[:, 0].tolist() == [4 * i for i in range(16)]


def test_rope_rotates_adjacent_pairs_rows_then_columns():
    hd = 16
    hw = ((1, 1), (2, 2))
    from litevar.models.infinity.model import rope_table
    tab = rope_table(hd, hw, (64, 64), 10000.0, 128)  # scale 1 positions: rows/cols 0 and 32
    inv = 1.0 / 10000 ** (torch.arange(0, hd // 2, 2).float() / (hd // 2))
    x = torch.zeros(1, 1, 5, hd)
    x[..., 0] = 1.0  # the first pair: turns with the row
    x[..., hd // 2] = 1.0  # pair hd/4, the first column pair
    out = apply_rope(x, tab)[0, 0]
    token = 1 + 3  # scale 1, row 1 (position 32), column 1 (position 32)
    assert torch.allclose(out[token, :2], torch.stack([torch.cos(32 * inv[0]), torch.sin(32 * inv[0])]))
    assert torch.allclose(out[token, hd // 2:hd // 2 + 2], torch.stack([torch.cos(32 * inv[0]),
                                                                        torch.sin(32 * inv[0])]))
    token = 1 + 1  # row 0, column 1: the row pair does not turn
    assert torch.allclose(out[token, :2], torch.tensor([1.0, 0.0]))


def test_rope_keeps_scores_relative():
    """<R(p) q, R(p') k> depends on p' - p only (why K can be cached rotated)."""
    from litevar.models.infinity.model import rope_table
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 32, generator=g), torch.randn(1, 1, 1, 32, generator=g)
    a = rope_table(32, ((1, 1), (8, 8)), (8, 8), 10000.0, 128)
    s = []
    for p, p2 in ((1 + 0, 1 + 9), (1 + 9, 1 + 18)):  # (0,0)->(1,1) and (1,1)->(2,2)
        s.append((apply_rope(q, a[:, p:p + 1]) * apply_rope(k, a[:, p2:p2 + 1])).sum())
    assert torch.allclose(s[0], s[1], atol=1e-5)


# -- bits, codes and the next scale's input ----------------------------------------------------------------

def test_codes_are_plus_minus_one_over_sqrt_d_and_patchify_round_trips():
    for cfg in (TOY, TOY_PATCH):
        bits = torch.randint(0, 2, (2, 3, 5, cfg.token_bits))
        codes = bits_to_codes(bits, cfg)
        k = 2 if cfg.patchify else 1
        assert codes.shape == (2, cfg.vae_bits, 3 * k, 5 * k)
        assert torch.allclose(codes.abs(), torch.full_like(codes, 1 / math.sqrt(cfg.vae_bits)))
        tokens = codes_to_tokens(codes, cfg)
        assert torch.equal(tokens.view(2, 3, 5, -1) > 0, bits.bool())


def test_bilinear_resize_equals_the_official_trilinear():
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    for size in ((9, 11), (3, 4)):
        official = F.interpolate(x.unsqueeze(2), size=(1, *size), mode="trilinear").squeeze(2)
        assert torch.allclose(up(x, size), official, atol=1e-12)


# -- self-consistency -------------------------------------------------------------------------------

def toy(cfg=TOY, hw=TOY_HW, seed=0):
    vae, m = build(cfg=cfg, hw=hw, seed=seed)
    return vae, m.double()


@pytest.mark.parametrize("cfg", [TOY, TOY_PATCH])
def test_cached_generation_equals_teacher_forced_logits(cfg):
    """float64: the two paths differ by rounding only (~1e-16 relative); 1e-9 is far from any real error."""
    _, m = toy(cfg)
    text = random_text(2, 5, cfg.text_channels, seed=int(torch.randint(0, 1000, ())))
    text.emb_BTC = text.emb_BTC.double()
    _, bits = m.generate(text, g_seed=3, cfg=3.0, tau=1.0)
    lg = m(text, m.teacher_inputs(bits), cfg_double=True)
    tf = 3.0 * lg[:2] + (1 - 3.0) * lg[2:]
    seen = []
    m.generate(text, g_seed=3, cfg=3.0, tau=1.0, prefix_bits=bits, callback=lambda si, x: seen.append(x))
    torch.testing.assert_close(torch.cat(seen, 1), tf, rtol=1e-9, atol=1e-9)


def test_attention_is_block_causal_across_scales():
    _, m = toy()
    text = random_text(1, 4, TOY.text_channels, seed=5)
    text.emb_BTC = text.emb_BTC.double()
    bits = [torch.randint(0, 2, (1, h * w, TOY.token_bits)) for h, w in TOY_HW]
    base = m(text, m.teacher_inputs(bits))
    changed = [b.clone() for b in bits]
    changed[1] = 1 - changed[1]  # scale 1's bits: the inputs of scales 2 and 3 change
    out = m(text, m.teacher_inputs(changed))
    end1 = 1 + 4  # scales 0 and 1 see no later token: their logits stay bit for bit
    assert torch.equal(out[:, :end1], base[:, :end1])
    assert not torch.allclose(out[:, end1:end1 + 16], base[:, end1:end1 + 16])


def test_unconditional_text_is_cfg_uncond_cut_to_the_prompt_length():
    _, m = toy()
    text = random_text(1, 3, TOY.text_channels, seed=2)
    cond, ctx, mask = m.encode_text(text, cfg_double=True)
    ref_cond, _, _ = m.encode_text(type(text)(m.cfg_uncond[:3].detach().float().unsqueeze(0), (3,)), False)
    torch.testing.assert_close(cond[1:].float(), ref_cond.float(), rtol=1e-6, atol=1e-6)


# -- the family's plain data --------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["2b", "8b"])
def test_family_linears_and_other_parameters_cover_the_model(size):
    fam, m = get_family("infinity"), meta_model(size)
    arch = fam.arch_of(m)
    mods = dict(m.named_modules())
    lin = fam.linears(arch)
    assert all(tuple(mods[s.fqn].weight.shape) == (s.N, s.K) for s in lin)
    assert {n for n, mod in mods.items() if isinstance(mod, torch.nn.Linear)} == {s.fqn for s in lin}
    weights = {s.fqn + ".weight" for s in lin}
    other = sum(t.numel() * 4 for n, t in m.state_dict().items() if n not in weights)
    L = sum(p * p for p in arch.patch_nums)
    assert fam.other_param_bytes(arch, arch.patch_nums) == other + 2 * L * (arch.head_dim // 2) * 4
    assert fam.arch_from_dict(arch.to_dict()) == arch


def test_shared_copy_shares_weights_and_the_attached_vae():
    vae, m = build(cfg=TOY, hw=TOY_HW)
    m.vae_proxy = (vae,)
    c = get_family("infinity").shared_copy(m)
    assert c is not m and c.blocks[0].ffn.fc2.weight is m.blocks[0].ffn.fc2.weight and c.vae_proxy[0] is vae


# -- loading -------------------------------------------------------------------------------------------

def save_official(tmp_path, cfg=TOY, chunks=2):
    vae, m = build(cfg=cfg, hw=TOY_HW, seed=7)
    names = official_names(m.state_dict().keys(), cfg.depth, chunks)
    sd = {names[k]: v.clone() for k, v in m.state_dict().items()}
    vsd = {k.replace(".conv.weight", ".weight") if k.startswith("decoder.conv_in") else k: v.clone()
           for k, v in vae.state_dict().items()}
    vsd["quantizer.lfq.mask"] = 2 ** torch.arange(cfg.vae_bits - 1, -1, -1)
    torch.save(sd, tmp_path / "t.pth")
    torch.save({"vae": vsd}, tmp_path / "v.pth")
    return vae, m, sd, vsd


def test_official_layout_loads_strictly_and_reproduces_the_model(tmp_path):
    vae, m, _, _ = save_official(tmp_path)
    vae2, m2 = load(tmp_path / "t.pth", tmp_path / "v.pth", hw=TOY_HW)
    assert m2.cfg == m.cfg
    text = random_text(1, 4, TOY.text_channels, seed=1)
    bits = [torch.randint(0, 2, (1, h * w, TOY.token_bits)) for h, w in TOY_HW]
    torch.testing.assert_close(m2(text, m2.teacher_inputs(bits)), m(text, m.teacher_inputs(bits)), rtol=0, atol=0)
    z = torch.randn(1, TOY.vae_bits, 2, 2)
    torch.testing.assert_close(vae2.decode(z), vae.decode(z), rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_bad_checkpoints_get_one_line(tmp_path, damage):
    _, _, sd, _ = save_official(tmp_path)
    key = "block_chunks.1.module.0.ffn.fc2.weight"
    if damage == "missing":
        del sd[key]
    elif damage == "extra":
        sd["block_chunks.1.module.0.ffn.fc3.weight"] = sd[key].clone()
    else:
        sd[key] = sd[key][:, :-1].clone()
    torch.save(sd, tmp_path / "t.pth")
    with pytest.raises(UserError) as e:
        load(tmp_path / "t.pth", tmp_path / "v.pth", hw=TOY_HW)
    assert "\n" not in str(e.value) and ("ffn.fc" in str(e.value))


def test_vae_keys_without_wrapper_level_are_accepted():
    with torch.device("meta"):
        vae = BSQVAE(VAE_CONFIGS["d32"])
    own = set(vae.state_dict())
    flat = {k.replace(".conv.weight", ".weight").replace(".norm.bias", ".bias"): 0 for k in own}
    assert set(normalise_vae_keys(flat, own)) == own
    assert "decoder.up.4.upsample.conv.conv.weight" in own and "encoder.down.0.downsample.conv.conv.weight" in own


def test_vae_decodes_sixteen_pixels_per_code():
    with torch.device("meta"):
        vae = BSQVAE(VAE_CONFIGS["d32"])
    assert vae.downsample == 16 and BSQVAE.__name__
    small = BSQVAE(type(VAE_CONFIGS["d32"])(bits=4, ch=32, ch_mult=(1, 2), num_res_blocks=1))
    small.init_weights(torch.Generator().manual_seed(0))
    img = small.decode(torch.randn(1, 4, 3, 5))
    assert img.shape == (1, 3, 6, 10) and img.abs().max() <= 1
