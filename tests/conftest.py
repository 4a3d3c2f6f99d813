"""Shared test helpers: compose the real config, run the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import otpe_cli.config  # noqa: F401  (registers the structured-config schemas)

# The fused kernels' build cache, fixed before any test points HOME elsewhere (the W&B tests
# do): otherwise every otpe-train those tests start builds the kernels anew (~25 s each).
os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                      str(Path.home() / ".cache" / "torch_extensions"))

#: tiny sizes that still train: the real code path, seconds per run
TINY = ["model.width=16", "trainer.batch_size=32", "dataset.test_samples_per_class=20",
        "trainer.eval_every=10", "trainer.log_every=5", "trainer.align_every=10",
        "trainer.checkpoint_every=0", "trainer.progress=none"]


def compose_cfg(overrides=()):
    with initialize_config_module(config_module="otpe_cli.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def make_cfg():
    return compose_cfg


def run_cli(args, cwd, env=None, timeout=300, executable="otpe-train"):
    """Run a console script as a user would; returns CompletedProcess with text output."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    exe = str(Path(sys.executable).with_name(executable))
    if not Path(exe).exists():
        exe = executable
    return subprocess.run([exe, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the same numerics in-process and in a subprocess run with
    OMP_NUM_THREADS=1, and no oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def strip_time(rows):
    """metrics rows without their wall-clock keys (the part that must replay exactly)."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]
