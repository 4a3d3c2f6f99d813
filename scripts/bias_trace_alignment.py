#!/usr/bin/env python
"""What `algorithm.bias_trace=true` does to OTTT's and A-OTPE's alignment with BPTT.

    python scripts/bias_trace_alignment.py [--dataset randman|trandman] [--batches 5]

On fresh Randman / T-Randman batches at the initial parameters of a 50-128-128-10 network, prints
the mean cosine to BPTT of every bias gradient (and the kernels, which the option leaves alone)
with the paper's untraced bias gradient and with the traced one.
"""
import argparse
import statistics

import torch

from otpe_cli import SNN, alignment, sequence_gradients
from otpe_cli.data.randman import Randman


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="randman", choices=["randman", "trandman"])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = Randman(encoding="rate" if args.dataset == "randman" else "time",
                   test_samples_per_class=1)
    gen = torch.Generator().manual_seed(args.seed)
    model = SNN([50, 128, 128, 10], generator=torch.Generator().manual_seed(args.seed))
    rows = {}
    for _ in range(args.batches):
        x, y = data.train_batch(128, gen)
        x = x.float()
        ref = sequence_gradients("bptt", model, x, y)
        for alg in ("ottt", "approx_otpe"):
            for traced in (False, True):
                g = sequence_gradients(alg, model, x, y, bias_trace=traced)
                for k, v in alignment(g, ref).items():
                    if k.startswith("align/cos/"):
                        rows.setdefault((alg, traced), {}).setdefault(k[10:], []).append(v)
    names = [n for n, _ in model.named_parameters()] + ["global"]
    print(f"{args.dataset}, {args.batches} batches of 128 at initialisation: cosine to BPTT")
    print(f"{'algorithm':<13}{'bias_trace':<11}" + "".join(f"{n:>17}" for n in names))
    for (alg, traced), cos in rows.items():
        print(f"{alg:<13}{str(traced):<11}"
              + "".join(f"{statistics.mean(cos[n]):>17.3f}" for n in names))


if __name__ == "__main__":
    main()
