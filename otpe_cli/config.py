"""Config schemas, composition and value checks, without torch.

The YAML files under ``conf/`` hold every value; the dataclasses here hold only the types, so
that each default is written once. Choices are Enums: a wrong choice, a wrong type or an
unknown key fails when the config is composed. `compose` composes ``conf/`` as the CLI does and
turns every such refusal into `ConfigError`, one sentence naming the key, the bad value and
what it takes (with a did-you-mean where one is close); `validate` then refuses what types
cannot express (ranges, combinations). Importing this module registers the schemas (and the
``otpe_pid`` resolver that ``conf/config.yaml`` uses) with Hydra.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .errors import ConfigError
from .spec import (ALGORITHMS, DATASETS, ENCODINGS, NORMALISATIONS, RANDMAN_DATASETS, READOUTS,
                   algorithm_problem, neuron_problem)


class Choice(str, Enum):
    """A config choice: compares equal to its string and prints as it."""

    def __str__(self) -> str:
        return self.value


def _choices(name: str, values) -> type[Choice]:
    return Choice(name, [(v, v) for v in values])


DatasetName = _choices("DatasetName", DATASETS)
Encoding = _choices("Encoding", [c for codes in ENCODINGS.values() for c in codes])
Normalisation = _choices("Normalisation", NORMALISATIONS)
Binning = _choices("Binning", ("stretch", "fixed"))
AlgorithmName = _choices("AlgorithmName", ALGORITHMS)
OnlineAlgorithm = _choices("OnlineAlgorithm", [a for a in ALGORITHMS if a != "bptt"])
Readout = _choices("Readout", READOUTS)
OptimizerName = _choices("OptimizerName", ("adamax", "adam", "sgd"))
LoggerName = _choices("LoggerName", ("none", "wandb"))
WandbMode = _choices("WandbMode", ("online", "offline", "disabled"))
Device = _choices("Device", ("cpu", "cuda", "auto"))
Dtype = _choices("Dtype", ("float32", "float64"))
Update = _choices("Update", ("offline", "online"))
OnNan = _choices("OnNan", ("stop", "skip"))
Progress = _choices("Progress", ("auto", "bar", "lines", "none"))


@dataclass
class RandmanConfig:
    """Randman and T-Randman (conf/dataset/randman.yaml, trandman.yaml)."""
    name: DatasetName = MISSING
    encoding: Encoding = MISSING              # the data set's own code (encoding=default)
    num_classes: int = MISSING
    num_units: int = MISSING
    num_steps: int = MISSING
    dim_manifold: int = MISSING
    alpha: float = MISSING
    test_samples_per_class: int = MISSING
    manifold_seed: int = MISSING
    normalisation: Normalisation = MISSING
    draw_samples_per_class: int = MISSING
    adamax_lr: Dict[str, float] = MISSING


@dataclass
class SHDConfig:
    """SHD and SSC (conf/dataset/shd.yaml, ssc.yaml)."""
    name: DatasetName = MISSING
    encoding: Encoding = MISSING
    root: Optional[str] = MISSING
    num_classes: int = MISSING
    num_channels: int = MISSING
    binning: Binning = MISSING
    num_steps: int = MISSING
    dt: float = MISSING
    t_max: float = MISSING
    pool: int = MISSING
    val_fraction: float = MISSING
    cache: bool = MISSING
    cache_dir: Optional[str] = MISSING
    download: bool = MISSING
    download_timeout: float = MISSING
    adamax_lr: Dict[str, float] = MISSING


@dataclass
class EncodingConfig:
    name: Encoding = MISSING


@dataclass
class ModelConfig:
    depth: int = MISSING
    width: int = MISSING
    beta: float = MISSING
    threshold: float = MISSING
    slope: float = MISSING


@dataclass
class AlgorithmConfig:
    name: AlgorithmName = MISSING
    readout: Optional[Readout] = MISSING
    bias_trace: bool = MISSING
    checkpoint_blocks: bool = MISSING


@dataclass
class OptimizerConfig:
    name: OptimizerName = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: Optional[List[float]] = None      # adam, adamax
    momentum: Optional[float] = None         # sgd


@dataclass
class LoggerConfig:
    name: LoggerName = MISSING
    project: Optional[str] = None            # W&B only (conf/logger/wandb.yaml)
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: Optional[List[str]] = None
    run_name: Optional[str] = None
    mode: Optional[WandbMode] = None


@dataclass
class TrainerConfig:
    iterations: int = MISSING
    batch_size: int = MISSING
    eval_every: int = MISSING
    log_every: int = MISSING
    align_every: int = MISSING
    align_with: List[OnlineAlgorithm] = MISSING
    checkpoint_every: int = MISSING
    seed: int = MISSING
    device: Device = MISSING
    dtype: Dtype = MISSING
    update: Update = MISSING
    eval_batch_size: int = MISSING
    on_nan: OnNan = MISSING
    progress: Progress = MISSING
    overfit_batches: int = MISSING
    profile: int = MISSING


@dataclass
class Config:
    dataset: Any = MISSING
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


#: the schema of every config section (``dataset``: one per family of data sets)
SECTIONS = {"model": (ModelConfig,), "algorithm": (AlgorithmConfig,),
            "optimizer": (OptimizerConfig,), "logger": (LoggerConfig,),
            "trainer": (TrainerConfig,), "encoding": (EncodingConfig,),
            "dataset": (RandmanConfig, SHDConfig)}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # stored outside any group, so that `otpe-train --help` lists only choosable groups
    cs.store(name="randman_schema", node=RandmanConfig)
    cs.store(name="shd_schema", node=SHDConfig)
    # Hydra writes a job's config files to .hydra/pending/<pid> first (conf/config.yaml): a
    # second otpe-train refused on a directory in use must not overwrite the first one's there
    OmegaConf.register_new_resolver("otpe_pid", os.getpid, replace=True)


# ============================================================================ composing
CONFIG_MODULE = "otpe_cli.conf"


def group_options(group: str) -> list[str]:
    """The choices of a config group of ``conf/`` (``algorithm`` → bptt, ottt, …)."""
    from importlib.resources import files

    try:
        folder = files(CONFIG_MODULE).joinpath(*group.split("/"))
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    except (OSError, ModuleNotFoundError):
        return []


def config_groups() -> set[str]:
    """What ``name=value`` may choose at the top level: the config groups and the sections."""
    from importlib.resources import files

    try:
        groups = {p.name for p in files(CONFIG_MODULE).iterdir() if p.is_dir()}
    except (OSError, ModuleNotFoundError):
        groups = set()
    return (groups | set(SECTIONS)) - {"hydra", "__pycache__"}


def _near(value, options) -> str:
    near = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def compose(overrides=(), config_name: str = "config"):
    """``conf/`` composed with ``overrides`` as ``otpe-train`` composes it (without Hydra's own
    settings); any refusal of the composition is a `ConfigError` in one sentence."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    was = GlobalHydra.instance().is_initialized()
    try:
        if was:  # (a caller's own Hydra context, e.g. inside a job: composed apart from it)
            GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as exc:  # noqa: BLE001 -- Hydra's and OmegaConf's many exception types
        raise ConfigError(composition_message(exc, overrides)) from None


