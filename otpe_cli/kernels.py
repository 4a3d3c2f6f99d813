"""Fused CPU kernels for the blocks of the passes without autograd, built on first use.

Without autograd (the online rules' pass, and evaluation) a layer's K steps in a block are a
loop of small element-wise ops per step (`ops.membrane_step`), then the surrogate ψ over the
block; the rules' leaky sums, reverse scans and suffix products, and BPTT's reverse scan
through a layer's membranes (its backward pass, `bptt`), are loops of small ops too. On
2 CPU cores their dispatch, not their arithmetic, is what costs. Online mode adds two things it
does at every time step: OSTL's and OTPE's per-sample traces, updated and contracted into the
gradient (`ops.trace_step`: three passes over each trace as eager ops, one here), and the
optimizer's step (Adamax with its finite check, torch.optim's arithmetic, in one call instead
of some forty). Each has a C++ loop here, and three calls made at every step of every layer
are one call each from here instead of several from Python, the same ATen ops in the same
order (so the same bits): a layer's block (its input currents' matrix product, the membranes,
the spike counts; `lif_layer`), the gradients of the rules whose weight gradient is an outer
product (`outer_accumulate`) and the per-step loss's error (`step_error`). All are
built by ``torch.utils.cpp_extension.load_inline`` the first time a process needs it (~45 s
once, then cached; it needs a C++ compiler and ninja).

The membranes must equal those of the plain ops, which BPTT's autograd reference
(`algorithms.autograd_bptt_pass`) runs with autograd, to the last bit (a rounding on the other
side of θ changes a spike; see `snn.BLOCK_STEPS`). Each loop rounds every operation as its
torch op does: I + β·u as one fused multiply-add, as ATen's
``add(alpha=β)`` does on CPUs with FMA (the FMA instruction on CPUs with AVX2 and FMA, chosen
at run time, the C library's exact ``fma`` elsewhere), nothing else contracted. When loaded,
the kernels are checked against `ops` (and Adamax against torch.optim's) on random blocks in
float32 and float64; if a single bit differs, or they cannot be built, `ops` is used and the
reason is logged once (``status()``). The trace step's gradients are the one sum in another
order (over the batch in order, where the eager ops are a batched matrix product and, for the
bias, a sum), so they are checked to round-off of the size of their terms.
``OTPE_CLI_FUSED=0`` turns them off. One difference is left, below any value that matters:
where an op has more than 32 768 elements, torch splits it across threads, and
`torch.set_flush_denormal` holds only in the calling thread, so the plain ops flush some
subnormals (< 1.2e-38 in float32) to zero and keep others, where the kernels flush them all
(the trace step's threads take the calling thread's setting). Such a value cannot move a
membrane across θ.

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
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

// x86: a second copy of each loop for CPUs with AVX2 and FMA, chosen at run time (std::fma is
// one instruction there, a library call otherwise); other CPUs compile one copy
#if defined(__x86_64__) || defined(__i386__)
#define FMA_TARGET __attribute__((target("avx2,fma")))
static bool has_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
#define FMA_TARGET
static bool has_fma() { return false; }
#endif

// whether the kernels run on these tensors (kernels._ready): CPU, float32 or float64 alike,
// contiguous, not empty, no lazy negation, no graph (leaves: or parameters, which an optimizer
// writes in place outside autograd)
bool usable(const std::vector<torch::Tensor>& tensors, bool leaves) {
  if (tensors.empty()) return false;
  const auto dtype = tensors[0].scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  for (const auto& t : tensors) {
    if (!t.defined() || !t.device().is_cpu() || t.scalar_type() != dtype || !t.is_contiguous()
        || t.numel() == 0 || t.is_neg() || (t.requires_grad() && !(leaves && t.is_leaf())))
      return false;
  }
  return true;
}

// at::parallel_for over [0, n) in chunks of at least grain, body(begin, end) in every thread
// with the caller's flush-to-zero and denormals-are-zero modes (torch.set_flush_denormal sets
// them in the calling thread only)
template <typename F>
static void parallel_for_in_caller_modes(int64_t n, int64_t grain, const F& body) {
#if defined(__x86_64__) || defined(__i386__)
  const unsigned int caller = _mm_getcsr();
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    const unsigned int mine = _mm_getcsr();
    _mm_setcsr(caller);
    body(begin, end);
    _mm_setcsr(mine);
  });
#else
  at::parallel_for(0, n, grain, body);
#endif
}

// the fewest units (columns of a (K, P) block) a thread takes: some 32768 element-steps, so a
// single step (K = 1) of a layer runs in the calling thread
static inline int64_t unit_grain(int64_t K) {
  return std::max<int64_t>(64, 32768 / std::max<int64_t>(1, K));
}

// K steps of P membranes: current (K, P) becomes v, u (P) the last u; spikes and psi (K, P).
template <typename T>
static inline __attribute__((always_inline)) void lif_steps(
    T* __restrict current, T* __restrict u, T* __restrict spikes, T* __restrict psi,
    int64_t K, int64_t P, int64_t begin, int64_t end, T beta, T theta, T slope) {
  for (int64_t k = 0; k < K; ++k) {  // the units [begin, end) of each of the K rows of P
    T* __restrict c = current + k * P;
    T* __restrict s = spikes + k * P;
    T* __restrict q = psi + k * P;
    for (int64_t j = begin; j < end; ++j) {
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
    T* __restrict out, int64_t K, int64_t P, int64_t begin, int64_t end, T beta, T theta) {
  for (int64_t k = K - 1; k >= 0; --k) {  // the units [begin, end) of each row
    const T* __restrict g = grad_s + k * P;
    const T* __restrict q = psi + k * P;
    const T* __restrict n = k + 1 < K ? out + (k + 1) * P : after;
    T* __restrict o = out + k * P;
    for (int64_t j = begin; j < end; ++j) {
      T grad_u = beta * n[j];
      o[j] = std::fma(q[j], std::fma(-theta, grad_u, g[j]), grad_u);
    }
  }
}

#define TWICE(NAME, BODY, ...)                                                        \
  template <typename T> FMA_TARGET static void NAME##_fma(__VA_ARGS__) BODY \
  template <typename T> static void NAME##_plain(__VA_ARGS__) BODY

TWICE(lif, { lif_steps<T>(current, u, spikes, psi, K, P, begin, end, beta, theta, slope); },
      T* current, T* u, T* spikes, T* psi, int64_t K, int64_t P, int64_t begin, int64_t end,
      T beta, T theta, T slope)
TWICE(leaky, { leaky_steps<T>(state, inputs, out, K, P, decay); },
      T* state, const T* inputs, T* out, int64_t K, int64_t P, T decay)
TWICE(reverse, { reverse_steps<T>(direct, decay, out, K, R, P, scalar); },
      const T* direct, const T* decay, T* out, int64_t K, int64_t R, int64_t P, T scalar)
TWICE(suffix, { suffix_steps<T>(decays, out, K, P); }, const T* decays, T* out, int64_t K, int64_t P)
TWICE(adjoint, { adjoint_steps<T>(grad_s, psi, after, out, K, P, begin, end, beta, theta); },
      const T* grad_s, const T* psi, const T* after, T* out, int64_t K, int64_t P, int64_t begin,
      int64_t end, T beta, T theta)

// state (P) is left at the last step; returns every step, (K, P), or undefined (None) where
// the kernels do not take these tensors
torch::Tensor leaky_sum(torch::Tensor state, torch::Tensor inputs, double decay) {
  if (inputs.dim() < 1 || state.sizes() != inputs.sizes().slice(1)
      || !usable({state, inputs}, false))
    return torch::Tensor();
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
    parallel_for_in_caller_modes(P, unit_grain(K), [&](int64_t begin, int64_t end) {
      run(grad_s.data_ptr<scalar_t>(), psi.data_ptr<scalar_t>(), after.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), K, P, begin, end, (scalar_t)beta, (scalar_t)theta);
    });
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

// One online step of a layer's per-sample traces (B, O, I) (rules.ostl, rules.otpe), for the
// output units [begin, end): ε[b,o,:] = fma(δ[b,o], ε[b,o,:], a[b,:]) (torch.addcmul(a, ε, δ));
// with a post-synaptic trace R, R[b,o,:] = fma(c[b,o], ε[b,o,:], R[b,o,:]) (R.addcmul_(c, ε));
// then grad_w[o,:] += Σ_b w[b,o]·X[b,o,:] for X = R, else ε, summed over b in order by fma
// (one pass over the traces instead of one per op). fresh: ε and R are 0 before the step, and
// their memory is not read. Samples go four at a time (the rows of one output unit for four
// samples, so that each partial sum is loaded and stored once per four rows), then one by one.
#define TRACE_ROW(k)                                                                 \
  {                                                                                  \
    T x = FRESH ? a##k[i] : std::fma(d##k, e##k[i], a##k[i]);                        \
    e##k[i] = x;                                                                     \
    if (POST) {                                                                      \
      T y = FRESH ? c##k * x : std::fma(c##k, x, r##k[i]);                           \
      r##k[i] = y;                                                                   \
      s = std::fma(w##k, y, s);                                                      \
    } else {                                                                         \
      s = std::fma(w##k, x, s);                                                      \
    }                                                                                \
  }

template <typename T, bool POST, bool FRESH>
static inline __attribute__((always_inline)) void trace_rows4(
    T* __restrict e0, T* __restrict e1, T* __restrict e2, T* __restrict e3, T* __restrict r0,
    T* __restrict r1, T* __restrict r2, T* __restrict r3, const T* __restrict a0,
    const T* __restrict a1, const T* __restrict a2, const T* __restrict a3, const T* d,
    const T* c, const T* w, T* __restrict sum, int64_t I) {
  const T d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
  const T c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
  const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t i = 0; i < I; ++i) {
    T s = sum[i];
    TRACE_ROW(0) TRACE_ROW(1) TRACE_ROW(2) TRACE_ROW(3)
    sum[i] = s;
  }
}

template <typename T, bool POST, bool FRESH>
static inline __attribute__((always_inline)) void trace_rows1(
    T* __restrict e0, T* __restrict r0, const T* __restrict a0, T d0, T c0, T w0,
    T* __restrict sum, int64_t I) {
  for (int64_t i = 0; i < I; ++i) {
    T s = sum[i];
    TRACE_ROW(0)
    sum[i] = s;
  }
}
#undef TRACE_ROW

template <typename T, bool POST, bool FRESH>
static inline __attribute__((always_inline)) void trace_block(
    T* __restrict eps, T* __restrict post, const T* __restrict decay,
    const T* __restrict inputs, const T* __restrict coef, const T* __restrict weight,
    T* __restrict acc, int64_t begin, int64_t end, int64_t B, int64_t O, int64_t I) {
  const int64_t row = O * I;  // from one sample's row of a unit to the next sample's
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) {
    const T* a = inputs + b * I;
    for (int64_t o = begin; o < end; ++o) {
      T* e = eps + (b * O + o) * I;
      T* r = POST ? post + (b * O + o) * I : nullptr;
      T d[4], c[4], w[4];
      for (int k = 0; k < 4; ++k) {
        d[k] = decay[(b + k) * O + o];
        c[k] = POST ? coef[(b + k) * O + o] : T(0);
        w[k] = weight[(b + k) * O + o];
      }
      trace_rows4<T, POST, FRESH>(e, e + row, e + 2 * row, e + 3 * row, r,
                                  POST ? r + row : nullptr, POST ? r + 2 * row : nullptr,
                                  POST ? r + 3 * row : nullptr, a, a + I, a + 2 * I, a + 3 * I,
                                  d, c, w, acc + (o - begin) * I, I);
    }
  }
  for (; b < B; ++b) {
    for (int64_t o = begin; o < end; ++o) {
      const int64_t k = b * O + o;
      trace_rows1<T, POST, FRESH>(eps + k * I, POST ? post + k * I : nullptr, inputs + b * I,
                                  decay[k], POST ? coef[k] : T(0), weight[k],
                                  acc + (o - begin) * I, I);
    }
  }
}

template <typename T>
static inline __attribute__((always_inline)) void trace_rows(
    T* __restrict eps, T* __restrict post, const T* __restrict decay,
    const T* __restrict inputs, const T* __restrict coef, const T* __restrict weight,
    T* __restrict grad_w, T* __restrict acc, int64_t begin, int64_t end, int64_t B, int64_t O,
    int64_t I, bool fresh) {
  // acc holds the gradient's rows [begin, end) until all B samples are summed
  for (int64_t j = 0; j < (end - begin) * I; ++j) acc[j] = T(0);
#define TRACE_BLOCK(POST, FRESH) \
  trace_block<T, POST, FRESH>(eps, post, decay, inputs, coef, weight, acc, begin, end, B, O, I)
  if (post && fresh) TRACE_BLOCK(true, true);
  else if (post) TRACE_BLOCK(true, false);
  else if (fresh) TRACE_BLOCK(false, true);
  else TRACE_BLOCK(false, false);
#undef TRACE_BLOCK
  T* __restrict g = grad_w + begin * I;
  for (int64_t j = 0; j < (end - begin) * I; ++j) g[j] = g[j] + acc[j];
}

TWICE(trace, { trace_rows<T>(eps, post, decay, inputs, coef, weight, grad_w, acc, begin, end, B, O,
                             I, fresh); },
      T* eps, T* post, const T* decay, const T* inputs, const T* coef, const T* weight,
      T* grad_w, T* acc, int64_t begin, int64_t end, int64_t B, int64_t O, int64_t I,
      bool fresh)

// ops.rule_step's bias part for the output units [begin, end), after their trace rows: the
// bias's traces, those of an input of 1 (e^b = e^b·δ + 1 and, with a post-synaptic trace,
// R^b = fma(ψ, e^b, R^b·β), as mul_, add_ and addcmul_ round them), grad_b[o] += Σ_b
// w^b[b,o]·X^b[b,o] for X = R^b, else e^b, summed over b in order by fma (a sum in another
// order than the eager one's), and the next step's δ = ψ·(−βθ) + β.
template <typename T>
static inline __attribute__((always_inline)) void bias_rows(
    T* __restrict eb, T* __restrict rb, T* __restrict decay, const T* __restrict psi,
    const T* __restrict w, T* __restrict gb, T* __restrict acc, int64_t begin, int64_t end,
    int64_t B, int64_t O, T beta, T neg_beta_theta) {
  for (int64_t o = begin; o < end; ++o) acc[o - begin] = T(0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t o = begin; o < end; ++o) {
      const int64_t k = b * O + o;
      T e = eb[k] * decay[k];
      e = e + T(1);
      eb[k] = e;
      T x = e;
      if (rb) {
        T r = rb[k] * beta;
        r = std::fma(psi[k], e, r);
        rb[k] = r;
        x = r;
      }
      acc[o - begin] = std::fma(w[k], x, acc[o - begin]);
      T n = psi[k] * neg_beta_theta;
      decay[k] = n + beta;
    }
  }
  for (int64_t o = begin; o < end; ++o) gb[o] = gb[o] + acc[o - begin];
}

TWICE(bias, { bias_rows<T>(eb, rb, decay, psi, w, gb, acc, begin, end, B, O, beta, nbt); },
      T* eb, T* rb, T* decay, const T* psi, const T* w, T* gb, T* acc, int64_t begin,
      int64_t end, int64_t B, int64_t O, T beta, T nbt)

// the bias part of ops.rule_step (nullptr: trace_step alone)
struct BiasStep {
  torch::Tensor psi, bias_eps, bias_weight, grad_b;
  c10::optional<torch::Tensor> bias_post;
  double beta, theta;
};

// (false, nothing done, where the kernels do not take these tensors)
static bool trace_pass(torch::Tensor eps, c10::optional<torch::Tensor> post,
                       torch::Tensor decay, torch::Tensor inputs,
                       c10::optional<torch::Tensor> coef, torch::Tensor weight,
                       torch::Tensor grad_w, bool fresh, const BiasStep* bias) {
  if (eps.dim() != 3 || post.has_value() != coef.has_value()) return false;
  int64_t B = eps.size(0), O = eps.size(1), I = eps.size(2);
  std::vector<torch::Tensor> all{eps, decay, inputs, weight, grad_w};
  if (!decay.sizes().equals({B, O}) || !inputs.sizes().equals({B, I})
      || !weight.sizes().equals({B, O}) || !grad_w.sizes().equals({O, I}))
    return false;
  if (post.has_value()) {
    if (!post->sizes().equals(eps.sizes()) || !coef->sizes().equals({B, O})) return false;
    all.push_back(*post);
    all.push_back(*coef);
  }
  if (!usable(all, false)) return false;
  AT_DISPATCH_FLOATING_TYPES(eps.scalar_type(), "trace_step", [&] {
    using T = scalar_t;
    auto run = has_fma() ? trace_fma<T> : trace_plain<T>;
    auto run_bias = has_fma() ? bias_fma<T> : bias_plain<T>;
    T* e = eps.data_ptr<T>();
    T* r = post.has_value() ? post->data_ptr<T>() : nullptr;
    const T* c = coef.has_value() ? coef->data_ptr<T>() : nullptr;
    T* d = decay.data_ptr<T>();
    const T* a = inputs.data_ptr<T>();
    const T* w = weight.data_ptr<T>();
    T* g = grad_w.data_ptr<T>();
    int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, B * I));
    parallel_for_in_caller_modes(O, grain, [&](int64_t begin, int64_t end) {
      std::vector<T> acc((end - begin) * I);
      run(e, r, d, a, c, w, g, acc.data(), begin, end, B, O, I, fresh);
      if (bias)  // (after the rows: they read this step's δ, which it overwrites)
        run_bias(bias->bias_eps.data_ptr<T>(),
                 bias->bias_post.has_value() ? bias->bias_post->data_ptr<T>() : nullptr, d,
                 bias->psi.data_ptr<T>(), bias->bias_weight.data_ptr<T>(),
                 bias->grad_b.data_ptr<T>(), acc.data(), begin, end, B, O, (T)bias->beta,
                 (T)(-bias->beta * bias->theta));
    });
  });
  return true;
}

bool trace_step(torch::Tensor eps, c10::optional<torch::Tensor> post, torch::Tensor decay,
                torch::Tensor inputs, c10::optional<torch::Tensor> coef, torch::Tensor weight,
                torch::Tensor grad_w, bool fresh) {
  return trace_pass(eps, post, decay, inputs, coef, weight, grad_w, fresh, nullptr);
}

// ops.rule_step: trace_step with the bias part (bias_rows) in the same pass. False (nothing
// written) where the kernels do not take these tensors.
bool rule_step(torch::Tensor eps, c10::optional<torch::Tensor> post, torch::Tensor decay,
               torch::Tensor inputs, c10::optional<torch::Tensor> coef, torch::Tensor weight,
               torch::Tensor grad_w, bool fresh, torch::Tensor psi, torch::Tensor bias_eps,
               c10::optional<torch::Tensor> bias_post, torch::Tensor bias_weight,
               torch::Tensor grad_b, double beta, double theta) {
  std::vector<torch::Tensor> small{decay, psi, bias_eps, bias_weight};
  if (bias_post.has_value()) small.push_back(*bias_post);
  for (const auto& t : small)
    if (!t.sizes().equals(decay.sizes())) return false;
  if (grad_b.dim() != 1 || grad_b.size(0) != decay.size(-1)) return false;
  small.push_back(grad_b);
  if (!usable(small, false)) return false;  // (trace_pass checks decay against eps)
  BiasStep bias{psi, bias_eps, bias_weight, grad_b, bias_post, beta, theta};
  return trace_pass(eps, post, decay, inputs, coef, weight, grad_w, fresh, &bias);
}

// Adamax, as torch.optim.adamax's single-tensor step rounds it on CPUs (checked when loaded):
// g + λ·p as fma, exp_avg.lerp_(g, 1 − β1), max(β2·u, |g| + ε), p + (−lr_t·m)/u
template <typename T>
static inline __attribute__((always_inline)) void adamax_elements(
    T* __restrict p, const T* __restrict grad, T* __restrict m, T* __restrict u, int64_t n,
    T weight, T beta2, T eps, T neg_lr, T decay, bool decayed) {
  const bool small = std::fabs(weight) < T(0.5);  // torch's lerp: the side its weight is on
  for (int64_t j = 0; j < n; ++j) {
    T g = decayed ? std::fma(decay, p[j], grad[j]) : grad[j];
    T first = small ? std::fma(weight, g - m[j], m[j]) : std::fma(weight - T(1), g - m[j], g);
    m[j] = first;
    T a = u[j] * beta2, b = std::fabs(g) + eps;
    T second = a < b ? b : a;
    u[j] = second;
    p[j] = p[j] + (neg_lr * first) / second;
  }
}

TWICE(adamax, { adamax_elements<T>(p, grad, m, u, n, weight, beta2, eps, neg_lr, decay,
                                   decayed); },
      T* p, const T* grad, T* m, T* u, int64_t n, T weight, T beta2, T eps, T neg_lr, T decay,
      bool decayed)

// whether every value of every tensor is finite (x − x is 0 exactly then, NaN otherwise)
bool all_finite(std::vector<torch::Tensor> tensors) {
  for (auto& t : tensors) {
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "all_finite", [&] {
      const scalar_t* x = t.data_ptr<scalar_t>();
      int bad = 0;
      for (int64_t j = 0, n = t.numel(); j < n; ++j) bad |= !(x[j] - x[j] == scalar_t(0));
      finite = !bad;
    });
    if (!finite) return false;
  }
  return true;
}

// One Adamax step of every parameter, if every gradient is finite (else nothing changes and
// it returns false); the step counts (0-dim) are counted up as torch.optim counts them
// (−1, nothing done, where the kernels do not take these tensors)
int64_t adamax_step(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads,
                    std::vector<torch::Tensor> exp_avgs, std::vector<torch::Tensor> exp_infs,
                    std::vector<torch::Tensor> steps, double lr, double beta1, double beta2,
                    double eps, double weight_decay) {
  const size_t n = params.size();
  if (grads.size() != n || exp_avgs.size() != n || exp_infs.size() != n || steps.size() != n)
    return -1;
  std::vector<torch::Tensor> all(params);
  for (auto* group : {&grads, &exp_avgs, &exp_infs}) {
    for (size_t i = 0; i < n; ++i) {
      if (!(*group)[i].defined() || !(*group)[i].sizes().equals(params[i].sizes())) return -1;
      all.push_back((*group)[i]);
    }
  }
  if (!usable(all, true)) return -1;
  for (const auto& count : steps) {
    if (!count.defined() || count.dim() != 0 || !count.device().is_cpu()
        || (count.scalar_type() != at::kFloat && count.scalar_type() != at::kDouble))
      return -1;
  }
  if (!all_finite(grads)) return 0;
  for (size_t i = 0; i < params.size(); ++i) {
    double step = 0;
    AT_DISPATCH_FLOATING_TYPES(steps[i].scalar_type(), "adamax_count", [&] {
      scalar_t* count = steps[i].data_ptr<scalar_t>();
      count[0] = count[0] + scalar_t(1);
      step = static_cast<double>(count[0]);
    });
    const double neg_lr = -(lr / (1 - std::pow(beta1, step)));  // as torch's Python computes it
    AT_DISPATCH_FLOATING_TYPES(params[i].scalar_type(), "adamax_step", [&] {
      using T = scalar_t;
      auto run = has_fma() ? adamax_fma<T> : adamax_plain<T>;
      run(params[i].data_ptr<T>(), grads[i].data_ptr<T>(), exp_avgs[i].data_ptr<T>(),
          exp_infs[i].data_ptr<T>(), params[i].numel(), (T)(1 - beta1), (T)beta2, (T)eps,
          (T)neg_lr, (T)weight_decay, weight_decay != 0);
    });
  }
  return 1;
}

std::vector<torch::Tensor> lif_block(torch::Tensor current, torch::Tensor u, double beta,
                                     double theta, double slope) {
  auto spikes = torch::empty_like(current);
  auto psi = torch::empty_like(current);
  int64_t K = current.size(0), P = u.numel();
  AT_DISPATCH_FLOATING_TYPES(current.scalar_type(), "lif_block", [&] {
    auto run = has_fma() ? lif_fma<scalar_t> : lif_plain<scalar_t>;
    parallel_for_in_caller_modes(P, unit_grain(K), [&](int64_t begin, int64_t end) {
      run(current.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), spikes.data_ptr<scalar_t>(),
          psi.data_ptr<scalar_t>(), K, P, begin, end, (scalar_t)beta, (scalar_t)theta,
          (scalar_t)slope);
    });
  });
  return {spikes, psi};
}

// A layer's K steps without autograd (compute.lif_layer): the input currents of the K steps
// as one matrix product (at::addmm, torch.addmm's bits), or ``given`` (K·B, N), made with
// those bits (products.block_currents); v written over them by lif_block; the last u into u
// itself if in_place, else into a copy; counts (B, N), if given, gets the spikes added. Returns {v, spikes, the last u, psi}, or nothing where the kernels do not
// take these tensors (then the plain ops run).
std::vector<torch::Tensor> lif_layer(torch::Tensor a, torch::Tensor weight, torch::Tensor bias,
                                     torch::Tensor u, c10::optional<torch::Tensor> counts,
                                     bool in_place, double beta, double theta, double slope,
                                     c10::optional<torch::Tensor> given) {
  std::vector<torch::Tensor> state{a, u};
  if (counts.has_value()) state.push_back(*counts);
  if (given.has_value()) state.push_back(*given);
  if (at::GradMode::is_enabled() || a.dim() != 3 || weight.dim() != 2 || u.dim() != 2
      || bias.dim() != 1 || u.size(0) != a.size(1) || u.size(1) != weight.size(0)
      || weight.size(1) != a.size(2) || bias.size(0) != weight.size(0)
      || (counts.has_value() && counts->sizes() != u.sizes())
      || (given.has_value() && !given->sizes().equals({a.size(0) * a.size(1), weight.size(0)}))
      || !usable(state, false) || !usable({a, weight, bias}, true))
    return {};
  int64_t K = a.size(0), B = a.size(1);
  auto current = (given.has_value() ? *given : at::addmm(bias, a.flatten(0, 1), weight.t()))
                     .view({K, B, weight.size(0)});
  auto last = in_place ? u : u.clone();
  auto out = lif_block(current, last, beta, theta, slope);
  if (counts.has_value()) counts->add_(K == 1 ? out[0][0] : out[0].sum(0));
  return {current, out[0], last, out[1]};
}

// ops.outer_accumulate's torch ops, called from here (one call instead of six from Python):
// d = e ⊙ post; grad_w += dᵀ pre over the block's K·B rows; grad_b += Σ d, or
// Σ_k bias_pre_k Σ_b d_k with the bias input's traces bias_pre (K). Returns the errors sent
// down, d W given the layer's weight (at::matmul, as Python's @), else d; or nothing
// (undefined: None) where the kernels do not take these tensors.
torch::Tensor outer_accumulate(torch::Tensor e, torch::Tensor post, torch::Tensor pre,
                               torch::Tensor grad_w, torch::Tensor grad_b,
                               c10::optional<torch::Tensor> bias_pre,
                               c10::optional<torch::Tensor> weight) {
  std::vector<torch::Tensor> all{e, post, pre, grad_w, grad_b};
  if (bias_pre.has_value()) all.push_back(*bias_pre);
  if (weight.has_value()
      && (weight->dim() != 2 || weight->size(0) != e.size(-1) || !usable({e, *weight}, true)))
    return torch::Tensor();
  if (at::GradMode::is_enabled() || e.dim() != 3 || pre.dim() != 3 || e.sizes() != post.sizes()
      || pre.size(0) != e.size(0) || pre.size(1) != e.size(1) || grad_w.dim() != 2
      || grad_w.size(0) != e.size(2) || grad_w.size(1) != pre.size(2) || grad_b.dim() != 1
      || grad_b.size(0) != e.size(2)
      || (bias_pre.has_value() && (bias_pre->dim() != 1 || bias_pre->size(0) != e.size(0)))
      || !usable(all, false))
    return torch::Tensor();
  auto d = at::mul(e, post);
  grad_w.addmm_(d.flatten(0, 1).t(), pre.flatten(0, 1));
  if (bias_pre.has_value())
    grad_b.addmv_(d.sum(1).t(), *bias_pre);
  else
    grad_b.add_(d.sum({0, 1}));
  return weight.has_value() ? at::matmul(d, *weight) : d;
}

// ops.step_error's torch ops, called from here: the per-step loss's error for the logits z
// (K, B, C) of a block, Σ_k log softmax(z_k) added into logp_sum (B, C). Undefined (None)
// where the kernels do not take these tensors.
torch::Tensor step_error(torch::Tensor z, torch::Tensor neg_target, torch::Tensor logp_sum,
                         double inv_batch) {
  if (at::GradMode::is_enabled() || z.dim() != 3 || neg_target.sizes() != z.sizes().slice(1)
      || logp_sum.sizes() != neg_target.sizes() || !usable({z, neg_target, logp_sum}, false))
    return torch::Tensor();
  auto logp = at::log_softmax(z, -1);
  logp_sum.add_(logp.sum(0));
  return at::add(neg_target, logp.exp_(), inv_batch);
}
"""

