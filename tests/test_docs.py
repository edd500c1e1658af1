"""The documents that promise an interface keep promising the one the code has."""

from pathlib import Path

from treeship.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent


def test_every_exit_code_is_documented():
    text = (ROOT / "docs" / "cli.md").read_text()
    for code in EXIT_CODES:
        assert f"\n| {code} |" in text, f"exit code {code} missing from docs/cli.md"


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):]
    assert quick.index("make demo") < quick.index("make test") < quick.index("##", 3)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
