"""A run's identity, without torch: what the trainer, the CLI and the reports call a run.

- ``config_choices``: the key choices that name a run (summaries, reports, W&B).
- ``fingerprint``: what a checkpoint must match to be resumed (plain data, so that a refusal
  names the key); ``settings``: the same flattened to dotted keys, for reports to tell
  experiments apart.
- ``upgrade_fingerprint``: a checkpoint's fingerprint from an earlier version, read as the
  settings it was made with.
- ``describe_differences``: the keys in which two of them differ, in one phrase.
"""
from __future__ import annotations

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from .spec import RANDMAN_DATASETS, readout_of, uses_bias_trace

#: config choices of a run (summary.json "config") and where the config keeps each
CHOICES = {
    "dataset": "dataset.name", "encoding": "encoding.name", "algorithm": "algorithm.name",
    "depth": "model.depth", "width": "model.width", "optimizer": "optimizer.name",
    "lr": "optimizer.lr", "batch_size": "trainer.batch_size", "update": "trainer.update",
    "seed": "trainer.seed", "iterations": "trainer.iterations",
    "bias_trace": "algorithm.bias_trace",
}

#: dataset keys left out of the fingerprint: where the data lives or how it is fetched, not
#: what it is (a resumed run may find its data elsewhere); its default code (``encoding`` is
#: the one used); and the paper's learning rates, of which only the optimizer's resolved
#: ``lr`` counts (the fingerprint holds it)
NOT_FINGERPRINTED = ("root", "cache", "cache_dir", "download", "download_timeout", "adamax_lr",
                     "encoding")


def plain(node):
    """A config node as plain Python data (choices as their strings)."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def _text(value):
    """A choice as its string (an Enum member's value)."""
    return getattr(value, "value", value)


def config_choices(cfg) -> dict:
    """The key choices that identify a run. Also called for a config that failed validation:
    an lr that cannot resolve is kept as written."""
    try:
        lr = cfg.optimizer.lr
    except InterpolationResolutionError:  # e.g. ${dataset.adamax_lr.${trainer.update}}
        lr = OmegaConf.to_container(cfg.optimizer, resolve=False)["lr"]
    values = {}
    for key, path in CHOICES.items():
        values[key] = lr if key == "lr" else _text(OmegaConf.select(cfg, path))
    return values


def fingerprint(cfg) -> dict:
    """What a checkpoint must match to be resumed: model, algorithm, optimizer, data, update
    mode, batch size, seed and dtype.

    Free to change on resume: the number of iterations (to train a finished run further), how
    often to log, evaluate, align and checkpoint, what is aligned, the device, ``on_nan``,
    progress, profiling and logger.
    """
    dataset = {k: v for k, v in plain(cfg.dataset).items() if k not in NOT_FINGERPRINTED}
    t = cfg.trainer
    trainer = {"update": _text(t["update"]), "batch_size": t.batch_size, "seed": t.seed,
               "dtype": _text(t.dtype)}
    if OmegaConf.select(cfg, "trainer.overfit_batches"):  # (named only where it is used)
        trainer["overfit_batches"] = t.overfit_batches
    return {
        "model": plain(cfg.model), "algorithm": plain(cfg.algorithm),
        "optimizer": plain(cfg.optimizer), "dataset": dataset,
        "encoding": _text(cfg.encoding.name), "trainer": trainer,
    }


def upgrade_fingerprint(saved: dict, current: dict) -> dict:
    """A fingerprint saved by an earlier version, as the settings it was made with:
    - ``bias_trace=true`` where no rule uses it (accepted before it was refused) changed nothing;
    - a Randman checkpoint without ``normalisation`` was made with the fixed one, where the size
      of a per-draw training draw changes nothing;
    - ``checkpoint_blocks`` (BPTT's memory for time) gives the same gradients, so it may change
      on resume, and a checkpoint made before it existed is one without it."""
    saved = dict(saved)
    algorithm = dict(saved.get("algorithm") or {})
    if algorithm.get("bias_trace") and not uses_bias_trace(algorithm.get("name")):
        algorithm["bias_trace"] = False
    algorithm["checkpoint_blocks"] = current.get("algorithm", {}).get("checkpoint_blocks", False)
    saved["algorithm"] = algorithm
    dataset = dict(saved.get("dataset") or {})
    if dataset.get("name") in RANDMAN_DATASETS and "normalisation" not in dataset:
        saved["dataset"] = {**dataset, "normalisation": "fixed",
                            "draw_samples_per_class":
                                current.get("dataset", {}).get("draw_samples_per_class")}
    return saved


def _flatten(value, prefix: str, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def settings(cfg) -> dict:
    """The fingerprint flattened to dotted keys (``model.beta``, ``dataset.num_steps``, ...):
    every setting that makes runs different experiments, for reports to tell them apart."""
    fp = fingerprint(cfg)
    fp["encoding"] = {"name": fp["encoding"]}
    a = fp["algorithm"]
    if a.get("readout") is None:  # the algorithm's own logits: the same run as naming them
        try:
            a["readout"] = readout_of(a["name"])
        except KeyError:
            pass
    return _flatten(fp, "", {})


def describe_differences(saved, current: dict, where: str) -> str:
    """Every key (dotted) whose value differs between two nested dicts, in one phrase:
    ``model.width is 16 in the checkpoint but 32 now; …`` (``where`` names the saved side)."""
    old = _flatten(saved if isinstance(saved, dict) else {}, "", {})
    new = _flatten(current, "", {})
    missing = object()

    def show(value):
        return "absent" if value is missing else repr(value)

    diffs = [f"{key} is {show(old.get(key, missing))} {where} but "
             f"{show(new.get(key, missing))} now"
             for key in sorted(set(old) | set(new))
             if key not in old or key not in new or old[key] != new[key]]
    return "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
