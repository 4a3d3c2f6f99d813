"""Whether a run fits in memory, checked before any work: a run that does not would swap or be
killed. The need is a lower bound (`Algorithm.memory_floor`), so a refusal never refuses a run
that would fit; the message names what to lower."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` now (Linux MemAvailable on the CPU), or None
    where that cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg, algorithm, aligned: list, sizes: list[int], steps: int,
                 dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a network or batch whose parameters, traces (those of ``aligned`` rules too) or
    BPTT graph cannot fit in the memory free now, naming the key to lower."""
    t = cfg.trainer
    aligning = t.align_every > 0

    def floor(batch: int, steps: int = steps, aligning: bool = aligning) -> int:
        rules = sum(rule.trace_bytes(sizes, batch, dtype.itemsize) for rule in aligned) \
            if aligning else 0
        return rules + algorithm.memory_floor(sizes, batch, steps, dtype.itemsize, aligning)

    need, free = floor(t.batch_size), available_memory(device)
    if free is None or need <= free:
        return
    what = "BPTT's graph" if algorithm.is_bptt else "its traces" + \
        (" and BPTT's graph for alignment" if aligning else "")
    where = (f"algorithm={algorithm.name} ({what}, T={steps}, layers "
             f"{'-'.join(map(str, sizes))}), but only {free / 2**30:.1f} GiB of "
             f"{device.type} memory is free")
    # an online rule's memory does not grow with T: only the alignment's BPTT graph does
    unaligned = (" or turn the alignment to BPTT off with trainer.align_every=0"
                 if aligning and not algorithm.is_bptt else "")
    if t.batch_size > 1 and floor(1) <= free:
        also = unaligned if floor(t.batch_size, aligning=False) <= free else ""
        raise ValueError(
            f"trainer.batch_size={t.batch_size} needs at least {need / 2**30:.1f} GiB for "
            f"{where}: lower trainer.batch_size{also} (that bound is a floor; a run needs "
            "more).")
    if floor(1, steps=1) <= free:  # the time steps are what does not fit
        also = unaligned if floor(1, aligning=False) <= free else ""
        if OmegaConf.select(cfg, "dataset.binning") == "fixed":  # T = t_max / dt
            key, lower = f"T={steps} (dataset.t_max / dataset.dt)", \
                "raise dataset.dt or lower dataset.t_max"
        else:
            key, lower = f"dataset.num_steps={steps}", "lower dataset.num_steps"
        raise ValueError(
            f"{key} needs at least {floor(1) / 2**30:.1f} GiB even at batch size 1 for "
            f"{where}: {lower}{also}.")
    raise ValueError(
        f"model.width={cfg.model.width} needs at least {floor(1) / 2**30:.1f} GiB even "
        f"at batch size 1 for {where}: lower model.width or model.depth.")
