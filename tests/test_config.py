"""The config contract: groups, choices, schemas and range checks (compose API + real CLI)."""
import re

import pytest
from omegaconf.errors import OmegaConfBaseException
from hydra.errors import ConfigCompositionException, HydraException

from otpe_cli.config import ConfigError, validate


def test_defaults(make_cfg):
    cfg = make_cfg()
    assert cfg.dataset.name == "randman" and cfg.encoding.name == "rate"
    assert cfg.algorithm.name == "otpe" and cfg.optimizer.name == "adamax"
    assert cfg.optimizer.lr == 1e-3 and cfg.trainer.batch_size == 128
    assert (cfg.model.depth, cfg.model.width) == (3, 128)
    assert cfg.model.beta == pytest.approx(0.9525741268)
    assert cfg.trainer["update"] == "offline" and cfg.logger.name == "none"
    validate(cfg)


def test_dataset_selects_encoding_and_override_wins(make_cfg):
    assert make_cfg(["dataset=trandman"]).encoding.name == "time"
    assert make_cfg(["dataset=randman"]).encoding.name == "rate"
    assert make_cfg(["dataset=trandman", "encoding=rate"]).encoding.name == "rate"
    assert make_cfg(["encoding=time"]).encoding.name == "time"


@pytest.mark.parametrize("alg", ["bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe",
                                 "f_approx_otpe"])
def test_every_algorithm_composes(make_cfg, alg):
    cfg = make_cfg([f"algorithm={alg}"])
    assert cfg.algorithm.name == alg
    validate(cfg)


@pytest.mark.parametrize("overrides, lr", [
    ([], 1e-3), (["trainer.update=online"], 2.5e-4),
    (["dataset=trandman"], 1e-3), (["dataset=trandman", "trainer.update=online"], 2.5e-4),
    (["dataset=shd"], 1e-3), (["dataset=shd", "trainer.update=online"], 1e-4),
    (["dataset=ssc", "trainer.update=online"], 1e-4),
    (["trainer.update=online", "optimizer.lr=0.01"], 0.01),    # an explicit lr wins
    (["trainer.update=online", "dataset.adamax_lr.online=3e-4"], 3e-4),
    (["optimizer=adam", "trainer.update=online"], 1e-3),        # only Adamax is the paper's
])
def test_adamax_lr_is_the_papers_for_the_data_set_and_update_mode(make_cfg, overrides, lr):
    """SPEC §3: Adamax lr 1e-3 offline, 2.5e-4 online on Randman, 1e-4 online on SHD."""
    cfg = make_cfg(overrides)
    assert cfg.optimizer.lr == lr
    validate(cfg)


def test_a_bad_update_mode_is_named_before_the_lr_that_reads_it(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer\.update='onlin' is not one of"):
        validate(make_cfg(["trainer.update=onlin"]))


@pytest.mark.parametrize("opt", ["adamax", "adam", "sgd"])
def test_optimizers_compose(make_cfg, opt):
    cfg = make_cfg([f"optimizer={opt}", "optimizer.lr=0.01"])
    assert cfg.optimizer.name == opt and cfg.optimizer.lr == 0.01


@pytest.mark.parametrize("override, key", [
    ("model.depth=abc", "depth"), ("model.dept=3", "dept"), ("trainer.iterationz=3", "iterationz"),
    ("optimizer.lr=fast", "lr")])
def test_schema_refuses_wrong_type_and_unknown_key(make_cfg, override, key):
    with pytest.raises((HydraException, OmegaConfBaseException)) as err:
        make_cfg([override])
    assert key in str(err.value)


def test_unknown_choice(make_cfg):
    with pytest.raises((HydraException, ConfigCompositionException)) as err:
        make_cfg(["algorithm=nope"])
    assert "algorithm" in str(err.value) and "nope" in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("model.depth=0", "model.depth"), ("model.width=0", "model.width"),
    ("optimizer.lr=-0.1", "optimizer.lr"), ("dataset.num_steps=0", "dataset.num_steps"),
    ("optimizer.lr=nan", "optimizer.lr=nan"), ("optimizer.lr=inf", "optimizer.lr=inf"),
    ("model.slope=nan", "model.slope=nan"), ("model.beta=nan", "model.beta=nan"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9]"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9, 1.0]"),
    ("trainer.batch_size=0", "trainer.batch_size"), ("model.beta=1.5", "model.beta"),
    ("trainer.update=sometimes", "trainer.update"), ("trainer.device=tpu", "trainer.device"),
    ("algorithm.readout=voltage", "algorithm.readout"), ("optimizer.lr=0", "optimizer.lr"),
    ("model.threshold=0", "model.threshold"), ("model.threshold=-1", "model.threshold"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
    # a step beyond float32 used to end in torch's "value cannot be converted ... overflow"
    ("optimizer.lr=1e39", "optimizer.lr=1e+39 is out of range: it must be a finite number "
                          "greater than zero and at most 1e+06."),
    ("optimizer.weight_decay=1e39", "optimizer.weight_decay=1e+39 is out of range")])
