"""Randman and T-Randman: random smooth manifolds per class, spike-encoded (SPEC §6).

Each class c owns a map R^D → R^M whose coordinate m is Π_d g_{c,m,d}(x_d) with
g(x) = Σ_{i<K} a_i·s_i·sin(2π(i·f_i·x + φ_i)), a, f, φ ~ U(0,1), a_0 = 0,
s_i = 1/((i+1)^α + 1), K = min(⌈1000^{1/α}⌉, 1000). Values are min–max normalised per class
and per unit to y ∈ [0, 1), then k = ⌊T·y⌋ gives the spike times: one spike at step k
(``time``) or k+1 distinct random steps (``rate``).

Two normalisations (``dataset.normalisation``):

- ``per_draw`` (the paper's protocol, the default): a *draw* is N latent points shared by every
  class, all classes evaluated at them and each (class, unit) normalised over that draw's N
  values, y = (v − min)/(max − min + 1e-7). Every training batch is taken at random from a fresh
  draw of ``draw_samples_per_class`` points (C·N samples); the test set is one draw of its own.
  Each draw rescales every (class, unit) by its own range, so the classes overlap across draws.
- ``fixed``: the min and max are fitted once, on the test set (a point per sample), and reused
  for every training batch of fresh points (clipped into range): an easier task.

`RandmanManifolds.evaluate` is the direct evaluation, the definition. A draw evaluates C·N·M·D
series of K sines (1.5·10⁹ at the defaults), so training draws go through `SineTables`: every
1-D series tabulated once on a uniform grid and interpolated (4-point Lagrange), which agrees
with the direct evaluation on all but ~0.02 % of spike steps, and there by one step (a test
holds it). The test set of ``per_draw`` and everything of ``fixed`` use the direct evaluation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..compute import rate_spikes
from .base import SpikeDataset

NORMALISATIONS = ("per_draw", "fixed")
#: the margin in the per-draw normalisation's divisor (the authors' value)
DRAW_EPS = 1e-7

#: samples evaluated at once, in one reused work buffer of _CHUNK × M × D × K floats (~10 MB at
#: the defaults; a fresh intermediate per batch costs page faults). The weighted sum over K is
#: an in-place multiply and a sum over the last, contiguous axis (a batched matrix–vector
#: product is slower here).
_CHUNK = 16


class RandmanManifolds:
    """The fixed random manifolds of every class, built from one seed."""

    def __init__(self, num_classes: int, num_units: int, dim: int, alpha: float, seed: int):
        self.num_classes, self.num_units, self.dim = num_classes, num_units, dim
        self.key = (num_classes, num_units, dim, float(alpha), seed)
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

    def evaluate_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Every class's manifold at the same points x (N, D), directly: (N, C, M)."""
        N, C = len(x), self.num_classes
        cls = torch.arange(C).repeat_interleave(N)
        return self.evaluate(cls, x.repeat(C, 1)).view(C, N, -1).transpose(0, 1)

    # ---------------------------------------------------------------- the fixed normalisation
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


