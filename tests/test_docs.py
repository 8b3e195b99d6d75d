"""The documentation that is generated from the code stays in step with it."""
from pathlib import Path

from litevar.commands.docs import cli_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == cli_markdown(), (
        "docs/cli.md is out of date: run `python -m litevar.commands.docs > docs/cli.md`")


def test_profile_schema_page_states_every_rule():
    from litevar.profiler.schema import rules_markdown
    assert rules_markdown() in (ROOT / "docs" / "profile-schema.md").read_text(), (
        "docs/profile-schema.md lacks the current rules table: paste `python -m profiler.schema` into it")
