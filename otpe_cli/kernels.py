"""Fused CPU kernels for the blocks of the passes without autograd, built on first use.

Without autograd (the online rules' pass, and evaluation) a layer's K steps in a block are a
loop of small element-wise ops per step (`ops.membrane_step`), then the surrogate ψ over the
block; the rules' leaky sums, reverse scans and suffix products, and BPTT's reverse scan
through a layer's membranes (its backward pass, `bptt`), are loops of small ops too. On
2 CPU cores their dispatch, not their arithmetic, is what costs. Each has a C++ loop here,
built by ``torch.utils.cpp_extension.load_inline`` the first time a process needs it (~45 s
once, then cached; it needs a C++ compiler and ninja).

The membranes must equal those of the plain ops, which BPTT's autograd reference
(`algorithms.autograd_bptt_pass`) runs with autograd, to the last bit (a rounding on the other
side of θ changes a spike; see `snn.BLOCK_STEPS`). Each loop rounds every operation as its
torch op does: I + β·u as one fused multiply-add, as ATen's
``add(alpha=β)`` does on CPUs with FMA (the FMA instruction on CPUs with AVX2 and FMA, chosen
at run time, the C library's exact ``fma`` elsewhere), nothing else contracted. When loaded,
the kernels are checked against `ops` on random blocks in float32 and float64; if a single bit
differs, or they cannot be built, `ops` is used and the reason is logged once (``status()``).
``OTPE_CLI_FUSED=0`` turns them off. One difference is left, below any value that matters:
where an op has more than 32 768 elements, torch splits it across threads, and
`torch.set_flush_denormal` holds only in the calling thread, so the plain ops flush some
subnormals (< 1.2e-38 in float32) to zero and keep others, where the kernels, in one thread,
flush them all. Such a value cannot move a membrane across θ.

The build:
- Its cache (``TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``) holds one build per
  environment: the extension's name carries a digest of the source, the flags, torch's
  version and ABI, Python's version and torch's include path, so two virtual environments or
  torch versions on one home keep a build each.
- One process builds at a time, under an flock beside the build directory (released by the
  system however the process ends): a ``lock`` file of torch's that a killed build left there
  is then stale and is removed. A process that finds another building waits, says so once,
  is stopped by the stop signals as any start-up is, and after ``OTPE_CLI_KERNEL_WAIT``
  seconds (default 300) runs the plain ops.
- The first build says so in one line.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path

import torch

from . import ops

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <vector>

// x86: a second copy of each loop for CPUs with AVX2 and FMA, chosen at run time (std::fma is
// one instruction there, a library call otherwise); other CPUs compile one copy
#if defined(__x86_64__) || defined(__i386__)
#define FMA_TARGET __attribute__((target("avx2,fma")))
static bool has_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
#define FMA_TARGET
static bool has_fma() { return false; }
#endif

// K steps of P membranes: current (K, P) becomes v, u (P) the last u; spikes and psi (K, P).
template <typename T>
static inline __attribute__((always_inline)) void lif_steps(
    T* __restrict current, T* __restrict u, T* __restrict spikes, T* __restrict psi,
    int64_t K, int64_t P, T beta, T theta, T slope) {
  for (int64_t k = 0; k < K; ++k) {
    T* __restrict c = current + k * P;
    T* __restrict s = spikes + k * P;
    T* __restrict q = psi + k * P;
    for (int64_t j = 0; j < P; ++j) {
      T v = std::fma(beta, u[j], c[j]);           // v = I + β·u, rounded once
      T spike = static_cast<T>(v >= theta);       // H(v − θ), H(0) = 1
      c[j] = v;
      s[j] = spike;
      T r = T(1) / (std::fabs(v - theta) * slope + T(1));
      q[j] = r * r;                               // ψ = 1/(k·|v − θ| + 1)²
      u[j] = v - theta * spike;                   // reset
    }
  }
}

// The linear scans of the rules' block updates (rules.base), each as its eager ops round it:
// torch.add(a, b, alpha=c) as fma(c, b, a), torch.addcmul(a, b, c) as fma(b, c, a), torch.mul
// (as ATen rounds them on CPUs with FMA: checked when loaded).
template <typename T>
static inline __attribute__((always_inline)) void leaky_steps(
    T* __restrict state, const T* __restrict inputs, T* __restrict out, int64_t K, int64_t P,
    T decay) {
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict x = inputs + k * P;
    T* __restrict o = out + k * P;
    for (int64_t j = 0; j < P; ++j) {
      T v = std::fma(decay, state[j], x[j]);
      o[j] = v;
      state[j] = v;
    }
  }
}

template <typename T>
static inline __attribute__((always_inline)) void reverse_steps(
    const T* __restrict direct, const T* __restrict decay, T* __restrict out, int64_t K,
    int64_t R, int64_t P, T scalar) {
  // out[K−1] = direct[K−1]; out[k] = fma(decay[k+1], out[k+1], direct[k]) (decay (K, P) shared by
  // the R rows of direct (K, R, P)), or fma(scalar, out[k+1], direct[k]) without decay
  for (int64_t j = 0; j < R * P; ++j) out[(K - 1) * R * P + j] = direct[(K - 1) * R * P + j];
  for (int64_t k = K - 2; k >= 0; --k) {
    for (int64_t r = 0; r < R; ++r) {
      const T* __restrict d = direct + (k * R + r) * P;
      const T* __restrict n = out + ((k + 1) * R + r) * P;
      T* __restrict o = out + (k * R + r) * P;
      if (decay) {
        const T* __restrict g = decay + (k + 1) * P;
        for (int64_t j = 0; j < P; ++j) o[j] = std::fma(g[j], n[j], d[j]);
      } else {
        for (int64_t j = 0; j < P; ++j) o[j] = std::fma(scalar, n[j], d[j]);
      }
    }
  }
}

template <typename T>
static inline __attribute__((always_inline)) void suffix_steps(
    const T* __restrict decays, T* __restrict out, int64_t K, int64_t P) {
  for (int64_t j = 0; j < P; ++j) out[K * P + j] = T(1);
  for (int64_t k = K - 1; k >= 0; --k) {
    const T* __restrict g = decays + k * P;
    const T* __restrict n = out + (k + 1) * P;
    T* __restrict o = out + k * P;
    for (int64_t j = 0; j < P; ++j) o[j] = n[j] * g[j];
  }
}

// BPTT's reverse scan through a layer's K steps (ops.membrane_adjoint): from g = ∂J/∂s and ψ
// (K, P) and after (P), the λ of the step after the block, λ[k] = ∂J/∂v[k]: ∂J/∂u = β·λ[k+1]
// (torch.mul), g − θ·∂J/∂u as fma(−θ, ∂J/∂u, g) (torch.sub(alpha=θ)), ∂J/∂u + ψ·(…) as
// fma(ψ, …, ∂J/∂u) (torch.addcmul)
template <typename T>
static inline __attribute__((always_inline)) void adjoint_steps(
    const T* __restrict grad_s, const T* __restrict psi, const T* __restrict after,
    T* __restrict out, int64_t K, int64_t P, T beta, T theta) {
  for (int64_t k = K - 1; k >= 0; --k) {
    const T* __restrict g = grad_s + k * P;
    const T* __restrict q = psi + k * P;
    const T* __restrict n = k + 1 < K ? out + (k + 1) * P : after;
    T* __restrict o = out + k * P;
    for (int64_t j = 0; j < P; ++j) {
      T grad_u = beta * n[j];
      o[j] = std::fma(q[j], std::fma(-theta, grad_u, g[j]), grad_u);
    }
  }
}

#define TWICE(NAME, BODY, ...)                                                        \
  template <typename T> FMA_TARGET static void NAME##_fma(__VA_ARGS__) BODY \
  template <typename T> static void NAME##_plain(__VA_ARGS__) BODY

TWICE(lif, { lif_steps<T>(current, u, spikes, psi, K, P, beta, theta, slope); },
      T* current, T* u, T* spikes, T* psi, int64_t K, int64_t P, T beta, T theta, T slope)
TWICE(leaky, { leaky_steps<T>(state, inputs, out, K, P, decay); },
      T* state, const T* inputs, T* out, int64_t K, int64_t P, T decay)
TWICE(reverse, { reverse_steps<T>(direct, decay, out, K, R, P, scalar); },
      const T* direct, const T* decay, T* out, int64_t K, int64_t R, int64_t P, T scalar)
TWICE(suffix, { suffix_steps<T>(decays, out, K, P); }, const T* decays, T* out, int64_t K, int64_t P)
TWICE(adjoint, { adjoint_steps<T>(grad_s, psi, after, out, K, P, beta, theta); },
      const T* grad_s, const T* psi, const T* after, T* out, int64_t K, int64_t P, T beta,
      T theta)

// state (P) is left at the last step; returns every step, (K, P)
torch::Tensor leaky_sum(torch::Tensor state, torch::Tensor inputs, double decay) {
  auto out = torch::empty_like(inputs);
  int64_t K = inputs.size(0), P = state.numel();
  AT_DISPATCH_FLOATING_TYPES(inputs.scalar_type(), "leaky_sum", [&] {
    auto run = has_fma() ? leaky_fma<scalar_t> : leaky_plain<scalar_t>;
    run(state.data_ptr<scalar_t>(), inputs.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), K,
        P, (scalar_t)decay);
  });
  return out;
}

// direct (K, R, P) with decay (K, P), or decay undefined and the float scalar
torch::Tensor reverse_scan(torch::Tensor direct, c10::optional<torch::Tensor> decay,
                           double scalar, int64_t R) {
  auto out = torch::empty_like(direct);
  int64_t K = direct.size(0), P = direct.numel() / (K * R);
  AT_DISPATCH_FLOATING_TYPES(direct.scalar_type(), "reverse_scan", [&] {
    const scalar_t* g = decay.has_value() ? decay->data_ptr<scalar_t>() : nullptr;
    auto run = has_fma() ? reverse_fma<scalar_t> : reverse_plain<scalar_t>;
    run(direct.data_ptr<scalar_t>(), g, out.data_ptr<scalar_t>(), K, R, P, (scalar_t)scalar);
  });
  return out;
}

// (K + 1, P): row k the product of decays after k, the last row 1
torch::Tensor suffix_products(torch::Tensor decays) {
  int64_t K = decays.size(0), P = decays.numel() / K;
  auto sizes = decays.sizes().vec();
  sizes[0] = K + 1;
  auto out = torch::empty(sizes, decays.options());
  AT_DISPATCH_FLOATING_TYPES(decays.scalar_type(), "suffix_products", [&] {
    auto run = has_fma() ? suffix_fma<scalar_t> : suffix_plain<scalar_t>;
    run(decays.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), K, P);
  });
  return out;
}

// λ (K, P) from grad_s and psi (K, P) and after (P)
torch::Tensor membrane_adjoint(torch::Tensor grad_s, torch::Tensor psi, torch::Tensor after,
                               double beta, double theta) {
  auto out = torch::empty_like(grad_s);
  int64_t K = grad_s.size(0), P = after.numel();
  AT_DISPATCH_FLOATING_TYPES(grad_s.scalar_type(), "membrane_adjoint", [&] {
    auto run = has_fma() ? adjoint_fma<scalar_t> : adjoint_plain<scalar_t>;
    run(grad_s.data_ptr<scalar_t>(), psi.data_ptr<scalar_t>(), after.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), K, P, (scalar_t)beta, (scalar_t)theta);
  });
  return out;
}

// Randman's rate code (ops.rate_spikes): in each row of keys (R, T), the counts[r] + 1 steps
// of lowest key spike, ties in step order (the ranks of a stable sort, counted branch-free)
template <typename T>
static inline __attribute__((always_inline)) void rate_rows(
    const T* __restrict keys, const int64_t* __restrict counts, bool* __restrict out,
    int64_t begin, int64_t end, int64_t S) {
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict row = keys + r * S;
    for (int64_t t = 0; t < S; ++t) {
      const T v = row[t];
      int32_t rank = 0;
      for (int64_t j = 0; j < t; ++j) rank += row[j] <= v ? 1 : 0;
      for (int64_t j = t + 1; j < S; ++j) rank += row[j] < v ? 1 : 0;
      out[r * S + t] = rank <= counts[r];
    }
  }
}

TWICE(rate, { rate_rows<T>(keys, counts, out, begin, end, S); },
      const T* keys, const int64_t* counts, bool* out, int64_t begin, int64_t end, int64_t S)

torch::Tensor rate_spikes(torch::Tensor keys, torch::Tensor counts) {
  int64_t R = keys.size(0), S = keys.size(1);
  auto out = torch::empty({R, S}, keys.options().dtype(torch::kBool));
  AT_DISPATCH_FLOATING_TYPES(keys.scalar_type(), "rate_spikes", [&] {
    auto run = has_fma() ? rate_fma<scalar_t> : rate_plain<scalar_t>;
    const scalar_t* k = keys.data_ptr<scalar_t>();
    const int64_t* c = counts.data_ptr<int64_t>();
    bool* o = out.data_ptr<bool>();
    at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) { run(k, c, o, begin, end, S); });
  });
  return out;
}

std::vector<torch::Tensor> lif_block(torch::Tensor current, torch::Tensor u, double beta,
                                     double theta, double slope) {
  auto spikes = torch::empty_like(current);
  auto psi = torch::empty_like(current);
  int64_t K = current.size(0), P = u.numel();
  AT_DISPATCH_FLOATING_TYPES(current.scalar_type(), "lif_block", [&] {
    auto run = has_fma() ? lif_fma<scalar_t> : lif_plain<scalar_t>;
    run(current.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), spikes.data_ptr<scalar_t>(),
        psi.data_ptr<scalar_t>(), K, P, (scalar_t)beta, (scalar_t)theta, (scalar_t)slope);
  });
  return {spikes, psi};
}
"""

