"""The exit table: top-k correctness per exit against brute force, confidence scores, memory O(N·K)."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from cascade_dist.method.evaluate import CascadeEvaluator, EvalConfig
from cascade_dist.method.exit_rule import ExitRule
from cascade_dist.method.exit_table import (ExitTable, ExitTableBuilder, cascade_probs, confidence_scores, table_rows,
                                            topk_hits)
from cascade_dist.method.flops import CascadeMACs
from cascade_dist.method.models import CascadeOutput


def outputs(n=300, k=3, c=10, seed=0) -> tuple[CascadeOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(2 * torch.randn(n, k, c, generator=g), -1)
    d = 3 * torch.randn(n, k, generator=g)
    log_stop = torch.nn.functional.logsigmoid(d)
    log_continue = torch.nn.functional.logsigmoid(-d)
    log_stop[:, -1], log_continue[:, -1] = 0.0, -math.inf
    return CascadeOutput(log_probs, log_stop, log_continue), torch.randint(0, c, (n,), generator=g)


def rank_of_label(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many classes are more probable than the label (a reference that does not use topk)."""
    return (probs > probs.gather(-1, y.view(-1, *([1] * (probs.dim() - 1))).expand(*probs.shape[:-1], 1))).sum(-1)


@pytest.mark.parametrize("ensemble", [True, False])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_correct_per_exit_is_top_k_of_the_cascade_answer(k, ensemble):
    out, y = outputs()
    table = table_rows(out.log_probs, out.stop_probs, out.stop_log_odds, y, k, ensemble)
    for e in range(3):
        probs = cascade_probs(out.log_probs, out.stop_probs, torch.full((len(y),), e), ensemble)
        assert torch.equal(table.correct[:, e], rank_of_label(probs, y) < k)
        assert torch.equal(table.static_correct[:, e], rank_of_label(out.log_probs[:, e].exp(), y) < k)
    assert ensemble or torch.equal(table.correct, table.static_correct)
    assert table.topk == k and torch.equal(table.scores["policy"], out.stop_log_odds)


def test_top_k_is_capped_at_the_classes():
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert topk_hits(probs, torch.tensor([0, 0]), 5).all()
    assert topk_hits(probs, torch.tensor([0, 1]), 1).tolist() == [False, False]


