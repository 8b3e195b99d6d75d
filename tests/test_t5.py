"""Infinity's text encoder (models/infinity/t5.py), without weights: shapes, parameter counts, the
T5 checkpoint names, relative-position buckets, padding, strict loading from a model directory."""
import json
import random

import pytest
import torch

from litevar.models.core.errors import UserError
from litevar.models.infinity.t5 import (
    T5_CONFIGS,
    T5Config,
    T5Encoder,
    encode_prompts,
    encoder_keys,
    load_t5_encoder,
    relative_buckets,
)

SEED = random.randrange(2 ** 31)
TOY = T5Config(vocab=50, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, buckets=8, max_distance=16)


def _toy(seed=SEED) -> T5Encoder:
    return T5Encoder(TOY).init_weights(torch.Generator().manual_seed(seed)).eval()


def test_flan_t5_xl_shape_and_parameters():
    """Flan-T5-XL's encoder: 24 layers of width 2048 (Infinity's text_channels), 32 heads of 64,
    gated FFN of 5120, vocabulary 32,128: 1,223,527,424 parameters (the configuration's equation,
    and the module built from it on the meta device)."""
    cfg = T5_CONFIGS["xl"]
    expect = 32128 * 2048 + 24 * (4 * 2048 * 2048 + 3 * 2048 * 5120 + 2 * 2048) + 32 * 32 + 2048
    assert cfg.param_count() == expect == 1_223_527_424
    with torch.device("meta"):
        enc = T5Encoder(cfg)
    assert sum(p.numel() for p in enc.parameters()) == expect


def test_state_dict_names_are_t5s():
    """The names a T5 encoder checkpoint uses (T5EncoderModel / the encoder of T5ForConditionalGeneration)."""
    want = {"shared.weight", "encoder.final_layer_norm.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
    for i in range(TOY.num_layers):
        p = f"encoder.block.{i}.layer."
        want |= {p + f"0.SelfAttention.{m}.weight" for m in "qkvo"} | {p + "0.layer_norm.weight",
                                                                      p + "1.layer_norm.weight"}
        want |= {p + f"1.DenseReluDense.{m}.weight" for m in ("wi_0", "wi_1", "wo")}
    assert set(_toy().state_dict()) == want


def test_relative_buckets_by_hand():
    """32 buckets up to 128: 16 per direction (later keys from 16 on), exact below 8, then
    8 + floor(log(d / 8) / log(16) * 8), capped at 15."""
    b = relative_buckets(1, 300, 32, 128)[0]  # query 0: offsets 0..299 (keys after it)
    assert [int(b[d]) for d in (0, 1, 7, 8, 16, 32, 127, 128, 299)] == [0, 17, 23, 24, 26, 28, 31, 31, 31]
    b = relative_buckets(300, 1, 32, 128)[:, 0]  # key 0: offsets 0..-299 (keys before the query)
    assert [int(b[d]) for d in (0, 1, 7, 8, 16, 32, 127, 128, 299)] == [0, 1, 7, 8, 10, 12, 15, 15, 15]


def test_padding_does_not_reach_the_prompt():
    """A prompt's states are the same with or without padding after it (keys masked), up to float32
    rounding of the longer softmax sums (relative 1e-6 of unit-scale states)."""
    enc = _toy()
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(2, TOY.vocab, (2, 7), generator=g)
    alone = enc(ids, torch.ones_like(ids, dtype=torch.bool))
    padded = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], 1)
    mask = torch.arange(12)[None] < 7
    out = enc(padded, mask.expand(2, -1))
    torch.testing.assert_close(out[:, :7], alone, rtol=1e-5, atol=1e-6, msg=f"seed {SEED}")
    cond = encode_prompts(enc, padded, mask.expand(2, -1))
    assert cond.lens == (7, 7) and cond.emb_BTC.shape == (2, 12, TOY.d_model)


def _hf_config(cfg: T5Config, act="gated-gelu") -> dict:
    return {"vocab_size": cfg.vocab, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "num_heads": cfg.num_heads,
            "d_ff": cfg.d_ff, "num_layers": cfg.num_layers, "relative_attention_num_buckets": cfg.buckets,
            "relative_attention_max_distance": cfg.max_distance, "layer_norm_epsilon": cfg.eps,
            "feed_forward_proj": act}


def test_loads_a_model_directory_strictly(tmp_path):
    """A T5ForConditionalGeneration-style directory (decoder and LM head beside the encoder, the
    token embedding tied under encoder.embed_tokens) loads into the same encoder, exactly; a
    missing key, a mis-shaped one or another FFN gets one line."""
    from safetensors.torch import save_file
    enc = _toy()
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    full = {**{k: v for k, v in sd.items() if k != "shared.weight"}, "encoder.embed_tokens.weight": sd["shared.weight"],
            "decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(2, 2)}
    assert set(encoder_keys(full)) == set(sd)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(TOY)))
    save_file({k: v.contiguous() for k, v in full.items()}, tmp_path / "model.safetensors")
    again = load_t5_encoder(tmp_path, dtype=torch.float32)
    ids = torch.randint(2, TOY.vocab, (1, 9), generator=torch.Generator().manual_seed(SEED))
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert torch.equal(again(ids, mask), enc(ids, mask))
    del full["encoder.final_layer_norm.weight"]
    save_file({k: v.contiguous() for k, v in full.items()}, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="missing keys.*final_layer_norm"):
        load_t5_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(TOY, act="relu")))
    with pytest.raises(UserError, match="gated-GELU"):
        load_t5_encoder(tmp_path)
    with pytest.raises(UserError, match="no config.json"):
        load_t5_encoder(tmp_path / "nowhere")


def test_tokenizer_ends_with_eos_and_pads(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from litevar.models.infinity.t5 import Tokenizer
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"a photo of a {w} cat on a {v} mat" for w in ("red", "blue", "green", "small")
                                for v in ("wooden", "woolen", "striped")))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=24,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = Tokenizer(tmp_path)
    ids, mask = tok(["a red cat", "a photo of a small blue cat on a striped mat"], max_len=64)
    n = mask.sum(1)
    assert n[0] < n[1] and int(ids[0, n[0] - 1]) == 1 and int(ids[1, n[1] - 1]) == 1
    assert (ids[0, n[0]:] == 0).all() and not mask[0, n[0]:].any()
    short, m = tok(["a photo of a small blue cat on a striped mat"], max_len=4)
    assert short.shape[1] == 4 and int(short[0, 3]) == 1 and m.all()
