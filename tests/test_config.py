"""The config contract: groups, choices, schemas and range checks (compose API + real CLI)."""
import re

import pytest

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


@pytest.mark.parametrize("override, message", [
    ("model.depth=abc", "model.depth=abc is of the wrong type: model.depth takes a whole number."),
    ("model.dept=3", "unknown config key model.dept: no schema has it (did you mean "
                     "model.depth? otpe-train --help lists every key)."),
    ("trainer.iterationz=3", "unknown config key trainer.iterationz: no schema has it (did you "
                             "mean trainer.iterations? otpe-train --help lists every key)."),
    ("optimizer.lr=fast", "optimizer.lr=fast is of the wrong type: optimizer.lr takes a number."),
    ("algorithm.bias_trace=maybe", "algorithm.bias_trace=maybe is of the wrong type: "
                                   "algorithm.bias_trace takes true or false."),
    ("trainer.device=tpu", "trainer.device='tpu' is not one of: cpu, cuda, auto (did you mean "
                           "cpu?)."),
    ("trainer.progress=line", "trainer.progress='line' is not one of: auto, bar, lines, none "
                              "(did you mean lines?).")])
def test_schema_refuses_wrong_type_and_unknown_key_in_one_sentence(make_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        make_cfg([override])
    assert str(err.value) == message


@pytest.mark.parametrize("override, message", [
    ("algorithm=nope", "algorithm=nope is not one of the choices of algorithm: approx_otpe, "
                       "bptt, f_approx_otpe, f_otpe, ostl, otpe, ottt (did you mean otpe?)."),
    ("algorithm=zzz", "algorithm=zzz is not one of the choices of algorithm: approx_otpe, "
                      "bptt, f_approx_otpe, f_otpe, ostl, otpe, ottt."),
    ("algorithm=otpee", "algorithm=otpee is not one of the choices of algorithm: approx_otpe, "
                        "bptt, f_approx_otpe, f_otpe, ostl, otpe, ottt (did you mean otpe?)."),
    ("dataset=tranman", "dataset=tranman is not one of the choices of dataset: randman, shd, "
                        "ssc, trandman (did you mean trandman?)."),
    ("optimizer=adamx", "optimizer=adamx is not one of the choices of optimizer: adam, adamax, "
                        "sgd (did you mean adamax?)."),
    ("encoding=rates", "encoding=rates is not one of the choices of encoding: binary, counts, "
                       "default, rate, time (did you mean rate?)."),
    ("logger=wandbb", "logger=wandbb is not one of the choices of logger: none, wandb (did you "
                      "mean wandb?)."),
    ("experiment=nonexistent", "experiment=nonexistent names no preset; the experiment presets "
                               "are alignment_protocol, depth_sweep, online_compare, "
                               "randman_compare, shd_offline, shd_online_f_otpe, "
                               "trandman_compare."),
    ("debug=quik", "debug=quik names no preset; the debug presets are "),
])
def test_unknown_choices_and_presets_are_refused_with_the_choices(make_cfg, override, message):
    with pytest.raises(ConfigError) as err:
        make_cfg([override])
    assert str(err.value).startswith(message)
    if override == "debug=quik":
        assert "quick" in str(err.value) and "(did you mean quick?)" in str(err.value)


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
@pytest.mark.parametrize("args, key", [
    (["model.depth=abc"], "model.depth"), (["model.dept=3"], "dept"),
    (["algorithm=nope"], "algorithm"), (["model.depth=0"], "model.depth"),
    (["optimizer.lr=-1"], "optimizer.lr"), (["experiment=nonexistent"], "experiment"),
    (["debug=quik"], "debug"), (["-m", "algorithm=ottt,otpee"], "otpee"),
    (["-m", "trainer.seed=0,x"], "trainer.seed"), (["hydra/launcher=jblib"], "joblib"),
    (["trainer.align_with=[otpee]"], "trainer.align_with")])
def test_cli_bad_input_is_one_sentence_exit_2(cli, tmp_path, args, key):
    """Every refusal is one kind: our sentence naming the key, exit 2, no traceback."""
    res = cli([*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 's'}"],
              cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otpe-train: error: ") and key in lines[0]
    assert "Traceback" not in res.stderr + res.stdout


def test_help_and_refusals_answer_without_importing_torch(tmp_path):
    """--help, --cfg and a refused override answer before torch is imported (its import costs
    ~2 s of CPU)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from otpe_cli.cli import main\n"
            "for argv in (['--help'], ['--cfg', 'job'], ['algorithm=otpee']):\n"
            "    sys.argv = ['otpe-train', *argv, 'hydra.run.dir=" + str(tmp_path / "r") + "']\n"
            "    try:\n"
            "        main()\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "TORCH False", out.stdout + out.stderr
    assert "== Configuration groups ==" in out.stdout and "name: otpe" in out.stdout
    assert "otpe-train: error: algorithm=otpee is not one of" in out.stderr


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
