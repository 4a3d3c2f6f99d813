"""SPEC's names and constants, without torch: the config, the CLI and the reports read them
before (or without) importing the numerics.

- SPEC §1: the leak β = sigmoid(3) and the range of the LIF constants.
- SPEC §2: the composites ``algorithm=`` selects (hidden rule, output rule, logits) and which
  rules have an outer-product gradient (OTTT, A-OTPE: the ones ``bias_trace`` changes).
- SPEC §6: the data sets, their codes and the Randman normalisations.
"""
from __future__ import annotations

import math

#: β = sigmoid(3), the released code's effective leak (SPEC §1).
DEFAULT_BETA = 1.0 / (1.0 + math.exp(-3.0))

#: logits z_t: the output spikes, or the leaky output trace o_t = β·o_{t−1} + s_t (F-variants)
READOUTS = ("spikes", "trace")

#: algorithm → (hidden-layer rule, output-layer rule, logits) (SPEC §2). The *-front output
#: rules are the OTPE / A-OTPE rules fed with e = ∂L_t/∂o_t (= ∂L_t/∂s^L_t, since
#: o_t = β·o_{t−1} + s^L_t), which is what the "trace" logits give them.
COMPOSITES = {
    "ottt": ("ottt", "ottt", "spikes"),
    "ostl": ("ostl", "ostl", "spikes"),
    "otpe": ("otpe", "ostl", "spikes"),
    "approx_otpe": ("approx_otpe", "ottt", "spikes"),
    "f_otpe": ("otpe", "otpe", "trace"),
    "f_approx_otpe": ("approx_otpe", "approx_otpe", "trace"),
}
#: every ``algorithm=`` choice, in the paper's order (tables and figures follow it)
ALGORITHMS = ("bptt",) + tuple(COMPOSITES)
#: the rules whose weight gradient is an outer product (e ⊙ post_t) pre_tᵀ, with a bias
#: gradient e ⊙ post_t that ``bias_trace`` can give a temporal factor
FACTORISED_RULES = ("ottt", "approx_otpe")

DATASETS = ("randman", "trandman", "shd", "ssc")
RANDMAN_DATASETS = ("randman", "trandman")
#: the input codes of each family of data sets (SPEC §6)
ENCODINGS = {"randman": ("rate", "time"), "shd": ("counts", "binary")}
NORMALISATIONS = ("per_draw", "fixed")


def readout_of(name: str) -> str:
    """The logits an algorithm is defined with (BPTT: spikes unless asked otherwise)."""
    return "spikes" if name == "bptt" else COMPOSITES[name][2]


def uses_bias_trace(name: str) -> bool:
    """Whether ``algorithm.bias_trace`` changes anything in algorithm ``name``: it has an OTTT
    or A-OTPE rule at some layer."""
    return any(rule in FACTORISED_RULES for rule in COMPOSITES.get(name, ())[:2])


def algorithm_problem(name: str, readout: str | None, bias_trace: bool) -> str | None:
    """What is wrong with this algorithm, readout and bias_trace (SPEC §2), or None."""
    if name not in ALGORITHMS:
        return f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}"
    if readout is not None and readout not in READOUTS:
        return f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}"
    if name != "bptt" and readout is not None and readout != COMPOSITES[name][2]:
        return (f"algorithm {name!r} is defined with {COMPOSITES[name][2]!r} logits, not "
                f"{readout!r} (SPEC §2)")
    if bias_trace and not uses_bias_trace(name):
        with_it = ", ".join(n for n in COMPOSITES if uses_bias_trace(n))
        return (f"algorithm.bias_trace=true changes only the OTTT and A-OTPE rules' bias "
                f"gradients, and {name} uses neither (so it would change nothing); it applies "
                f"to {with_it}.")
    return None


def neuron_problem(beta, threshold: float, slope: float, prefix: str = "") -> str | None:
    """What is out of range in the LIF constants (SPEC §1), or None; ``prefix`` names them as
    the config does (``model.``)."""
    if not 0.0 <= beta < 1.0:
        return f"{prefix}beta={beta} is out of range: the leak must lie in [0, 1)"
    for name, value in (("threshold", threshold), ("slope", slope)):
        if not 0.0 < value < math.inf:
            return f"{prefix}{name}={value} must be a finite number greater than zero"
    return None