#: -ffp-contract=off: no multiply-add the plain ops do not make; -fno-trapping-math lets the
#: comparison vectorise (it changes no result); -fopenmp: at::parallel_for uses torch's threads
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
_FUNCTIONS = ["lif_block", "leaky_sum", "reverse_scan", "suffix_products",
              "membrane_adjoint", "rate_spikes"]
#: seconds to wait for another process's build before running the plain ops
DEFAULT_WAIT_S = 300.0

_module = None      # the built extension, once loaded and checked
_unusable = None    # why it is not used (then the plain ops are), once known


def extension_name() -> str:
    """The build's name: ``otpe_cli_fused_<digest>`` of what makes a build differ."""
    from torch.utils.cpp_extension import include_paths

    key = "\n".join([_SOURCE, " ".join(_FLAGS), torch.__version__,
                     str(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", "")),
                     f"{sys.version_info.major}.{sys.version_info.minor}",
                     *include_paths()])
    return f"otpe_cli_fused_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def build_directory(name: str) -> Path:
    """Where torch keeps the build of ``name`` (made if absent, as torch itself makes it)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def _eager_membrane(current, u, beta, theta, slope):
    v = current.clone()
    s, u = ops.membrane_steps_(v, u, beta, theta, slope)
    return v, s, u, ops.surrogate(v, theta, slope)


def _check(module) -> str | None:
    """None if every kernel reproduces its plain ops bit for bit here, else what differed."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for shape in ((25, 16, 40), (7, 3, 5)):  # (vector bodies and scalar tails)
            rand = lambda *size: torch.randn(*size, generator=g).to(dtype)  # noqa: E731
            current, u = rand(*shape) * 0.7 + 0.3, torch.full(shape[1:], 0.5, dtype=dtype)
            v, u_k = current.clone(), u.clone()
            got = (v, *module.lif_block(v, u_k, 0.95, 1.0, 25.0), u_k)
            want = _eager_membrane(current, u.clone(), 0.95, 1.0, 25.0)
            pairs = list(zip(("membrane v", "spikes", "ψ", "u"),
                             (want[0], want[1], want[3], want[2]), got))
            direct, decays, state = rand(*shape), rand(*shape), rand(*shape[1:])
            stacked = rand(shape[0], 2, *shape[1:])
            kept = state.clone()
            pairs += [
                ("leaky sum", ops.leaky_sum(state.clone(), direct, 0.95),
                 module.leaky_sum(kept, direct, 0.95)),
                ("reverse scan", ops.reverse_scan(direct, decays),
                 module.reverse_scan(direct, decays, 0.0, 1)),
                ("stacked reverse scan", ops.reverse_scan(stacked, decays.unsqueeze(1)),
                 module.reverse_scan(stacked, decays, 0.0, 2)),
                ("scalar reverse scan", ops.reverse_scan(direct, 0.95),
                 module.reverse_scan(direct, None, 0.95, 1)),
                ("suffix products", ops.suffix_products(decays), module.suffix_products(decays))]
            grad_s, zero = rand(*shape) * 0.1, torch.zeros(shape[1:], dtype=dtype)
            for after, theta in ((state, 1.0), (None, 0.7)):
                pairs.append((f"membrane adjoint (θ = {theta})",
                              ops.membrane_adjoint(grad_s, want[3], 0.95, theta, after),
                              module.membrane_adjoint(grad_s, want[3],
                                                      zero if after is None else after, 0.95,
                                                      theta)))
            keys = torch.rand(shape[0] * shape[1], shape[2], generator=g).to(dtype)
            keys[::3, 1] = keys[::3, 0]  # ties, broken in step order
            counts = torch.randint(-1, shape[2] + 1, (len(keys),), generator=g)
            pairs.append(("rate code", ops.rate_spikes(keys, counts),
                          module.rate_spikes(keys, counts)))
            for name, a, b in pairs:
                if not torch.equal(a, b):
                    return (f"its {name} differs from the plain ops' in {int((a != b).sum())} "
                            f"of {a.numel()} values ({dtype})")
    return None


class _BuildLock:
    """An flock beside the build directory, held while this process builds or loads."""

    def __init__(self, build_dir: Path):
        self.path = build_dir.with_name(build_dir.name + ".otpe.lock")
        self.handle = None

    def try_acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _build(name: str, build_dir: Path):
    """Build (or load the cached build of) the extension, one process at a time."""
    from torch.utils.cpp_extension import load_inline

    lock = _BuildLock(build_dir)
    wait = float(os.environ.get("OTPE_CLI_KERNEL_WAIT", DEFAULT_WAIT_S))
    deadline, said = time.monotonic() + wait, False
    while not lock.try_acquire():
        if not said:
            log.warning("waiting for the build of the fused CPU kernels by another process "
                        "(pid %s), at most %.0f s (OTPE_CLI_KERNEL_WAIT)", lock.holder(), wait)
            said = True
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process (pid {lock.holder()}) was still building them "
                               f"after {wait:.0f} s")
        time.sleep(0.2)  # (a stop signal during start-up ends the wait)
    try:
        stale = build_dir / "lock"  # torch's, left by a build that was killed: no one holds it
        if stale.exists():
            log.warning("removing the lock %s that an interrupted build left", stale)
            stale.unlink(missing_ok=True)
        built = any(build_dir.glob(f"{name}*.so"))
        if not built:
            log.info("building the fused CPU kernels, once per environment (~45 s; cached in "
                     "%s)", build_dir.parent)
        build_dir.mkdir(parents=True, exist_ok=True)
        return load_inline(name, cpp_sources=_SOURCE, extra_cflags=_FLAGS,
                           extra_ldflags=["-fopenmp"], functions=_FUNCTIONS,
                           build_directory=str(build_dir))
    finally:
        lock.release()