#: -ffp-contract=off: no multiply-add the plain ops do not make; -fno-trapping-math lets the
#: comparison vectorise (it changes no result); -fopenmp: at::parallel_for uses torch's threads
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
_FUNCTIONS = ["lif_block", "lif_layer", "outer_accumulate", "step_error", "leaky_sum",
              "reverse_scan", "suffix_products", "membrane_adjoint", "rate_spikes", "trace_step",
              "rule_step", "adamax_step", "usable"]
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


@torch.no_grad()  # (as the passes run them)
def _check(module) -> str | None:
    """None if every kernel reproduces its plain ops bit for bit here, else what differed."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        rand = lambda *size: torch.randn(*size, generator=g).to(dtype)  # noqa: E731
        pairs = _trace_step_pairs(module, rand, dtype) + _adamax_pairs(module, rand)
        for shape in ((25, 16, 40), (7, 3, 5)):  # (vector bodies and scalar tails)
            current, u = rand(*shape) * 0.7 + 0.3, torch.full(shape[1:], 0.5, dtype=dtype)
            v, u_k = current.clone(), u.clone()
            got = (v, *module.lif_block(v, u_k, 0.95, 1.0, 25.0), u_k)
            want = _eager_membrane(current, u.clone(), 0.95, 1.0, 25.0)
            pairs += zip(("membrane v", "spikes", "ψ", "u"),
                         (want[0], want[1], want[3], want[2]), got)
            pairs += _layer_pairs(module, rand, shape)
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
        for name, a, b, *size in pairs:
            if size:  # a sum in another order: equal to round-off of its terms' size
                ulps = 64 * torch.finfo(dtype).eps
                if not bool(((a - b).abs() <= ulps * size[0]).all()):
                    return f"its {name} is not the plain ops' to round-off ({dtype})"
                continue
            if not torch.equal(a, b):
                return (f"its {name} differs from the plain ops' in {int((a != b).sum())} "
                        f"of {a.numel()} values ({dtype})")
    return None


def _layer_pairs(module, rand, shape) -> list:
    """A layer's block (`ops.lif_layer`, u in place and not, with the spike counts) and the
    factorised rules' gradients (`ops.outer_accumulate`, with the bias input's traces and
    without), fused against the plain ops: (name, plain, fused)."""
    K, B, N = shape
    a, weight, bias = (rand(K, B, 6) > 0.5).to(rand(1).dtype), rand(N, 6), rand(N)
    pairs = []
    made = torch.addmm(bias, a.flatten(0, 1), weight.t())  # (the currents, given)
    for in_place, current in ((False, None), (True, None), (True, made)):
        runs = []
        for fused in (False, True):
            u, counts = rand(B, N) * 0.0 + 0.5, torch.zeros(B, N, dtype=a.dtype)
            args = (a, weight, bias, u, counts, in_place, 0.95, 1.0, 25.0)
            given = None if current is None else current.clone()  # (v is written over it)
            out = (module.lif_layer(*args, given) if fused else
                   ops.lif_layer(*args, current=given))
            runs.append((*out, u, counts))
        pairs += [(f"layer block ({name})", x, y) for name, x, y in
                  zip(("v", "spikes", "u", "ψ", "u given", "spike counts"), *runs)]
    e, post, pre, bias_pre = rand(K, B, N), rand(K, B, N), rand(K, B, 6), rand(K)
    for traces in (None, bias_pre):
        runs = []
        for run in (ops.outer_accumulate, module.outer_accumulate):
            grad_w, grad_b = rand(N, 6) * 0.0 + 1.0, torch.ones(N, dtype=a.dtype)
            runs.append((run(e, post, pre, grad_w, grad_b, traces, None), grad_w, grad_b,
                         run(e, post, pre, grad_w, grad_b, traces, weight)))
        pairs += [("outer-product gradients", x, y) for x, y in zip(*runs)]
    target = torch.zeros(B, N, dtype=a.dtype)
    target[:, 0] = -1.0 / B
    runs = []
    for run in (ops.step_error, module.step_error):
        logp_sum = torch.ones(B, N, dtype=a.dtype)
        runs.append((run(e * 3.0, target, logp_sum, 1.0 / B), logp_sum))
    pairs += [("per-step loss error", x, y) for x, y in zip(*runs)]
    return pairs


def _trace_step_pairs(module, rand, dtype) -> list:
    """The fused online trace step against `ops.trace_step`, without and with a post-synaptic
    trace, from zero and not: (name, plain, fused) for ε and R, to the bit, and (name, plain,
    fused, the size of its terms) for the gradient, a sum over the batch in another order."""
    pairs = []
    B, O, I = 6, 5, 19
    for post, fresh in ((False, True), (False, False), (True, True), (True, False)):
        traces = [rand(B, O, I) for _ in range(2 if post else 1)]
        decay, weight, coef = rand(B, O), rand(B, O), rand(B, O)
        inputs, grad_w = rand(B, I), rand(O, I)
        runs = []
        for step in (ops.trace_step, module.trace_step):
            mine = [t.clone() for t in traces]
            grad = grad_w.clone()
            step(mine[0], mine[1] if post else None, decay, inputs, coef if post else None,
                 weight, grad, fresh)
            runs.append((mine, grad))
        (plain, grad_plain), (fused, grad_fused) = runs
        size = grad_w.abs() + torch.einsum("bi,bij->ij", weight.abs(), plain[-1].abs())
        what = f"online trace step ({'OTPE' if post else 'OSTL'}{', fresh' if fresh else ''})"
        pairs += [(what, a, b) for a, b in zip(plain, fused)]
        pairs.append((what + "'s gradient", grad_plain, grad_fused, size))
        runs = []  # the whole step: the bias's traces and gradient and δ besides
        bias_eps, bias_post, grad_b, psi = rand(B, O).abs(), rand(B, O), rand(O), rand(B, O).abs()
        for step in (ops.rule_step, module.rule_step):
            mine = [t.clone() for t in traces]
            small = [decay.clone(), bias_eps.clone(), bias_post.clone(), grad_b.clone()]
            step(mine[0], mine[1] if post else None, small[0], inputs, coef if post else None,
                 weight, grad_w.clone(), fresh, psi, small[1], small[2] if post else None,
                 coef, small[3], 0.95, 0.8)
            runs.append((mine, small))
        (plain, plain_small), (fused, fused_small) = runs
        what = what.replace("trace step", "rule step")
        pairs += [(what, a, b) for a, b in zip(plain + plain_small[:3], fused + fused_small[:3])]
        size = grad_b.abs() + (coef * plain_small[2 if post else 1]).abs().sum(0)
        pairs.append((what + "'s bias gradient", plain_small[3], fused_small[3], size))
    return pairs


def _adamax_pairs(module, rand) -> list:
    """Three fused Adamax steps against torch.optim's (with weight decay, and β1 on either side
    of torch's lerp switch): (name, torch's, fused) for the parameters and the state."""
    from torch.optim.adamax import adamax

    pairs = []
    for beta1, decay in ((0.9, 0.0), (0.3, 0.01)):
        params = [rand(4, 9), rand(7), rand(33)]
        steps = [[rand(*t.shape) * 10.0 ** (k - 1) for t in params] for k in range(3)]
        runs = []
        for fused in (False, True):
            p = [t.clone() for t in params]
            first, second = [torch.zeros_like(t) for t in p], [torch.zeros_like(t) for t in p]
            counts = [torch.tensor(0.0) for _ in p]
            for grads in steps:
                if fused:
                    module.adamax_step(p, grads, first, second, counts, 0.01, beta1, 0.999,
                                       1e-8, decay)
                else:
                    adamax(p, grads, first, second, counts, eps=1e-8, beta1=beta1, beta2=0.999,
                           lr=0.01, weight_decay=decay, foreach=False, maximize=False)
            runs.append(p + first + second + counts)
        pairs += [(f"Adamax step (β1 = {beta1})", a, b) for a, b in zip(*runs)]
    return pairs


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


def _loaded(t: torch.Tensor) -> bool:
    """Whether the kernels are loaded, loading them on first use by a tensor a kernel could
    take (CPU, float32 or float64: nothing is built for the others)."""
    if _module is None:
        if _unusable is not None or t.device.type != "cpu" or t.dtype not in (torch.float32,
                                                                              torch.float64):
            return False
        load()
    return _module is not None


def _ready(*tensors: torch.Tensor) -> bool:
    """Whether the kernels run on these tensors (loading them on first use): CPU, float32 or
    float64 alike, contiguous, not empty, no graph, no lazy negation (checked in C++: this runs
    at every step)."""
    return _loaded(tensors[0]) and _module.usable(tensors, False)


def leaky_sum(state: torch.Tensor, inputs: torch.Tensor, decay: float):
    """`ops.leaky_sum` fused (state left at the last step), or None: run the plain op."""
    return _module.leaky_sum(state, inputs, decay) if _loaded(state) else None


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


def lif_layer(a, weight, bias, u, counts, in_place: bool, beta: float, theta: float,
              slope: float, current=None):
    """`ops.lif_layer` in one call (its matrix product as ATen's, unless ``current`` is given,
    the membranes as `lif_block`; the tensors checked in C++, as it runs at every step), or
    None: run the plain ops."""
    if not _loaded(a):
        return None
    out = _module.lif_layer(a, weight, bias, u, counts, in_place, beta, theta, slope, current)
    return tuple(out) if out else None


def outer_accumulate(e, post, pre, grad_w, grad_b, bias_pre, weight):
    """`ops.outer_accumulate`'s torch ops called from C++ (the same ops: the same bits), or
    None: run them from Python."""
    return (_module.outer_accumulate(e, post, pre, grad_w, grad_b, bias_pre, weight)
            if _loaded(e) else None)


def step_error(z, neg_target, logp_sum, inv_batch: float):
    """`ops.step_error`'s torch ops called from C++, or None: run them from Python."""
    return _module.step_error(z, neg_target, logp_sum, inv_batch) if _loaded(z) else None


