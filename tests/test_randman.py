"""The Randman / T-Randman generator's properties (SPEC §6)."""
import math

import pytest
import torch

from otpe_cli.data.randman import Randman, RandmanManifolds, encode

SMALL = dict(num_classes=4, num_units=12, num_steps=20, dim_manifold=2,
             test_samples_per_class=60, manifold_seed=7)


def test_manifold_matches_the_formula_by_a_plain_loop():
    # α = 3 → K = ⌈1000^{1/3}⌉ = 10 terms; evaluate one point per class by hand
    m = RandmanManifolds(num_classes=2, num_units=3, dim=2, alpha=3.0, seed=5)
    assert m.amplitude.shape[-1] == 10
    g = torch.Generator().manual_seed(5)
    shape = (2, 3, 2, 10)
    a, f, phi = (torch.rand(shape, generator=g).double() for _ in range(3))
    x = torch.tensor([[0.3, 0.8], [0.55, 0.1]])
    cls = torch.tensor([0, 1])
    got = m.evaluate(cls, x)
    for n in range(2):
        c = int(cls[n])
        for unit in range(3):
            value = 1.0
            for d in range(2):
                series = 0.0
                for i in range(1, 10):  # a_0 = 0
                    s_i = 1.0 / ((i + 1) ** 3.0 + 1.0)
                    series += a[c, unit, d, i] * s_i * math.sin(
                        2 * math.pi * (i * f[c, unit, d, i] * float(x[n, d]) + phi[c, unit, d, i]))
                value *= float(series)
            assert got[n, unit].item() == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_number_of_terms_is_capped_at_1000():
    assert RandmanManifolds(2, 2, 1, alpha=0.5, seed=0).amplitude.shape[-1] == 1000
    assert RandmanManifolds(2, 2, 1, alpha=2.0, seed=0).amplitude.shape[-1] == 32


def test_encode_time_and_rate_by_hand():
    y = torch.tensor([[0.0, 0.26, 0.999999]])
    g = torch.Generator().manual_seed(0)
    t = encode(y, 10, "time", g)          # (T, n, M)
    assert t.shape == (10, 1, 3)
    assert t.sum(0).tolist() == [[1, 1, 1]]
    assert t.argmax(0).tolist() == [[0, 2, 9]]  # k = ⌊T·y⌋
    r = encode(y, 10, "rate", g)
    assert r.sum(0).tolist() == [[1, 3, 10]]  # k + 1 distinct steps
    assert r.max() == 1


def test_time_encoding_one_spike_per_unit_and_rate_k_plus_one():
    d_time = Randman(encoding="time", **SMALL)
    d_rate = Randman(encoding="rate", **SMALL)
    x_time, y_time = d_time.splits["test"]
    x_rate, y_rate = d_rate.splits["test"]
    assert torch.equal(y_time, y_rate)
    assert (x_time.sum(0) == 1).all()
    # same manifolds and points: rate count = (time step k) + 1
    assert torch.equal(x_rate.sum(0).long(), x_time.argmax(0) + 1)
    assert x_rate.max() == 1
    xb, yb = d_time.train_batch(16, torch.Generator().manual_seed(1))
    assert xb.shape == (20, 16, 12) and (xb.sum(0) == 1).all()
    assert yb.min() >= 0 and yb.max() < 4


def test_normalisation_is_per_class_and_per_unit():
    d = Randman(encoding="time", **SMALL)
    x, y = d.splits["test"]
    k = x.argmax(0)  # (N, M) spike step
    for c in range(4):
        kc = k[y == c]
        # every unit of every class spans the whole [0, T) range on the reference set
        assert (kc.min(0).values == 0).all() and (kc.max(0).values == 19).all()


def test_train_batches_come_from_the_test_manifolds():
    """A fresh batch is classified by its nearest test sample far above chance — and not when
    the test set comes from other manifolds."""
    big = {**SMALL, "test_samples_per_class": 200}
    d = Randman(encoding="time", **big)
    other = Randman(encoding="time", **{**big, "manifold_seed": 8})
    xb, yb = d.train_batch(64, torch.Generator().manual_seed(2))

    def nn_accuracy(ds):
        x, y = ds.splits["test"]
        times = x.argmax(0).float()
        dist = torch.cdist(xb.argmax(0).float(), times)
        return (y[dist.argmin(1)] == yb).float().mean().item()

    assert nn_accuracy(d) > 0.75          # chance is 0.25
    assert nn_accuracy(other) < 0.45


def test_determinism_by_seed():
    a, b = Randman(**SMALL), Randman(**SMALL)
    assert torch.equal(a.splits["test"][0], b.splits["test"][0])
    c = Randman(**{**SMALL, "manifold_seed": 9})
    assert not torch.equal(a.splits["test"][0], c.splits["test"][0])
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    xa, ya = a.train_batch(8, g1)
    xb, yb = b.train_batch(8, g2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, _ = a.train_batch(8, g1)  # the next batch is a fresh one
    assert not torch.equal(xa, xc)


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="encoding"):
        encode(torch.zeros(1, 2), 5, "phase", torch.Generator())
