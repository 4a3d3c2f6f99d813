#!/usr/bin/env python
"""Speed and memory of every algorithm against BPTT, measured in the same run.

    python scripts/benchmark.py                      # the Randman network, CPU (a few minutes)
    python scripts/benchmark.py --repeats 3 --memory-steps 50 200 800
    python scripts/benchmark.py --device cuda

Times ``sequence_gradients`` and a full training iteration (batch draw + gradient + optimizer
step) for every algorithm, interleaving the algorithms within each repeat and reporting medians,
so that machine noise hits all of them alike. It also times the memory-traffic floor of the
N_out × N_in traces (bare tensor ops that read and write each trace once per step) and measures
peak memory as T grows (each point in a fresh subprocess, peak RSS above a baseline process, or
peak CUDA memory on a GPU). BPTT is also timed against a plain per-step autograd BPTT of the
same equations written here, and against its own matrix products alone (its floor); the memory
table holds BPTT with algorithm.checkpoint_blocks=true beside the online rules, with the time
of each point. Prints ratios; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from otpe_cli import ALGORITHMS, SNN, build_algorithm, kernels, products
from otpe_cli.algorithms import _flushing_denormals, autograd_bptt_pass
from otpe_cli.compute import rule_step
from otpe_cli.snn import block_steps
from otpe_cli.data.randman import Randman
from otpe_cli.optim import Optimizer
from otpe_cli.rules import RULES
from otpe_cli.ops import advance_trace, contract_batch, membrane_step
from otpe_cli.rules.base import TracePool

#: drawing a training batch on the paper's task (per-draw normalisation): at most this share
#: of OTPE's sequence gradient
DRAW_TARGET = 1 / 3
#: the O(n)-state rules about as fast as BPTT, OTPE at most 1.6× OSTL: (numerator,
#: denominator, bound)
TARGETS = {
    "ottt": ("ottt", "bptt", 1.3),
    "approx_otpe": ("approx_otpe", "bptt", 1.3),
    "otpe": ("otpe", "ostl", 1.6),
}
#: BPTT (otpe_cli.bptt) against a plain per-step autograd BPTT of the same equations
BPTT_TARGET = 0.35
#: a training iteration with trainer.update=online against the same iteration offline
ONLINE_TARGET = 1.6
#: the memory table's name for BPTT with algorithm.checkpoint_blocks=true
CHECKPOINTED = "bptt:checkpoint_blocks"


def make_data(args, encoding="rate", normalisation="per_draw"):
    return Randman(num_units=args.inputs, num_steps=args.steps, test_samples_per_class=1,
                   encoding=encoding, normalisation=normalisation)


def make_problem(args, device):
    data = make_data(args)
    gen = torch.Generator().manual_seed(0)
    sizes = [args.inputs] + [args.width] * (args.depth - 1) + [10]
    model = SNN(sizes, generator=torch.Generator().manual_seed(0)).to(device)
    return data, gen, model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def trace_operands(model, batch, device, per_layer):
    """``per_layer[i]`` zeroed per-sample N_out × N_in traces for layer i, each with an input
    row to add into it."""
    traces = [torch.zeros(batch, layer.n_out, layer.n_in, device=device)
              for layer, n in zip(model.layers, per_layer) for _ in range(n)]
    return traces, [torch.rand(batch, 1, tr.shape[2], device=device) for tr in traces]


def stream_traces(traces, inputs, steps):
    """One read and one write of each trace per step, bare, layer by layer."""
    for _ in range(steps):
        for tr, a in zip(traces, inputs):
            torch.add(a, tr, alpha=0.9, out=tr)


def fused_trace_operands(model, batch, device, per_layer):
    """For each layer with traces (1: OSTL's ε, 2: OTPE's ε and R̃), the arguments of one
    online `rule_step` of that layer, on random values of the step's shapes."""
    out = []
    for layer, n in zip(model.layers, per_layer):
        if not n:
            continue
        B, O, I = batch, layer.n_out, layer.n_in
        small = lambda: torch.rand(B, O, device=device)  # noqa: E731
        traces = [torch.rand(B, O, I, device=device) for _ in range(n)]
        out.append((traces[0], traces[1] if n == 2 else None, small() * 0.9,
                    (torch.rand(B, I, device=device) < 0.2).float(), small() if n == 2 else None,
                    small() * 1e-3, torch.zeros(O, I, device=device), False, small(), small(),
                    small() if n == 2 else None, small() * 1e-3, torch.zeros(O, device=device),
                    0.95, 1.0))
    return out


