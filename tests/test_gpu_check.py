"""benchmarks/gpu_check.py is run by hand on the rare machine with a GPU, so CI runs it on CPU at a toy
size to keep it working: it must get through both stages and print its report, with either rollout
backend (vllm through tests/stand_ins/vllm)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import STAND_INS

REPO = Path(__file__).resolve().parent.parent
TOY = "--device cpu --hidden-size 64 --layers 2 --intermediate-size 128 --heads 2 --kv-heads 1"
TOY += " --batch-size 4 --samples 2 --micro-batch-size 2 --max-new-tokens 4 --steps 2"


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_gpu_check_runs_end_to_end_on_cpu_at_toy_size(backend, embedded_checkpoint):
    env = dict(os.environ)
    if backend == "vllm":
        env["PYTHONPATH"] = os.pathsep.join([str(STAND_INS), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *TOY.split(), "--rollout-backend", backend],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage 2 step 2:" in done.stdout and "== SCoRe GPU check ==" in done.stdout
    assert f"{backend} rollouts" in done.stdout
    assert "KL at step 1    t1 0, t2 0 " in done.stdout