def rate_spikes(keys: torch.Tensor, counts: torch.Tensor):
    """`ops.rate_spikes` fused, or None: run the plain op."""
    if (keys.dim() != 2 or counts.shape != keys.shape[:1] or counts.dtype != torch.int64
            or not counts.is_contiguous() or not _ready(keys)):
        return None
    return _module.rate_spikes(keys, counts)


def trace_step(eligibility: torch.Tensor, post: torch.Tensor | None, decay: torch.Tensor,
               inputs: torch.Tensor, coef: torch.Tensor | None, weight: torch.Tensor,
               grad_w: torch.Tensor, fresh: bool) -> bool:
    """`ops.trace_step` fused (one pass over the traces; the gradient's sum over the batch in
    another order than bmm's, equal to round-off); False where the kernels are not used (the
    kernel checks the shapes)."""
    return _loaded(eligibility) and _module.trace_step(eligibility, post, decay, inputs, coef,
                                                       weight, grad_w, fresh)


def rule_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh: bool, psi,
              bias_eligibility, bias_post, bias_weight, grad_b, beta: float,
              threshold: float) -> bool:
    """`ops.rule_step` fused: the trace pass (`trace_step`) with the bias's traces, gradient
    and next decay in the same pass over the output units; False where the kernels are not
    used (nothing written: the kernel checks the tensors)."""
    return _loaded(eligibility) and _module.rule_step(
        eligibility, post, decay, inputs, coef, weight, grad_w, fresh, psi, bias_eligibility,
        bias_post, bias_weight, grad_b, beta, threshold)


def adamax_step(params, grads, exp_avgs, exp_infs, steps, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float) -> bool | None:
    """One Adamax step of every parameter, torch.optim's to the bit, if every gradient is
    finite: True; False (nothing changed) if one is not; None where the kernels are not used
    (the kernel checks the tensors)."""
    if not params or not _loaded(params[0]):
        return None
    done = _module.adamax_step(params, grads, exp_avgs, exp_infs, steps, lr, beta1, beta2, eps,
                               weight_decay)
    return None if done < 0 else bool(done)


def status() -> str:
    """'used', 'not loaded yet', or why the plain ops are used."""
    return "used" if _module is not None else (_unusable or "not loaded yet")