def test_out_of_range_values_are_refused_with_the_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(make_cfg([override]))


@pytest.mark.parametrize("override, key", [("+trainer.foo=1", "trainer.foo"),
                                           ("+model.dept=3", "model.dept"), ("+bar=2", "bar")])
def test_keys_added_with_plus_are_refused(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(make_cfg([override]))


@pytest.mark.parametrize("overrides, message", [
    (["dataset.normalisation=per_batch"], "dataset.normalisation='per_batch' is not one of: "
                                          "per_draw, fixed."),
    (["dataset.draw_samples_per_class=0"], "dataset.draw_samples_per_class=0 is out of range"),
    (["dataset.draw_samples_per_class=10", "trainer.batch_size=128"],
     "trainer.batch_size=128 is larger than a per-draw training draw (10 classes × "
     "dataset.draw_samples_per_class=10 = 100 samples)"),
    (["trainer.align_with=[otpee]"], "trainer.align_with lists 'otpee', which is not an online "
                                     "algorithm (did you mean otpe?)"),
    (["trainer.align_with=[bptt]"], "trainer.align_with lists bptt, the reference itself"),
    (["trainer.align_with=[ottt,ottt]"], "trainer.align_with lists ottt twice."),
    (["trainer.align_with=[ottt]", "trainer.align_every=0"],
     "trainer.align_with needs alignment steps, but trainer.align_every=0 turns them off")])
def test_randman_normalisation_and_align_with_are_checked(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(make_cfg(overrides))


def test_per_draw_is_the_default_and_fixed_a_choice(make_cfg):
    for dataset in ("randman", "trandman"):
        cfg = make_cfg([f"dataset={dataset}"])
        assert cfg.dataset.normalisation == "per_draw"
        assert cfg.dataset.draw_samples_per_class == 1000
        validate(make_cfg([f"dataset={dataset}", "dataset.normalisation=fixed",
                           "trainer.align_with=[ottt,otpe,f_otpe]"]))


def test_online_bptt_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="online"):
        validate(make_cfg(["algorithm=bptt", "trainer.update=online"]))


# ------------------------------------------------------------------ the real command line
@pytest.mark.parametrize("args, key, code", [
    (["model.depth=abc"], "model.depth", 1), (["model.dept=3"], "dept", 2),
    (["algorithm=nope"], "algorithm", 1), (["model.depth=0"], "model.depth", 2),
    (["optimizer.lr=-1"], "optimizer.lr", 2)])
def test_cli_bad_input_exits_non_zero_naming_the_key(cli, tmp_path, args, key, code):
    res = cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    # as the README says: our own one-sentence refusals exit 2; a wrong type or an unknown
    # choice gets Hydra's message and Hydra's exit code 1
    assert res.returncode == code
    assert key in res.stderr + res.stdout
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize("args, line", [
    (["model.dept=3"], "unknown config key model.dept: no schema has it (did you mean "
                       "model.depth? otpe-train --help lists every key)."),
    (["-m", "trainer.iteratons=5,6"], "unknown config key trainer.iteratons: no schema has it "
                                      "(did you mean trainer.iterations? otpe-train --help "
                                      "lists every key)."),
    (["model.zzz=1"], "unknown config key model.zzz: no schema has it (otpe-train --help lists "
                      "every key)."),
    (["modl.depth=3"], "unknown config section modl: no schema has it (did you mean model? "
                       "otpe-train --help lists every key)."),
    (["algoritm=otpe"], "unknown config group algoritm: there is no such group (did you mean "
                        "algorithm? otpe-train --help lists every key)."),
    (["-m", "experimnt=depth_sweep"], "unknown config group experimnt: there is no such group "
                                      "(did you mean experiment? otpe-train --help lists every "
                                      "key).")])
def test_cli_misspelt_key_is_one_sentence_with_the_nearest_key(cli, tmp_path, args, line):
    res = cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"otpe-train: error: {line}"]
    assert not (tmp_path / "run").exists()  # refused before Hydra made anything


def test_cli_help_lists_groups_under_the_tool_name(cli, tmp_path):
    res = cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    out = res.stdout
    assert "otpe-train" in out
    for group in ("dataset: randman, shd, ssc, trandman", "algorithm:", "optimizer: adam, adamax, sgd",
                  "encoding:", "model: lif", "logger:", "trainer: default"):
        assert group in out, group
    for alg in ("approx_otpe", "bptt", "f_approx_otpe", "f_otpe", "ostl", "otpe", "ottt"):
        assert alg in out
    assert "schema" not in out.split("== Config ==")[0]  # only groups one can choose


def test_cli_version_names_the_tool(cli, tmp_path):
    import hydra
    import torch

    import otpe_cli

    res = cli(["--version"], cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout == (f"otpe-train {otpe_cli.__version__} (Hydra {hydra.__version__}, "
                          f"torch {torch.__version__})\n")
