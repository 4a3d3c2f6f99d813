"""Config schemas (structured configs in Hydra's ConfigStore) and value checks.

The YAML files under ``conf/`` pick a choice per group; these dataclasses give every group its
types, so a wrong type or an unknown key fails before any work with the key named. Range checks
that types cannot express live in `validate`, which answers with a sentence.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .data.randman import NORMALISATIONS
from .snn import DEFAULT_BETA, neuron_problem


class ConfigError(ValueError):
    """A config value is out of range or inconsistent; the message names the key."""


def _paper_lr(online: float):
    """The paper's Adamax learning rate on a data set, per update mode (SPEC §3); the adamax
    optimizer's ``lr`` reads it as ``${dataset.adamax_lr.${trainer.update}}``."""
    return field(default_factory=lambda: {"offline": 1e-3, "online": online})


@dataclass
class RandmanConfig:
    name: str = "randman"
    num_classes: int = 10
    num_units: int = 50
    num_steps: int = 50
    dim_manifold: int = 3
    alpha: float = 1.0
    test_samples_per_class: int = 1000
    manifold_seed: int = 42
    normalisation: str = "per_draw"      # per_draw (the paper's) | fixed (SPEC §6)
    draw_samples_per_class: int = 1000   # latent points of a per-draw training draw
    adamax_lr: Dict[str, float] = _paper_lr(online=2.5e-4)


@dataclass
class SHDConfig:
    """SHD and SSC (the Heidelberg spiking data sets) share this schema; see conf/dataset/."""
    name: str = "shd"                    # shd | ssc
    root: Optional[str] = None           # None: $OTPE_DATA, else ~/.cache/otpe-cli/data
    num_classes: int = 20
    num_channels: int = 700
    binning: str = "stretch"             # stretch: num_steps bins per sample; fixed: dt grid
    num_steps: int = 50                  # bins for ``stretch``
    dt: float = 0.01                     # seconds per bin for ``fixed`` (whole microseconds)
    t_max: float = 1.0                   # seconds covered by ``fixed`` (t_max / dt bins)
    pool: int = 1                        # channel pooling factor (700 → 700/pool)
    val_fraction: float = 0.1            # first fraction of the training file held out (SHD)
    cache: bool = True
    cache_dir: Optional[str] = None      # None: <root>/cache
    download: bool = True                # let tonic download when files are absent
    download_timeout: float = 15.0       # socket timeout (s) around any download attempt
    adamax_lr: Dict[str, float] = _paper_lr(online=1e-4)


@dataclass
class EncodingConfig:
    name: str = "rate"


@dataclass
class ModelConfig:
    depth: int = 3
    width: int = 128
    beta: float = DEFAULT_BETA
    threshold: float = 1.0
    slope: float = 25.0


@dataclass
class AlgorithmConfig:
    name: str = "otpe"
    readout: Optional[str] = None         # None: the composite's own logits (SPEC §2)
    bias_trace: bool = False              # give OTTT / A-OTPE bias gradients a temporal factor


@dataclass
class OptimizerConfig:
    name: str = "adamax"
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "otpe-cli"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    run_name: Optional[str] = None
    mode: str = "offline"


@dataclass
class TrainerConfig:
    iterations: int = 300
    batch_size: int = 128
    eval_every: int = 100
    log_every: int = 10
    align_every: int = 50
    align_with: List[str] = field(default_factory=list)  # rules aligned at this run's parameters
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    update: str = "offline"
    eval_batch_size: int = 2000
    on_nan: str = "stop"
    progress: str = "auto"               # auto: a live bar in a terminal, plain lines otherwise


@dataclass
class Config:
    dataset: Any = MISSING
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # stored outside any group, so that `otpe-train --help` lists only choosable groups
    cs.store(name="randman_schema", node=RandmanConfig)
    cs.store(name="shd_schema", node=SHDConfig)


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(map(str, choices))}.")


def _positive(key: str, value, allow_zero: bool = False, at_most: float = math.inf) -> None:
    """A finite number above zero (or zero too), and not above ``at_most``; NaN and inf fail
    every comparison here."""
    if not (0 <= value < math.inf and value <= at_most) or (value == 0 and not allow_zero):
        bound = "a finite number of zero or more" if allow_zero else \
            "a finite number greater than zero"
        if at_most < math.inf:
            bound += f" and at most {at_most:g}"
        raise ConfigError(f"{key}={value} is out of range: it must be {bound}.")


#: optimizer.lr and weight_decay above this are typos (1e39 overflows float32 in the optimizer)
_MAX_STEP_FACTOR = 1e6


#: the schema of every config section (``dataset``: one per family of data sets)
SECTIONS = {"model": (ModelConfig,), "algorithm": (AlgorithmConfig,),
            "optimizer": (OptimizerConfig,), "logger": (LoggerConfig,),
            "trainer": (TrainerConfig,), "encoding": (EncodingConfig,),
            "dataset": (RandmanConfig, SHDConfig)}


