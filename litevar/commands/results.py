"""Result files: every figure litevar publishes is one, written by a command under benchmarks/ (or
`litevar bench --json`) with where it came from.

    {"format": "litevar-result", "version": 1, "kind": "<what it holds>",
     "provenance": {"command", "git_revision", "git_dirty", "machine", "date", "litevar", "torch"},
     "data": {...}}

`machine` is the device fingerprint the figures were measured on (litevar.models.core.device).
README's and docs/benchmarks.md's tables are rendered from these files (benchmarks/render.py),
and tests/test_results.py fails when a page and its files disagree.
"""
from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
from pathlib import Path

from litevar.models.core.atomic import read_json, write_json
from litevar.models.core.errors import UserError

FORMAT, VERSION = "litevar-result", 1
ROOT = Path(__file__).resolve().parents[2]


def git_revision() -> tuple[str | None, bool | None]:
    """(commit, whether the tree has uncommitted changes) of the checkout, or (None, None)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if rev.returncode != 0:
        return None, None
    return rev.stdout.strip(), bool(dirty.stdout.strip())


def command_line(argv: list[str] | None = None, program: str | None = None) -> str:
    """The command as it was typed: `python benchmarks/x.py ...` or `litevar bench ...`."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    if program is None and script.suffix == ".py" and script.is_relative_to(ROOT):
        program = f"python {script.relative_to(ROOT)}"
    return " ".join([program or Path(argv[0]).name, *(shlex.quote(a) for a in argv[1:])])


def own_version() -> str:
    """This litevar's installed version; '0+unknown' in a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("litevar")
    except PackageNotFoundError:
        return "0+unknown"


def provenance(device="cpu", argv: list[str] | None = None, program: str | None = None) -> dict:
    import torch

    from litevar.models.core.device import fingerprint
    own = own_version()
    rev, dirty = git_revision()
    return {"command": command_line(argv, program), "git_revision": rev, "git_dirty": dirty,
            "machine": fingerprint(device), "date": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), "litevar": own, "torch": torch.__version__}


def write_result(path, kind: str, data: dict, device="cpu", argv: list[str] | None = None,
                 program: str | None = None, started: dict | None = None, **dumps_kw) -> Path:
    """Write a result file atomically (see the module docstring). `started`: the provenance taken
    when the run began (a long run's code is the revision it started on), else taken now;
    `dumps_kw`: json.dumps options (default=str writes values JSON cannot hold as their str)."""
    prov = started or provenance(device, argv, program)
    return write_json(path, {"format": FORMAT, "version": VERSION, "kind": kind, "provenance": prov, "data": data},
                      **dumps_kw)


def write_command_result(args, kind: str, data: dict, device="cpu", **dumps_kw) -> Path:
    """write_result to a `litevar` command's --json, with the command line as typed (the CLI
    keeps it in args._argv)."""
    return write_result(args.json, kind, data, device, argv=getattr(args, "_argv", None), program="litevar",
                        **dumps_kw)


def read_result(path, kind: str | None = None) -> dict:
    """A result file, checked (one line naming the file and the fix otherwise)."""
    path = Path(path)
    d = read_json(path, "result file", "re-run the command that writes it")
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
        raise UserError(f"{path}: not a litevar result file version {VERSION}; re-run the command that writes it")
    if kind is not None and d.get("kind") != kind:
        raise UserError(f"{path}: holds {d.get('kind')!r} results, expected {kind!r}")
    return d
