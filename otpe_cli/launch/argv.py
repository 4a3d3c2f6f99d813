"""The command line checked before Hydra runs it, so that every refusal is one sentence of
ours with exit 2 (Hydra answers some with several lines, others with a traceback, and makes the
run directory first): unknown keys, a run directory that cannot be made, a launcher that is not
installed, and anything the composition refuses (an unknown choice or preset, a wrong type) for
every value of a sweep. None of it imports torch."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ..config import (SECTIONS, ConfigError, compose, config_groups, section_keys,
                      unknown_key_message)

#: Hydra's own flags that take no config and print: they are left to Hydra
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
              "--version")

#: hydra/launcher choices → (the Hydra plugin module they need, its pip name)
LAUNCHER_PLUGINS = {
    "local_parallel": ("hydra_joblib_launcher", "hydra-joblib-launcher"),
    "joblib": ("hydra_joblib_launcher", "hydra-joblib-launcher"),
    "slurm": ("hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def overrides_of(argv: list[str]) -> list[str]:
    """The ``key=value`` overrides of a command line (not Hydra's flags)."""
    return [a for a in argv if "=" in a and not a.startswith("-")]


def problem(argv: list[str]) -> str | None:
    """What is wrong with this command line, in one sentence, or None."""
    if any(a in INFO_FLAGS or a.startswith("--shell-completion") for a in argv):
        return None
    return (unknown_key_problem(argv) or launcher_problem(argv) or composition_problem(argv)
            or run_dir_problem(argv))


def unknown_key_problem(argv: list[str]) -> str | None:
    """A misspelt ``section.key=value`` (or ``group=choice``) gets a sentence with the nearest
    key; Hydra would answer with several lines and a hint to add the key with ``+`` (which
    validation then refuses)."""
    groups = config_groups()
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        section, _, rest = arg.partition("=")[0].partition(".")
        if not rest and "/" not in section and section not in groups:
            return unknown_key_message(section, groups, kind="group")
        if not rest or section == "hydra":
            continue
        if section not in SECTIONS:
            return unknown_key_message(section, set(SECTIONS), kind="section")
        key, known = rest.partition(".")[0], section_keys(section)
        if key not in known:
            return unknown_key_message(f"{section}.{key}", known)
    return None


def run_dir_problem(argv: list[str]) -> str | None:
    """Hydra creates the run (or sweep) directory before any of our code runs and answers a
    failure with a traceback; an explicit ``hydra.run.dir=DIR`` of a single run (or
    ``hydra.sweep.dir=DIR`` of a sweep) is checked here first."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    wanted = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if not multirun and any(a.startswith("-") for a in argv):  # --cfg ...: nothing is made
        return None
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != wanted or not value or "${" in value:
            continue
        path = Path(value)
        made = []  # what the check itself creates, taken away again: Hydra makes it later
        try:
            for p in reversed((path, *path.parents)):
                if not p.exists():
                    p.mkdir()
                    made.append(p)
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            blocker = None
            for p in (path, *path.parents):
                try:
                    if p.exists() and not p.is_dir():
                        blocker = p
                        break
                except OSError:  # (a name too long to even look up)
                    continue
            why = f"{blocker} is a file" if blocker else (exc.strerror or str(exc))
            shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:60]}…{str(path)[-40:]}"
            what = "sweep" if multirun else "run"
            return (f"the {what} directory {shown} cannot be created or written ({why}); choose "
                    f"another with {wanted}=DIR.")
        finally:
            for p in reversed(made):
                p.rmdir()
    return None


def _plugin_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(f"hydra_plugins.{module}") is not None
    except ImportError:
        return False


def launcher_problem(argv: list[str]) -> str | None:
    """A launcher whose plugin is not installed (Hydra says only "Could not load
    'hydra/launcher/joblib'"), and submitit's SLURM launcher where SLURM is absent (it fails
    with a traceback and an empty sweep directory): say so first."""
    for arg in argv:
        key, _, choice = arg.lstrip("+").partition("=")
        module, pip_name = LAUNCHER_PLUGINS.get(choice, (None, None))
        if key == "hydra/launcher" and module and not _plugin_installed(module):
            return (f"hydra/launcher={choice} needs the Hydra plugin {pip_name}, which is not "
                    f"installed here: pip install {pip_name} (or install otpe-cli with its "
                    "launchers extra, e.g. pip install -e '.[launchers]' in the clone).")
        if key == "hydra/launcher" and choice not in LAUNCHER_PLUGINS and choice != "basic":
            from ..config import _near

            known = ["basic", *LAUNCHER_PLUGINS]
            return (f"hydra/launcher={choice} is not one of: {', '.join(known)}"
                    f"{_near(choice, known)}.")
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if "hydra/launcher=slurm" in argv and missing:
        return (f"hydra/launcher=slurm needs SLURM, and {' and '.join(map(repr, missing))} "
                f"{'is' if len(missing) == 1 else 'are'} not on PATH here: launch the sweep "
                "from a node of the cluster, or run it on this machine with "
                "hydra/launcher=local_parallel or the basic launcher.")
    return None


def composition_problem(argv: list[str]) -> str | None:
    """What composing the config refuses: with the overrides as given, and in a sweep with
    each value of each swept key (the others at their first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [o for o in overrides_of(argv)
                 if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 -- Hydra's parser: a syntax error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"cannot read the overrides ({first})."
    variants, base = [], []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # noqa: BLE001 -- a glob or interval: left to Hydra
                values = []
            base.append(f"{key}={values[0]}" if values else override.input_line)
            variants.append((len(base) - 1, [f"{key}={v}" for v in values[1:]]))
        else:
            base.append(override.input_line)
    candidates = [base] + [base[:i] + [v] + base[i + 1:] for i, vs in variants for v in vs]
    for overrides in candidates:
        try:
            compose(overrides)
        except ConfigError as exc:
            return str(exc)
    return None