def section_keys(section: str, dataset: str | None = None) -> set[str]:
    """The keys a section's schema knows (``dataset``: of that data set, else of any)."""
    from dataclasses import fields

    schemas = SECTIONS[section]
    if section == "dataset" and dataset is not None:
        schemas = (RandmanConfig,) if dataset in ("randman", "trandman") else (SHDConfig,)
    return {f.name for schema in schemas for f in fields(schema)}


def unknown_key_message(key: str, known: set[str], kind: str = "key") -> str:
    """``unknown config key K`` (or ``section``), with the closest known one when one is near."""
    import difflib

    section, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {section + '.' if section else ''}{near[0]}? " if near else ""
    where = "there is no such group" if kind == "group" else "no schema has it"
    return f"unknown config {kind} {key}: {where} ({hint}otpe-train --help lists every key)."


def _no_added_keys(cfg) -> None:
    """``+group.key=value`` gets past Hydra's struct mode: refuse keys no schema knows."""
    for name in SECTIONS:
        known = section_keys(name, cfg.dataset.name)
        extra = sorted(set(cfg[name].keys()) - known)
        if extra:
            raise ConfigError(unknown_key_message(f"{name}.{extra[0]}", known))
    extra = sorted(key for key in cfg.keys() if key not in SECTIONS and key != "hydra")
    if extra:
        raise ConfigError(f"unknown config key {extra[0]}: no schema has it (was it added "
                          "with '+'? otpe-train --help lists every key).")


def ignored_logger_keys(cfg, overrides: list[str]) -> list[str]:
    """W&B settings given on the command line (``overrides``: Hydra's task overrides) while
    W&B is off (logger=none), which would go unused. (Presets may set them for the case
    logger=wandb is chosen: those are not the user's doing.)"""
    if cfg.logger.name != "none":
        return []
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [f"logger.{key}" for key in ("project", "entity", "group", "tags", "run_name")
            if f"logger.{key}" in given]


def validate(cfg) -> None:
    """Refuse out-of-range or inconsistent values with one sentence naming the key."""
    from .algorithms import ALGORITHMS, build_algorithm
    from .data import DATASETS

    _choice("dataset.name", cfg.dataset.name, DATASETS)
    _no_added_keys(cfg)

    m, t, o, a, d = cfg.model, cfg.trainer, cfg.optimizer, cfg.algorithm, cfg.dataset
    _choice("trainer.update", t["update"], ("offline", "online"))  # optimizer.lr may read it
    _positive("model.depth", m.depth)
    _positive("model.width", m.width)
    problem = neuron_problem(m.beta, m.threshold, m.slope, prefix="model.")
    if problem:
        raise ConfigError(f"{problem}.")
    _choice("algorithm.name", a.name, ALGORITHMS)
    if a.readout is not None:
        _choice("algorithm.readout", a.readout, ("spikes", "trace"))
    _choice("optimizer.name", o.name, ("adamax", "adam", "sgd"))
    _positive("optimizer.lr", o.lr, at_most=_MAX_STEP_FACTOR)
    _positive("optimizer.weight_decay", o.weight_decay, allow_zero=True, at_most=_MAX_STEP_FACTOR)
    if o.name in ("adamax", "adam") and (len(o.betas) != 2 or
                                          not all(0 <= b < 1 for b in o.betas)):
        raise ConfigError(f"optimizer.betas={list(o.betas)} is out of range: it must be two "
                          "numbers in [0, 1), e.g. [0.9, 0.999].")
    if o.name == "sgd":
        _positive("optimizer.momentum", o.momentum, allow_zero=True)
    _positive("trainer.iterations", t.iterations)
    _positive("trainer.batch_size", t.batch_size)
    _positive("trainer.eval_batch_size", t.eval_batch_size)
    for key in ("eval_every", "log_every", "align_every", "checkpoint_every"):
        _positive(f"trainer.{key}", getattr(t, key), allow_zero=True)
    _choice("trainer.device", t.device, ("cpu", "cuda", "auto"))
    _choice("trainer.dtype", t.dtype, ("float32", "float64"))
    _choice("trainer.on_nan", t.on_nan, ("stop", "skip"))
    _choice("trainer.progress", t.progress, ("auto", "bar", "lines", "none"))
    _choice("logger.name", cfg.logger.name, ("none", "wandb"))
    modes = ("online", "offline", "disabled")
    if (cfg.logger.mode not in modes and OmegaConf.is_interpolation(cfg.logger, "mode")
            and os.environ.get("WANDB_MODE") == cfg.logger.mode):
        raise ConfigError(f"WANDB_MODE={cfg.logger.mode!r} in the environment (logger.mode "
                          f"reads it) is not one of: {', '.join(modes)}.")
    _choice("logger.mode", cfg.logger.mode, modes)
    try:  # readout and bias_trace against the algorithm (SPEC §2)
        build_algorithm(a.name, a.readout, a.bias_trace)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _validate_align_with(t, ALGORITHMS)
    if t["update"] == "online" and a.name == "bptt":
        raise ConfigError("trainer.update=online is not defined for algorithm=bptt: "
                          "BPTT needs the whole sequence; use trainer.update=offline.")
    if d.name in ("randman", "trandman"):
        if cfg.encoding.name in ("counts", "binary"):
            raise ConfigError(f"encoding={cfg.encoding.name} is a code for the spike data sets "
                              f"(SHD, SSC) and does not apply to dataset={d.name}, which is "
                              "made of analog values: use encoding=rate (Randman, the default) "
                              "or encoding=time (T-Randman).")
        _choice("encoding", cfg.encoding.name, ("rate", "time"))
        for key in ("num_classes", "num_units", "num_steps", "dim_manifold",
                    "test_samples_per_class", "draw_samples_per_class"):
            _positive(f"dataset.{key}", getattr(d, key))
        _choice("dataset.normalisation", d.normalisation, NORMALISATIONS)
        draw = d.num_classes * d.draw_samples_per_class
        if d.normalisation == "per_draw" and t.batch_size > draw:
            raise ConfigError(f"trainer.batch_size={t.batch_size} is larger than a per-draw "
                              f"training draw ({d.num_classes} classes × "
                              f"dataset.draw_samples_per_class={d.draw_samples_per_class} = "
                              f"{draw} samples): lower trainer.batch_size or raise "
                              "dataset.draw_samples_per_class.")
        _positive("dataset.alpha", d.alpha)
        if d.num_classes < 2:
            raise ConfigError(f"dataset.num_classes={d.num_classes} is out of range: "
                              "a classification task needs at least 2 classes.")
    elif d.name in ("shd", "ssc"):
        _validate_heidelberg(cfg)


