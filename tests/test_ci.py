"""CI runs exactly the README's test command: the command after "Test (what CI runs" in README.md
is the last line of .ci/run, and that command lints (ruff), checks the Luau format (StyLua), tests, and
runs the mutation check (a check of the suite, its own step)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"Test \(what CI runs.*?\n```bash\n(.+?)\n```", text, re.S)
    assert match, "README.md lost its test command block"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = readme_test_command()
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == command
    parts = ("ruff check .", "ruff format --check .", "npx stylua --check .", "python -m pytest",
             "python -m pytest --mutations tests/test_mutations.py")  # fmt: skip
    for part in parts:
        assert part in command, part
    assert "@johnnymorganz/stylua-bin" in (ROOT / "roblox/package.json").read_text()