def fused_trace_passes(operands, steps):
    """The online pass's own trace step (`compute.rule_step`: the fused pass over each trace,
    the bias's traces, the next decay) for every layer and step, and nothing between them."""
    with _flushing_denormals():
        for _ in range(steps):
            for args in operands:
                rule_step(*args)


def trace_floor(model, batch, steps, device, per_layer=None):
    """`stream_traces` timed: OSTL's memory floor (one trace per layer), or OTPE's with
    ``per_layer`` = traces per layer ([2, 2, 1]: ε and R̂ in the hidden layers, ε at the OSTL
    output)."""
    traces, inputs = trace_operands(model, batch, device, per_layer or [1] * len(model.layers))
    sync(device)
    tic = time.perf_counter()
    stream_traces(traces, inputs, steps)
    sync(device)
    return time.perf_counter() - tic


def rule_work(model, rule_name, batch, steps, device, traces):
    """Only a per-layer rule's own work, ``update`` + ``accumulate`` for every layer and step,
    in blocks of steps as the offline pass runs them (`block_steps`), on fixed inputs: no
    forward pass, no loss, no sweep (what the rule adds to the shared loop), with subnormals
    flushed and the traces of the last call reused (``traces``) as in that loop."""
    traces.new_pass(batch, model.layers[0].weight.dtype, model.layers[0].weight.device)
    with torch.no_grad(), _flushing_denormals():
        rules = [RULES[rule_name](layer, batch, model.beta, model.threshold, False, traces)
                 for layer in model.layers]
        block = block_steps(steps)
        a = [torch.rand(block, batch, layer.n_in, device=device) for layer in model.layers]
        psi = [torch.rand(block, batch, layer.n_out, device=device) for layer in model.layers]
        grads = [(torch.zeros_like(layer.weight), torch.zeros_like(layer.bias))
                 for layer in model.layers]
        sync(device)
        tic = time.perf_counter()
        for t in range(0, steps, block):
            k = min(block, steps - t)
            for rule, ai, pi, (gw, gb) in zip(rules, a, psi, grads):
                rule.update(ai[:k], pi[:k])
                rule.accumulate(pi[:k], gw, gb, t + block >= steps)
        sync(device)
    return time.perf_counter() - tic


def block_currents(layer, a):
    """A block's input currents (a: (K, B, N_in)) by the product the passes use
    (`otpe_cli.products`: oneDNN's where it gives torch.addmm's bits, else torch.addmm)."""
    made = products.block_currents(a, layer.weight, layer.bias)
    return made if made is not None else torch.addmm(layer.bias, a.flatten(0, 1),
                                                     layer.weight.t())


def block_operands(model, batch, steps, device):
    """Random operands for timing bare products in the passes' blocks: the block length, one
    block of every layer's activations (the inputs' first) and a weight-gradient buffer per
    layer (the device synchronised, ready for the clock)."""
    block = block_steps(steps)
    acts = [torch.rand(block, batch, n, device=device) for n in model.sizes]
    grads = [torch.zeros_like(layer.weight) for layer in model.layers]
    sync(device)
    return block, acts, grads


def product_work(model, batch, steps, device, traces):
    """Only the matrix products an OSTL pass does, on random operands of the same shapes and
    in the same blocks: each layer's input currents, the sweep of the errors, the inputs' share
    of the gradient and, where the pass needs them, the trace's batched product (every block
    but the last) and its contraction (every block but the first). ``traces``: one
    (B, N_out, N_in) tensor per layer, kept from call to call as the pass keeps its own."""
    layers = model.layers
    with torch.no_grad():
        block, acts, grads = block_operands(model, batch, steps, device)
        tic = time.perf_counter()
        for t in range(0, steps, block):
            k, first, last = min(block, steps - t), t == 0, t + block >= steps
            for layer, a in zip(layers, acts):
                block_currents(layer, a[:k])
            for i in range(len(layers) - 1, -1, -1):
                lam, a = acts[i + 1][:k], acts[i][:k]
                if not first:
                    contract_batch(lam[0], traces[i], grads[i])
                products.add_weight_gradient_(grads[i], lam.flatten(0, 1), a.flatten(0, 1))
                if not last:
                    advance_trace(traces[i], None, lam, a, from_zero=first)
                if i:
                    products.errors_down(lam, layers[i].weight)
        sync(device)
    return time.perf_counter() - tic