def _load() -> None:
    global _module, _unusable
    if os.environ.get("OTPE_CLI_FUSED", "1") == "0":
        _unusable = "OTPE_CLI_FUSED=0"
        return
    try:
        name = extension_name()
        module = _build(name, build_directory(name))
        why = _check(module)
    except Exception as exc:  # no compiler, no ninja, a read-only cache, a build too long…
        why = f"it could not be built ({type(exc).__name__}: {str(exc)[:300]})"
    except BaseException:  # (Ctrl-C or a stop signal during the build: try again next time)
        _unusable = None
        raise
    if why is None:
        _module, _unusable = module, None
    else:
        _unusable = why
        log.warning("the fused CPU kernels are not used: %s; running the eager ops "
                    "(slower on CPU)", why)


def load() -> str:
    """Build or load the kernels now, if this process has not yet; returns `status()`."""
    if _module is None and _unusable is None:
        _load()
    return status()


def _ready(*tensors: torch.Tensor) -> bool:
    """Whether the kernels run on these tensors (loading them on first use): CPU, float32 or
    float64 alike, contiguous, not empty, no graph, no lazy negation."""
    t = tensors[0]
    if not all(x.device.type == "cpu" and x.dtype == t.dtype and x.is_contiguous()
               and x.numel() > 0 and not x.requires_grad and not x.is_neg()
               for x in tensors):
        return False
    if t.dtype not in (torch.float32, torch.float64):
        return False
    load()
    return _module is not None


