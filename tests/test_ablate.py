"""`litevar ablate` on the shipped model and profile (tiny sample counts: the figures' shape,
not their value): every row of the chosen table, the dense row at zero loss, markdown + JSON."""
import json
from pathlib import Path

from tests.cli_util import assert_one_line_error, run_cli

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "default-cpu.json"


def test_ablate_table3_writes_markdown_and_json(tmp_path, capsys):
    md, js = tmp_path / "ablation.md", tmp_path / "ablation.json"
    rc, out, err = run_cli(capsys, "ablate", "--profile", PROFILE, "--tables", "3", "--n", 2, "--calib", 1,
                           "--batch", 2, "--out", md, "--json", js)
    assert rc == 0, err
    r = json.loads(js.read_text())
    assert r["format"] == "litevar-result" and r["provenance"]["command"].startswith("litevar ablate")
    r = r["data"]
    rows = r["tables"]["3"]
    assert [row["recipe"] for row in rows] == ["dense", "mdwa0.95", "mdwa0.95+asc", "w4a8+qk8+mdwa0.95+asc", "paper"]
    dense, asc = rows[0], rows[2]
    assert abs(dense["loss"]) < 1e-6 and dense["top1"] == 1.0 and dense["attn_flops_saved"] == 0.0
    assert asc["attn_flops_saved"] > 0.4  # ASC alone halves the attention of every block
    assert rows[4]["avg_bits"] < 16 and rows[4]["paper"] == {"fid": 13.34, "is": 224.74}
    # each recipe is applied, not just named: the paper's W4A8 + QK8 + ASC moves the output
    # distribution by far more than sampling noise (the profile predicts ~2 nats; dense is 0)
    assert rows[4]["loss"] > 0.1 and rows[2]["loss"] > rows[0]["loss"] + 1e-3
    assert all(0 <= row["class_accuracy"] <= 1 for row in rows)
    text = md.read_text()
    assert "## Table 3" in text and text.count("\n| ") == 1 + len(rows) and text in out


def test_ablate_bad_tables(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "ablate", "--profile", PROFILE, "--tables", "4")
    assert_one_line_error(rc, err, "--tables '4'")