def plain_bptt(model, x, y):
    """A plain per-step autograd BPTT of the same equations (SPEC §1), what BPTT's own
    backward is measured against: a loop over t of every layer's LIF step, its input current
    a matrix product of its own, all recorded by autograd, the loss torch's cross-entropy over
    the T·B rows, then ``torch.autograd.grad``."""
    params = list(model.parameters())
    T, B, _ = x.shape
    with torch.enable_grad():
        us = [x.new_zeros(B, layer.n_out) for layer in model.layers]
        logits = []
        for t in range(T):
            a = x[t]
            for i, layer in enumerate(model.layers):
                current = torch.addmm(layer.bias, a, layer.weight.t())
                _, a, us[i] = membrane_step(us[i], current, model.beta, model.threshold,
                                            model.slope)
            logits.append(a)
        loss = F.cross_entropy(torch.stack(logits).flatten(0, 1), y.repeat(T))
        return torch.autograd.grad(loss, params)


def bptt_product_work(model, batch, steps, device):
    """Only BPTT's matrix products (otpe_cli.bptt), bare, on random operands of the same
    shapes and in the same blocks: each layer's input currents in the forward, and in the
    backward each layer's ∂J/∂W = Σ λ aᵀ and the error it sends down, Wᵀλ (none below the
    first layer): BPTT's floor."""
    layers = model.layers
    with torch.no_grad():
        block, acts, grads = block_operands(model, batch, steps, device)
        tic = time.perf_counter()
        for t in range(0, steps, block):
            k = min(block, steps - t)
            for layer, a in zip(layers, acts):
                block_currents(layer, a[:k])
        for t in range(0, steps, block):
            k = min(block, steps - t)
            for i in range(len(layers) - 1, -1, -1):
                lam = acts[i + 1][:k].flatten(0, 1)
                products.add_weight_gradient_(grads[i], lam, acts[i][:k].flatten(0, 1))
                if i:
                    products.errors_down(lam, layers[i].weight)
        sync(device)
    return time.perf_counter() - tic


def problem_batch(args, device):
    """The timed batch: one training batch of the Randman problem."""
    data, gen, _ = make_problem(args, device)
    x, y = data.train_batch(args.batch, gen)
    return x.to(device, torch.float32), y.to(device)


def timing(args, device):
    data, gen, model = make_problem(args, device)
    x, y = data.train_batch(args.batch, gen)
    x, y = x.to(device, torch.float32), y.to(device)
    algs = {name: build_algorithm(name) for name in args.algorithms}
    opts = {name: torch.optim.Adamax(model.parameters(), lr=1e-9) for name in algs}
    grad_t = {name: [] for name in algs}
    iter_t = {name: [] for name in algs}
    floor_t, floor2_t = [], []
    rule_t = {rule: [] for rule in ("ostl", "otpe") if rule in algs}  # only what is printed
    pools = {rule: TracePool() for rule in rule_t}
    products_t = []
    sources = {"per_draw, rate (Randman)": data,
               "per_draw, time (T-Randman)": make_data(args, "time"),
               "fixed, rate": make_data(args, "rate", "fixed")}
    for source in sources.values():
        source.prepare()  # the test set, and the tables of the per-draw draws: made once
    draw_t = {name: [] for name in sources}
    product_traces = [torch.zeros(args.batch, layer.n_out, layer.n_in, device=device)
                      for layer in model.layers] if "ostl" in algs else None
    bptt_runs = {  # BPTT beside what it is measured against (only if BPTT is timed)
        "plain per-step autograd": lambda: plain_bptt(model, x, y),
        "autograd through SNN.forward": lambda: autograd_bptt_pass(model, x, y, "spikes"),
        "checkpoint_blocks": lambda: build_algorithm("bptt", checkpoint_blocks=True).gradients(
            model, x, y),
        "matrix products": lambda: bptt_product_work(model, args.batch, args.steps, device),
    } if "bptt" in algs else {}
    bptt_t = {name: [] for name in bptt_runs}
    for name, alg in algs.items():  # warm-up
        alg.gradients(model, x, y)
    for run in bptt_runs.values():
        run()
    for rep in range(args.repeats):
        for name, alg in algs.items():
            sync(device)
            tic = time.perf_counter()
            alg.gradients(model, x, y)
            sync(device)
            grad_t[name].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            xb, yb = data.train_batch(args.batch, gen)
            xb, yb = xb.to(device, torch.float32), yb.to(device)
            grads, _ = alg.gradients(model, xb, yb)
            for p, g in zip(model.parameters(), grads):
                p.grad = g
            opts[name].step()
            sync(device)
            iter_t[name].append(time.perf_counter() - tic)
        floor_t.append(trace_floor(model, args.batch, args.steps, device))
        if "otpe" in algs:
            floor2_t.append(trace_floor(model, args.batch, args.steps, device,
                                        [2] * (args.depth - 1) + [1]))
        for rule, times in rule_t.items():
            times.append(rule_work(model, rule, args.batch, args.steps, device, pools[rule]))
        if product_traces is not None:
            products_t.append(product_work(model, args.batch, args.steps, device,
                                           product_traces))
        for name, run in bptt_runs.items():
            sync(device)
            tic = time.perf_counter()
            seconds = run()
            sync(device)
            bptt_t[name].append(seconds if name == "matrix products"
                                else time.perf_counter() - tic)
        for name, source in sources.items():
            tic = time.perf_counter()
            source.train_batch(args.batch, gen)
            draw_t[name].append(time.perf_counter() - tic)
        print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    med = lambda v: statistics.median(v)  # noqa: E731
    return ({n: med(v) for n, v in grad_t.items()}, {n: med(v) for n, v in iter_t.items()},
            med(floor_t), med(floor2_t) if floor2_t else None,
            {n: med(v) for n, v in rule_t.items()}, med(products_t) if products_t else None,
            {n: med(v) for n, v in draw_t.items()}, {n: med(v) for n, v in bptt_t.items()})


