"""Short real training runs through the shared trainer (compose API → cli.run)."""
import json
import math
from pathlib import Path

import pytest
import torch

from helpers import TINY, strip_time
from otpe_cli.cli import run
from otpe_cli.logs import read_metrics

ALGS = ["bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe"]


@pytest.mark.parametrize("dataset, encoding", [("randman", "rate"), ("randman", "time"),
                                               ("trandman", "time"), ("trandman", "rate")])
def test_each_dataset_and_encoding_trains_and_writes_outputs(make_cfg, tmp_path, dataset, encoding):
    cfg = make_cfg([f"dataset={dataset}", f"encoding={encoding}", "algorithm=bptt",
                    "trainer.iterations=10", *TINY])
    summary = run(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 5, 10]
    for key in ("train/loss", "train/acc", "spikes/layers.0", "spikes/layers.2", "time/iter_s"):
        assert key in rows[-1]
    assert "test/acc" in rows[-1] and "test/loss" in rows[-1]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["iter"] == 10
    assert saved["config"]["dataset"] == dataset and saved["config"]["encoding"] == encoding
    for key in ("test/acc", "best/test_acc", "best/test_acc_iter", "wall_time_s"):
        assert key in saved
    assert summary["test/acc"] == saved["test/acc"]


@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm_lowers_the_loss_on_trandman(make_cfg, tmp_path, alg):
    # 4 classes and a lower threshold so that a tiny network spikes from the start
    cfg = make_cfg(["dataset=trandman", f"algorithm={alg}", "trainer.iterations=40",
                    "dataset.num_classes=4", "model.threshold=0.5", "optimizer.lr=0.02",
                    "dataset.normalisation=fixed",  # (the easy task: learnt within 40 steps)
                    "trainer.align_every=0",
                    *[o for o in TINY if not o.startswith("dataset.num_units")]])
    run(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    first, last = rows[0]["train/loss"], rows[-1]["train/loss"]
    assert last < first - 0.04, (first, last)


@pytest.mark.parametrize("alg", ALGS[1:])
def test_online_updates_change_parameters_mid_sequence(make_cfg, tmp_path, alg):
    from otpe_cli.trainer import Trainer
    cfg = make_cfg(["dataset=trandman", f"algorithm={alg}", "trainer.update=online",
                    "trainer.iterations=1", "dataset.num_steps=12", *TINY])
    trainer = Trainer(cfg, tmp_path)
    steps = []
    original = trainer.optimizer.step_if_finite

    def counting_step(*a, **k):
        steps.append(trainer.model.layers[0].weight.detach().clone())
        return original(*a, **k)

    trainer.optimizer.step_if_finite = counting_step
    trainer.train()
    assert len(steps) == 12  # one optimizer step per time step
    assert not torch.equal(steps[0], steps[-1])


def test_online_mode_trains_and_logs_alignment_at_batch_start(make_cfg, tmp_path):
    cfg = make_cfg(["dataset=trandman", "algorithm=otpe", "trainer.update=online",
                    "trainer.iterations=10", *TINY])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "finished"
    assert -1 <= summary["align/cos/global"] <= 1
    assert summary["config"]["lr"] == 2.5e-4  # SPEC §3's online Adamax rate on (T-)Randman


def test_alignment_is_logged_per_parameter_and_global(make_cfg, tmp_path):
    cfg = make_cfg(["dataset=randman", "algorithm=ottt", "trainer.iterations=10", *TINY])
    summary = run(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    aligned = [r for r in rows if "align/cos/global" in r]
    assert [r["iter"] for r in aligned] == [1, 10]
    names = [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    for measure in ("cos", "sign", "norm_ratio"):
        for name in names + ["global"]:
            assert f"align/{measure}/{name}" in aligned[0]
            assert f"align/{measure}/{name}" in summary
            assert f"align_mean/{measure}/{name}" in summary
    # BPTT compared with itself is perfectly aligned
    bptt = run(make_cfg(["dataset=trandman", "algorithm=bptt", "trainer.iterations=1", *TINY]),
               tmp_path / "bptt")
    assert bptt["align/cos/global"] == pytest.approx(1.0)
    assert bptt["align/norm_ratio/global"] == pytest.approx(1.0)


def test_f_variants_align_to_bptt_of_the_leaky_trace_loss(make_cfg, tmp_path):
    # depth 1: F-OTPE equals BPTT of its own (trace) objective exactly (SPEC §5.2)
    cfg = make_cfg(["dataset=trandman", "algorithm=f_otpe", "model.depth=1",
                    "trainer.iterations=1", "trainer.dtype=float64", *TINY])
    summary = run(cfg, tmp_path)
    assert summary["align/cos/global"] == pytest.approx(1.0, abs=1e-9)


def test_same_seed_same_metrics(make_cfg, tmp_path):
    over = ["dataset=randman", "algorithm=approx_otpe", "trainer.iterations=10", *TINY]
    run(make_cfg(over), tmp_path / "a")
    run(make_cfg(over), tmp_path / "b")
    a = strip_time(read_metrics(tmp_path / "a" / "metrics.jsonl"))
    b = strip_time(read_metrics(tmp_path / "b" / "metrics.jsonl"))
    assert a == b
    c = strip_time(read_metrics(run(make_cfg(over + ["trainer.seed=1"]), tmp_path / "c") and
                                tmp_path / "c" / "metrics.jsonl"))
    assert c != a


def test_bias_trace_option_changes_only_the_bias_gradients(make_cfg, tmp_path):
    from otpe_cli import SNN, sequence_gradients
    torch.manual_seed(0)
    m = SNN([10, 8, 4])
    x = (torch.rand(20, 6, 10) < 0.3).float()
    y = torch.randint(0, 4, (6,))
    for alg in ("ottt", "approx_otpe"):
        plain = sequence_gradients(alg, m, x, y)
        traced = sequence_gradients(alg, m, x, y, bias_trace=True)
        for name in plain:
            same = torch.equal(plain[name], traced[name])
            assert same == name.endswith("weight"), (alg, name)


@pytest.mark.parametrize("alg", ["bptt", "ostl", "otpe", "f_otpe"])
def test_bias_trace_is_refused_where_no_rule_uses_it(make_cfg, alg):
    """No OTTT or A-OTPE rule in the composite: the option would change nothing, yet the run
    would be recorded (and reported) as a different experiment."""
    from otpe_cli import SNN, sequence_gradients
    from otpe_cli.config import ConfigError, validate

    with pytest.raises(ValueError, match=f"and {alg} uses neither"):
        sequence_gradients(alg, SNN([4, 3, 2]), torch.zeros(2, 1, 4), torch.zeros(1).long(),
                           bias_trace=True)
    with pytest.raises(ConfigError, match=r"^algorithm.bias_trace=true changes only the OTTT "
                       r"and A-OTPE rules' bias gradients.*applies to ottt, approx_otpe, "
                       r"f_approx_otpe\.$"):
        validate(make_cfg([f"algorithm={alg}", "algorithm.bias_trace=true"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("update", ["offline", "online"])
def test_training_on_cuda_runs_and_resumes(make_cfg, tmp_path, update):
    """trainer.device=cuda end to end: training, alignment, evaluation, a checkpoint with the
    CUDA RNG state, and a resume that trains on from it."""
    over = ["dataset=trandman", "algorithm=otpe", f"trainer.update={update}",
            "trainer.device=cuda", "trainer.checkpoint_every=2",
            *[o for o in TINY if not o.startswith("trainer.checkpoint_every")]]
    first = run(make_cfg(over + ["trainer.iterations=4"]), tmp_path)
    assert first["status"] == "finished" and first["iter"] == 4
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["cuda_rng"] and ckpt["iteration"] == 4
    more = run(make_cfg(over + ["trainer.iterations=6"]), tmp_path)
    assert more["iter"] == 6 and math.isfinite(more["train/loss"])
    assert math.isfinite(more["align/cos/global"])

def test_a_silent_output_layer_is_said_in_the_console_line_and_at_the_end(tmp_path, cli):
    """Samples without an output spike count as wrong: a run whose output layer stays silent
    says so (test/silent in the console line, the summary and a closing warning)."""
    run_dir = tmp_path / "run"
    res = cli(["debug=quick", "dataset=trandman", "model.threshold=50",
               "dataset.test_samples_per_class=5", "trainer.progress=lines",
               f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test 0.000 (100% silent)" in res.stderr
    assert ("100% of the test samples got no output spike, and a sample without one counts as "
            "wrong") in res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/silent"] == 1.0 and summary["test/acc"] == 0.0


def test_cli_progress_goes_to_stderr_and_the_final_table_to_stdout(tmp_path):
    from helpers import run_cli

    run_dir = tmp_path / "run"
    res = run_cli(["debug=quick", "trainer.progress=lines", f"hydra.run.dir={run_dir}"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.splitlines()[0] == f"run directory: {run_dir}"
    assert "[otpe] iter 5/5" in res.stderr and "final metrics" not in res.stderr
    assert "final metrics" in res.stdout and "test/acc" in res.stdout
    assert "run directory" in res.stdout and "iter 5/5" not in res.stdout


def test_final_table_shows_a_value_that_was_not_finite_as_such(capsys, tmp_path):
    from otpe_cli.logs import ConsoleProgress

    # None: cleaned already (the last logged row); nan: a mean computed at the end
    ConsoleProgress(1, 0, "lines", "t").table("final metrics", {
        "align/cos/global": None, "align_mean/cos/global": float("nan"), "test/acc": 0.5},
        tmp_path)
    out = capsys.readouterr().out
    assert out.count("not finite") == 2 and "None" not in out and "nan" not in out
    assert "0.5000" in out
    assert out.strip().endswith(f"run directory: {tmp_path}")


def test_the_python_api_takes_any_real_spike_dtype_and_refuses_bad_batches_in_words():
    from otpe_cli import SNN, sequence_gradients

    m = SNN([5, 4, 3], generator=torch.Generator().manual_seed(0))
    x = torch.rand(6, 2, 5, generator=torch.Generator().manual_seed(1)) < 0.4
    y = torch.tensor([0, 2])
    for alg in ("bptt", "otpe", "ottt"):  # bool / uint8 spikes and int32 labels, as floats
        want = sequence_gradients(alg, m, x.float(), y)
        for xx, yy in ((x, y.int()), (x.to(torch.uint8), y.to(torch.uint8)), (x.double(), y)):
            got = sequence_gradients(alg, m, xx, yy)
            assert all(torch.equal(got[k], want[k]) for k in want), alg
    xf = x.float()
    for xx, yy, words in [
            (xf[0], y, r"x has shape \(2, 5\); it must be \(T, B, N_in\)"),
            (xf[:0], y, r"x has shape \(0, 2, 5\); it must be \(T, B, 5\) with T ≥ 1"),
            (xf[:, :, :4], y, r"it must be \(T, B, 5\)"),
            (xf, y[:1], r"y has shape \(1,\); it must be \(2,\)"),
            (xf, y.view(2, 1), r"y has shape \(2, 1\)"),
            (xf, y.float(), r"y has dtype torch.float32; it must hold integer class indices"),
            (xf, torch.tensor([0, 3]), r"must lie in 0..2"),
            (xf.index_put((torch.tensor([1, 4]),), torch.tensor(float("nan"))), y,
             r"x holds 20 values that are NaN or infinite in the model's dtype "
             r"\(torch.float32\); give finite"),
            (xf.double().index_put((torch.tensor([0]), torch.tensor([1]), torch.tensor([2])),
                                   torch.tensor(1e300, dtype=torch.float64)), y,
             r"x holds 1 value that is NaN or infinite in the model's dtype"),
            (xf.index_put((torch.tensor([3]),), torch.tensor(-float("inf"))), y,
             r"x holds 10 values that are NaN or infinite")]:
        with pytest.raises(ValueError, match=words):
            sequence_gradients("otpe", m, xx, yy)
    for kwargs, words in [({"beta": 1.5}, "beta=1.5 is out of range"),
                          ({"threshold": 0}, "threshold=0 must be"),
                          ({"slope": -1.0}, "slope=-1.0 must be")]:
        with pytest.raises(ValueError, match=words):
            SNN([5, 4, 3], **kwargs)
    with pytest.raises(ValueError, match=r"sizes=\[5, 0, 3\]"):
        SNN([5, 0, 3])


def test_sequence_gradients_keeps_one_trace_pool_per_model_and_frees_it_with_the_model():
    """The traces `sequence_gradients` keeps for the next call change nothing (every call
    equals a fresh Algorithm's, whose pool is empty, across rules and batch sizes on one
    model) and go when the model goes."""
    import gc
    import weakref

    from otpe_cli import SNN, build_algorithm, sequence_gradients
    from otpe_cli.algorithms import _ALGORITHMS_OF

    gen = torch.Generator().manual_seed(3)
    m = SNN([6, 5, 5, 3], generator=torch.Generator().manual_seed(0)).double()
    for alg, batch in [("otpe", 4), ("ostl", 4), ("otpe", 3), ("f_otpe", 4), ("ottt", 4),
                       ("otpe", 4)]:
        x = (torch.rand(7, batch, 6, generator=gen) < 0.5).double()
        y = torch.randint(0, 3, (batch,), generator=gen)
        got = sequence_gradients(alg, m, x, y)
        want, _ = build_algorithm(alg).gradients(m, x, y)
        for (name, _), w in zip(m.named_parameters(), want):
            assert torch.equal(got[name], w), (alg, batch, name)
    pools = {id(a.traces) for a in _ALGORITHMS_OF[m].values()}
    assert len(pools) == 1  # one pool: only the last call's traces are held
    pool = weakref.ref(next(iter(_ALGORITHMS_OF[m].values())).traces)
    del m
    gc.collect()
    assert pool() is None


def test_bptt_gradients_of_frozen_parameters_leave_them_frozen():
    from otpe_cli import SNN, sequence_gradients

    m = SNN([5, 4, 3], generator=torch.Generator().manual_seed(0))
    x = (torch.rand(6, 2, 5, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    y = torch.tensor([0, 2])
    want = sequence_gradients("bptt", m, x, y)
    m.requires_grad_(False)
    got = sequence_gradients("bptt", m, x, y)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not any(p.requires_grad for p in m.parameters())


def test_overfit_batches_repeat_the_same_batches_also_after_a_resume(make_cfg, tmp_path):
    """debug=overfit trains on the same batch over and over; with N batches they come in turn,
    the same ones in a resumed run, and a checkpoint made with them is refused without."""
    from otpe_cli.checkpoint import CheckpointError
    from otpe_cli.trainer import Trainer

    over = ["dataset=trandman", "trainer.overfit_batches=2", "trainer.iterations=4", *TINY]
    trainer = Trainer(make_cfg(over), tmp_path / "run")
    batches = []
    for it in range(3):
        trainer.iteration = it
        batches.append(trainer._batch())
    assert torch.equal(batches[0][0], batches[2][0]) and torch.equal(batches[0][1], batches[2][1])
    assert not torch.equal(batches[0][0], batches[1][0])
    trainer.iteration = 0
    trainer.train()
    again = Trainer(make_cfg(over), tmp_path / "run")  # resumed: the same batches again
    assert torch.equal(again._batch()[0], batches[0][0])
    with pytest.raises(CheckpointError, match=r"trainer\.overfit_batches is 2 in the checkpoint "
                                              r"but absent now"):
        Trainer(make_cfg([o for o in over if "overfit" not in o]), tmp_path / "run")
    cfg = make_cfg(["debug=overfit"])
    assert cfg.trainer.overfit_batches == 1 and cfg.trainer.align_every == 0


def test_debug_profile_writes_the_profile_and_a_trace(make_cfg, tmp_path):
    run(make_cfg(["debug=profile", "dataset=trandman", "model.width=8", "trainer.batch_size=8",
                  "dataset.num_steps=10", "dataset.test_samples_per_class=5",
                  "trainer.progress=none"]), tmp_path)
    assert "Self CPU" in (tmp_path / "profile.txt").read_text()
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]


def test_time_and_peak_memory_are_logged_and_summarised(make_cfg, tmp_path):
    summary = run(make_cfg(["dataset=trandman", "trainer.iterations=10", *TINY]), tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all(r["time/iter_s"] > 0 and r["memory/peak_mb"] > 10 for r in rows)
    peaks = [r["memory/peak_mb"] for r in rows]
    assert peaks == sorted(peaks) and summary["memory/peak_mb"] >= peaks[-1]
    assert 0 < summary["time/iter_s"] < summary["wall_time_s"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak RSS reset")
def test_a_run_measures_its_own_peak_memory_not_the_process_before_it(make_cfg, tmp_path):
    """As in a sweep through the basic launcher (every run in one process): memory the process
    held and gave back before the run does not count in the run's memory/peak_mb."""
    import resource

    big = torch.ones(400 * 2**20 // 4)  # 400 MiB touched, then handed back to the OS
    del big
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = run(make_cfg(["dataset=trandman", "trainer.iterations=3", *TINY]), tmp_path)
    assert 10 < summary["memory/peak_mb"] < before - 200, (summary["memory/peak_mb"], before)
