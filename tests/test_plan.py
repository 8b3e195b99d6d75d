"""The plan file: round trip, and every malformed plan is one UserError line naming the fix."""
import json
import os

import pytest

from litevar.commands.cli import main
from litevar.kernels.windows import FULL, WindowConfig
from litevar.models.core.errors import UserError
from litevar.models.var.schedules import SCHEDULES
from litevar.planner.plan import Plan

ARCH = {"depth": 4, "embed_dim": 256, "num_heads": 4, "mlp_ratio": 4.0, "V": 512, "Cvae": 16, "num_classes": 10}
PNS = SCHEDULES[256]
SHA = "ab" * 32


def all_linears(depth: int = 4) -> list[str]:
    blocks = [f"blocks.{i}.{n}" for i in range(depth)
              for n in ("attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2", "ada_lin.1")]
    return ["word_embed", *blocks, "head_nm.ada_lin.1", "head"]


def make_plan(arch=ARCH, sha=SHA, resolution=256, **kw) -> Plan:
    """A complete plan for the default model's architecture (every linear named)."""
    formats = {n: "fp" for n in all_linears(arch["depth"])}
    formats.update(kw.pop("formats", {"blocks.0.ffn.fc1": "W8A8", "blocks.1.attn.proj": "W8A8",
                                      "head": "W4A8"}))
    fields = dict(name="test-plan", batch=1, device={"type": "cpu", "name": "test cpu"},
                  profile_sha256="cd" * 32, budgets={"max_latency_ms": 60.0, "max_memory_gib": None},
                  solver={"name": "PULP_CBC_CMD", "status": "Optimal", "gap": 0.0},
                  predicted={"latency_ms": 55.0, "memory_mb": 120.0, "dense_latency_ms": 80.0,
                             "dense_memory_mb": 150.0, "speedup": 80 / 55, "loss": 0.01},
                  windows=WindowConfig.uniform(SCHEDULES[resolution], [1], arch["num_heads"], 3),
                  qk_int8=[3], cfg_shared=[2], kv_layout={"heads": arch["num_heads"],
                                                          "head_dim": arch["embed_dim"] // arch["num_heads"]})
    fields.update(kw)
    return Plan(model={"name": "default", "weights_sha256": sha, "arch": dict(arch)},
                resolution=resolution, patch_nums=SCHEDULES[resolution], formats=formats, **fields)


def test_round_trip_dict_and_json_text(tmp_path):
    p = make_plan()
    q = Plan.from_dict(p.to_dict())
    assert q == p and q.to_json() == p.to_json()
    assert Plan.from_dict(json.loads(p.to_json())) == p
    path = p.save(tmp_path / "plan.json")
    assert path.read_text() == p.to_json()
    assert Plan.load(path) == p and Plan.load(path).to_json() == p.to_json()
    assert sorted(os.listdir(tmp_path)) == ["plan.json"]  # atomic write left no temp file
    assert make_plan(windows=None, qk_int8=[], cfg_shared=[]) == Plan.from_dict(
        make_plan(windows=None, qk_int8=[], cfg_shared=[]).to_dict())


def test_plain_data_is_normalised_to_what_json_reads_back(tmp_path):
    import numpy as np
    p = make_plan(solver={"name": "PULP_CBC_CMD", "seconds": np.float64(0.25), "bounds": (1, 2)})
    assert p.solver == {"name": "PULP_CBC_CMD", "seconds": 0.25, "bounds": [1, 2]}
    assert Plan.load(p.save(tmp_path / "plan.json")) == p
    with pytest.raises(UserError, match="plan predicted must be JSON data"):
        make_plan(predicted={"latency_ms": object()})


def test_plan_keys_follow_the_schema():
    d = make_plan().to_dict()
    assert list(d) == ["format", "version", "name", "model", "resolution", "patch_nums", "batch", "device",
                       "profile_sha256", "budgets", "solver", "predicted", "formats", "qk_int8", "windows",
                       "cfg_shared", "kv", "kv_layout", "dtype"]
    assert d["format"] == "litevar-plan" and d["version"] == 3
    w = d["windows"]
    assert w["widths"]["1"][0][9][0] == FULL and w["widths"]["1"][0][9][9] == 3 and w["family"] == "band"


def test_plans_differ_when_a_field_differs():
    assert make_plan() != make_plan(cfg_shared=[1])
    assert make_plan() != make_plan(windows=None)


def _windows_with(widths_1: list) -> dict:
    return {"version": 1, "patch_nums": list(PNS), "family": "band", "widths": {"1": widths_1}}


def _wide_window() -> list:
    w = WindowConfig.uniform(PNS, [1], 4, 3).widths[1].clone()
    w[0, 4, 2] = 9  # part 2 is 3x3 tokens: the band half-width is at most 8
    return w.tolist()


def _edit(d: dict, path: tuple | None, value) -> dict:
    if path is None:  # value: a function of the whole dict
        value(d)
        return d
    node = d
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


# (edit of a valid plan dict, words the one-line message must contain)
BAD_PLANS = {
    "wrong_version": (("version",), 4, ["version 4", "reads versions 1, 2, 3"]),
    "wrong_format": (("format",), "litevar-profile", ["not a litevar plan", "litevar plan"]),
    "missing_formats": (("formats",), KeyError, ["missing", "formats"]),
    "unknown_field": (("extra",), 1, ["unknown field", "extra"]),
    "missing_arch_key": (("model", "arch", "V"), KeyError, ["model.arch", "V"]),
    "bad_sha": (("model", "weights_sha256"), "xyz", ["weights_sha256", "sha256"]),
    "unknown_layer_index": (("formats", "blocks.7.ffn.fc1"), "W8A8", ["blocks.7.ffn.fc1", "blocks 0..3"]),
    "unknown_layer_name": (("formats", "blocks.0.ffn.fc3"), "W8A8", ["unknown layer", "blocks.0.ffn.fc3"]),
    "unknown_format": (("formats", "blocks.0.ffn.fc1"), "W3A3", ["W3A3", "unknown format", "W8A8"]),
    "window_larger_than_scale": (("windows",), _windows_with(_wide_window()), ["part 2", "at most 8"]),
    "window_layer_out_of_range": (("windows", "widths", "9"), [[[FULL] * 10] * 10] * 4, ["layer(s) [9]", "0..3"]),
    "window_head_count": (("windows",), _windows_with([[[FULL] * 10] * 10] * 2), ["2 heads", "H = 4"]),
    "window_shape": (("windows",), _windows_with([[FULL] * 10] * 4), ["shape", "[H, 10, 10]"]),
    "window_malformed": (("windows",), {"patch_nums": list(PNS)}, ["windows are malformed", "missing key 'family'"]),
    "qk_int8_out_of_range": (("qk_int8",), [4], ["qk_int8", "0..3"]),
    "cfg_shared_out_of_range": (("cfg_shared",), [-1], ["cfg_shared", "0..3"]),
    "schedule_mismatch": (("patch_nums",), list(SCHEDULES[512]), ["not the 256 px schedule"]),
    "unknown_resolution": (("resolution",), 300, ["resolution 300", "256"]),
    "bad_batch": (("batch",), 0, ["batch 0", "positive"]),
    "bad_patch_nums_type": (("patch_nums",), "1,2", ["patch_nums '1,2'", "list of integers"]),
    "bad_formats_type": (("formats",), ["W8A8"], ["formats must map"]),
    "unknown_kv_format": (("kv",), {"0": {"format": "KV3"}}, ["kv[0] format 'KV3'", "unknown KV-cache format", "KV8"]),
    "kv_block_out_of_range": (("kv",), {"7": {"format": "KV8"}}, ["kv names block(s) [7]", "0..3"]),
    "kv_bad_keep": (("kv",), {"0": {"format": "KV8", "keep": {"sinks": 1, "recent": 0}}}, ["recent=0", "recent >= 1"]),
    "kv_without_layout": (None, lambda d: d.update(kv={"0": {"format": "KV8"}}, kv_layout={}), ["kv_layout", "heads"]),
    "evicts_a_scale_a_window_reads": (("kv",), {"1": {"format": "KV8", "keep": {"sinks": 1, "recent": 1}}},
                                      ["evicts scale 1 from block 1", "window at scale 2"]),
}


def bad_plan_file(tmp_path, case: str):
    path = tmp_path / f"{case}.json"
    d = _edit(make_plan().to_dict(), *BAD_PLANS[case][:2])
    path.write_text(json.dumps(d))
    return path, BAD_PLANS[case][2]


def assert_one_line(msg: str, *needles):
    assert "\n" not in msg and "Traceback" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_malformed_plan_is_one_line_user_error(tmp_path, case):
    path, needles = bad_plan_file(tmp_path, case)
    with pytest.raises(UserError) as e:
        Plan.load(path)
    assert_one_line(str(e.value), str(path), *needles)


@pytest.mark.parametrize("text,needles", [
    ("", ["not valid JSON", "truncated"]),
    ("hello", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["JSON object"]),
])
def test_not_a_plan_is_one_line_user_error(tmp_path, text, needles):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        Plan.load(path)
    assert_one_line(str(e.value), *needles)


def test_truncated_and_missing_files(tmp_path):
    path = make_plan().save(tmp_path / "plan.json")
    path.write_text(path.read_text()[:300])
    with pytest.raises(UserError) as e:
        Plan.load(path)
    assert_one_line(str(e.value), "not valid JSON", "truncated")
    with pytest.raises(UserError) as e:
        Plan.load(tmp_path / "nope.json")
    assert_one_line(str(e.value), "nope.json", "not found")


def _json_readers():
    from litevar.commands.results import read_result
    from litevar.profiler.devices import load_target
    from litevar.profiler.profile import Profile
    return {"plan": Plan.load, "profile": Profile.load, "calibration": lambda p: load_target(str(p)),
            "result": read_result}


@pytest.mark.parametrize("reader", ["plan", "profile", "calibration", "result"])
@pytest.mark.parametrize("content,needle", [(None, "not found"),
                                            (b"\xff\xfe\x00\x81 bytes", "not a readable text file"),
                                            (b'{"format": "litevar-', "not valid JSON (line 1")])
def test_every_json_file_reader_names_the_file_and_the_fix(tmp_path, reader, content, needle):
    """Plans, profiles, calibrations and result files go through one reader (atomic.read_json): a
    missing, binary or truncated file is one line naming the file, what is wrong and the command
    that writes a good one."""
    path = tmp_path / "file.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as e:
        _json_readers()[reader](path)
    assert_one_line(str(e.value), str(path), needle)
    assert "litevar" in str(e.value) or "re-run" in str(e.value), str(e.value)


def test_constructing_a_bad_plan_fails_early():
    with pytest.raises(UserError, match="W3A3"):
        make_plan(formats={"head": "W3A3"})


def test_check_model_names_every_mismatch():
    p = make_plan()
    p.check_model(ARCH, SHA, PNS)  # fits
    p.check_model(ARCH, None, PNS)  # weights unknown: not compared
    with pytest.raises(UserError) as e:
        p.check_model({**ARCH, "depth": 8, "embed_dim": 512}, SHA, PNS)
    assert_one_line(str(e.value), "depth: plan 4, model 8", "embed_dim: plan 256, model 512")
    with pytest.raises(UserError) as e:
        p.check_model(ARCH, "ef" * 32, SCHEDULES[512])
    assert_one_line(str(e.value), "weights differ", "plan 256 px", "model 512 px")


@pytest.mark.parametrize("command", ["generate", "bench"])
@pytest.mark.parametrize("case", ["wrong_version", "unknown_layer_index", "window_larger_than_scale",
                                  "unknown_format", "window_head_count", "unknown_kv_format",
                                  "evicts_a_scale_a_window_reads"])
def test_cli_bad_plan_exits_2_with_one_line(tmp_path, capsys, command, case):
    path, needles = bad_plan_file(tmp_path, case)
    rc = main([command, "--plan", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert_one_line(lines[0], f"litevar {command}: error:", *needles)


def test_cli_truncated_plan(tmp_path, capsys):
    path = make_plan().save(tmp_path / "plan.json")
    path.write_text(path.read_text()[:100])
    assert main(["bench", "--plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated" in err


def test_version_1_plans_load_without_kv_decisions(tmp_path):
    d = make_plan().to_dict()
    d["version"] = 1
    del d["kv"], d["kv_layout"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(d))
    p = Plan.load(path)
    assert p.version == 3 and p.kv == {} and p.kv_spec(0).plain and p.dtype is None


def test_kv_plan_for_another_cache_layout_is_refused(tmp_path, capsys):
    """A KV plan applied to a model whose cache layout differs: one line, exit 2."""
    from litevar.kernels.kvcache import KeepRule
    p = make_plan(kv={"2": {"format": "KV4", "keep": {"sinks": 1, "recent": 2}}}, windows=None,
                  kv_layout={"heads": 8, "head_dim": 32})
    assert p.kv_spec(2).keep == KeepRule(1, 2) and p.kv_spec(2).cfg_shared  # block 2 is CFG-shared
    with pytest.raises(UserError) as e:
        p.check_model(ARCH, SHA, PNS)
    assert_one_line(str(e.value), "KV cache layout differs", "plan 8 heads x 32", "model 4 x 64")
    path = p.save(tmp_path / "kv.json")
    rc = main(["generate", "--plan", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "KV cache layout differs" in err