def _validate_align_with(t, algorithms) -> None:
    """trainer.align_with: online algorithms, each once, measured at alignment steps."""
    rules = [n for n in algorithms if n != "bptt"]
    seen = set()
    for name in t.align_with:
        if name == "bptt":
            raise ConfigError("trainer.align_with lists bptt, the reference itself: list the "
                              f"online algorithms to align with it ({', '.join(rules)}).")
        if name not in rules:
            import difflib

            near = difflib.get_close_matches(str(name), rules, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"trainer.align_with lists {name!r}, which is not an online "
                              f"algorithm{hint}; choose from: {', '.join(rules)}.")
        if name in seen:
            raise ConfigError(f"trainer.align_with lists {name} twice.")
        seen.add(name)
    if t.align_with and t.align_every == 0:
        raise ConfigError("trainer.align_with needs alignment steps, but trainer.align_every=0 "
                          "turns them off: set trainer.align_every=N (e.g. 10).")


def _validate_heidelberg(cfg) -> None:
    """SHD / SSC: encoding, binning, pooling and the validation split."""
    d, enc = cfg.dataset, cfg.encoding.name
    if enc in ("rate", "time"):
        raise ConfigError(f"encoding={enc} is a Randman code and does not apply to "
                          f"dataset={d.name}, which is already spikes: use encoding=counts (raw "
                          "spike counts per bin, the paper's input) or encoding=binary.")
    _choice("encoding", enc, ("counts", "binary"))
    _choice("dataset.binning", d.binning, ("stretch", "fixed"))
    _positive("dataset.num_channels", d.num_channels)
    _positive("dataset.pool", d.pool)
    _positive("dataset.download_timeout", d.download_timeout)
    if d.num_classes < 2:
        raise ConfigError(f"dataset.num_classes={d.num_classes} is out of range: "
                          "a classification task needs at least 2 classes.")
    if d.num_channels % d.pool:
        divisors = [k for k in range(2, d.num_channels) if d.num_channels % k == 0][:6]
        raise ConfigError(f"dataset.pool={d.pool} does not divide dataset.num_channels="
                          f"{d.num_channels}: use a divisor such as "
                          f"{', '.join(map(str, divisors))} (700 → 140 with 5, 70 with 10).")
    if d.binning == "stretch":
        _positive("dataset.num_steps", d.num_steps)
    else:
        _positive("dataset.dt", d.dt)
        _positive("dataset.t_max", d.t_max)
        if d.dt < 1e-6:
            raise ConfigError(f"dataset.dt={d.dt} is out of range: the spike times have "
                              "microsecond resolution, so a bin must be at least 1e-6 s.")
        bins = d.t_max / d.dt
        if bins < 1 or abs(bins - round(bins)) > 1e-6 * max(1.0, bins):
            raise ConfigError(f"dataset.t_max={d.t_max} is not a whole number of "
                              f"dataset.dt={d.dt} bins (t_max / dt = {bins:g}); choose t_max "
                              "as a multiple of dt, e.g. dt=0.01 t_max=1.0 for 100 bins.")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction={d.val_fraction} is out of range: it must "
                          "lie in [0, 1).")
    if d.name == "ssc" and d.val_fraction:
        raise ConfigError(f"dataset.val_fraction={d.val_fraction} does not apply to "
                          "dataset=ssc: SSC brings its own validation file (ssc_valid.h5); "
                          "leave dataset.val_fraction=0.")


register_configs()  # importing the schemas makes them available to Hydra (CLI and compose API)
