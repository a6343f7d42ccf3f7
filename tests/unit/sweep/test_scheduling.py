"""The sweep's scheduling rules: trials at once over CPUs and GPUs, the score's reference curve, ASHA's options."""

from __future__ import annotations

import pytest

from cascade_dist.runtime.config import Config
from cascade_dist.sweep.pareto import Point, accuracy_at_cost
from cascade_dist.sweep.scheduling import SchedulerOptions, concurrent_trials, fit_problem, reference_front


def run_config(workers: int, cpus: int, gpu: bool) -> Config:
    cfg = Config()
    cfg.run.num_workers, cfg.run.cpus_per_worker, cfg.run.use_gpu = workers, cpus, gpu
    return cfg


@pytest.mark.parametrize("cluster, workers, cpus, gpu, expected", [
    ({"CPU": 16}, 2, 1, False, 8),               # CPUs alone
    ({"CPU": 16, "GPU": 4}, 2, 1, False, 8),     # GPUs ignored without run.use_gpu
    ({"CPU": 16, "GPU": 4}, 2, 1, True, 2),      # GPUs bind: 4 // 2
    ({"CPU": 16, "GPU": 4}, 1, 8, True, 2),      # CPUs bind: 16 // 8
    ({"CPU": 16, "GPU": 3}, 2, 2, True, 1),      # 3 GPUs hold one 2-worker trial, not two
    ({"CPU": 16}, 1, 1, True, 0),                # no GPU at all
    ({"CPU": 2.0}, 1, 1, False, 2),              # Ray reports floats
])
def test_concurrent_trials_is_the_least_over_cpus_and_gpus(cluster, workers, cpus, gpu, expected):
    cfg = run_config(workers, cpus, gpu)
    assert concurrent_trials(cluster, cfg) == expected
    assert (fit_problem(cluster, cfg) is None) == (expected >= 1)


def test_fit_problem_names_the_missing_resource():
    problem = fit_problem({"CPU": 16, "GPU": 1}, run_config(2, 1, True))
    assert problem == "a trial needs run.num_workers (one GPU each, run.use_gpu) = 2 GPUs; the cluster has 1"
    assert "CPU" in fit_problem({"CPU": 1}, run_config(2, 1, False))


def test_reference_front_and_accuracy_at_cost():
    baselines = {"static": [{"name": "a", "cost_pct": 20.0, "accuracy": 0.6}, {"name": "b", "cost_pct": 100.0, "accuracy": 0.8}],
                 "threshold_cascade": [{"threshold": 0.5, "cost_pct": 60.0, "accuracy": 0.78},
                                       {"threshold": 0.9, "cost_pct": 70.0, "accuracy": 0.7}]}  # dominated
    front = reference_front(baselines)
    assert [p.cost_pct for p in front] == [20.0, 60.0, 100.0]
    assert accuracy_at_cost(front, 10.0) == pytest.approx(0.6)     # cheaper than all: the first point
    assert accuracy_at_cost(front, 40.0) == pytest.approx(0.69)    # half-way from 0.6 to 0.78
    assert accuracy_at_cost(front, 80.0) == pytest.approx(0.79)
    assert accuracy_at_cost(front, 130.0) == pytest.approx(0.8)    # beyond all: the best
    with pytest.raises(ValueError):
        accuracy_at_cost([], 50.0)
    assert accuracy_at_cost([Point(30.0, 0.5)], 99.0) == 0.5


@pytest.mark.parametrize("options, joint, message", [
    (SchedulerOptions("foo"), None, "--scheduler: expected one of fifo, asha, got 'foo'"),
    (SchedulerOptions("fifo", grace_period=2), None, "--grace-period: only with --scheduler asha"),
    (SchedulerOptions("asha", grace_period=0), None, "--grace-period: joint epochs before ASHA may stop a trial"),
    (SchedulerOptions("asha", grace_period=3), 3, "--grace-period: ASHA stops trials after a joint epoch before their last"),
    (SchedulerOptions("asha"), 1, "must be < optim.joint_epochs=1, got 1"),
    (SchedulerOptions("asha", reduction_factor=1.0), None, "--reduction-factor: must be a number > 1"),
    (SchedulerOptions("asha", reduction_factor=float("nan")), None, "--reduction-factor: must be a number > 1"),
])
def test_bad_scheduler_options_are_one_line_each(options, joint, message):
    problems = options.problems(joint)
    assert len(problems) == 1 and message in problems[0], problems


def test_asha_is_built_over_joint_epochs_and_fifo_is_none():
    from ray.tune.schedulers import ASHAScheduler

    assert SchedulerOptions("fifo").problems(1) == [] and SchedulerOptions("fifo").build(3) is None
    asha = SchedulerOptions("asha", reduction_factor=3).build(4)
    assert isinstance(asha, ASHAScheduler)
    assert (asha._time_attr, asha._metric, asha._mode, asha._max_t) == ("joint_epoch", "accuracy_gain_at_cost", "max", 3)
    assert [m for m, _ in asha._brackets[0]._rungs] == [3, 1]  # rungs before the last joint epoch only
