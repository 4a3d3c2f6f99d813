"""Helpers shared by the tests: the real config and CLI at tiny sizes, and small float64
networks that spike (for the rules' tests against tests/reference.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import reference as ref
from otpe_cli.config import compose

#: tiny sizes that still train: the real code path, seconds per run
TINY = ["dataset.num_units=10",
        "model.width=16", "trainer.batch_size=32", "dataset.test_samples_per_class=20",
        "trainer.eval_every=10", "trainer.log_every=5", "trainer.align_every=10",
        "trainer.checkpoint_every=0", "trainer.progress=none"]
BETA = ref.BETA_DEFAULT


def compose_cfg(overrides=()):
    """conf/ composed as otpe-train composes it; a refusal is a ConfigError."""
    return compose(list(overrides))


def run_cli(args, cwd, env=None, timeout=300, executable="otpe-train"):
    """Run a console script as a user would; returns CompletedProcess with text output."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    exe = str(Path(sys.executable).with_name(executable))
    if not Path(exe).exists():
        exe = executable
    return subprocess.run([exe, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def crash_at(monkeypatch, iteration: int):
    """Make the trainer die (like SIGKILL: no checkpoint on the way out) before ``iteration``."""
    from otpe_cli.trainer import Trainer

    original = Trainer.train_step

    def train_step(self, x, y, align):
        if self.iteration + 1 == iteration:
            raise SystemExit("killed")
        return original(self, x, y, align)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def strip_time(rows):
    """metrics rows without their wall-clock and memory keys (the part that must replay
    exactly)."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "memory/"))} for r in rows]


def _prod():
    """Import the production API (an ImportError fails the test, it does not skip it)."""
    from otpe_cli import SNN, sequence_gradients

    return SNN, sequence_gradients


def make_x(T, B, n_in, kind, seed, p=0.35):
    g = torch.Generator().manual_seed(seed)
    if kind == "spikes":
        return (torch.rand(T, B, n_in, generator=g, dtype=torch.float64) < p).double()
    if kind == "counts":  # integer event counts 0..3, many zeros
        counts = torch.randint(0, 4, (T, B, n_in), generator=g).double()
        keep = (torch.rand(T, B, n_in, generator=g, dtype=torch.float64) < 0.5).double()
        return counts * keep
    raise ValueError(kind)


def make_y(B, C, seed):
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randint(0, C, (B,), generator=g, dtype=torch.int64)


def param_names(n_layers):
    return [f"layers.{i}.{k}" for i in range(n_layers) for k in ("weight", "bias")]


def model_params(model, n_layers):
    """[(W, b)] per layer from the production model, by the names of the contract."""
    named = dict(model.named_parameters())
    missing = [n for n in param_names(n_layers) if n not in named]
    assert not missing, f"model lacks parameters {missing}; has {sorted(named)}"
    return [(named[f"layers.{i}.weight"], named[f"layers.{i}.bias"]) for i in range(n_layers)]


def spike_fractions(params, x, beta, theta, slope):
    fw = ref.ref_forward(params, x, beta, theta, slope)
    fracs = [float(s.mean()) for s in fw["s"]]
    margin = min(float(np.min(np.abs(v - theta))) for v in fw["v"])
    return fracs, margin


def build_active_model(sizes, x, *, beta=BETA, theta=1.0, slope=25.0, seed0=0,
                       scales=(2.0, 2.5, 3.0), bias_scale=0.05, lo=0.05, hi=0.95,
                       margin_min=1e-6):
    """A float64 production model whose every layer spikes at some but not all positions.

    Parameters come from the production initialiser (seeded), the weights scaled up and the
    biases set to small random values so that bias gradients are exercised.  The first
    (seed, scale) meeting the activity condition is returned, so the choice is deterministic.
    """
    SNN, _ = _prod()
    L = len(sizes) - 1
    for seed in range(seed0, seed0 + 300):
        torch.manual_seed(seed)
        base = SNN(list(sizes), beta=beta, threshold=theta, slope=slope).double()
        orig = {n: p.detach().clone() for n, p in base.named_parameters()}
        g = torch.Generator().manual_seed(seed)
        for scale in scales:
            with torch.no_grad():
                for (W, b), i in zip(model_params(base, L), range(L)):
                    W.copy_(orig[f"layers.{i}.weight"] * scale)
                    b.copy_(bias_scale * torch.randn(b.shape, generator=g, dtype=torch.float64))
            fracs, margin = spike_fractions(model_params(base, L), x, beta, theta, slope)
            if all(lo <= f <= hi for f in fracs) and margin > margin_min:
                return base
    raise AssertionError(f"no active network found for sizes {sizes}")


def assert_active(model, x, n_layers, beta=BETA, theta=1.0, slope=25.0):
    fracs, _ = spike_fractions(model_params(model, n_layers), x, beta, theta, slope)
    for l, f in enumerate(fracs):
        assert 0.0 < f < 1.0, f"layer {l} spike fraction {f}: test would be vacuous"
