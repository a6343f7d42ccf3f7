"""The shared warm-up and the static control: one schedule, the same total epochs."""

from __future__ import annotations

from cascade_dist.method.training import OptimConfig
from cascade_dist.runtime.config import load_config
from cascade_dist.runtime.control import comparison_table, continued_config, static_config, warmup_config
from cascade_dist.method.evaluate import EvalReport


def test_warmup_keeps_the_full_runs_schedule_and_the_control_trains_the_same_epochs():
    cfg = load_config("demo", ["optim.warmup_epochs=3", "optim.joint_epochs=2"], check_data=False)
    warm, static = warmup_config(cfg), static_config(cfg, "/ckpt")
    assert (warm.optim.warmup_epochs, warm.optim.joint_epochs, warm.optim.schedule_epochs) == (3, 0, 5)
    assert (static.optim.warmup_epochs, static.optim.joint_epochs, static.optim.schedule_epochs) == (5, 0, 5)
    assert static.run.warm_start == "/ckpt" and not static.tracking.enabled and not warm.tracking.enabled
    assert (warm.run.name, static.run.name) == ("demo-warmup", "demo-static")
    # the warm-up's LR at every epoch is the full run's: a single 5-epoch run and the three runs agree
    for epoch in range(3):
        assert warm.optim.classifier_lr_factor(epoch) == cfg.optim.classifier_lr_factor(epoch)
    for epoch in range(3, 5):
        assert static.optim.classifier_lr_factor(epoch) == cfg.optim.classifier_lr_factor(epoch)
        assert static.optim.phase(epoch) == "warmup" and cfg.optim.phase(epoch) == "joint"
    assert continued_config(cfg, "/ckpt").run.warm_start == "/ckpt"
    # without the schedule a 3-epoch run would anneal to ~0 at its end, unlike the first 3 epochs of 5
    assert OptimConfig(warmup_epochs=3, joint_epochs=0).classifier_lr_factor(2) < cfg.optim.classifier_lr_factor(2)


def test_comparison_table_states_the_verdict():
    def report(acc, static, cost=40.0):
        return EvalReport(1000, [0.5], acc, None, cost, 1.0, [0.8, 0.2], static, [30.0, 100.0], [[None]], [],
                          operating_point="theta calibrated on val to 40 % cost")

    cfg = load_config("demo", check_data=False)
    text = comparison_table(cfg, report(0.93, [0.90, 0.92]), report(0.0, [0.905, 0.925]))
    assert "at least as accurate as preact_resnet32 alone (93.00 vs 92.50 %)" in text
    assert "preact_resnet32 alone" in text and "theta calibrated on val" in text
    assert "less accurate" in comparison_table(cfg, report(0.92, [0.9, 0.92]), report(0.0, [0.9, 0.93]))
