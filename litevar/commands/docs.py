"""docs/cli.md, generated from the argparse parsers of every command:

    python -m litevar.commands.docs > docs/cli.md

tests/test_docs.py fails when the file and the parsers drift apart."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from litevar.commands.cli import COMMANDS, build_parser

HEADER = """# Command line reference

Generated from the argument parsers (`python -m litevar.commands.docs > docs/cli.md`); a test fails
when this page and the code drift apart. Every command prints one line on stderr and exits with
status 2 on bad input (a flag out of range, a file that is not what it should be); `litevar -v
COMMAND` logs at debug level.
"""


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest}`"
    metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
    return ", ".join(f"`{s}{metavar}`" for s in action.option_strings)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    default = str(action.default)
    root = str(Path(__file__).resolve().parents[2])
    if default.startswith(root + "/"):  # a path inside the checkout: relative, the same on every clone
        default = default[len(root) + 1:]
    return f"`{default}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|").replace("%%", "%")


def command_markdown(name: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## `litevar {name}`", "", _cell(parser.description), "", "| argument | default | what |",
             "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        choices = f" One of: {', '.join(map(str, action.choices))}." if action.choices else ""
        req = " Required." if action.required and action.option_strings else ""
        lines.append(f"| {_flags(action)} | {_default(action)} | {_cell(action.help)}{choices}{req} |")
    return "\n".join(lines) + "\n"


def cli_markdown() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page must not depend on it
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [HEADER, "| command | what |", "|---|---|"]
    parts += [f"| [`litevar {n}`](#litevar-{n}) | {_cell(h)} |" for n, (_, h) in COMMANDS.items()]
    parts += [""] + [command_markdown(n, sub.choices[n]) for n in COMMANDS]
    return "\n".join(parts)


if __name__ == "__main__":
    print(cli_markdown(), end="")
