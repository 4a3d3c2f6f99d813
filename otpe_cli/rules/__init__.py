"""Per-layer online learning rules and the composites of SPEC §2."""
from .approx_otpe import ApproxOTPE
from .base import GBar, LayerRule
from .ostl import OSTL
from .otpe import OTPE
from .ottt import OTTT

RULES = {"ottt": OTTT, "ostl": OSTL, "otpe": OTPE, "approx_otpe": ApproxOTPE}

#: algorithm → (hidden-layer rule, output-layer rule, logits). The *-front output rules of
#: SPEC §2 are the OTPE / A-OTPE rules fed with e = ∂L_t/∂o_t (= ∂L_t/∂s^L_t, since
#: o_t = β·o_{t−1} + s^L_t), which is what the "trace" logits give them.
COMPOSITES = {
    "ottt": ("ottt", "ottt", "spikes"),
    "ostl": ("ostl", "ostl", "spikes"),
    "otpe": ("otpe", "ostl", "spikes"),
    "approx_otpe": ("approx_otpe", "ottt", "spikes"),
    "f_otpe": ("otpe", "otpe", "trace"),
    "f_approx_otpe": ("approx_otpe", "approx_otpe", "trace"),
}

__all__ = ["RULES", "COMPOSITES", "LayerRule", "GBar", "OTTT", "OSTL", "OTPE", "ApproxOTPE"]