def leaky_sum(state: torch.Tensor, inputs: torch.Tensor, decay: float):
    """`ops.leaky_sum` fused (state left at the last step), or None: run the plain op."""
    if state.shape != inputs.shape[1:] or not _ready(state, inputs):
        return None
    return _module.leaky_sum(state, inputs, decay)


def reverse_scan(direct: torch.Tensor, decay):
    """`ops.reverse_scan` fused, or None: run the plain op. A tensor decay has direct's
    shape, or 1 in direct's dimension 1 (shared by its rows)."""
    if not isinstance(decay, torch.Tensor):
        return _module.reverse_scan(direct, None, float(decay), 1) if _ready(direct) else None
    if decay.shape == direct.shape:
        rows = 1
    elif (decay.dim() == direct.dim() >= 2 and decay.shape[1] == 1
          and decay.shape[2:] == direct.shape[2:] and decay.shape[0] == direct.shape[0]):
        rows = direct.shape[1]
    else:
        return None
    return _module.reverse_scan(direct, decay, 0.0, rows) if _ready(direct, decay) else None


def suffix_products(decays: torch.Tensor):
    """`ops.suffix_products` fused, or None: run the plain op."""
    return _module.suffix_products(decays) if _ready(decays) else None


def membrane_adjoint(grad_s: torch.Tensor, psi: torch.Tensor, beta: float, theta: float,
                     after: torch.Tensor | None = None):
    """`ops.membrane_adjoint` fused (BPTT's reverse scan through a layer's block), or None:
    run the plain op."""
    if grad_s.shape != psi.shape or grad_s.dim() < 1 or (after is not None
                                                          and after.shape != psi.shape[1:]):
        return None
    if after is None:
        after = torch.zeros(psi.shape[1:], dtype=psi.dtype, device=psi.device)
    if not _ready(grad_s, psi, after):
        return None
    return _module.membrane_adjoint(grad_s, psi, after, beta, theta)


def lif_block(current: torch.Tensor, u: torch.Tensor, beta: float, theta: float,
              slope: float):
    """K membrane steps of one layer and their surrogates, fused: ``current`` (K, B, N), the
    block's input currents, is overwritten with v; returns (spikes, ψ, the last u), spikes and
    ψ (K, B, N). None where the kernels are not used (a GPU tensor, another dtype, a tensor
    that needs a graph, or no usable kernel): then the caller runs the plain ops."""
    if u.shape != current.shape[1:] or not _ready(current, u.contiguous()):
        return None
    u = u.contiguous().clone()  # the kernel writes the last u into it
    spikes, psi = _module.lif_block(current, u, beta, theta, slope)
    return spikes, psi, u


def rate_spikes(keys: torch.Tensor, counts: torch.Tensor):
    """`ops.rate_spikes` fused, or None: run the plain op."""
    if (keys.dim() != 2 or counts.shape != keys.shape[:1] or counts.dtype != torch.int64
            or not counts.is_contiguous() or not _ready(keys)):
        return None
    return _module.rate_spikes(keys, counts)


def status() -> str:
    """'used', 'not loaded yet', or why the plain ops are used."""
    return "used" if _module is not None else (_unusable or "not loaded yet")