def composition_message(exc: Exception, overrides) -> str:
    """Hydra's or OmegaConf's refusal of a composition, as our sentence."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(str(cause)) > 0 and "full_key" not in text:
        text += "\n" + str(cause)
        cause = cause.__cause__ or cause.__context__
    missing = re.search(r"Could not (?:find|load) '([\w/]+)/([^']+)'", text)
    if missing:
        group, value = missing.groups()
        options = group_options(group)
        if group in ("experiment", "debug"):
            what = f"{group}={value} names no preset; the {group} presets are"
        else:
            what = f"{group}={value} is not one of the choices of {group}:"
        return f"{what} {', '.join(options)}{_near(value, options)}."
    key = re.search(r"full_key: (\S+)", text)
    key = key.group(1) if key else None
    enum = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", text)
    if enum and key:
        value, options = enum.group(1), [o.strip() for o in enum.group(2).split(",")]
        if re.sub(r"\[\d+\]$", "", key) == "trainer.align_with":
            if value == "bptt":
                return ("trainer.align_with lists bptt, the reference itself: list the online "
                        f"algorithms to align with it ({', '.join(options)}).")
            return (f"trainer.align_with lists {value!r}, which is not an online algorithm"
                    f"{_near(value, options)}; choose from: {', '.join(options)}.")
        return f"{key}={value!r} is not one of: {', '.join(options)}{_near(value, options)}."
    typed = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)"
                      r"|Value '([^']*)' is not a valid (bool)", text)
    if typed and key:
        kinds = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false",
                 "bool": "true or false", "String": "a string"}
        typed = [g for g in typed.groups() if g is not None]
        kind = kinds.get(typed[1], typed[1].lower())
        return f"{key}={typed[0]} is of the wrong type: {key} takes {kind}."
    unknown = re.search(r"Key '([^']+)' (?:is not in struct|not in '\w+')", text)
    if unknown and key:
        section = key.rpartition(".")[0]
        known = section_keys(section) if section in SECTIONS else set()
        return unknown_key_message(key, known)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"the config cannot be composed with {' '.join(overrides) or 'no overrides'}: {first}"


# ============================================================================ value checks
def section_keys(section: str, dataset: str | None = None) -> set[str]:
    """The keys a section's schema knows (``dataset``: of that data set, else of any)."""
    schemas = SECTIONS[section]
    if section == "dataset" and dataset is not None:
        schemas = (RandmanConfig,) if dataset in RANDMAN_DATASETS else (SHDConfig,)
    return {f.name for schema in schemas for f in fields(schema)}


