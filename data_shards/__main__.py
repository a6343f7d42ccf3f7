"""`python -m data_shards SOURCE --src PATH --out DIR [...]`, `python -m data_shards verify DIR` and
`python -m data_shards stage s3://bucket/shards DIR` (a verified local copy, for the DALI loader).

Exit codes: 0 done, 2 bad input (one line on stderr naming the file and the sample key).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cascade_dist.data import storage
from cascade_dist.data.manifest import MANIFEST_NAME, ShardError, verify

from .convert import SPLITS, convert
from .sources import DEFAULT_SHARD_SIZE, DEFAULT_SRC, SHARD_SIZES, SOURCES

SRC_HELP = {
    "fashion-mnist": "folder with train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz] "
                     f"(default {DEFAULT_SRC['fashion-mnist']}, Debian package dataset-fashion-mnist)",
    "mnist": "folder with train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz]",
    "cifar10": "cifar-10-python.tar.gz, or the extracted cifar-10-batches-py/ (or its parent)",
    "cifar100": "cifar-100-python.tar.gz, or the extracted cifar-100-python/ (or its parent)",
    "imagenet32": "folder with train_data_batch_1..N.npz and val_data.npz (Chrabaszcz et al.); "
                  "optional map_clsloc.txt for class names",
    "imagenet": "ILSVRC-2012 root with train/<wnid>/*.JPEG and val/: either val/<wnid>/*.JPEG or a flat "
                "val/*.JPEG labelled by LOC_val_solution.csv (in val/, the root or up to 3 folders above). "
                "The devkit's ILSVRC2012_validation_ground_truth.txt is not supported: sort val into "
                "<wnid> folders first. JPEG bytes are stored unchanged; the ILSVRC val set becomes 'test'",
    "folder": "root with train/<class>/* and test/<class>/* (or just <class>/*: train only, use "
              "--val-split); JPEG/PNG bytes kept, other formats stored as PNG",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_shards", description="Write WebDataset shards + DALI indexes + manifest.json per split.",
        epilog="example: python -m data_shards fashion-mnist --out shards/fashion-mnist --val-split 5000; "
               "python -m data_shards verify shards/fashion-mnist; "
               "python -m data_shards stage s3://bucket/shards/fashion-mnist /local/shards. `python -m data_shards SOURCE -h` says what "
               "--src must hold.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join([*SOURCES, "verify", "stage"]) + "}")
    for name in SOURCES:
        s = sub.add_parser(name, help=f"convert {name}", description=f"Convert {name}: --src is {SRC_HELP[name]}.")
        s.add_argument("--src", type=Path, help="input, as described above")
        s.add_argument("--out", type=Path, required=True, help="output folder (gets train/, test/, val/)")
        s.add_argument("--val-split", type=int, default=0, metavar="N",
                       help="hold out N training images (stratified by class, seeded) as val/")
        s.add_argument("--train-limit", type=int, metavar="N",
                       help="keep a stratified, seeded subset of N training images (after --val-split)")
        s.add_argument("--shard-size", type=int, metavar="N",
                       help=f"samples per shard (default {SHARD_SIZES.get(name, DEFAULT_SHARD_SIZE)})")
        s.add_argument("--seed", type=int, default=0, help="seed of the val hold-out and train shuffle")
        s.add_argument("--force", action="store_true", help="replace an existing, different output")
        s.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                       help="bad sample: stop (default) or skip it and count it in the manifest")
        s.add_argument("--name", help=f"data set name in file names and manifests (default {name})")
    v = sub.add_parser("verify", help="re-check shards against manifest.json",
                       description="Re-read every shard of DIR (an output folder or one split folder): "
                                   "components, labels, image decode, counts, sha256, DALI index.")
    v.add_argument("dir")
    st = sub.add_parser("stage", help="copy shards from object storage to a local folder, verified",
                        description="Copy SRC (s3://bucket/shards, gs://..., or a path; a shard tree or one split) "
                                    "to the local folder DIR, each shard's sha256 checked against its manifest. "
                                    "Run again, it copies only what is missing or differs.")
    st.add_argument("src", help="shard tree or split folder: a URI or a path (credentials from the environment)")
    st.add_argument("dir", type=Path, help="local destination folder")
    return p


def run_verify(root: Path) -> None:
    if storage.is_uri(root):
        raise ValueError(f"verify reads a local folder, got {root}: copy it with `python -m data_shards stage {root} DIR` "
                         f"(which checks every shard's sha256), then verify DIR")
    root = Path(root)
    split_dirs = [root] if (root / MANIFEST_NAME).is_file() else [root / s for s in SPLITS if (root / s).is_dir()]
    if not split_dirs:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {root} or its train/val/test folders")
    for d in split_dirs:
        t0 = time.perf_counter()
        m = verify(d)
        print(f"{d}: ok, {m.num_samples} samples in {len(m.shards)} shard(s), {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "verify":
            run_verify(args.dir)
        elif args.command == "stage":
            from .stage import stage

            stage(args.src, args.dir, log=lambda msg: print(msg, flush=True))
        else:
            convert(args.command, args.src, args.out, val_split=args.val_split, shard_size=args.shard_size,
                    seed=args.seed, force=args.force, on_error=args.on_error, name=args.name, progress=True,
                    train_limit=args.train_limit,
                    log=lambda msg: print(msg, flush=True))
    except (ShardError, OSError, ValueError) as e:
        print(f"data_shards: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
