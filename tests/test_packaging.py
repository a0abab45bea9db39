"""pyproject.toml and environment.yml must install the same packages."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    pip_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if stripped.strip() == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("      - "):
            pip_lines.append(stripped.strip()[2:])
    conda_pip = {line for line in pip_lines if line != "-e ."}
    assert "-e ." in pip_lines, "environment.yml must install the package itself"
    assert {_normalise(r) for r in conda_pip} == {_normalise(r) for r in declared}


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pip install -e \"\.\[test\]\" && (python -m pytest.*)$", readme, re.M)
    assert command, "README must show the test command"
    assert command.group(1) in ci
