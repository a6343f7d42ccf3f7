"""The two loader backends (DALI on CPU, webdataset + DataLoader workers) over real shards.

Real DALI pipelines, real DataLoader worker processes, real Fashion-MNIST and CIFAR-10 shards
written by `data_shards` (session fixtures in shard_fixtures.py). No mocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from cascade_dist.data import AugmentSpec, DataError, default_augment, make_loader
from cascade_dist.data.manifest import Manifest, ShardInfo
from bad_images import corrupt_idat
from cascade_dist.data.checksums import file_sha256
from data_shards.writer import make_index

BACKENDS = ["dali", "torch"]


def collect(loader) -> tuple[torch.Tensor, torch.Tensor, int]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys), len(xs)


def sample_hashes(x: torch.Tensor, y: torch.Tensor) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes() + bytes([int(lbl)])).hexdigest() for img, lbl in zip(x, y)]


# -- the batch contract: both backends, same tensors --------------------------------------------


@pytest.mark.parametrize("data", ["fashion_mnist_shards", "cifar10_subset_shards"])
def test_backends_yield_identical_tensors_without_augmentation(data, request):
    root = request.getfixturevalue(data)
    out = {}
    for backend in BACKENDS:
        loader = make_loader(root, "test", 500, backend=backend, train=False, num_workers=1, augment=False)
        x, y, batches = collect(loader)
        assert batches == len(loader)
        m = loader.manifest
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (m.num_samples, m.channels, *m.image_size)
        assert y.shape == (m.num_samples,)
        out[backend] = (x, y)
    assert torch.equal(out["dali"][1], out["torch"][1])  # same samples in the same order
    assert torch.equal(out["dali"][0], out["torch"][0])  # bit-identical decode + normalisation
    x = out["dali"][0]
    # normalised with the manifest's statistics (computed on train): roughly zero mean, unit std
    assert abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_see_every_eval_sample_once(backend, fashion_mnist_shards):
    root = fashion_mnist_shards
    full_x, full_y, _ = collect(make_loader(root, "val", 256, backend="dali", train=False, augment=False))
    full = Counter(sample_hashes(full_x, full_y))
    ranks = []
    for rank in range(2):
        loader = make_loader(root, "val", 256, backend=backend, train=False, rank=rank, world_size=2, num_workers=2)
        x, y, batches = collect(loader)
        assert batches == len(loader)
        assert len(y) == loader.samples_per_epoch == 2500  # 5000 samples, no padding reaches the caller
        ranks.append(Counter(sample_hashes(x, y)))
    assert ranks[0] + ranks[1] == full  # every sample exactly once across the two ranks
    assert not set(ranks[0]) & set(ranks[1])  # the ranks read different samples


def test_both_backends_give_a_rank_the_same_samples(cifar10_subset_shards):
    per_backend = {}
    for backend in BACKENDS:
        x, y, _ = collect(make_loader(cifar10_subset_shards, "test", 256, backend=backend, train=False,
                                      rank=1, world_size=3, num_workers=2))
        per_backend[backend] = Counter(sample_hashes(x, y))
    assert per_backend["dali"] == per_backend["torch"]
    assert sum(per_backend["dali"].values()) == 4599 * 2 // 3 - 4599 // 3


# -- training mode --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fresh_loader_resumes_an_epoch_at_any_batch_with_its_keys(backend, small_fashion_mnist_shards):
    """Epoch 2 of rank 1 (augmented, shuffled), read whole, then by a new loader from batch 3 (a
    resumed run's): the same tensors and sample keys from there on; within the epoch no key twice."""
    kw = dict(backend=backend, train=True, rank=1, world_size=2, seed=3, num_workers=2)

    def epoch(start_batch=0):
        loader = make_loader(small_fashion_mnist_shards, "train", 64, **kw)
        loader.track_keys = True
        loader.set_epoch(2, start_batch=start_batch)
        return [(x, y, list(loader.last_keys)) for x, y in loader]

    whole, resumed = epoch(), epoch(start_batch=3)
    assert len(whole) == (1000 // 2) // 64 and len(resumed) == len(whole) - 3
    for (x, y, keys), (rx, ry, rkeys) in zip(whole[3:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry) and keys == rkeys
    keys = [k for *_, ks in whole for k in ks]
    assert len(set(keys)) == len(keys) == len(whole) * 64 and all(k.startswith("train-") for k in keys)
    with pytest.raises(ValueError, match="start_batch 8 is not in"):
        make_loader(small_fashion_mnist_shards, "train", 64, **kw).set_epoch(2, start_batch=8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_epoch_after_one_broken_off_is_that_epochs_own(backend, small_fashion_mnist_shards):
    """A loop that breaks out of epoch 0 (after its last batch, as `train_epoch(max_steps=)` does, or
    mid-way) leaves epoch 1 exactly what a fresh loader yields for epoch 1: same keys, same order."""
    kw = dict(backend=backend, train=True, rank=0, world_size=2, seed=5, num_workers=2)

    def keys_of_epoch_1(break_after=None):
        loader = make_loader(small_fashion_mnist_shards, "train", 64, **kw)
        loader.track_keys = True
        if break_after is not None:
            loader.set_epoch(0)
            for n, _ in enumerate(loader, 1):
                if n == break_after:
                    break
        loader.set_epoch(1)
        return [list(loader.last_keys) for _ in loader]

    fresh = keys_of_epoch_1()
    assert len(fresh) == (1000 // 2) // 64
    assert keys_of_epoch_1(break_after=len(fresh)) == fresh
    assert keys_of_epoch_1(break_after=2) == fresh


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_batches_shuffle_augment_and_reproduce(backend, fashion_mnist_shards):
    root = fashion_mnist_shards

    def epochs(seed, n, max_batches=None):
        loader = make_loader(root, "val", 256, backend=backend, train=True, seed=seed, num_workers=2)
        assert loader.spec == AugmentSpec(pad=2, crop=(28, 28), flip=True)
        result = []
        for epoch in range(n):
            loader.set_epoch(epoch)
            xs, ys = [], []
            for x, y in loader:
                xs.append(x)
                ys.append(y)
                if len(xs) == max_batches:
                    break
            if max_batches is None:
                assert len(xs) == len(loader) == 5000 // 256  # partial last batch dropped
            result.append((torch.cat(xs), torch.cat(ys)))
        return result

    (x0, y0), (x1, y1) = epochs(seed=7, n=2)
    assert x0.shape == (19 * 256, 1, 28, 28) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    assert int(y0.min()) >= 0 and int(y0.max()) < 10
    assert abs(float(x0.mean())) < 0.3 and 0.7 < float(x0.std()) < 1.3
    assert not torch.equal(y0, y1)  # two epochs differ in order
    (r0, ry0), = epochs(seed=7, n=1, max_batches=4)
    assert torch.equal(ry0, y0[: 4 * 256]) and torch.equal(r0, x0[: 4 * 256])  # a fixed seed reproduces
    (o0, oy0), = epochs(seed=8, n=1, max_batches=4)
    assert not torch.equal(oy0, y0[: 4 * 256])
    # augmentation changes images: few augmented images equal a stored image
    plain_x, plain_y, _ = collect(make_loader(root, "val", 500, backend="dali", train=False))
    plain = set(sample_hashes(plain_x, plain_y))
    unchanged = sum(h in plain for h in sample_hashes(x0, y0))
    assert unchanged < 0.2 * len(y0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_ranks_yield_equal_batch_counts(backend, cifar10_subset_shards):
    counts = []
    for rank in range(2):
        loader = make_loader(cifar10_subset_shards, "test", 128, backend=backend, train=True, rank=rank,
                             world_size=2, seed=1, num_workers=2)
        for _ in loader:  # break out mid-epoch: the next epoch still starts clean and complete
            break
        loader.set_epoch(1)
        n = sum(1 for x, y in loader if x.shape[0] == 128)
        counts.append((n, len(loader)))
    assert counts[0] == counts[1] == ((4599 // 2) // 128,) * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_is_the_spec_pad_crop_and_flip(backend, cifar10_subset_shards):
    """Every augmented image is a zero-padded window of the stored one, shifted by at most `pad`,
    possibly mirrored; shifts and flips occur at the rates the spec implies. Eval order is fixed,
    so the augmented stream lines up with the plain one."""
    spec = AugmentSpec(pad=4, crop=(32, 32), flip=True)
    plain = make_loader(cifar10_subset_shards, "test", 200, backend=backend, train=False, augment=False, num_workers=1)
    aug = make_loader(cifar10_subset_shards, "test", 200, backend=backend, train=False, augment=spec, num_workers=1)
    x, _ = next(iter(plain))
    a, _ = next(iter(aug))
    zero = (-torch.tensor(plain.norm.mean) / torch.tensor(plain.norm.std)).view(1, 3, 1, 1)
    padded = zero.expand(x.shape[0], 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    found = torch.zeros(x.shape[0], dtype=torch.bool)
    shifted = torch.zeros(x.shape[0], dtype=torch.bool)
    mirrored = torch.zeros(x.shape[0], dtype=torch.bool)
    for dy in range(9):
        for dx in range(9):
            window = padded[:, :, dy : dy + 32, dx : dx + 32]
            for flip in (False, True):
                w = window.flip(-1) if flip else window
                hit = (w - a).abs().flatten(1).amax(1) < 1e-5
                found |= hit
                shifted |= hit & ((dy, dx) != (4, 4))
                mirrored |= hit & flip
    assert bool(found.all()), f"{int((~found).sum())} augmented images are no padded window of the original"
    assert 0.8 < float(shifted.float().mean()) <= 1.0  # P(no shift) = 1/81
    assert 0.3 < float(mirrored.float().mean()) < 0.7


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "spec", [AugmentSpec(random_resized_crop=24, flip=True), AugmentSpec(resize=40, center_crop=(36, 36))]
)
def test_large_image_specs_give_their_output_size(spec, backend, cifar10_subset_shards):
    """The ImageNet-style steps (random-resized crop; resize shorter side + centre crop) run on both
    backends and give the size the spec promises (shown on small images to stay fast)."""
    loader = make_loader(cifar10_subset_shards, "test", 64, backend=backend, train=True, augment=spec, num_workers=1)
    x, y = next(iter(loader))
    assert x.shape == (64, 3, *spec.output_size((32, 32))) and y.shape == (64,)
    assert torch.isfinite(x).all() and float(x.std()) > 0.3


def test_default_specs_follow_the_data_set(fashion_mnist_shards, cifar10_subset_shards):
    fm = Manifest.load(fashion_mnist_shards / "train")
    c10 = Manifest.load(cifar10_subset_shards / "train")
    assert default_augment(c10, train=True) == AugmentSpec(pad=4, crop=(32, 32), flip=True)
    assert default_augment(fm, train=True) == AugmentSpec(pad=2, crop=(28, 28), flip=True)
    mnist = dataclasses.replace(fm, dataset="mnist")
    assert default_augment(mnist, train=True) == AugmentSpec(pad=2, crop=(28, 28), flip=False)
    for m in (fm, c10, mnist, dataclasses.replace(c10, dataset="imagenet32")):
        assert default_augment(m, train=False) == AugmentSpec()
    imagenet = dataclasses.replace(c10, dataset="imagenet", image_size=None)
    assert default_augment(imagenet, train=True) == AugmentSpec(random_resized_crop=224, flip=True)
    assert default_augment(imagenet, train=False) == AugmentSpec(resize=256, center_crop=(224, 224))


# -- bad input --------------------------------------------------------------------------------

BAD_KEY_INDEX = 170  # a sample in the second of two shards


def small_split(src_split: Path, dst_root: Path, mutate=None, n: int = 300, per_shard: int = 150):
    """Copy the first n real samples of a split into a 2-shard split (via the shard writer's
    index and manifest code); `mutate(i, ext, data)` may change (bytes) or drop (None) a member."""
    src = Manifest.load(src_split)
    split_dir = dst_root / src.split
    split_dir.mkdir(parents=True)
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    keys: list[str] = []
    with tarfile.open(src.shard_paths(src_split)[0]) as tar:
        for info in tar:
            key = info.name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                if len(keys) == n:
                    break
                keys.append(key)
            members.append((info, tar.extractfile(info).read()))
    position = {k: i for i, k in enumerate(keys)}
    shards = []
    for s in range(n // per_shard):
        name = f"{src.dataset}-{src.split}-{s:06d}"
        tar_path = split_dir / f"{name}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for info, data in members:
                i = position[info.name.split(".", 1)[0]]
                if not s * per_shard <= i < (s + 1) * per_shard:
                    continue
                if mutate is not None:
                    data = mutate(i, info.name.split(".", 1)[1], data)
                    if data is None:
                        continue
                info = tarfile.TarInfo(info.name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        make_index(tar_path, split_dir / f"{name}.idx")
        shards.append(ShardInfo(f"{name}.tar", f"{name}.idx", per_shard, file_sha256(tar_path)))
    # not decoded on write (a copier, like a third-party writer): DALI decode-checks it before reading
    dataclasses.replace(src, num_samples=n, shards=shards, images_checked=False).save(split_dir)
    return dst_root, keys


def vouch_for_images(split_dir: Path) -> None:
    """Mark a split's images as decoded on write (wrongly, for a mutated copy)."""
    dataclasses.replace(Manifest.load(split_dir), images_checked=True).save(split_dir)


def bad_split(fashion_mnist_shards, tmp_path, kind):
    def mutate(i, ext, data):
        if i != BAD_KEY_INDEX:
            return data
        if kind == "corrupt" and ext == "png":
            return data[:40] + b"\0" * 24
        if kind == "corrupt-idat" and ext == "png":
            return corrupt_idat(data)
        if kind == "missing" and ext == "lbl":
            return None
        if kind == "label" and ext == "lbl":
            return (12).to_bytes(8, "little")
        if kind == "cls" and ext == "cls":
            return b"seven"  # .lbl intact: the two label forms disagree
        return data

    root, keys = small_split(fashion_mnist_shards / "val", tmp_path / kind, mutate if kind != "truncated" else None)
    if kind == "truncated":
        shard = root / "val" / "fashion-mnist-val-000001.tar"
        os.truncate(shard, shard.stat().st_size // 2)
    return root, keys[BAD_KEY_INDEX]


CHILD = """
import json, sys
from cascade_dist.data import DataError, make_loader
for root in sys.argv[1:]:
    try:
        for _ in make_loader(root, "val", 64, backend="dali", train=False, num_workers=2):
            pass
        print(json.dumps({"root": root, "error": None}), flush=True)
    except DataError as e:
        print(json.dumps({"root": root, "error": str(e)}), flush=True)
"""


def test_dali_corrupt_image_stops_with_shard_and_key(fashion_mnist_shards, tmp_path):
    """DALI 2.4's CPU image decoder can segfault on a corrupt PNG instead of raising (upstream), so
    DALI reads only decode-checked images: a split whose manifest does not vouch for its images is
    checked with PIL first, and the loader names shard and key without the process going down (a
    child process, so that a crash would show as a signal, not take pytest down)."""
    kinds = ("corrupt", "corrupt-idat", "cls")
    splits = {kind: bad_split(fashion_mnist_shards, tmp_path, kind) for kind in kinds}
    child = subprocess.run([sys.executable, "-c", CHILD, *(str(root) for root, _ in splits.values())],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert child.returncode == 0, (child.returncode, child.stdout + child.stderr[-2000:])  # no crash (-11)
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(kinds), child.stdout + child.stderr[-2000:]
    for kind, result in zip(kinds, results):
        key = splits[kind][1]
        assert result["error"] and "fashion-mnist-val-000001.tar" in result["error"] and key in result["error"], (kind, result)


def test_dali_names_an_undecodable_image_outside_the_ranks_own_range(fashion_mnist_shards, tmp_path):
    """In training DALI reshuffles the tar files across ranks, so rank 0 may read shard 1: the PIL
    scan behind a DALI decode error must find the image wherever DALI read it."""
    root, key = bad_split(fashion_mnist_shards, tmp_path, "corrupt")  # in shard 1: rank 1's range
    vouch_for_images(root / "val")  # a manifest that vouches wrongly: DALI's own error is what names it
    loader = make_loader(root, "val", 50, backend="dali", train=True, rank=0, world_size=2, num_workers=1)
    err = loader._wrap(RuntimeError("Error in thread 0: [decoders.image] failed to decode"))
    assert isinstance(err, DataError) and key in str(err) and "fashion-mnist-val-000001.tar" in str(err), err


@pytest.mark.parametrize(
    "kind, backend",
    [("corrupt", "torch"), ("corrupt-idat", "torch"), ("cls", "torch"), *[(k, b) for k in ("missing", "label", "truncated") for b in BACKENDS]],
)
def test_bad_sample_stops_with_shard_and_key(kind, backend, fashion_mnist_shards, tmp_path):
    root, key = bad_split(fashion_mnist_shards, tmp_path, kind)
    if backend == "dali" and kind in ("missing", "label"):  # a manifest that vouches wrongly: DALI's own
        vouch_for_images(root / "val")                       # checks name the sample, not the decode check
    with pytest.raises(DataError) as err:  # a truncated shard fails its sha256 check when opened
        collect(make_loader(root, "val", 64, backend=backend, train=False, num_workers=2))
    msg = str(err.value)
    assert "fashion-mnist-val-000001.tar" in msg, msg
    if kind != "truncated":
        assert key in msg, msg
    if kind == "label":
        assert "label 12" in msg and "[0, 10)" in msg, msg
    if kind == "cls":
        assert ".cls is not a decimal class id" in msg, msg


FORK_AFTER_DALI = """
import gc, os, sys
from cascade_dist.data import make_loader

root = sys.argv[1]
gc.disable()  # only the collections below run
loader = make_loader(root, "test", 100, backend="dali", train=False, augment=False)
next(iter(loader))
cycle = [loader]
cycle.append(cycle)  # a DALI pipeline in cyclic garbage, as an exception's traceback leaves it
del loader, cycle
os.register_at_fork(after_in_child=gc.collect)  # a forked worker that collects what it inherited
x, y = next(iter(make_loader(root, "test", 100, backend="torch", train=False, num_workers=2, augment=False)))
print("batch", tuple(x.shape))
"""


def test_torch_workers_forked_after_a_dali_loader_do_not_hang(small_fashion_mnist_shards):
    """A DALI pipeline left as garbage, then a torch loader's forked workers: they must not run
    its native shutdown (it waits for DALI threads the child lacks, and the epoch hung)."""
    r = subprocess.run([sys.executable, "-c", FORK_AFTER_DALI, str(small_fashion_mnist_shards)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "batch (100, 1, 28, 28)" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.parametrize("kind", ["corrupt", "corrupt-idat", "cls", "missing", "label"])
def test_torch_skip_mode_skips_and_counts(kind, fashion_mnist_shards, tmp_path):
    root, _ = bad_split(fashion_mnist_shards, tmp_path, kind)
    loader = make_loader(root, "val", 64, backend="torch", train=False, num_workers=2, on_error="skip")
    x, y, _ = collect(loader)
    assert len(y) == 299 and loader.skipped == 1


def test_clear_errors_for_bad_options_and_paths(fashion_mnist_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        make_loader(tmp_path / "nowhere", "train", 8, train=True)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_loader(fashion_mnist_shards, "dev", 8, train=False)
    with pytest.raises(ValueError, match="unknown loader backend 'jax'"):
        make_loader(fashion_mnist_shards, "val", 8, train=False, backend="jax")
    with pytest.raises(ValueError, match="on_error='skip' is not supported by backend='dali'"):
        make_loader(fashion_mnist_shards, "val", 8, train=False, backend="dali", on_error="skip")
    root, _ = small_split(fashion_mnist_shards / "val", tmp_path / "copy")
    with pytest.raises(FileNotFoundError, match="no split 'test'"):
        make_loader(root, "test", 8, train=False)
    shard = root / "val" / "fashion-mnist-val-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF  # one flipped byte inside a member: size, count and index all still agree
    shard.write_bytes(bytes(data))
    for backend in BACKENDS:
        with pytest.raises(DataError, match=r"shard .*fashion-mnist-val-000001.tar: sha256 .* differs"):
            make_loader(root, "val", 8, train=False, backend=backend)
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    (root / "val" / "fashion-mnist-val-000001.idx").unlink()
    with pytest.raises(DataError, match="fashion-mnist-val-000001.idx"):
        make_loader(root, "val", 8, train=False)
    shutil.copy(root / "val" / "fashion-mnist-val-000000.idx", root / "val" / "fashion-mnist-val-000001.idx")
    (root / "val" / "fashion-mnist-val-000000.tar").unlink()
    with pytest.raises(DataError, match="fashion-mnist-val-000000.tar"):
        make_loader(root, "val", 8, train=False)


# -- ranks in lockstep: a bad sample on one rank never leaves the other waiting in a collective -----

LOCKSTEP_RANK = """
import datetime, json, sys
import torch, torch.distributed as dist
from cascade_dist.data import make_loader
from cascade_dist.method.training import in_lockstep

rank, port, cases = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=20))

def all_reduce(t):
    t = t.clone()
    dist.all_reduce(t)
    return t

for root, backend, on_error in cases:
    steps = 0
    try:
        loader = make_loader(root, "val", 50, backend=backend, train=True, rank=rank, world_size=2, num_workers=1,
                             augment=False, on_error=on_error)
        for x, y in in_lockstep(loader, all_reduce):
            all_reduce(torch.ones(1))  # the gradient all-reduce of a training step
            steps += 1
        print(json.dumps({"steps": steps, "skipped": loader.skipped}), flush=True)
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e).splitlines()[0]}), flush=True)
"""


@pytest.mark.timeout(240)
def test_a_bad_sample_on_one_rank_ends_the_epoch_on_every_rank_at_once(fashion_mnist_shards, tmp_path):
    """2 ranks over real gloo, 150 samples each in batches of 50: one bad sample leaves its rank a
    batch short (skip) or raising (raise). Without `in_lockstep` the other rank waits in its next
    all-reduce until the collective timeout; with it both end together: the same step count under
    skip; under raise the named DataError on the rank that read the sample, PeerDataError on the other."""
    import socket
    import time

    kinds = ("corrupt-idat", "label", "truncated")
    roots = {kind: str(bad_split(fashion_mnist_shards, tmp_path, kind)[0]) for kind in kinds}
    cases = [(roots[k], "torch", mode) for k in kinds for mode in ("skip", "raise")]
    cases += [(roots[k], "dali", "raise") for k in kinds]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    start = time.monotonic()
    ranks = [subprocess.Popen([sys.executable, "-c", LOCKSTEP_RANK, str(r), str(port), json.dumps(cases)], cwd=repo,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=200) for p in ranks]
    wall = time.monotonic() - start
    results = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out, _ in outs]
    assert all(len(r) == len(cases) for r in results), [err[-2000:] for _, err in outs]
    for case, a, b in zip(cases, *results):
        if case[2] == "skip" and "error" not in a and "error" not in b:
            assert a["steps"] == b["steps"] and a["skipped"] + b["skipped"] >= 1, (case, a, b)
        else:
            # the rank that read the bad sample names it; the other is told (or, where DALI's
            # pipeline reads every shard's index, finds the same bad shard itself)
            errors = [a.get("error"), b.get("error")]
            assert "DataError" in errors and set(errors) <= {"DataError", "PeerDataError"}, (case, a, b)
            named = a if a["error"] == "DataError" else b
            assert "fashion-mnist-val-000001.tar" in named["message"], (case, named)
    print(f"\n{len(cases)} cases on 2 ranks in {wall:.1f} s")
    assert wall < 150  # a hang waits for the 20 s collective timeout in every case
