"""The scripts under scripts/ run end to end at tiny sizes (the README quotes their output).

Only that they run and report every figure is checked here; their speed is what they measure,
never asserted.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name, *args, cwd):
    out = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_benchmark_reports_every_algorithm_the_floor_and_memory(tmp_path):
    algorithms = ["bptt", "ottt", "approx_otpe", "ostl", "otpe", "f_otpe", "f_approx_otpe"]
    out = run_script("benchmark.py", "--inputs", "6", "--width", "8", "--batch", "4",
                     "--steps", "3", "--repeats", "1", "--threads", "1",
                     "--memory-steps", "3", "6", "--memory-algorithms", "bptt",
                     "bptt:checkpoint_blocks", "ostl", "--json", str(tmp_path / "bench.json"),
                     cwd=tmp_path)
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert sorted(figures["gradient_s"]) == sorted(algorithms)
    assert all(t > 0 for t in figures["gradient_s"].values())
    assert all(t > 0 for t in figures["iteration_s"].values())
    assert figures["floor_s"] > 0 and sorted(figures["rule_only_s"]) == ["ostl", "otpe"]
    assert figures["floor_otpe_s"] > 0 and figures["ostl_products_s"] > 0
    assert sorted(figures["draw_s"]) == ["fixed, rate", "per_draw, rate (Randman)",
                                         "per_draw, time (T-Randman)"]
    assert all(t > 0 for t in figures["draw_s"].values())
    assert sorted(figures["memory_mib"]) == ["bptt", "bptt:checkpoint_blocks", "ostl"]
    assert all(len(v) == 2 for v in figures["memory_mib"].values())
    assert sorted(figures["memory_time_s"]) == sorted(figures["memory_mib"])
    assert all(len(v) == 2 and min(v) > 0 for v in figures["memory_time_s"].values())
    assert sorted(figures["bptt_s"]) == ["autograd through SNN.forward", "checkpoint_blocks",
                                         "matrix products", "plain per-step autograd"]
    assert all(t > 0 for t in figures["bptt_s"].values())
    for line in ("OSTL / floor:", "ottt / bptt:", "approx_otpe / bptt:", "otpe / ostl:",
                 "the OTPE rule alone / the OSTL rule alone:", "OTPE's floor", "peak memory",
                 "only the matrix products of an OSTL pass", "fused CPU kernels",
                 "per-draw batch / OTPE sequence gradient:",
                 "bptt / plain per-step autograd BPTT:", "(target ≤ 0.35",
                 "BPTT / its matrix products:", "bptt with checkpoint_blocks / bptt:",
                 "otpe / ostl through sequence_gradients:", "online / offline training",
                 "online's floor (bare, same shapes)", "floor / offline"):
        assert line in out, line


def test_benchmark_of_a_subset_reports_only_what_it_can(tmp_path):
    out = run_script("benchmark.py", "--inputs", "6", "--width", "8", "--batch", "4",
                     "--steps", "3", "--repeats", "1", "--threads", "1", "--memory-steps",
                     "--algorithms", "bptt", "otpe", "--json", str(tmp_path / "b.json"),
                     cwd=tmp_path)
    figures = json.loads((tmp_path / "b.json").read_text())
    assert sorted(figures["gradient_s"]) == ["bptt", "otpe"]
    assert sorted(figures["rule_only_s"]) == ["otpe"]  # the OSTL rule was not timed
    assert figures["ostl_products_s"] is None
    assert "OSTL / floor" not in out and "otpe / ostl" not in out and "peak memory" not in out
    assert "bptt / plain per-step autograd BPTT:" in out
    assert sorted(figures["api_online_s"]) == [
        "Algorithm.gradients:otpe", "offline:otpe", "online alone:fused trace steps otpe",
        "online floor:Adamax steps", "online floor:matrix products",
        "online floor:trace passes otpe", "online:otpe", "sequence_gradients:otpe"]
    assert all(t > 0 for t in figures["api_online_s"].values())
    assert "online / offline training iteration, worst rule (otpe):" in out
    assert "(target ≤ 1.6)" in out and "through sequence_gradients" not in out
    assert "one pass over the per-sample traces per step: otpe " in out
    assert "fused trace step alone" in out and "that floor: otpe " in out
    assert "floor / offline" in out


def test_benchmark_without_bptt_times_none_of_its_comparisons(tmp_path):
    out = run_script("benchmark.py", "--inputs", "6", "--width", "8", "--batch", "4",
                     "--steps", "3", "--repeats", "1", "--threads", "1", "--memory-steps",
                     "--algorithms", "ottt", "--json", str(tmp_path / "b.json"), cwd=tmp_path)
    assert json.loads((tmp_path / "b.json").read_text())["bptt_s"] == {}
    assert "plain per-step autograd" not in out and "its matrix products" not in out


def test_randman_probe_prints_a_row_per_data_set_and_normalisation(tmp_path):
    out = run_script("randman_probe.py", "--pool", "1", "2", "--encodings", "time",
                     "--normalisations", "per_draw", cwd=tmp_path)
    row = next(line.split() for line in out.splitlines() if line.startswith("T-Randman"))
    assert row[1] == "per_draw" and all(0.1 < float(v) <= 1 for v in row[2:4])


def test_bias_trace_script_prints_both_settings_for_both_rules(tmp_path):
    out = run_script("bias_trace_alignment.py", "--batches", "1", cwd=tmp_path)
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [("ottt", "False"), ("ottt", "True"),
                                            ("approx_otpe", "False"), ("approx_otpe", "True")]
    for r in rows:  # 6 parameters + global, each a cosine
        assert len(r) == 9 and all(-1 <= float(v) <= 1 for v in r[2:])
    kernels = {(r[0], r[1]): r[2:8:2] for r in rows}  # the layers.<i>.weight columns
    assert kernels[("ottt", "False")] == kernels[("ottt", "True")]  # the option leaves W alone


def test_bench_data_times_every_stage_of_the_shd_path(tmp_path):
    out = run_script("bench_data.py", "--root", str(tmp_path / "d"), "--train", "24",
                     "--test", "8", "--tonic-samples", "4", "--batch", "4", cwd=tmp_path)
    for stage in ("synthetic SHD files", "tonic per-sample ToFrame", "bulk h5py read",
                  "numpy binning", "first run: locate + read + bin + write cache",
                  "next runs: locate + load cache", "draw a batch of 4", "one OTPE iteration",
                  "batch draw / OTPE iteration"):
        assert stage in out, stage
    assert (tmp_path / "d" / "SHD" / "shd_train.h5").exists()  # --root keeps its files
