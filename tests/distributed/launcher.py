"""Run a script under torchrun on CPU (gloo), 2 processes, one thread each, for the distributed tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc <args>``; fails the test with the output on error."""
    return _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
                   cwd, timeout)


def accelerate_launch(args: list[str], cwd: Path, nproc: int = 2,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes nproc <args>``: on a machine without GPUs the
    same DDP launcher, on gloo (``--cpu`` would start independent single processes instead)."""
    return _launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
                    "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", *args], cwd, timeout)


def _launch(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    import pytest

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"torchrun timed out after {timeout} s: {' '.join(command)}\n{error.stderr}")
    if done.returncode != 0:
        pytest.fail(f"torchrun exited with {done.returncode}: {' '.join(command)}\n"
                    f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    return done
