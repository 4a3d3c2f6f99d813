"""The optimizers (`optimizer=adamax`, the paper's; `adam`; `sgd`): torch's own update
arithmetic, the functional forms that torch.optim's classes call (``torch.optim.adamax.adamax``
and its twins, one tensor at a time), with the state kept here.

torch.optim's classes route every call through torch.compile's hooks: a process's first step
imports torch._dynamo (~2 s of start-up on 2 CPU cores) and each step adds ~0.2 ms of Python,
where online mode steps at every time step. The functional forms compute the same bits without
either. Online mode's ``step_if_finite`` runs Adamax on CPU tensors as one fused kernel
(`kernels.adamax_step`: the finite check and every parameter's update in one call, torch's
bits, checked when loaded). `Optimizer.state_dict` has torch.optim's layout (``{"state": {i:
…}, "param_groups": […]}``), so a checkpoint holds the same dictionary as with the class, and
either loads into the other.
"""
from __future__ import annotations

import math

import torch
from torch.optim.adam import adam
from torch.optim.adamax import adamax
from torch.optim.sgd import sgd

from . import kernels

#: torch's default ε for Adam and Adamax
EPS = 1e-8
#: the state each optimizer keeps per parameter (the step count aside)
STATE_KEYS = {"adamax": ("exp_avg", "exp_inf"), "adam": ("exp_avg", "exp_avg_sq"),
              "sgd": ("momentum_buffer",)}


def all_finite(tensors) -> bool:
    """Whether every entry of every tensor is finite: one device sync and few ops for all of
    them (the largest magnitude is NaN or inf exactly when some entry is, and never
    overflows)."""
    tensors = list(tensors)
    return not tensors or bool(
        torch.isfinite(torch.stack(torch._foreach_norm(tensors, math.inf))).all())


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives a step count."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Optimizer:
    """One parameter group of ``params``; ``step(grads)`` applies one update with the
    gradients in the order of ``params``."""

    def __init__(self, name: str, params, lr: float, betas=None, weight_decay: float = 0.0,
                 momentum: float | None = None):
        if name not in STATE_KEYS:
            raise ValueError(f"optimizer {name!r} is not one of: {', '.join(STATE_KEYS)}")
        self.name, self.params = name, list(params)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.betas = tuple(float(b) for b in (betas if betas is not None else (0.9, 0.999)))
        self.momentum = float(momentum or 0.0)
        self.state: list[dict] = [{} for _ in self.params]
        self._adamax_lists = None  # the fused step's state lists, made once per state

    def _settings(self) -> dict:
        """The parameter group's settings, as torch.optim's class of the same name has them."""
        common = {"lr": self.lr, "weight_decay": self.weight_decay, "maximize": False,
                  "foreach": False, "differentiable": False}
        if self.name == "adamax":
            return {**common, "betas": self.betas, "eps": EPS, "capturable": False}
        if self.name == "adam":
            return {**common, "betas": self.betas, "eps": EPS, "amsgrad": False,
                    "capturable": False, "fused": None, "decoupled_weight_decay": False}
        return {**common, "momentum": self.momentum, "dampening": 0, "nesterov": False,
                "fused": None}

    def _start(self) -> None:
        """The state of a first step, as torch.optim makes it (SGD's momentum buffers are made
        by its first step itself)."""
        self._adamax_lists = None
        for p, state in zip(self.params, self.state):
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            for key in STATE_KEYS[self.name]:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step_if_finite(self, grads) -> bool:
        """`step(grads)` if every gradient is finite (True); else nothing changes (False)."""
        grads = list(grads)
        if self.name == "adamax":
            self._start_once()
            if self._adamax_lists is None:
                self._adamax_lists = [[s[key] for s in self.state]
                                      for key in ("exp_avg", "exp_inf", "step")]
            fused = kernels.adamax_step(self.params, grads, *self._adamax_lists, self.lr,
                                        self.betas[0], self.betas[1], EPS, self.weight_decay)
            if fused is not None:
                return fused
        if not all_finite(grads):
            return False
        self.step(grads)
        return True

    def _start_once(self) -> None:
        if not self.state[0] and self.name != "sgd":  # (every parameter steps, or none)
            self._start()

    @torch.no_grad()
    def step(self, grads) -> None:
        grads = list(grads)
        self._start_once()
        common = {"foreach": False, "maximize": False, "lr": self.lr,
                  "weight_decay": self.weight_decay}
        if self.name == "sgd":
            buffers = [state.get("momentum_buffer") for state in self.state]
            sgd(self.params, grads, buffers, momentum=self.momentum, dampening=0.0,
                nesterov=False, **common)
            if self.momentum:
                for state, buffer in zip(self.state, buffers):
                    state["momentum_buffer"] = buffer
            return
        steps = [state["step"] for state in self.state]
        first, second = ([state[key] for state in self.state] for key in STATE_KEYS[self.name])
        beta1, beta2 = self.betas
        if self.name == "adamax":
            adamax(self.params, grads, first, second, steps, eps=EPS, beta1=beta1, beta2=beta2,
                   **common)
        else:
            adam(self.params, grads, first, second, [], steps, amsgrad=False, beta1=beta1,
                 beta2=beta2, eps=EPS, **common)

    def state_dict(self) -> dict:
        return {"state": {i: dict(state) for i, state in enumerate(self.state) if state},
                "param_groups": [{**self._settings(),
                                  "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict) -> None:
        """The state of ``state_dict()`` or of torch.optim's class of the same name (its
        tensors cast to each parameter's dtype and device, the step count kept as saved)."""
        groups = saved.get("param_groups", [])
        count = sum(len(group["params"]) for group in groups)
        if len(groups) != 1 or count != len(self.params):
            raise ValueError(f"the saved optimizer state has {count} parameters in "
                             f"{len(groups)} groups; this model has {len(self.params)} in one")
        order = groups[0]["params"]
        state: list[dict] = [{} for _ in self.params]
        for key, entries in saved["state"].items():
            i = order.index(key)
            p = self.params[i]
            state[i] = {name: (value.clone() if name == "step" else
                               value.to(device=p.device, dtype=p.dtype, copy=True))
                        for name, value in entries.items() if value is not None}
        self.state, self._adamax_lists = state, None
