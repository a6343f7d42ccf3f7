"""Registry, classifiers, policy, cascade and MACs (against the paper's Table 1)."""

from __future__ import annotations

import pytest
import torch

from cascade_dist.method.flops import count_macs
from cascade_dist.models import Cascade, StoppingPolicy, create_classifier, list_classifiers

IMAGENET = {"alexnet", "googlenet", "resnet50"}
SMALL = [n for n in list_classifiers() if n not in IMAGENET]


@pytest.mark.parametrize("name", list_classifiers())
def test_every_registered_classifier_builds_and_counts(name):
    size, channels = (224, 3) if name in IMAGENET else (32, 3)
    model = create_classifier(name, num_classes=7, in_channels=channels).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    assert count_macs(model, x[:1]) > 1e6


@pytest.mark.parametrize("name", SMALL)
def test_small_classifiers_take_one_channel_28px(name):
    model = create_classifier(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_table1_costs_of_preact_resnets():
    """ResNet-8/20/32/56 relative to ResNet-110 within 1.5 points of Table 1; R-110 within 5 %."""
    names = ["preact_resnet8", "preact_resnet20", "preact_resnet32", "preact_resnet56", "preact_resnet110"]
    paper_pct = [5.82, 16.90, 27.98, 50.14, 100.0]
    macs = [count_macs(create_classifier(n, 10), torch.zeros(1, 3, 32, 32)) for n in names]
    ours_pct = [100 * m / macs[-1] for m in macs]
    print("\nMACs (M):", [round(m / 1e6, 2) for m in macs], "cost %:", [round(p, 2) for p in ours_pct])
    for ours, paper in zip(ours_pct, paper_pct):
        assert abs(ours - paper) <= 1.5
    assert abs(macs[-1] - 255.51e6) / 255.51e6 <= 0.05


def test_wrn_widths_grow_costs():
    macs = [count_macs(create_classifier(f"wrn40_{w}", 1000), torch.zeros(1, 3, 32, 32)) for w in ("1", "1_5", "2", "3", "4")]
    assert macs == sorted(macs) and macs[-1] > 10 * macs[0]


def test_unknown_classifier_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown classifier 'resnet9000'; known: .*preact_resnet110"):
        create_classifier("resnet9000", 10)


def test_bad_depth_and_channels():
    from cascade_dist.method.models.preact_resnet import preact_resnet

    with pytest.raises(ValueError, match="6n\\+2"):
        preact_resnet(21, 10)
    with pytest.raises(ValueError, match="3-channel"):
        create_classifier("resnet50", 10, in_channels=1)


def test_weights_load_from_local_file(tmp_path):
    a = create_classifier("preact_resnet8", 10)
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = create_classifier("preact_resnet8", 10, weights=tmp_path / "w.pt")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_classifier("preact_resnet8", 10, weights=tmp_path / "missing.pt")
    torch.save(create_classifier("preact_resnet20", 10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit 'preact_resnet8'"):
        create_classifier("preact_resnet8", 10, weights=tmp_path / "other.pt")


def test_policy_is_three_layers_and_a_distribution():
    policy = StoppingPolicy(10, hidden=64)
    linears = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 64), (64, 64), (64, 2)]
    out = policy(torch.softmax(torch.randn(5, 10), -1))
    assert torch.allclose(out.exp().sum(-1), torch.ones(5))
    assert count_macs(policy, torch.zeros(1, 10)) == 10 * 64 + 64 * 64 + 64 * 2


def test_sorted_softmax_policy_reads_the_confidence_profile():
    torch.manual_seed(0)
    policy = StoppingPolicy(10, hidden=16, input="sorted_softmax")
    probs = torch.softmax(torch.randn(4, 10), -1)
    permuted = probs[:, torch.randperm(10)]
    assert torch.allclose(policy(probs), policy(permuted))
    plain = StoppingPolicy(10, hidden=16)
    assert not torch.allclose(plain(probs), plain(permuted))
    with pytest.raises(ValueError, match="policy input must be one of"):
        StoppingPolicy(10, input="logits")


@pytest.mark.parametrize(
    "names",
    [
        ["preact_resnet8", "preact_resnet20"],
        ["preact_resnet8", "preact_resnet14", "preact_resnet20"],
        ["preact_resnet8", "preact_resnet20", "preact_resnet32", "preact_resnet56", "preact_resnet110"],
    ],
)
def test_cascade_shapes_and_costs(names):
    k = len(names)
    cascade = Cascade(names, num_classes=10, in_channels=3, image_size=32)
    out = cascade(torch.randn(4, 3, 32, 32))
    assert out.log_probs.shape == (4, k, 10) and out.stop_probs.shape == (4, k)
    assert torch.equal(out.stop_probs[:, -1], torch.ones(4))
    assert ((out.stop_probs[:, :-1] > 0) & (out.stop_probs[:, :-1] < 1)).all()
    assert cascade.costs.shape == (k,) and cascade.costs[-1] == 1.0
    assert (cascade.costs.diff() > 0).all()
    assert cascade.macs.policy[:-1] == (10 * 64 + 64 * 64 + 64 * 2,) * (k - 1) and cascade.macs.policy[-1] == 0
    assert cascade.macs.cumulative_macs()[-1] == sum(cascade.macs.stage)
    for t in range(k):  # one stage at a time gives the same as the full forward
        stage = cascade.eval().run_stage(t, torch.ones(2, 3, 32, 32))
        lp, sp = stage.log_probs, stage.stop_prob
        full = cascade(torch.ones(2, 3, 32, 32))
        assert torch.allclose(lp, full.log_probs[:, t]) and torch.allclose(sp, full.stop_probs[:, t])


def test_cascade_rejects_a_single_stage():
    with pytest.raises(ValueError, match="K >= 2"):
        Cascade(["preact_resnet8"], num_classes=10)


def test_bf16_cascade_takes_float32_images_and_gives_float32_log_space_outputs():
    torch.manual_seed(0)
    model = Cascade(["preact_resnet8", "preact_resnet20"], num_classes=10, in_channels=1, image_size=28).eval()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(images)
        out = model.to(torch.bfloat16)(images)  # float32 images, bf16 weights: cast in the stage forward
    for name in ("log_probs", "log_stop", "log_continue"):
        assert getattr(out, name).dtype == torch.float32, name
    assert torch.isfinite(out.log_probs).all() and torch.isfinite(out.log_stop).all()
    # bf16 keeps ~3 significant digits: the class probabilities agree with float32 to a few 1e-2
    assert (out.log_probs.exp() - ref.log_probs.exp()).abs().max() < 5e-2
    assert (out.stop_probs - ref.stop_probs).abs().max() < 5e-2