def draw_range(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A draw's (N, C, M) values → each (class, unit)'s min and the divisor max − min + 1e-7,
    both (C, M): y = (v − min)/divisor (the per-draw normalisation)."""
    low = values.amin(0)
    return low, values.amax(0).sub_(low).add_(DRAW_EPS)


class SineTables:
    """The fast path of a draw: each 1-D series g_{c,m,d} tabulated on a grid of G intervals of
    [0, 1] (h = 1/G, nodes from −h to 1 + 2h) and interpolated by the 4-point Lagrange
    polynomial through the nodes around x.

    G puts the highest angular frequency ω of any series at ω·h ≤ 0.52 (G = 12 288 at K =
    1000): the interpolation error is then ~1e-6 of a value, as small as the direct float32
    evaluation's own rounding. The table is made once by matrix products: with node j = b·J + r,
    sin(θ_b + ω r h) = sin θ_b cos(ω r h) + cos θ_b sin(ω r h), so a series' G + 3 values are a
    product of a (B × 2K) and a (2K × J) matrix, B·J ≥ G + 3; the phases are reduced mod 2π in
    float64 before float32 sines, so the table holds the series of the stored parameters to
    ~1e-6. It costs C·M·D·(G + 3)·4 bytes (49 MB at the defaults) and ~1.5 s to build on 2 CPU
    cores; a draw reads 4 rows per point and axis (``F.embedding_bag``)."""

    TAPS = 4
    OMEGA_H = 0.52
    _CACHE: dict = {}  # the last manifolds' tables, for every data set of this process

    def __init__(self, manifolds: RandmanManifolds):
        self.num_classes, self.num_units = manifolds.num_classes, manifolds.num_units
        omega = float(manifolds.angular.max())
        self.intervals = max(256, -(-math.ceil(omega / self.OMEGA_H) // 256) * 256)
        self.rows = self._tabulate(manifolds)    # (D, G + 3, C·M)
        self._offsets = torch.arange(self.TAPS)

    @classmethod
    def of(cls, manifolds: RandmanManifolds) -> "SineTables":
        """The tables of these manifolds, built once per process."""
        tables = cls._CACHE.get(manifolds.key)
        if tables is None:
            cls._CACHE.clear()
            tables = cls._CACHE[manifolds.key] = cls(manifolds)
        return tables

    def _tabulate(self, man: RandmanManifolds) -> torch.Tensor:
        C, M, D, K = man.amplitude.shape
        G = self.intervals
        nodes = G + self.TAPS - 1
        J = math.ceil(math.sqrt(nodes))
        B = -(-nodes // J)
        (B1, B2), (J1, J2) = _factors(B), _factors(J)
        h = 1.0 / G
        cycles = (man.angular.double() / (2 * math.pi)).reshape(-1, 1, K)   # i·f_i per unit x
        phase = (man.phase.double() / (2 * math.pi)).reshape(-1, 1, K)
        amplitude = man.amplitude.reshape(-1, 1, K)
        # node j = b·J + r with b = b1·B2 + b2 and r = r1·J2 + r2: each phase as a sum of two
        # short tables' phases, so that e^{iθ} is a product of two unit complex numbers
        coarse = (torch.arange(B1, dtype=torch.float64) * (B2 * J * h))[:, None]
        fine = ((torch.arange(B2, dtype=torch.float64) * J - 1) * h)[:, None]  # node −h first
        step_coarse = (torch.arange(J1, dtype=torch.float64) * (J2 * h))[:, None]
        step_fine = (torch.arange(J2, dtype=torch.float64) * h)[:, None]
        table = torch.empty(len(amplitude), B, J)
        chunk = 32
        for f0 in range(0, len(amplitude), chunk):
            f1 = min(f0 + chunk, len(amplitude))
            nu, phi, a = cycles[f0:f1], phase[f0:f1], amplitude[f0:f1]
            # left (f, B, K) = e^{iθ_b}: (cos θ, sin θ) pairs along K
            start = _unit(nu * coarse)[:, :, None] * _unit(nu * fine + phi)[:, None]
            # right (f, J, K) = a·(sin ρ_r + i cos ρ_r) = a·i·conj(e^{iρ_r}), so that the real
            # product over the (K, 2) pairs is Σ_i a_i (cos θ sin ρ + sin θ cos ρ)
            step = (_unit(nu * step_coarse).conj() * (1j * a))[:, :, None] \
                * _unit(nu * step_fine).conj()[:, None]
            left = torch.view_as_real(start.flatten(1, 2)[:, :B]).flatten(2)
            right = torch.view_as_real(step.flatten(1, 2)[:, :J]).flatten(2)
            torch.bmm(left, right.transpose(1, 2), out=table[f0:f1])
        table = table.view(C * M, D, B * J)[:, :, :nodes]
        return table.permute(1, 2, 0).contiguous()

    def evaluate_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Every class's manifold at the same points x (N, D) by interpolation: (N, C, M)."""
        G, out = self.intervals, None
        for d, rows in enumerate(self.rows):
            s = x[:, d].double() * G
            j = s.floor().clamp_(0, G - 1)
            t = (s - j).float()[:, None]                       # (N, 1) in [0, 1)
            weights = torch.cat([-t * (t - 1) * (t - 2) / 6, (t + 1) * (t - 1) * (t - 2) / 2,
                                 -(t + 1) * t * (t - 2) / 2, (t + 1) * t * (t - 1) / 6], 1)
            index = j.long()[:, None] + self._offsets          # nodes j−1 … j+2 are rows j … j+3
            v = F.embedding_bag(index, rows, per_sample_weights=weights, mode="sum")
            out = v if out is None else out.mul_(v)
        return out.view(len(x), self.num_classes, self.num_units)


def _unit(cycles: torch.Tensor) -> torch.Tensor:
    """e^{2πi·cycles} as complex64, the phase reduced mod 1 in float64 first (so that float32
    gets the angle right to ~1e-7 however many cycles)."""
    turn = (cycles - cycles.floor()).mul_(2 * math.pi).float()
    return torch.complex(turn.cos(), turn.sin())


def _factors(n: int) -> tuple[int, int]:
    """Two near-equal factors whose product is at least n."""
    a = math.ceil(math.sqrt(n))
    return a, -(-n // a)


def encode(y: torch.Tensor, num_steps: int, encoding: str, generator: torch.Generator):
    """Spike-encode normalised values y (n, M) ∈ [0, 1) into a (T, n, M) uint8 raster."""
    T = num_steps
    k = (y * T).floor().long().clamp_(0, T - 1)
    steps = torch.arange(T)
    if encoding == "time":
        spikes = steps == k[..., None]                      # one spike, at step k
    elif encoding == "rate":
        # k+1 distinct random steps: the first k+1 of a random permutation of the T steps
        keys = torch.rand(*k.shape, T, generator=generator)
        spikes = rate_spikes(keys.view(-1, T), k.reshape(-1)).view(keys.shape)
    else:
        raise ValueError(f"unknown encoding {encoding!r} for Randman; use 'rate' or 'time'")
    return spikes.permute(2, 0, 1).to(torch.uint8).contiguous()


class Randman(SpikeDataset):
    """Randman (``rate``) and T-Randman (``time``), a fresh training batch every iteration,
    normalised ``per_draw`` (the paper's protocol) or ``fixed`` (see the module's docstring)."""

    def __init__(self, num_classes=10, num_units=50, num_steps=50, dim_manifold=3, alpha=1.0,
                 test_samples_per_class=1000, manifold_seed=42, encoding="rate",
                 normalisation="per_draw", draw_samples_per_class=1000):
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {normalisation!r} for Randman; use "
                             f"{' or '.join(map(repr, NORMALISATIONS))}")
        self.num_inputs, self.num_classes, self.num_steps = num_units, num_classes, num_steps
        self.encoding, self.normalisation = encoding, normalisation
        self.draw_samples_per_class = draw_samples_per_class
        self.manifolds = RandmanManifolds(num_classes, num_units, dim_manifold, alpha,
                                          manifold_seed)
        self._test_per_class, self._test_seed = test_samples_per_class, manifold_seed + 1
        self._splits = None
        self._tables = None

    def _prepare(self) -> dict:
        """Draw the test set (and, ``fixed``, normalise the manifolds on it; ``per_draw``, make
        the tables of the training draws), once, on first use (of the test set or of a training
        batch), so that a finished run started again answers without drawing it."""
        if self._splits is None:
            g = torch.Generator().manual_seed(self._test_seed)
            C, N = self.num_classes, self._test_per_class
            y = torch.arange(C).repeat_interleave(N)
            if self.normalisation == "fixed":
                values = self.manifolds.evaluate(y, torch.rand(len(y), self.manifolds.dim,
                                                               generator=g))
                self.manifolds.fit_normalisation(y, values)
                normalised = self.manifolds.normalise(y, values)
            else:
                values = self.manifolds.evaluate_shared(torch.rand(N, self.manifolds.dim,
                                                                   generator=g))
                low, divisor = draw_range(values)
                normalised = ((values - low) / divisor).transpose(0, 1).reshape(C * N, -1)
                self._tables = SineTables.of(self.manifolds)
            x = encode(normalised, self.num_steps, self.encoding, g)
            self._splits = {"test": (x, y)}
        return self._splits

    splits = property(_prepare)
    prepare = _prepare

    def sample(self, n: int, generator: torch.Generator):
        """``fixed``: n fresh samples from the same manifolds: (x (T, n, M) uint8, y (n,))."""
        self._prepare()
        y = torch.randint(self.num_classes, (n,), generator=generator)
        latent = torch.rand(n, self.manifolds.dim, generator=generator)
        values = self.manifolds.normalise(y, self.manifolds.evaluate(y, latent))
        return encode(values, self.num_steps, self.encoding, generator), y

    def draw(self, n: int, generator: torch.Generator):
        """``per_draw``: n samples taken at random from one fresh draw of
        ``draw_samples_per_class`` shared points, normalised on that draw."""
        self._prepare()
        N = self.draw_samples_per_class
        values = self._tables.evaluate_shared(
            torch.rand(N, self.manifolds.dim, generator=generator))      # (N, C, M)
        low, divisor = draw_range(values)
        pick = torch.randperm(self.num_classes * N, generator=generator)[:n]
        y, point = pick // N, pick % N
        normalised = (values[point, y] - low[y]) / divisor[y]
        return encode(normalised, self.num_steps, self.encoding, generator), y

    def train_batch(self, batch_size: int, generator: torch.Generator):
        if self.normalisation == "fixed":
            return self.sample(batch_size, generator)
        return self.draw(batch_size, generator)