def unknown_key_message(key: str, known: set[str], kind: str = "key") -> str:
    """``unknown config key K`` (or ``section``), with the closest known one when one is near."""
    section, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {section + '.' if section else ''}{near[0]}? " if near else ""
    where = "there is no such group" if kind == "group" else "no schema has it"
    return f"unknown config {kind} {key}: {where} ({hint}otpe-train --help lists every key)."


def _no_added_keys(cfg) -> None:
    """``+group.key=value`` gets past Hydra's struct mode: refuse keys no schema knows."""
    for name in SECTIONS:
        known = section_keys(name, str(cfg.dataset.name))
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


def validate(cfg) -> None:
    """Refuse out-of-range or inconsistent values with one sentence naming the key."""
    _no_added_keys(cfg)
    m, t, o, a, d = cfg.model, cfg.trainer, cfg.optimizer, cfg.algorithm, cfg.dataset
    _positive("model.depth", m.depth)
    _positive("model.width", m.width)
    problem = neuron_problem(m.beta, m.threshold, m.slope, prefix="model.")
    if problem:
        raise ConfigError(f"{problem}.")
    _positive("optimizer.lr", o.lr, at_most=_MAX_STEP_FACTOR)
    _positive("optimizer.weight_decay", o.weight_decay, allow_zero=True, at_most=_MAX_STEP_FACTOR)
    if o.name in ("adamax", "adam"):
        betas = list(o.betas or [])
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"optimizer.betas={betas} is out of range: it must be two "
                              "numbers in [0, 1), e.g. [0.9, 0.999].")
    if o.name == "sgd":
        _positive("optimizer.momentum", o.momentum if o.momentum is not None else -1,
                  allow_zero=True)
    _positive("trainer.iterations", t.iterations)
    _positive("trainer.batch_size", t.batch_size)
    _positive("trainer.eval_batch_size", t.eval_batch_size)
    for key in ("eval_every", "log_every", "align_every", "checkpoint_every", "overfit_batches",
                "profile"):
        _positive(f"trainer.{key}", getattr(t, key), allow_zero=True)
    if cfg.logger.name == "wandb":
        _wandb_mode(cfg)
    problem = algorithm_problem(str(a.name), None if a.readout is None else str(a.readout),
                                a.bias_trace)
    if problem:
        raise ConfigError(problem)
    _validate_align_with(t)
    if t["update"] == "online" and a.name == "bptt":
        raise ConfigError("trainer.update=online is not defined for algorithm=bptt: "
                          "BPTT needs the whole sequence; use trainer.update=offline.")
    if a.checkpoint_blocks and a.name != "bptt":
        raise ConfigError(f"algorithm.checkpoint_blocks=true recomputes BPTT's forward blocks "
                          f"and applies only to algorithm=bptt; {a.name} keeps no blocks, so "
                          "leave it false.")
    if d.name in RANDMAN_DATASETS:
        _validate_randman(cfg)
    else:
        _validate_heidelberg(cfg)