def test_confidence_scores_are_finite_where_softmax_is_one_hot():
    log_probs = torch.log(torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]],
                                        [[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    entropy = confidence_scores(log_probs, "entropy")
    assert entropy[0, 0] == 0 and entropy[1, 0] == pytest.approx((0.6 * math.log(0.6) + 0.3 * math.log(0.3)
                                                                      + 0.1 * math.log(0.1)), rel=1e-6)
    top = confidence_scores(log_probs, "max_softmax")
    assert top[0, 0] == math.inf and top[1, 0] == pytest.approx(math.log(0.6 / 0.4), rel=1e-6)
    assert torch.isinf(top[:, -1]).all() and torch.isinf(entropy[:, -1]).all() and not entropy.isnan().any()
    with pytest.raises(ValueError, match="unknown confidence score 'margin'"):
        confidence_scores(log_probs, "margin")


def test_memory_is_n_times_k_whatever_the_classes_and_no_batch_is_kept():
    """The bound of every offline tool: the rows of a 1000-class batch are the size of a 10-class one's,
    and the builder holds no reference to the (N, K, C) outputs it was given."""
    sizes = {}
    for c in (10, 1000):
        builder = ExitTableBuilder(topk=5, scores=("policy", "max_softmax", "entropy"))
        for seed in range(3):
            out, y = outputs(n=200, c=c, seed=seed)
            ref = weakref.ref(out.log_probs)
            builder(out, y)
            del out
            gc.collect()
            assert ref() is None, "the builder kept a batch's (N, K, C) log-probs"
        sizes[c] = builder.table().nbytes
    n, k = 600, 3
    assert sizes[10] == sizes[1000] == n * k * (3 * 4 + 2) + 8 * n


def test_tables_of_parts_concatenate_to_the_whole():
    out, y = outputs()
    whole = table_rows(out.log_probs, out.stop_probs, out.stop_log_odds, y, 3)
    parts = [table_rows(out.log_probs[s], out.stop_probs[s], out.stop_log_odds[s], y[s], 3)
             for s in (slice(0, 100), slice(100, 300))]
    cat = ExitTable.cat(parts)
    assert torch.equal(cat.correct, whole.correct) and torch.equal(cat.scores["policy"], whole.scores["policy"])
    with pytest.raises(ValueError, match="no exit tables"):
        ExitTable.cat([])
    with pytest.raises(KeyError, match="'entropy' was not recorded"):
        whole.view("entropy")


def test_evaluator_counts_top_k_everywhere():
    """Cascade, each classifier, the matrix and the τ sweep all count top-5 when the run says so; top-1
    stays a side metric."""
    out, y = outputs(c=10)
    macs = CascadeMACs(classifier=(10, 40, 100), policy=(1, 1, 0))
    ev = CascadeEvaluator(macs, EvalConfig(tau=[0.5]), topk=5)
    ev(out, y)
    rep = ev.compute()
    exits = ExitRule.from_tau(0.5, 3).exits(out.stop_log_odds)
    probs = cascade_probs(out.log_probs, out.stop_probs, exits)
    rank = rank_of_label(probs, y)
    assert rep.topk == 5 and rep.accuracy == pytest.approx(float((rank < 5).double().mean()))
    assert rep.top1_accuracy == pytest.approx(float((rank < 1).double().mean())) and rep.accuracy > rep.top1_accuracy
    assert rep.static_accuracy == pytest.approx([float((rank_of_label(out.log_probs[:, t].exp(), y) < 5).double().mean())
                                                 for t in range(3)])
    for point, tau in zip(rep.sweep, ev.sweep_taus):
        ex = ExitRule.from_tau(tau, 3).exits(out.stop_log_odds)
        hit = rank_of_label(cascade_probs(out.log_probs, out.stop_probs, ex), y) < 5
        assert point["accuracy"] == pytest.approx(float(hit.double().mean()))
    assert "top1_accuracy" in rep.metrics() and "top-5" in rep.table()
    # the same statistics from the table alone (what the Table-2 protocol does)
    again = CascadeEvaluator(macs, EvalConfig(tau=[0.5]), topk=5)
    again.update_table(table_rows(out.log_probs, out.stop_probs, out.stop_log_odds, y, 5))
    other = again.compute()
    assert (other.accuracy, other.accuracy_matrix, other.sweep) == (rep.accuracy, rep.accuracy_matrix, rep.sweep)


PEAK_SCRIPT = """
import resource, sys, torch
from cascade_dist.method.exit_table import ExitTableBuilder
from cascade_dist.method.models import CascadeOutput
n_batches, batch, k, c = int(sys.argv[1]), 500, 3, 1000
g = torch.Generator().manual_seed(0)
builder = ExitTableBuilder(topk=5, scores=("policy", "max_softmax", "entropy"))
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(n_batches):  # a synthetic-size loader: ImageNet-like C, many batches
    log_probs = torch.log_softmax(torch.randn(batch, k, c, generator=g), -1)
    d = torch.randn(batch, k, generator=g)
    log_stop, log_continue = torch.nn.functional.logsigmoid(d), torch.nn.functional.logsigmoid(-d)
    builder(CascadeOutput(log_probs, log_stop, log_continue), torch.randint(0, c, (batch,), generator=g))
table = builder.table()
print(table.n, table.nbytes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start)
"""


def test_peak_memory_does_not_grow_with_the_outputs_of_many_batches():
    """Peak RSS over 10 and over 100 batches of (500, 3, 1000) outputs: what grows is the table
    (N·K numbers, 1.3 MB at 50,000 images), not the 600 MB of outputs the old N×K×C collection held."""
    import subprocess
    import sys

    def run(n_batches):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(n_batches)], capture_output=True, text=True,
                             check=True, timeout=300)
        n, nbytes, grown_kb = map(int, out.stdout.split())
        return n, nbytes, grown_kb * 1024

    (n1, bytes1, peak1), (n2, bytes2, peak2) = run(10), run(100)
    assert (n1, n2) == (5_000, 50_000) and bytes2 == 10 * bytes1
    outputs_bytes = (n2 - n1) * 3 * 1000 * 4
    assert peak2 - peak1 < outputs_bytes / 10, (peak1, peak2)  # 45 MB allowed for 540 MB more outputs
