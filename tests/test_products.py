"""The block passes' matrix products through oneDNN (otpe_cli.products), against float64
products and against the same passes with torch's products: the membranes to the bit (the
currents must be torch.addmm's), the backward sweeps' products to round-off."""
from __future__ import annotations

import pytest
import torch

from otpe_cli import SNN, build_algorithm, products
from otpe_cli.algorithms import autograd_bptt_pass

ALGORITHMS = ["bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe"]
EPS = torch.finfo(torch.float32).eps


def onednn_here() -> bool:
    return torch.backends.mkldnn.is_available() and \
        torch.backends.cpu.get_cpu_capability() == "AVX512"


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN's products on, every call to them counted by (rows, bias given)."""
    monkeypatch.delenv("OTPE_CLI_ONEDNN", raising=False)
    monkeypatch.setattr(products, "_usable", None)
    if not onednn_here() or not products._decide():
        pytest.skip("oneDNN's AVX-512 product is not used on this CPU")
    monkeypatch.setattr(products, "_usable", True)
    calls = []
    linear = products._linear

    def counted(x, weight, bias):
        calls.append((x.shape[0], bias is not None))
        return linear(x, weight, bias)
    monkeypatch.setattr(products, "_linear", counted)
    return calls


def test_it_is_used_on_cpus_with_avx512(monkeypatch):
    """(Else every other test here would skip unnoticed.)"""
    if not onednn_here():
        pytest.skip("no AVX-512 or no oneDNN here")
    monkeypatch.delenv("OTPE_CLI_ONEDNN", raising=False)
    assert products._decide()


def test_only_large_float32_cpu_products_without_a_graph_and_a_switch_turns_it_off(onednn,
                                                                                  monkeypatch):
    x = torch.zeros(2, 3)
    with torch.no_grad():
        assert products.takes(x, products.MIN_ROWS)
        assert not products.takes(x, products.MIN_ROWS - 1)
        assert not products.takes(x.double(), products.MIN_ROWS)
    assert not products.takes(x, products.MIN_ROWS)  # (autograd is on)
    monkeypatch.setenv("OTPE_CLI_ONEDNN", "0")
    monkeypatch.setattr(products, "_usable", None)
    with torch.no_grad():
        assert not products.takes(x, products.MIN_ROWS)


@pytest.mark.parametrize("n_out, n_in", [(40, 24), (24, 40), (7, 7)])
def test_the_backward_products_are_float64s_to_round_off(onednn, n_out, n_in):
    g = torch.Generator().manual_seed(0)
    K, B = 20, 64  # 1280 rows
    d = torch.randn(K, B, n_out, generator=g)
    lam, a = d.flatten(0, 1), (torch.rand(K * B, n_in, generator=g) < 0.3).float()
    w = torch.randn(n_out, n_in, generator=g)
    grad_w = torch.randn(n_out, n_in, generator=g)
    want_w = grad_w.double() + lam.double().t() @ a.double()
    bound_w = 64 * EPS * (grad_w.double().abs() + lam.double().abs().t() @ a.double())
    with torch.no_grad():
        down = products.errors_down(d, w)
        products.add_weight_gradient_(grad_w, lam, a)
    assert len(onednn) == 2
    assert down.shape == (K, B, n_in)
    want_down = d.double() @ w.double()
    assert bool(((down.double() - want_down).abs()
                 <= 64 * EPS * (d.double().abs() @ w.double().abs())).all())
    assert bool(((grad_w.double() - want_w).abs() <= bound_w).all())


def test_the_currents_are_addmms_to_the_bit_or_left_to_it(onednn, monkeypatch):
    g = torch.Generator().manual_seed(1)
    a = (torch.rand(20, 64, 24, generator=g) < 0.3).float()
    w, b = torch.randn(40, 24, generator=g), torch.randn(40, generator=g)
    with torch.no_grad():
        got = products.block_currents(a, w, b)
        want = torch.addmm(b, a.flatten(0, 1), w.t())
        assert got is None or torch.equal(got, want)
        assert products.block_currents(a[:, :8], w, b) is None  # (160 rows)
        # a product that rounds one bit otherwise is left to torch.addmm
        monkeypatch.setattr(products, "_same_bits", {})
        monkeypatch.setattr(products, "_linear",
                            lambda x, w, b: torch.nextafter(torch.addmm(b, x, w.t()),
                                                            torch.tensor(float("inf"))))
        assert products.block_currents(a, w, b) is None


def test_whole_passes_keep_their_spikes_and_their_gradients(onednn, monkeypatch):
    """Every algorithm offline, oneDNN's products on and off: the same spikes and loss, the
    gradients equal to round-off; BPTT also against autograd through the forward."""
    g = torch.Generator().manual_seed(3)
    model = SNN([24, 40, 40, 5], generator=g)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(2.0)
    x = (torch.rand(40, 64, 24, generator=g) < 0.3).float()  # blocks of 20 steps: 1280 rows
    y = torch.randint(0, 5, (64,), generator=g)

    def run_all():
        return {name: build_algorithm(name).gradients(model, x, y) for name in ALGORITHMS}

    on = run_all()
    assert any(bias for _, bias in onednn), "no block's currents went to oneDNN"
    assert any(not bias for _, bias in onednn)
    monkeypatch.setattr(products, "_usable", False)
    off = run_all()
    for name in ALGORITHMS:
        (g1, s1), (g2, s2) = on[name], off[name]
        assert s1.loss == s2.loss and s1.rates == s2.rates, name
        assert torch.equal(s1.counts, s2.counts), name
        assert 0.02 < min(s1.rates) and max(s1.rates) < 0.9
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), name
    monkeypatch.setattr(products, "_usable", True)
    want, want_stats = autograd_bptt_pass(model, x, y, "spikes")
    got, stats = on["bptt"]
    assert torch.equal(stats.counts, want_stats.counts) and stats.rates == want_stats.rates
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