def _wandb_mode(cfg) -> None:
    """logger.mode reads WANDB_MODE: a bad value there is the environment's, said so."""
    try:
        cfg.logger.mode
    except Exception:  # noqa: BLE001 -- OmegaConf's validation of the resolved value
        modes = ", ".join(str(m) for m in WandbMode)
        if OmegaConf.is_interpolation(cfg.logger, "mode") and "WANDB_MODE" in os.environ:
            raise ConfigError(f"WANDB_MODE={os.environ['WANDB_MODE']!r} in the environment "
                              f"(logger.mode reads it) is not one of: {modes}.") from None
        raise ConfigError(f"logger.mode is not one of: {modes}.") from None


def _validate_align_with(t) -> None:
    """trainer.align_with: online algorithms (the schema's type), each once, at alignment
    steps."""
    seen = set()
    for name in t.align_with:
        if name in seen:
            raise ConfigError(f"trainer.align_with lists {name} twice.")
        seen.add(name)
    if t.align_with and t.align_every == 0:
        raise ConfigError("trainer.align_with needs alignment steps, but trainer.align_every=0 "
                          "turns them off: set trainer.align_every=N (e.g. 10).")


def _encoding_applies(cfg, family: str) -> None:
    enc, d = str(cfg.encoding.name), cfg.dataset
    if enc not in ENCODINGS[family]:
        if family == "randman":
            raise ConfigError(f"encoding={enc} is a code for the spike data sets (SHD, SSC) and "
                              f"does not apply to dataset={d.name}, which is made of analog "
                              "values: use encoding=rate (Randman, the default) or "
                              "encoding=time (T-Randman).")
        raise ConfigError(f"encoding={enc} is a Randman code and does not apply to "
                          f"dataset={d.name}, which is already spikes: use encoding=counts (raw "
                          "spike counts per bin, the paper's input) or encoding=binary.")


def _at_least_two_classes(d) -> None:
    if d.num_classes < 2:
        raise ConfigError(f"dataset.num_classes={d.num_classes} is out of range: "
                          "a classification task needs at least 2 classes.")


def _validate_randman(cfg) -> None:
    d, t = cfg.dataset, cfg.trainer
    _encoding_applies(cfg, "randman")
    for key in ("num_classes", "num_units", "num_steps", "dim_manifold",
                "test_samples_per_class", "draw_samples_per_class"):
        _positive(f"dataset.{key}", getattr(d, key))
    _positive("dataset.alpha", d.alpha)
    _at_least_two_classes(d)
    draw = d.num_classes * d.draw_samples_per_class
    if d.normalisation == "per_draw" and t.batch_size > draw:
        raise ConfigError(f"trainer.batch_size={t.batch_size} is larger than a per-draw "
                          f"training draw ({d.num_classes} classes × "
                          f"dataset.draw_samples_per_class={d.draw_samples_per_class} = "
                          f"{draw} samples): lower trainer.batch_size or raise "
                          "dataset.draw_samples_per_class.")


def _validate_heidelberg(cfg) -> None:
    """SHD / SSC: encoding, binning, pooling and the validation split."""
    d = cfg.dataset
    _encoding_applies(cfg, "shd")
    _positive("dataset.num_channels", d.num_channels)
    _positive("dataset.pool", d.pool)
    _positive("dataset.download_timeout", d.download_timeout)
    _at_least_two_classes(d)
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