def online_product_work(model, x):
    """Only the matrix products an online pass must do, one time step at a time (the
    parameters change at every step, so no block can batch them): each layer's input current,
    its gradient's outer product over the batch and the error it sends down, bare, on random
    operands of the step's shapes."""
    with torch.no_grad():
        acts = [torch.rand(x.shape[1], n, device=x.device) for n in model.sizes]
        grads = [torch.zeros_like(layer.weight) for layer in model.layers]
        for _ in range(len(x)):
            for layer, a in zip(model.layers, acts):
                block_currents(layer, a.unsqueeze(0))
            for i in range(len(model.layers) - 1, -1, -1):
                products.add_weight_gradient_(grads[i], acts[i + 1], acts[i])
                if i:
                    products.errors_down(acts[i + 1], model.layers[i].weight)


def api_and_online_timing(args, device, x, y):
    """What users call, per rule: ``sequence_gradients`` beside ``Algorithm.gradients`` on the
    same model, and a training iteration of the trainer itself (``Trainer.train_step``, the
    loop of ``otpe-train``: finite checks, the optimizer) offline and with
    ``trainer.update=online`` (an Adamax step at every time step), on the same batch, the
    rules interleaved within each repeat. Medians (s)."""
    import tempfile

    from otpe_cli import sequence_gradients
    from otpe_cli.config import compose
    from otpe_cli.trainer import Trainer

    rules = [name for name in args.algorithms if name != "bptt"]
    model = SNN([args.inputs] + [args.width] * (args.depth - 1) + [10],
                generator=torch.Generator().manual_seed(0)).to(device)
    algs = {name: build_algorithm(name) for name in rules}
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in rules:
            cfg = compose([f"algorithm={name}", f"dataset.num_steps={args.steps}",
                           f"dataset.num_units={args.inputs}", f"model.depth={args.depth}",
                           f"model.width={args.width}", f"trainer.batch_size={args.batch}",
                           f"trainer.device={args.device}", "optimizer.lr=1e-9"])
            trainers[name] = Trainer(cfg, f"{tmp}/{name}")
    runs = {}
    for name in rules:
        runs[("sequence_gradients", name)] = lambda n=name: sequence_gradients(n, model, x, y)
        runs[("Algorithm.gradients", name)] = lambda n=name: algs[n].gradients(model, x, y)
        for update in ("offline", "online"):
            def step(n=name, u=update):
                trainers[n].cfg.trainer.update = u
                trainers[n].train_step(x, y, align=False)
            runs[(update, name)] = step
    runs[("online floor", "matrix products")] = lambda: online_product_work(model, x)
    optimizer = Optimizer("adamax", model.parameters(), lr=1e-9)
    zeros = [torch.zeros_like(p) for p in model.parameters()]

    def adamax_steps():
        for _ in range(len(x)):
            optimizer.step_if_finite(zeros)
    runs[("online floor", "Adamax steps")] = adamax_steps
    for name in rules:  # what online mode must stream through memory at least
        per_layer = [len(RULES[rule].trace_attributes) for rule in algs[name].rule_names(
            model.depth)]
        if any(per_layer):
            operands = trace_operands(model, x.shape[1], device, per_layer)
            runs[("online floor", f"trace passes {name}")] = \
                lambda o=operands: stream_traces(*o, len(x))
            fused = fused_trace_operands(model, x.shape[1], device, per_layer)
            runs[("online alone", f"fused trace steps {name}")] = \
                lambda o=fused: fused_trace_passes(o, len(x))
    times = {key: [] for key in runs}
    for run in runs.values():  # warm-up
        run()
    for rep in range(args.repeats):
        for key, run in runs.items():
            sync(device)
            tic = time.perf_counter()
            run()
            sync(device)
            times[key].append(time.perf_counter() - tic)
        print(f"  API/online repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    return {key: statistics.median(v) for key, v in times.items()}


def peak_memory_point(args, alg: str, steps: int, device: str) -> tuple[float, float]:
    """Peak memory (MiB) one sequence_gradients call adds at T = steps, in a fresh process
    (Linux: peak RSS reset through /proc/self/clear_refs just before the call), and the
    median time (s) of three more calls in another. ``alg`` may be `CHECKPOINTED`: BPTT with
    algorithm.checkpoint_blocks=true."""
    name, _, option = alg.partition(":")
    code = f"""
import resource, statistics, sys, time, torch, json
from otpe_cli import SNN, build_algorithm, kernels, products
kernels._ready(torch.zeros(1))  # (built and loaded once per process: not the gradient's memory)
products.status()  # (oneDNN's start-up, once per process, ~6 MiB where it is used: likewise)
if {args.threads}:
    torch.set_num_threads({args.threads})
dev = torch.device({device!r})
sizes = [{args.inputs}] + [{args.width}] * ({args.depth} - 1) + [10]
model = SNN(sizes, generator=torch.Generator().manual_seed(0)).to(dev)
g = torch.Generator().manual_seed(0)
x = (torch.rand({steps}, {args.batch}, {args.inputs}, generator=g) < 0.3).float().to(dev)
y = torch.randint(0, 10, ({args.batch},), generator=g).to(dev)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = status("VmRSS")
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
algorithm = build_algorithm({name!r}, checkpoint_blocks={option == "checkpoint_blocks"})
algorithm.gradients(model, x, y)
peak = status("VmHWM")
cuda = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else None
times = []
for _ in range(3):
    if dev.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    algorithm.gradients(model, x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - tic)
print(json.dumps({{"rss_mib": (peak - before) / 1024, "cuda_mib": cuda,
                  "seconds": statistics.median(times)}}))
"""
    # glibc's malloc raises its mmap threshold as large blocks are freed, and then keeps
    # later ones on its heap: the peak RSS would be the allocator's history (BPTT at T = 800
    # read 232–329 MiB from run to run, its checkpointed twin 44–200). A fixed threshold
    # gives every large block back when it is freed, so the peak is the working set; it also
    # makes every call fault its pages in afresh, so the time comes from a second process
    # with the allocator as it is.
    fixed = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    res = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     text=True, check=True, env=env).stdout.splitlines()[-1])
           for env in (fixed, None)]
    memory = res[0]["cuda_mib"] if res[0]["cuda_mib"] is not None else res[0]["rss_mib"]
    return memory, res[1]["seconds"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--inputs", type=int, default=50, help="input units (default 50)")
    p.add_argument("--width", type=int, default=128, help="hidden units per layer (default 128)")
    p.add_argument("--depth", type=int, default=3, help="layers, output included (default 3)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--steps", type=int, default=50, help="time steps T (default 50)")
    p.add_argument("--repeats", type=int, default=7,
                   help="interleaved repeats; medians are reported (default 7)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS),
                   help="algorithms to time (default: all seven)")
    p.add_argument("--memory-steps", nargs="*", type=int, default=[50, 200, 800],
                   help="the T of each peak-memory point (default 50 200 800); the flag "
                        "with no value skips the memory table")
    p.add_argument("--memory-algorithms", nargs="+",
                   default=["bptt", CHECKPOINTED, "ottt", "approx_otpe", "ostl", "otpe"],
                   help=f"algorithms in the memory table ({CHECKPOINTED}: BPTT with "
                        f"algorithm.checkpoint_blocks=true; default: bptt {CHECKPOINTED} ottt "
                        "approx_otpe ostl otpe)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"network {args.inputs}-{'-'.join([str(args.width)] * (args.depth - 1))}-10, "
          f"batch {args.batch}, T {args.steps}, {device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats (medians)")
    grad_t, iter_t, floor, floor2, rule_t, ostl_products, draw_t, bptt_t = timing(args, device)
    print(f"fused CPU kernels (otpe_cli.kernels): {kernels.status()}")
    print(f"the blocks' matrix products (otpe_cli.products): {products.status()}")
    base_g, base_i = grad_t.get("bptt"), iter_t.get("bptt")
    print(f"\n{'algorithm':<15}{'gradient s':>12}{'× BPTT':>9}{'iteration s':>13}{'× BPTT':>9}")
    for name in grad_t:
        rg = grad_t[name] / base_g if base_g else float("nan")
        ri = iter_t[name] / base_i if base_i else float("nan")
        print(f"{name:<15}{grad_t[name]:>12.4f}{rg:>9.2f}{iter_t[name]:>13.4f}{ri:>9.2f}")
    print(f"\ntrace-streaming floor (one read+write of each N_out×N_in trace per step): "
          f"{floor:.4f} s")
    if "ostl" in grad_t:
        print(f"OSTL / floor: {grad_t['ostl'] / floor:.2f}   (target ≤ 2)")
        if "ottt" in grad_t:  # OTTT is the shared loop (forward, sweep) with O(n) state
            extra = grad_t["ostl"] - grad_t["ottt"]
            print(f"OSTL's own trace work (OSTL − OTTT) / floor: {extra / floor:.2f};  "
                  f"OSTL / (OTTT + floor): {grad_t['ostl'] / (grad_t['ottt'] + floor):.2f}")
        print(f"the OSTL rule alone (update + accumulate, every layer and step, no forward "
              f"pass, loss or sweep) / floor: {rule_t['ostl'] / floor:.2f}")
        print(f"OSTL without its rule (the loop all rules share) / floor: "
              f"{(grad_t['ostl'] - rule_t['ostl']) / floor:.2f}")
        print(f"only the matrix products of an OSTL pass (currents, sweep, gradient, the "
              f"trace's product and contraction; bare, same shapes and blocks) / floor: "
              f"{ostl_products / floor:.2f}")
    if "otpe" in rule_t and "ostl" in rule_t:
        print(f"the OTPE rule alone / the OSTL rule alone: "
              f"{rule_t['otpe'] / rule_t['ostl']:.2f}")
    if floor2:
        print(f"OTPE's floor (ε and R̂ in the hidden layers): {floor2:.4f} s, "
              f"{floor2 / floor:.2f}× OSTL's;  OTPE / its floor: {grad_t['otpe'] / floor2:.2f}")
    for name, (num, den, bound) in TARGETS.items():
        if num in grad_t and den in grad_t:
            print(f"{num} / {den}: {grad_t[num] / grad_t[den]:.2f}   (target ≤ {bound}; "
                  f"training iteration: {iter_t[num] / iter_t[den]:.2f})")
    if bptt_t:
        bptt = grad_t["bptt"]
        print(f"\nbptt / plain per-step autograd BPTT: "
              f"{bptt / bptt_t['plain per-step autograd']:.2f}   (target ≤ {BPTT_TARGET}; "
              f"{bptt_t['plain per-step autograd']:.4f} s)")
        print(f"BPTT / its matrix products: {bptt / bptt_t['matrix products']:.2f}   (the "
              f"forward's input currents, ∂J/∂W and the error sent down; bare, same shapes and "
              f"blocks: {bptt_t['matrix products']:.4f} s)")
        print(f"bptt with checkpoint_blocks / bptt: {bptt_t['checkpoint_blocks'] / bptt:.2f};  "
              f"autograd through SNN.forward / bptt: "
              f"{bptt_t['autograd through SNN.forward'] / bptt:.2f}")
    print(f"\ndrawing a training batch of {args.batch} (on the CPU)")
    for name, seconds in draw_t.items():
        share = f"{seconds / grad_t['otpe']:.2f}× OTPE's gradient" if "otpe" in grad_t else ""
        print(f"  {name:<28}{seconds:>9.4f} s   {share}")
    if "otpe" in grad_t:
        worst = max(v for k, v in draw_t.items() if k.startswith("per_draw"))
        print(f"per-draw batch / OTPE sequence gradient: {worst / grad_t['otpe']:.2f}   "
              f"(target ≤ {DRAW_TARGET:.2f})")
    api = api_and_online_timing(args, device, *problem_batch(args, device))
    rules = [name for name in args.algorithms if name != "bptt"]
    print(f"\n{'rule':<15}{'sequence_gradients s':>22}{'/ Algorithm.gradients':>23}"
          f"{'train_step offline s':>22}{'online s':>10}{'online / offline':>18}")
    for name in rules:
        seq, alg = api[("sequence_gradients", name)], api[("Algorithm.gradients", name)]
        off, on = api[("offline", name)], api[("online", name)]
        print(f"{name:<15}{seq:>22.4f}{seq / alg:>23.2f}{off:>22.4f}{on:>10.4f}"
              f"{on / off:>18.2f}")
    if "otpe" in rules and "ostl" in rules:
        print(f"otpe / ostl through sequence_gradients: "
              f"{api[('sequence_gradients', 'otpe')] / api[('sequence_gradients', 'ostl')]:.2f}"
              f"   (target ≤ {TARGETS['otpe'][2]})")
    worst = max(rules, key=lambda n: api[("online", n)] / api[("offline", n)], default=None)
    if worst:
        step_products = api[("online floor", "matrix products")]
        adamax_steps = api[("online floor", "Adamax steps")]
        passes = {what[len("trace passes "):]: v for (kind, what), v in api.items()
                  if kind == "online floor" and what.startswith("trace passes ")}
        print(f"online's floor (bare, same shapes): the per-step matrix products "
              f"{step_products:.4f} s, {args.steps} Adamax steps (online's, fused on CPUs) "
              f"{adamax_steps:.4f} s, one pass "
              "over the per-sample traces per step: "
              + ", ".join(f"{n} {v:.4f} s" for n, v in passes.items()))
        alone = {what.rpartition(" ")[2]: v for (kind, what), v in api.items()
                 if kind == "online alone"}
        if alone:
            print("the online pass's fused trace step alone (compute.rule_step, every layer and "
                  "step, nothing between) / that floor: "
                  + ", ".join(f"{n} {v / passes[n]:.2f}" for n, v in alone.items()))
        print(f"{'rule':<15}{'online / offline':>18}{'floor / offline':>17}")
        for name in rules:
            floor = step_products + adamax_steps + api.get(("online floor", f"trace passes {name}"),
                                                      0.0)
            print(f"{name:<15}{api[('online', name)] / api[('offline', name)]:>18.2f}"
                  f"{floor / api[('offline', name)]:>17.2f}")
        print(f"online / offline training iteration, worst rule ({worst}): "
              f"{api[('online', worst)] / api[('offline', worst)]:.2f}   (target ≤ "
              f"{ONLINE_TARGET})")
    memory, memory_time = {}, {}
    if args.memory_steps:
        what = "CUDA allocated" if device.type == "cuda" else "RSS, glibc mmap threshold 128 KiB"
        print(f"\npeak memory of one sequence gradient above a bare process ({what}, MiB), "
              f"and its time (s, the median of 3 calls in a process of its own)")
        header = "".join(f"{'T=' + str(t):>10}" for t in args.memory_steps)
        print(f"{'algorithm':<24}{header}   |{header}")
        for alg in args.memory_algorithms:
            points = [peak_memory_point(args, alg, t, args.device) for t in args.memory_steps]
            memory[alg], memory_time[alg] = [m for m, _ in points], [s for _, s in points]
            print(f"{alg:<24}" + "".join(f"{m:>10.1f}" for m in memory[alg]) + "   |"
                  + "".join(f"{s:>10.4f}" for s in memory_time[alg]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gradient_s": grad_t, "iteration_s": iter_t, "floor_s": floor,
                       "floor_otpe_s": floor2, "rule_only_s": rule_t,
                       "ostl_products_s": ostl_products, "draw_s": draw_t,
                       "memory_mib": memory, "memory_steps": args.memory_steps,
                       "memory_time_s": memory_time, "bptt_s": bptt_t,
                       "api_online_s": {f"{k[0]}:{k[1]}": v for k, v in api.items()},
                       "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
