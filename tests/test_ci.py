"""CI runs the README's two commands as written (.ci/run reads them from README.md)."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def _readme_commands():
    path = REPO / ".ci" / "readme_commands.py"
    spec = importlib.util.spec_from_file_location("readme_commands", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_two_readme_commands():
    commands = _readme_commands().readme_commands((REPO / "README.md").read_text())
    assert len(commands) == 2, commands
    demo, tests = commands
    # a fresh environment has nothing: each command installs what it runs first
    assert demo.startswith("pip install -r requirements.txt")
    assert tests.startswith("pip install") and "requirements-dev.txt" in tests
    assert "--no-deps -r requirements-monailabel.txt" in tests
    assert tests.endswith("python -m pytest -q -n 2")  # the whole suite, on two workers
    run = (REPO / ".ci" / "run").read_text()
    assert "python -m venv" in run and ".ci/readme_commands.py" in run
    assert "pip install" not in run  # no install step of its own that the README could lack


def test_command_extraction_stops_at_the_next_section():
    text = (
        "# T\n\n## Two commands\n\n```bash\na\n```\n\ntext\n\n```bash\nb \\\n  c\n```\n"
        "\n## Next\n\n```bash\nd\n```\n"
    )
    assert _readme_commands().readme_commands(text) == ["a", "b \\\n  c"]
