"""Packaging: pyproject.toml, environment.yml, the README's commands and CI agree."""
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def _environment_pip_lines() -> list[str]:
    pip_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if stripped.strip() == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("      - "):
            pip_lines.append(stripped.strip()[2:])
    return pip_lines


def test_environment_yml_matches_pyproject():
    extras = PROJECT["optional-dependencies"]
    own = re.compile(rf"^{PROJECT['name']}\[")  # the test extra names the repro extra as pst[repro]
    declared = [r for r in (*PROJECT["dependencies"], *extras["repro"], *extras["test"]) if not own.match(r)]
    pip_lines = _environment_pip_lines()
    assert "-e ." in pip_lines, "environment.yml must install the package itself"
    assert sorted(_normalise(r) for r in pip_lines if r != "-e .") == sorted(_normalise(r) for r in declared)


def test_the_test_extra_runs_the_whole_suite():
    """The suite covers the reproduction, so its extra must bring the reproduction's packages."""
    assert f"{PROJECT['name']}[repro]" in PROJECT["optional-dependencies"]["test"]


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pip install -e \"\.\[test\]\" && (python -m pytest.*)$", readme, re.M)
    assert command, "README must show the test command"
    assert command.group(0) in ci


def test_readme_installs_the_reproduction_before_running_it():
    """`pip install -e .` is the library alone: every README command that runs reproduce.py
    must install the `repro` extra first."""
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"^(pip install [^\n]*?)&& python reproduce\.py", readme, re.M)
    assert installs, "README must show how to install and run the reproduction"
    assert all('".[repro]"' in install for install in installs), installs


# -- .ci/install-torch ------------------------------------------------------------------------


def _fake_python(tmp_path: Path, has_torch: bool) -> Path:
    """An interpreter stand-in: answers `import torch`, the version tag, and logs pip installs."""
    script = tmp_path / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = "-c" ] && [[ "$2" == "import torch" ]]; then exit {0 if has_torch else 1}; fi\n'
        'if [ "$1" = "-c" ]; then echo cp311; exit 0; fi\n'
        f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$@" >> "{tmp_path}/pip.log"; exit 0; fi\n'
        "exit 2\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _install_torch(tmp_path: Path, has_torch: bool, wheels: list[str]) -> subprocess.CompletedProcess:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in wheels:
        (folder / name).write_bytes(b"")
    env = {**os.environ, "PYTHON": str(_fake_python(tmp_path, has_torch)), "PST_WHEELS": str(folder)}
    return subprocess.run([str(ROOT / ".ci" / "install-torch")], env=env, capture_output=True, text=True)


def _pip_log(tmp_path: Path) -> str:
    log = tmp_path / "pip.log"
    return log.read_text() if log.is_file() else ""


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_ci_installs_the_cpu_wheel_when_torch_is_missing(tmp_path):
    wheels = ["torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
              "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
              "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"]
    result = _install_torch(tmp_path, has_torch=False, wheels=wheels)
    assert result.returncode == 0, result.stderr
    assert _pip_log(tmp_path).split() == ["-m", "pip", "install", str(tmp_path / "wheels" / wheels[1])]


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_ci_leaves_an_installed_torch_alone(tmp_path):
    result = _install_torch(tmp_path, has_torch=True, wheels=["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"])
    assert result.returncode == 0 and _pip_log(tmp_path) == ""


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_ci_never_downloads_torch(tmp_path):
    result = _install_torch(tmp_path, has_torch=False, wheels=["torch-2.13.0-cp311-cp311-linux_x86_64.whl"])
    assert result.returncode != 0 and _pip_log(tmp_path) == ""
    assert "no CPU wheel for cp311" in result.stderr
