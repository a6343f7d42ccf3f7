"""Cost of the joint REINFORCE step vs plain cross-entropy steps of the same classifiers.

    python benchmarks/step_overhead.py [--classifiers preact_resnet8 preact_resnet20] [--batch 128]

Times, in one run on the same batch and threads, (a) one joint training step of the cascade
(every stage forward, policies, reward, optimal baseline, REINFORCE surrogate, backward, SGD step)
and (b) the sum over stages of one cross-entropy step of each classifier alone. Interleaved
repeats, medians. Goal: ratio ≤ 1.15 (the policies and the estimator are cheap).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cascade_dist.models import Cascade
from cascade_dist.method.objective import ObjectiveConfig
from cascade_dist.method.training import LocalEngine, OptimConfig, build_optimizer, training_step


def time_call(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifiers", nargs="+", default=["preact_resnet8", "preact_resnet20"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch, args.channels, args.size, args.size)
    targets = torch.randint(0, 10, (args.batch,))

    cascade = Cascade(args.classifiers, 10, args.channels, args.size)
    optim = OptimConfig(warmup_epochs=0, joint_epochs=1)
    optimizer, _ = build_optimizer(cascade, optim)
    engine = LocalEngine(cascade, optimizer).train()
    objective = ObjectiveConfig(alpha=0.01, estimator="reinforce", baseline="optimal")
    gen = torch.Generator().manual_seed(0)

    def joint_step():
        training_step(engine, images, targets, "joint", objective, generator=gen)

    plain = []
    for clf in cascade.classifiers:
        opt = torch.optim.SGD(clf.parameters(), lr=0.01, momentum=0.9)

        def ce_step(clf=clf, opt=opt):
            loss = F.cross_entropy(clf(images), targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        plain.append(ce_step)

    joint_times, ce_times = [], []
    for _ in range(3):  # interleave to share the machine's state fairly
        joint_times.append(time_call(joint_step, args.repeats))
        ce_times.append(sum(time_call(step, args.repeats) for step in plain))
    joint, ce = statistics.median(joint_times), statistics.median(ce_times)
    print(f"cascade {args.classifiers}, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"joint REINFORCE step:            {1000 * joint:8.1f} ms")
    print(f"sum of cross-entropy steps:      {1000 * ce:8.1f} ms")
    print(f"ratio joint / plain:             {joint / ce:8.3f}   (goal <= 1.15)")


if __name__ == "__main__":
    main()
