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
peak CUDA memory on a GPU). Prints ratios; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from otpe_cli import ALGORITHMS, SNN, build_algorithm, kernels
from otpe_cli.algorithms import _flushing_denormals
from otpe_cli.snn import block_steps
from otpe_cli.data.randman import Randman
from otpe_cli.rules import RULES
from otpe_cli.ops import advance_trace, contract_batch
from otpe_cli.rules.base import TracePool

#: drawing a training batch on the paper's task (per-draw normalisation): at most this share
#: of OTPE's sequence gradient (issue 17)
DRAW_TARGET = 1 / 3
TARGETS = {  # issue 3's targets, as (numerator, denominator, bound)
    "ottt": ("ottt", "bptt", 1.3),
    "approx_otpe": ("approx_otpe", "bptt", 1.3),
    "otpe": ("otpe", "ostl", 1.6),
}


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


def trace_floor(model, batch, steps, device, per_layer=None):
    """One read and one write of each per-sample N_out × N_in trace per step: OSTL's memory
    floor (one trace per layer), or OTPE's with ``per_layer`` = traces per layer ([2, 2, 1]:
    ε and R̂ in the hidden layers, ε at the OSTL output)."""
    per_layer = per_layer or [1] * len(model.layers)
    traces = [torch.zeros(batch, layer.n_out, layer.n_in, device=device)
              for layer, n in zip(model.layers, per_layer) for _ in range(n)]
    inputs = [torch.rand(batch, 1, tr.shape[2], device=device) for tr in traces]
    sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        for tr, a in zip(traces, inputs):
            torch.add(a, tr, alpha=0.9, out=tr)
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


def product_work(model, batch, steps, device, traces):
    """Only the matrix products an OSTL pass does, on random operands of the same shapes and
    in the same blocks: each layer's input currents, the sweep of the errors, the inputs' share
    of the gradient and, where the pass needs them, the trace's batched product (every block
    but the last) and its contraction (every block but the first). ``traces``: one
    (B, N_out, N_in) tensor per layer, kept from call to call as the pass keeps its own."""
    block = block_steps(steps)
    layers = model.layers
    with torch.no_grad():
        acts = [torch.rand(block, batch, n, device=device) for n in model.sizes]
        grads = [torch.zeros_like(layer.weight) for layer in layers]
        sync(device)
        tic = time.perf_counter()
        for t in range(0, steps, block):
            k, first, last = min(block, steps - t), t == 0, t + block >= steps
            for layer, a in zip(layers, acts):
                torch.addmm(layer.bias, a[:k].flatten(0, 1), layer.weight.t())
            for i in range(len(layers) - 1, -1, -1):
                lam, a = acts[i + 1][:k], acts[i][:k]
                if not first:
                    contract_batch(lam[0], traces[i], grads[i])
                grads[i].addmm_(lam.flatten(0, 1).t(), a.flatten(0, 1))
                if not last:
                    advance_trace(traces[i], None, lam, a, from_zero=first)
                if i:
                    lam.flatten(0, 1) @ layers[i].weight
        sync(device)
    return time.perf_counter() - tic


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
    for name, alg in algs.items():  # warm-up
        alg.gradients(model, x, y)
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
        for name, source in sources.items():
            tic = time.perf_counter()
            source.train_batch(args.batch, gen)
            draw_t[name].append(time.perf_counter() - tic)
        print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    med = lambda v: statistics.median(v)  # noqa: E731
    return ({n: med(v) for n, v in grad_t.items()}, {n: med(v) for n, v in iter_t.items()},
            med(floor_t), med(floor2_t) if floor2_t else None,
            {n: med(v) for n, v in rule_t.items()}, med(products_t) if products_t else None,
            {n: med(v) for n, v in draw_t.items()})


def peak_memory_point(args, alg: str, steps: int, device: str) -> float:
    """Peak memory (MiB) one sequence_gradients call adds at T = steps, in a fresh process
    (Linux: peak RSS reset through /proc/self/clear_refs just before the call)."""
    code = f"""
import resource, sys, torch, json
from otpe_cli import SNN, build_algorithm, kernels
kernels._ready(torch.zeros(1))  # (built and loaded once per process: not the gradient's memory)
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
build_algorithm({alg!r}).gradients(model, x, y)
peak = status("VmHWM")
cuda = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else None
print(json.dumps({{"rss_mib": (peak - before) / 1024, "cuda_mib": cuda}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res["cuda_mib"] if res["cuda_mib"] is not None else res["rss_mib"]


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
                   default=["bptt", "ottt", "approx_otpe", "ostl", "otpe"],
                   help="algorithms in the memory table (default: bptt ottt approx_otpe ostl "
                        "otpe)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"network {args.inputs}-{'-'.join([str(args.width)] * (args.depth - 1))}-10, "
          f"batch {args.batch}, T {args.steps}, {device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats (medians)")
    grad_t, iter_t, floor, floor2, rule_t, products, draw_t = timing(args, device)
    print(f"fused CPU kernels (otpe_cli.kernels): {kernels.status()}")
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
              f"{products / floor:.2f}")
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
    print(f"\ndrawing a training batch of {args.batch} (on the CPU)")
    for name, seconds in draw_t.items():
        share = f"{seconds / grad_t['otpe']:.2f}× OTPE's gradient" if "otpe" in grad_t else ""
        print(f"  {name:<28}{seconds:>9.4f} s   {share}")
    if "otpe" in grad_t:
        worst = max(v for k, v in draw_t.items() if k.startswith("per_draw"))
        print(f"per-draw batch / OTPE sequence gradient: {worst / grad_t['otpe']:.2f}   "
              f"(target ≤ {DRAW_TARGET:.2f})")
    memory = {}
    if args.memory_steps:
        print(f"\npeak memory of one sequence gradient above a bare process "
              f"({'CUDA allocated' if device.type == 'cuda' else 'RSS'}, MiB)")
        print(f"{'algorithm':<15}" + "".join(f"{'T=' + str(t):>10}" for t in args.memory_steps))
        for alg in args.memory_algorithms:
            memory[alg] = [peak_memory_point(args, alg, t, args.device) for t in args.memory_steps]
            print(f"{alg:<15}" + "".join(f"{m:>10.1f}" for m in memory[alg]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gradient_s": grad_t, "iteration_s": iter_t, "floor_s": floor,
                       "floor_otpe_s": floor2, "rule_only_s": rule_t,
                       "ostl_products_s": products, "draw_s": draw_t,
                       "memory_mib": memory, "memory_steps": args.memory_steps,
                       "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
