"""The LIF neuron and network against hand-computed values (SPEC §1)."""
import math

import pytest
import torch

from otpe_cli import SNN
from otpe_cli.ops import membrane_step, surrogate
from otpe_cli.snn import DEFAULT_BETA, predict_correct


def test_beta_default_is_sigmoid_3():
    assert DEFAULT_BETA == pytest.approx(0.952574, abs=1e-6)
    m = SNN([3, 2])
    assert (m.beta, m.threshold, m.slope) == (pytest.approx(0.9525741268), 1.0, 25.0)


def test_surrogate_values():
    v = torch.tensor([1.0, 1.04, 0.96, 3.0], dtype=torch.float64)
    # ψ(v) = 1/(25|v−1|+1)²: 1 at threshold, 1/4 at |v−θ| = 0.04, 1/51² at v = 3
    expected = torch.tensor([1.0, 0.25, 0.25, 1 / 51 ** 2], dtype=torch.float64)
    assert torch.allclose(surrogate(v, 1.0, 25.0), expected)


def lif_step(u, a, W, b, beta, theta, slope):
    """The LIF step the passes run: membrane_step on the input current W a + b."""
    return membrane_step(u, torch.addmm(b, a, W.t()), beta, theta, slope)


def test_lif_step_by_hand():
    W = torch.tensor([[0.5, -0.25], [1.0, 0.0], [0.2, 0.2]], dtype=torch.float64)
    b = torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)
    u = torch.tensor([[0.4, 0.5, 2.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    beta, theta = 0.5, 1.0
    v, s, u_new = lif_step(u, a, W, b, beta, theta, 25.0)
    # v = β u + W a + b = [0.2 + 0.5 − 0.5 + 0.1, 0.25 + 1.0, 1.0 + 0.6] = [0.3, 1.25, 1.6]
    assert torch.allclose(v, torch.tensor([[0.3, 1.25, 1.6]], dtype=torch.float64))
    assert s.tolist() == [[0.0, 1.0, 1.0]]
    assert torch.allclose(u_new, torch.tensor([[0.3, 0.25, 0.6]], dtype=torch.float64))


def test_spike_at_exact_threshold_fires():
    W = torch.tensor([[1.0]]); b = torch.zeros(1)
    _, s, u = lif_step(torch.zeros(1, 1), torch.ones(1, 1), W, b, 0.9, 1.0, 25.0)
    assert s.item() == 1.0 and u.item() == 0.0  # H(0) = 1


def test_reset_is_differentiated():
    v0 = torch.tensor([1.02], dtype=torch.float64, requires_grad=True)
    W = torch.eye(1, dtype=torch.float64); b = torch.zeros(1, dtype=torch.float64)
    _, s, u = lif_step(torch.zeros(1, 1, dtype=torch.float64), v0[None], W, b, 0.9, 1.0, 25.0)
    (g,) = torch.autograd.grad(u.sum(), v0)
    # du/dv = 1 − θ·ψ(v), ψ(1.02) = 1/(1.5)²
    assert g.item() == pytest.approx(1 - 1 / 1.5 ** 2)


def test_init_truncated_lecun_normal_and_zero_bias():
    torch.manual_seed(0)
    m = SNN([400, 300, 10])
    w = m.layers[0].weight.detach()
    std = math.sqrt(1 / 400) / 0.87962566
    assert w.abs().max() <= 2 * std + 1e-7
    # the truncation correction restores variance 1/fan_in
    assert w.std().item() == pytest.approx(math.sqrt(1 / 400), rel=0.03)
    assert all((layer.bias == 0).all() for layer in m.layers)
    assert [n for n, _ in m.named_parameters()] == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert tuple(m.layers[0].weight.shape) == (300, 400)


def test_same_seed_same_parameters():
    a = SNN([5, 4, 3], generator=torch.Generator().manual_seed(3))
    b = SNN([5, 4, 3], generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_prediction_rule_ties_and_silence():
    counts = torch.tensor([[2.0, 2.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 0, 2])
    # tie → lowest index (correct for sample 0); no spike → wrong even though argmax is 0
    assert predict_correct(counts, y).tolist() == [True, False, True]
    assert predict_correct(counts, torch.tensor([1, 0, 2])).tolist() == [False, False, True]


def test_sequence_loss_is_mean_of_step_losses():
    torch.manual_seed(1)
    m = SNN([4, 3]).double()
    logits = torch.randn(5, 6, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    logits.requires_grad_(True)
    per_step = [torch.nn.functional.cross_entropy(logits[t], y) for t in range(5)]
    want = sum(per_step) / 5
    got = m.sequence_loss(logits, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-14)
    (grad_got,), (grad_want,) = (torch.autograd.grad(j, logits) for j in (got, want))
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-13, atol=1e-15)


def test_trace_readout_is_leaky_sum_of_output_spikes():
    torch.manual_seed(2)
    m = SNN([6, 5, 3]).double()
    for layer in m.layers:
        layer.weight.data *= 3
    x = (torch.rand(8, 2, 6) < 0.5).double()
    logits, spikes, _ = m(x, "trace")
    o = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(8):
        o = m.beta * o + spikes[t]
        assert torch.equal(logits[t], o)


def test_float32_and_float64_agree():
    torch.manual_seed(3)
    m64 = SNN([6, 8, 3]).double()
    m32 = SNN([6, 8, 3])
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x = (torch.rand(10, 4, 6) < 0.4)
    s64 = m64(x.double())[1]
    s32 = m32(x.float())[1]
    assert torch.equal(s64.float(), s32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    from otpe_cli import sequence_gradients
    torch.manual_seed(4)
    m = SNN([6, 8, 3]).double()
    x = (torch.rand(10, 4, 6) < 0.4).double(); y = torch.randint(0, 3, (4,))
    for alg in ("bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe"):
        cpu = sequence_gradients(alg, m, x, y)
        gpu = sequence_gradients(alg, m.cuda(), x.cuda(), y.cuda())
        m.cpu()
        for k in cpu:
            assert torch.allclose(cpu[k], gpu[k].cpu(), atol=1e-10), (alg, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_float32_rules_follow_float64():
    """float32 on CUDA (the dtype training uses) against float64 on the CPU, every algorithm:
    a cosine per parameter, loose enough for float32 rounding, tight enough for a wrong rule.
    (On the CPU these seeds give the same spikes in both dtypes: cosines 1 − 1e-12.)"""
    from otpe_cli import sequence_gradients
    torch.manual_seed(5)
    m = SNN([6, 8, 3]).double()
    x = (torch.rand(10, 4, 6) < 0.4).double(); y = torch.randint(0, 3, (4,))
    m32 = SNN([6, 8, 3]).cuda()
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    for alg in ("bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe"):
        ref = sequence_gradients(alg, m, x, y)
        got = sequence_gradients(alg, m32, x.float().cuda(), y.cuda())
        for k in ref:
            assert got[k].dtype == torch.float32 and got[k].device.type == "cuda"
            cos = torch.nn.functional.cosine_similarity(ref[k].flatten(),
                                                        got[k].double().cpu().flatten(), dim=0)
            assert cos > 0.9999 or ref[k].abs().max() < 1e-12, (alg, k, float(cos))
