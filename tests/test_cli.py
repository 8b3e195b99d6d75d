"""The `litevar` command line: every bad input is one line on stderr and exit code 2."""
import pytest
import torch

from tests.cli_util import assert_one_line_error, run_cli
from tests.test_parity import make_small


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_small(tmp_path_factory.mktemp("ckpt"), depth=2)


def test_generate_writes_png_and_same_seed_same_image(ckpts, tmp_path, capsys):
    var_path, vae_path = ckpts
    outs = []
    for name in ("a.png", "b.png"):
        rc, out, _ = run_cli(capsys, "generate", "--ckpt", str(var_path), "--vae", str(vae_path), "--classes", "1,2,3",
                             "--seed", "5", "--top-k", "10", "--out", str(tmp_path / name))
        assert rc == 0 and "wrote" in out
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_checkpoint(ckpts, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(tmp_path / "nope.pth"), "--vae", str(ckpts[1]))
    assert_one_line_error(rc, err, "not found", "nope.pth")


def test_not_a_checkpoint(ckpts, tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(junk), "--vae", str(ckpts[1]))
    assert_one_line_error(rc, err, "not a PyTorch or safetensors checkpoint")


def test_swapped_checkpoints(ckpts, capsys):
    var_path, vae_path = ckpts
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(vae_path), "--vae", str(var_path))
    assert_one_line_error(rc, err, "not a VAR checkpoint")


def test_key_mismatch_names_keys_and_implied_config(ckpts, tmp_path, capsys):
    var_path, vae_path = ckpts
    sd = torch.load(var_path)
    sd.pop("blocks.1.ffn.fc2.bias")
    sd["blocks.1.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(bad), "--vae", str(vae_path))
    assert_one_line_error(rc, err, "blocks.1.ffn.fc2.bias", "blocks.1.extra", "depth=2", "shared_aln=False",
                          "attn_l2_norm=True")


@pytest.mark.parametrize("which, bad", [("var", float("nan")), ("vae", float("inf"))])
def test_non_finite_weights_are_named_at_load(ckpts, tmp_path, capsys, which, bad):
    """One non-finite value in one tensor: refused at load, naming the tensor, not a sampling
    traceback later."""
    var_path, vae_path = ckpts
    path = var_path if which == "var" else vae_path
    sd = torch.load(path)
    name = next(k for k, t in sd.items() if t.is_floating_point() and t.numel() > 1)
    sd[name].view(-1)[torch.randint(sd[name].numel(), ()).item()] = bad
    out = tmp_path / f"bad-{which}.pth"
    torch.save(sd, out)
    paths = (out, vae_path) if which == "var" else (var_path, out)
    rc, _, err = run_cli(capsys, "generate", "--ckpt", paths[0], "--vae", paths[1], "--out", tmp_path / "x.png")
    assert_one_line_error(rc, err, name, "non-finite", "corrupt")


def test_depth_mismatch(ckpts, capsys):
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(ckpts[0]), "--vae", str(ckpts[1]), "--depth", "16")
    assert_one_line_error(rc, err, "--depth 16", "depth=2")


def test_class_out_of_range(ckpts, capsys):
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(ckpts[0]), "--vae", str(ckpts[1]), "--classes", "3,10")
    assert_one_line_error(rc, err, "out of range", "0..9")


@pytest.mark.parametrize("pns", ["1,2,x", "3,2,1", "4"])
def test_invalid_patch_nums(ckpts, capsys, pns):
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(ckpts[0]), "--vae", str(ckpts[1]), "--patch-nums", pns)
    assert_one_line_error(rc, err, "patch_nums")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_gpu(ckpts, capsys):
    rc, _, err = run_cli(capsys, "generate", "--ckpt", str(ckpts[0]), "--vae", str(ckpts[1]), "--device", "cuda")
    assert_one_line_error(rc, err, "no CUDA device")


def test_random_init_needs_depth(capsys):
    rc, _, err = run_cli(capsys, "generate", "--random-init")
    assert_one_line_error(rc, err, "--depth")


def numeric_flags():
    """(command, flag, checker) of every numeric flag of every command (litevar.commands.args)."""
    import argparse

    from litevar.commands.args import Number, NumberList, guard_value
    from litevar.commands.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [(cmd, "/".join(a.option_strings), a.type) for cmd, parser in sub.choices.items() for a in parser._actions
            if isinstance(a.type, (Number, NumberList)) or a.type is guard_value]


def bad_values(checker):
    from litevar.commands.args import NumberList, guard_value
    if checker is guard_value:
        return ["nan", "inf", "-0.1", "1", "often"]
    if isinstance(checker, NumberList):
        return [f"1,{v}" for v in bad_values(checker.item)] + [","]
    return ["nan", "inf", "-inf", "ten"] + ([checker.outside()] if checker.outside() is not None else [])


def test_every_numeric_flag_refuses_nan_inf_and_out_of_range(capsys):
    flags = numeric_flags()
    assert len(flags) >= 40 and {("generate", "--cfg"), ("generate", "--top-p"), ("plan", "--gap")} <= {
        (c, f) for c, f, _ in flags}
    for cmd, flag, checker in flags:
        for value in bad_values(checker):
            rc, _, err = run_cli(capsys, cmd, flag.split("/")[-1], value)
            assert_one_line_error(rc, err, f"litevar {cmd}: error: argument {flag}")


def test_parser_errors_are_one_line(capsys):
    rc, _, err = run_cli(capsys, "plan", "--bogus")
    assert_one_line_error(rc, err, "litevar plan: error:")
