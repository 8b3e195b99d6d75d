"""README's code runs as written: its Python blocks, and its workflow's commands at toy size.

The first bash block (set up and run; test) is what CI runs. The Python blocks are executed as
they are. Every `$ litevar ...` line of the workflow's text blocks is run through the CLI with
its output files moved to a temporary folder and its long knobs shortened (--repeats 1,
--quality 4; the profile at its cost stage only; a bench runs its first plan and baseline, the
others loaded and parsed only, and a bf16 baseline at fp32 where this CPU emulates bf16): the
flags and files it names must exist and be accepted.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from tests.cli_util import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
SHORTER = {"--repeats": "1", "--quality": "4", "--n": "4"}


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def workflow_commands() -> list[list[str]]:
    out = []
    for body in blocks("text"):
        for line in body.splitlines():
            if line.startswith("$ litevar "):
                out.append(shlex.split(line[2:].split("  #")[0]))
    return out


def test_readme_starts_with_the_two_commands():
    first = [line for line in blocks("bash")[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(first) == 2, first
    assert "pip install" in first[0] and "litevar" in first[0]
    assert "pytest" in first[1]


@pytest.mark.parametrize("i", range(len(blocks("python"))))
def test_python_block_runs(i, tmp_path):
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(blocks("python")[i], f"README.md python block {i}", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)


def _toy(argv: list[str], tmp: Path) -> list[str]:
    out = []
    for j, a in enumerate(argv):
        prev = argv[j - 1] if j else ""
        if prev in SHORTER:
            a = SHORTER[prev]
        elif prev in ("--out", "--json", "--html", "--png", "--markdown"):
            a = str(tmp / Path(a).name)
        out.append(a)
    if out[1] == "profile":
        out += ["--stages", "cost"]
    if out[1] == "bench":
        out = _first_of_each(out, ("--plan", "--baseline"))
    return out[1:]


def _first_of_each(argv: list[str], flags) -> list[str]:
    """argv with only the first value of each of `flags`; the others are checked to be accepted
    (a plan file that loads, a baseline that parses) without being run."""
    from litevar.commands.bench import parse_baseline
    from litevar.planner.plan import Plan
    out, kept, i = [], set(), 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv):
            flag, value = argv[i], argv[i + 1]
            if flag in kept and flag == "--plan":
                Plan.load(value)
            elif flag in kept:
                parse_baseline(value)
            else:
                kept.add(flag)
                out += [flag, _here(value) if flag == "--baseline" else value]
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _here(baseline: str) -> str:
    """The baseline at fp32 where this CPU emulates bf16 (an AVX2-only CPU: 2.9 s a generation of
    the default model, against 0.19 s at fp32); the same code path at another dtype."""
    from litevar.commands.bench import parse_baseline
    from litevar.models.core.device import device_of
    dtype, compiled = parse_baseline(baseline)
    if dtype == "bf16" and not device_of("cpu").bf16_faster():
        return "fp32+compile" if compiled else "fp32"
    return baseline


@pytest.mark.slow
@pytest.mark.parametrize("argv", workflow_commands(), ids=lambda a: " ".join(a[:2]))
def test_workflow_command_runs_at_toy_size(argv, tmp_path, capsys):
    if argv[1] == "profile":
        pytest.skip("profiling the default model takes minutes: tests/test_profile.py runs it at toy size")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc, out, err = run_cli(capsys, *_toy(argv, tmp_path))
    finally:
        os.chdir(cwd)
    assert rc == 0, err
