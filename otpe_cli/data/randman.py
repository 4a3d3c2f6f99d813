"""Randman and T-Randman: random smooth manifolds per class, spike-encoded (SPEC §6).

Each class c owns a map R^D → R^M whose coordinate m is Π_d g_{c,m,d}(x_d) with
g(x) = Σ_{i<K} a_i·s_i·sin(2π(i·f_i·x + φ_i)), a, f, φ ~ U(0,1), a_0 = 0,
s_i = 1/((i+1)^α + 1), K = min(⌈1000^{1/α}⌉, 1000). Values are min–max normalised per class
and per unit (statistics from the fixed test set's points), then k = ⌊T·y⌋ gives the spike
times: one spike at step k (``time``) or k+1 distinct random steps (``rate``).
"""
from __future__ import annotations

import math

import torch

from .base import SpikeDataset

#: samples evaluated at once, in one reused work buffer of _CHUNK × M × D × K floats (~10 MB at
#: the defaults). A fresh 80 MB intermediate per batch cost 3× more, mostly in page faults.
#: The weighted sum over K is an in-place multiply and a sum over the last, contiguous axis:
#: as a batched matrix–vector product (what einsum makes of it) it took as long as the sines.
_CHUNK = 16


class RandmanManifolds:
    """The fixed random manifolds of every class, built from one seed."""

    def __init__(self, num_classes: int, num_units: int, dim: int, alpha: float, seed: int):
        self.num_classes, self.num_units, self.dim = num_classes, num_units, dim
        K = min(math.ceil(1000 ** (1.0 / alpha)), 1000)
        g = torch.Generator().manual_seed(seed)
        shape = (num_classes, num_units, dim, K)
        a, f, phi = (torch.rand(shape, generator=g) for _ in range(3))
        a[..., 0] = 0.0
        i = torch.arange(K, dtype=torch.float32)
        spectral = 1.0 / ((i + 1.0) ** alpha + 1.0)
        self.amplitude = a * spectral                     # a_i·s_i
        self.angular = 2 * math.pi * i * f                # 2π·i·f_i
        self.phase = 2 * math.pi * phi                    # 2π·φ_i
        self.low = self.high = None
        self._work = torch.empty(0)

    def evaluate(self, cls: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Raw manifold values (n, M) of latent points x (n, D) on the manifolds of ``cls``."""
        out = torch.empty(len(cls), self.num_units)
        if self._work.shape[0] != _CHUNK:
            self._work = torch.empty(_CHUNK, *self.amplitude.shape[1:])
        for c in cls.unique().tolist():
            idx = (cls == c).nonzero().squeeze(1)
            for chunk in idx.split(_CHUNK):
                arg = torch.addcmul(self.phase[c], self.angular[c], x[chunk, None, :, None],
                                    out=self._work[:len(chunk)])
                out[chunk] = arg.sin_().mul_(self.amplitude[c]).sum(-1).prod(-1)
        return out

    def fit_normalisation(self, cls: torch.Tensor, values: torch.Tensor) -> None:
        """Per-class, per-unit min and max of a reference sample."""
        C, M = self.num_classes, self.num_units
        self.low = torch.full((C, M), math.inf).scatter_reduce(
            0, cls[:, None].expand(-1, M), values, "amin")
        self.high = torch.full((C, M), -math.inf).scatter_reduce(
            0, cls[:, None].expand(-1, M), values, "amax")

    def normalise(self, cls: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Map to [0, 1) with the fitted statistics (fresh points are clipped into range)."""
        low, high = self.low[cls], self.high[cls]
        y = (values - low) / (high - low).clamp_min(1e-12)
        return y.clamp_(0.0, math.nextafter(1.0, 0.0))


def encode(y: torch.Tensor, num_steps: int, encoding: str, generator: torch.Generator):
    """Spike-encode normalised values y (n, M) ∈ [0, 1) into a (T, n, M) uint8 raster."""
    T = num_steps
    k = (y * T).floor().long().clamp_(0, T - 1)
    steps = torch.arange(T)
    if encoding == "time":
        spikes = steps == k[..., None]                      # one spike, at step k
    elif encoding == "rate":
        # k+1 distinct random steps: the first k+1 of a random permutation of the T steps
        order = torch.rand(*k.shape, T, generator=generator).argsort(-1)
        spikes = torch.zeros(order.shape, dtype=torch.bool).scatter_(
            -1, order, steps <= k[..., None])
    else:
        raise ValueError(f"unknown encoding {encoding!r} for Randman; use 'rate' or 'time'")
    return spikes.permute(2, 0, 1).to(torch.uint8).contiguous()


class Randman(SpikeDataset):
    """Randman (``rate``) and T-Randman (``time``) with a fresh training batch every iteration."""

    def __init__(self, num_classes=10, num_units=50, num_steps=50, dim_manifold=3, alpha=1.0,
                 test_samples_per_class=1000, manifold_seed=42, encoding="rate"):
        self.num_inputs, self.num_classes, self.num_steps = num_units, num_classes, num_steps
        self.encoding = encoding
        self.manifolds = RandmanManifolds(num_classes, num_units, dim_manifold, alpha,
                                          manifold_seed)
        self._test_per_class, self._test_seed = test_samples_per_class, manifold_seed + 1
        self._splits = None

    def _prepare(self) -> dict:
        """Draw the fixed test set and normalise the manifolds on it, once, on first use (of
        the test set or of a training batch), so that a finished run started again answers
        without drawing it."""
        if self._splits is None:
            g = torch.Generator().manual_seed(self._test_seed)
            y = torch.arange(self.num_classes).repeat_interleave(self._test_per_class)
            values = self.manifolds.evaluate(y, torch.rand(len(y), self.manifolds.dim,
                                                           generator=g))
            self.manifolds.fit_normalisation(y, values)
            x = encode(self.manifolds.normalise(y, values), self.num_steps, self.encoding, g)
            self._splits = {"test": (x, y)}
        return self._splits

    splits = property(_prepare)
    prepare = _prepare

    def sample(self, n: int, generator: torch.Generator):
        """n fresh samples from the same manifolds: (x (T, n, M) uint8, y (n,))."""
        self._prepare()
        y = torch.randint(self.num_classes, (n,), generator=generator)
        latent = torch.rand(n, self.manifolds.dim, generator=generator)
        values = self.manifolds.normalise(y, self.manifolds.evaluate(y, latent))
        return encode(values, self.num_steps, self.encoding, generator), y

    def train_batch(self, batch_size: int, generator: torch.Generator):
        return self.sample(batch_size, generator)
