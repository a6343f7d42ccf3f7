"""`manifest.json` of one shard split (DESIGN §3) and `verify`, which re-reads the shards.

A split directory holds `{dataset}-{split}-{n:06d}.tar` WebDataset shards, one DALI index
(`wds2idx` format) beside each and `manifest.json`. Each sample `{key}` has an image
(`{key}.png` or `{key}.jpg`), `{key}.cls` (decimal class id), `{key}.lbl` (the same id as a
little-endian int64) and optionally `{key}.json` (metadata).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from . import storage

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
IMAGE_EXTS = ("png", "jpg")
REQUIRED_COMPONENTS = ("cls", "lbl")


class ShardError(ValueError):
    """Bad shard or source data; the message names the file and, for a sample, its key."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a split: tar file name, its index file name, sample count, sha256."""

    file: str
    index: str
    num_samples: int
    sha256: str


@dataclass
class Manifest:
    """The contents of `manifest.json`: what a split holds and how to normalise it."""

    dataset: str
    split: str
    num_samples: int
    num_classes: int
    class_names: list[str]
    image_size: list[int] | None  # [H, W]; None when sizes vary
    channels: int
    image_format: str  # "png", "jpg", or "jpg;png" when a split mixes both
    mean: list[float]  # per channel, 0-1 pixel scale
    std: list[float]
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: int = 0  # bad source samples left out with `--on-error skip`
    images_checked: bool = False
    """True when the writer decoded every image it wrote (`data_shards` does); otherwise the DALI
    loader decode-checks the split once per node before reading it (`checksums.decode_checked`)."""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise ShardError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - d.keys())
        if missing:
            raise ShardError(f"{where}: missing key(s) {', '.join(missing)}")
        if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ShardError(f"{where}: format_version {d['format_version']}, expected {FORMAT_VERSION}")
        kw = {k: v for k, v in d.items() if k in names}
        try:
            kw["shards"] = [ShardInfo(**s) for s in d.get("shards", [])]
        except TypeError as e:
            raise ShardError(f"{where}: bad shard entry ({e})") from None
        try:
            m = cls(**kw)
            bad_sizes = len(m.class_names) != m.num_classes
            bad_counts = sum(s.num_samples for s in m.shards) != m.num_samples
        except TypeError as e:
            raise ShardError(f"{where}: bad field type ({e})") from None
        if bad_sizes:
            raise ShardError(f"{where}: {len(m.class_names)} class_names for num_classes={m.num_classes}")
        if bad_counts:
            raise ShardError(f"{where}: shard sample counts do not add up to num_samples={m.num_samples}")
        return m

    @classmethod
    def load(cls, split_dir: str | Path) -> "Manifest":
        """The manifest of a split folder: a local path or a URI (`storage`)."""
        path = storage.join(split_dir, MANIFEST_NAME)
        if not storage.is_file(path):
            raise FileNotFoundError(f"manifest not found: {path}")
        try:
            d = json.loads(storage.read_text(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, where=str(path))

    def save(self, split_dir: str | Path) -> Path:
        """Write `manifest.json` atomically (temporary file, then rename)."""
        path = Path(split_dir) / MANIFEST_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    def shard_paths(self, split_dir: str | Path) -> list[Path | str]:
        """Each shard's location: a Path under a local split folder, a URI under a remote one."""
        return [storage.location(storage.join(split_dir, s.file)) for s in self.shards]

    def index_paths(self, split_dir: str | Path) -> list[Path | str]:
        return [storage.location(storage.join(split_dir, s.index)) for s in self.shards]


def split_name(member: str) -> tuple[str, str]:
    """`dir/key.ext.more` -> (`dir/key`, `ext.more`): WebDataset/wds2idx key convention."""
    dot = member.find(".", member.rfind("/") + 1)
    return (member, "") if dot < 0 else (member[:dot], member[dot + 1:])


def read_index(path: str | Path) -> list[list[tuple[str, int, int, str]]]:
    """Parse a DALI `wds2idx` index (v1.2): per sample a list of (ext, offset, size, member)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index not found: {path}")
    lines = path.read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit():
        raise ShardError(f"{path}: not a wds2idx v1.2 index (header {lines[:1]})")
    samples = []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts or len(parts) % 4:
            raise ShardError(f"{path}:{n}: malformed index line")
        samples.append([(parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3])
                        for i in range(0, len(parts), 4)])
    if len(samples) != int(head[1]):
        raise ShardError(f"{path}: header says {head[1]} samples, {len(samples)} listed")
    return samples


def decode_label(cls_bytes: bytes, lbl_bytes: bytes, where: str, num_classes: int) -> int:
    """Check the `.cls`/`.lbl` pair of one sample and return the class id."""
    try:
        label = int(cls_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ShardError(f"{where}: .cls is not a decimal class id ({cls_bytes[:20]!r})") from None
    if len(lbl_bytes) != 8:
        raise ShardError(f"{where}: .lbl is {len(lbl_bytes)} bytes ({lbl_bytes[:16].hex()}), not an int64 LE label")
    if (lbl := int.from_bytes(lbl_bytes, "little", signed=True)) != label:
        raise ShardError(f"{where}: .lbl holds label {lbl} but .cls holds {label}")
    if not 0 <= label < num_classes:
        raise ShardError(f"{where}: label {label} outside [0, {num_classes})")
    return label


class _HashingReader(io.RawIOBase):
    """A read-only file wrapper that feeds everything read through sha256."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.sha.update(b)
        return b

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest()


def _check_sample(key: str, parts: dict[str, bytes], where: str, m: Manifest, decode: bool) -> None:
    where = f"{where}, sample {key}"
    images = [e for e in parts if e in IMAGE_EXTS]
    missing = [e for e in REQUIRED_COMPONENTS if e not in parts]
    if len(images) != 1 or missing:
        raise ShardError(f"{where}: components {sorted(parts)}; expected one of "
                         f"{'/'.join(IMAGE_EXTS)} and {', '.join(REQUIRED_COMPONENTS)}")
    decode_label(parts["cls"], parts["lbl"], where, m.num_classes)
    if decode:
        from PIL import Image  # only verification decodes images

        try:
            with Image.open(io.BytesIO(parts[images[0]])) as im:
                im.load()
        except Exception as e:  # PIL raises many types for corrupt data
            raise ShardError(f"{where}: .{images[0]} does not decode ({e})") from None


def verify_shard(split_dir: Path, shard: ShardInfo, m: Manifest, decode_images: bool = True) -> list[str]:
    """Re-read one shard: components, labels, images, count, index, sha256. Returns its keys."""
    path = split_dir / shard.file
    if not path.is_file():
        raise FileNotFoundError(f"shard not found: {path}")
    keys: list[str] = []
    members: list[tuple[str, str, int, int, str]] = []  # key, ext, offset, size, name
    parts: dict[str, bytes] = {}
    member_name = None
    with open(path, "rb") as f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    member_name = info.name
                    if not info.isfile():
                        raise ShardError(f"{path}: member {info.name} is not a regular file")
                    key, ext = split_name(info.name)
                    if not keys or key != keys[-1]:
                        if keys:
                            _check_sample(keys[-1], parts, str(path), m, decode_images)
                        keys.append(key)
                        parts = {}
                    if ext in parts:
                        raise ShardError(f"{path}, sample {key}: component .{ext} appears twice")
                    parts[ext] = tar.extractfile(info).read()
                    members.append((key, ext, info.offset_data, info.size, info.name))
        except (tarfile.TarError, EOFError, OSError) as e:
            at = f", sample {split_name(member_name)[0]}" if member_name else ""
            raise ShardError(f"{path}{at}: truncated or corrupt tar ({e})") from None
        if keys:
            _check_sample(keys[-1], parts, str(path), m, decode_images)
        digest = reader.drain()
    if len(keys) != shard.num_samples:
        last = f" (last sample read: {keys[-1]})" if keys else ""
        raise ShardError(f"{path}: {len(keys)} samples, manifest says {shard.num_samples}{last}")
    if len(set(keys)) != len(keys):
        raise ShardError(f"{path}: sample keys are not grouped/unique")
    if digest != shard.sha256:
        raise ShardError(f"{path}: sha256 {digest} does not match manifest {shard.sha256}")
    index = read_index(split_dir / shard.index)
    flat = [(split_name(name)[0], ext, off, size, name) for sample in index for ext, off, size, name in sample]
    if len(index) != len(keys) or flat != members:
        bad = next((a[0] for a, b in zip(members, flat) if a != b), keys[-1] if keys else "?")
        raise ShardError(f"{split_dir / shard.index}: does not match {shard.file} (first difference at sample {bad})")
    return keys


def verify(split_dir: str | Path, decode_images: bool = True) -> Manifest:
    """Check a split directory against its manifest; raise `ShardError` naming shard and key."""
    split_dir = Path(split_dir)
    m = Manifest.load(split_dir)
    seen: set[str] = set()
    for shard in m.shards:
        keys = verify_shard(split_dir, shard, m, decode_images)
        dup = seen.intersection(keys)
        if dup:
            raise ShardError(f"{split_dir / shard.file}: sample {min(dup)} also in an earlier shard")
        seen.update(keys)
    return m
