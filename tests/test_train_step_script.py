"""benchmarks/train_step.py end to end on a one-layer model: the table it prints and --pst-from."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "train_step.py"
TINY = ["--layers", "1", "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0", "--threads", "1"]


def run(*arguments, check=True):
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *arguments], capture_output=True, text=True,
                          cwd=ROOT, check=check)


@pytest.mark.slow
def test_pst_from_another_checkout_is_timed_beside_the_installed_one(tmp_path):
    checkout = tmp_path / "before"
    shutil.copytree(ROOT / "pst", checkout / "pst")  # a checkout of this very code
    result = run("--methods", "dense", "pst", "--pst-from", str(checkout), "--json", str(tmp_path / "out.json"))
    assert "| pst@before |" in result.stdout
    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert list(results) == ["dense", "pst", "pst@before"]
    assert results["pst@before"]["trainable"] == results["pst"]["trainable"]


def test_pst_from_a_folder_without_pst_is_refused(tmp_path):
    result = run("--methods", "pst", "--pst-from", str(tmp_path), check=False)
    assert result.returncode != 0 and "holding a pst package" in result.stderr
