"""Fixtures shared by the tests (their helpers are in helpers.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import otpe_cli.config  # noqa: F401  (registers the structured-config schemas)
from helpers import compose_cfg, run_cli

# The fused kernels' build cache, fixed before any test points HOME elsewhere (the W&B tests
# do): otherwise every otpe-train those tests start builds the kernels anew (~45 s each).
os.environ.setdefault("TORCH_EXTENSIONS_DIR",
                      str(Path.home() / ".cache" / "torch_extensions"))


@pytest.fixture
def make_cfg():
    return compose_cfg


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
