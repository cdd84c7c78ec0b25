"""Multi-task learners through the runner: every architecture with equal, pcgrad and upgrad; the
gradient-conflict log and plot in the run folder; trained-task evaluation in the summary."""

import json
import math

import pytest

from metareg.runner import Run

ARCHITECTURES = ["hard_sharing", "cross_stitch", "soft_sharing_l2", "single_task", "low_rank", "mmoe",
                 "adversarial_sharing"]
SMALL_RUN = {"steps": 4, "eval_tasks": 6, "val_every": 0, "eval_steps": [0, 2], "eval_chunk": 6,
             "benchmark.num_tasks": 3, "benchmark.meta_batch": 3}


def finite(summary):
    vals = [v for k, v in summary.items()
            if k.startswith(("mse", "accuracy", "train_tasks", "final_loss")) and not k.endswith("_per_task")]
    return vals and all(math.isfinite(v) for v in vals)


@pytest.mark.parametrize("combiner", ["equal", "pcgrad", "upgrad"])
@pytest.mark.parametrize("algo", ARCHITECTURES)
def test_architecture_trains_with_combiner(algo, combiner):
    s = Run(algo, "relatedness", {**SMALL_RUN, "combiner": combiner}).execute(progress=False)
    assert s["status"] == "completed" and finite(s)
    assert len(s["train_tasks_mse_per_task"]) == 3


@pytest.mark.parametrize("bench", ["gradnorm_toy", "digits_mtl"])
def test_benchmarks_run_end_to_end(bench):
    over = {**SMALL_RUN, "benchmark.input_dim": 20} if bench == "gradnorm_toy" else SMALL_RUN
    s = Run("hard_sharing", bench, {**over, "combiner": "pcgrad"}).execute(progress=False)
    assert finite(s)
    metric = "accuracy" if bench == "digits_mtl" else "mse"
    assert f"train_tasks_{metric}" in s and f"{metric}_after_2_steps" in s


def test_run_folder_has_conflict_log_and_plot(tmp_path):
    out = tmp_path / "run"
    over = {**SMALL_RUN, "steps": 6, "log_every": 2, "conflict_every": 2}
    Run("mmoe", "relatedness", over, out=out).execute(progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        cos = r["grad_cosine"]
        assert len(cos) == 3 and all(len(row) == 3 for row in cos)
        assert all(abs(cos[i][i] - 1) < 1e-5 for i in range(3))
        assert -1 <= r["grad_cosine_mean"] <= 1
    png = out / "plots" / "gradient_conflict.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((out / "plots").glob("*.tmp*"))
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["train_tasks_mse"])


def test_no_plot_when_nothing_was_logged(tmp_path):
    out = tmp_path / "run"
    Run("hard_sharing", "relatedness", {**SMALL_RUN, "conflict_every": 0}, out=out).execute(progress=False)
    assert not (out / "plots").exists()
    assert "grad_cosine" not in (out / "metrics.jsonl").read_text()


def test_meta_learners_have_no_trained_task_score():
    s = Run("maml", "relatedness", {**SMALL_RUN}).execute(progress=False)
    assert not any(k.startswith("train_tasks") for k in s) and finite(s)


@pytest.mark.slow
def test_gradnorm_weights_move_to_balance_task_scales(tmp_path):
    """Chen et al. 2018, section 4 through the runner: the sigma = 100 task's weight falls far below
    the sigma = 1 task's, so the weighted gradient norms come closer than the raw ones."""
    out = tmp_path / "run"
    over = {"combiner": "gradnorm", "steps": 300, "lr": 1e-3, "log_every": 50, "eval_tasks": 10, "val_every": 0}
    Run("hard_sharing", "gradnorm_toy", over, out=out).execute(progress=False)
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    w = [r["combiner.weights"] for r in train if r["split"] == "train"]
    assert w[-1][1] / w[-1][0] < 0.1
    assert abs(sum(w[-1]) - 2) < 1e-6


@pytest.mark.slow
def test_hard_sharing_beats_single_task_only_when_tasks_are_related():
    """Issue 5's claim on the relatedness family, paired over three task draws (the RESULTS.md
    protocol at 1,500 steps): hard sharing's error on the trained tasks is above single-task
    training's at rho = 0 and below it at rho = 1."""
    def diff(rho):
        d = []
        for seed in (0, 1, 2):
            over = {"rho": rho, "steps": 1500, "seed": seed, "task_seed": 1000 + seed, "val_every": 0,
                    "eval_tasks": 10}
            d.append(Run("hard_sharing", "relatedness", over).execute(progress=False)["train_tasks_mse"]
                     - Run("single_task", "relatedness", over).execute(progress=False)["train_tasks_mse"])
        return sum(d) / len(d)

    assert diff(0.0) > 0.01
    assert diff(1.0) < -0.01
