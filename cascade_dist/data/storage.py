"""Where the project stores and reads files: a local path or a URI (`s3://`, `gs://`, ...), one
mechanism for both, through `pyarrow.fs` (what Ray Train itself uses for `storage_path`).

* `resolve_storage`: a URI is kept as written (`file://` becomes its local path); a local path
  becomes absolute. `pathlib.Path` never sees a URI: `Path("s3://b/runs")` would collapse the `//`
  into `s3:/b/runs`, and `.resolve()` make it `/cwd/s3:/b/runs`.
* `join`, `name`, `parent`, `location`: path arithmetic that keeps a URI a URI.
* `is_file`, `is_dir`, `list_dir`, `stat`, `read_text`, `write_text`, `append_text`, `delete`,
  `open_input`: file operations on either.
* `copy_file`, `copy_tree`, `local_copy`: between the two (a URI checkpoint loaded from a local copy).
* `ray_storage`: the `storage_path`/`storage_filesystem` pair for a Ray Train or Tune `RunConfig`;
  `node_local_problem`: a node-local path refused on a multi-node cluster.

Credentials are never part of a URI or a config: pyarrow takes them from the environment
(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, an instance role, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+)://")
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
"""The URI schemes pyarrow.fs opens."""
SCHEME_OF_FILESYSTEM = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs"}
"""pyarrow's `FileSystem.type_name` → the URI scheme its paths are written with."""


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (a scheme of two letters or more: not a Windows drive)."""
    return bool(_SCHEME.match(str(path)))


def scheme(path: str | os.PathLike) -> str:
    """The URI's scheme in lower case; "" for a local path."""
    m = _SCHEME.match(str(path))
    return m["scheme"].lower() if m else ""


def scheme_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be stored to (a URI scheme pyarrow.fs does not open), or None."""
    if is_uri(path) and scheme(path) not in SCHEMES:
        return f"unsupported scheme {scheme(path)!r} in {str(path)!r}; expected a local path or one of {', '.join(SCHEMES)}"
    return None


def resolve_storage(path: str | os.PathLike) -> str:
    """A URI unchanged (less a trailing `/`), `file:///x` as `/x`, a local path made absolute."""
    text = str(path)
    if scheme(text) == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: a file:// URI names a local path (file:///abs/path), not host {parts.netloc!r}")
        text = unquote(parts.path)
    if is_uri(text):
        return text.rstrip("/") if not text.endswith("://") else text
    return str(Path(text).expanduser().resolve())


def location(path: str | os.PathLike) -> Path | str:
    """A local path as a `Path`, a URI as the string it is."""
    return str(path) if is_uri(path) else Path(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...`: a URI joined with `/`, a local path with the OS's separator."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(str(p).strip("/") for p in parts)])
    return str(Path(base, *parts))


def name(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else Path(path).name


def parent(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[0] if is_uri(path) else str(Path(path).parent)


S3_TIMEOUT_S = 60.0
"""Per request: the AWS SDK's default (3 s) fails spuriously against a busy server (a small
S3-compatible store on a loaded machine took longer)."""
_FS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
           "AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS")


@lru_cache(maxsize=32)
def _uri_filesystem(root: str, pid: int, env: tuple):
    """One filesystem per bucket, process (a forked DataLoader worker builds its own: the AWS SDK's
    threads do not survive a fork) and environment (an endpoint or profile changed: a new one)."""
    import pyarrow.fs as pafs

    parts = urlsplit(root)
    if parts.scheme.lower() != "s3":
        return pafs.FileSystem.from_uri(root)[0]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or pafs.resolve_s3_region(parts.netloc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")  # as from_uri reads them
    return pafs.S3FileSystem(region=region, endpoint_override=endpoint, connect_timeout=S3_TIMEOUT_S,
                             request_timeout=S3_TIMEOUT_S)


def filesystem(path: str | os.PathLike):
    """(pyarrow filesystem, the path inside it): `s3://b/k` → (S3FileSystem, "b/k")."""
    import pyarrow.fs as pafs

    text = str(path)
    if not is_uri(text) or scheme(text) == "file":
        return pafs.LocalFileSystem(), resolve_storage(text)
    parts = urlsplit(text)
    try:
        fs = _uri_filesystem(f"{parts.scheme}://{parts.netloc}", os.getpid(), tuple(os.environ.get(k) for k in _FS_ENV))
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise ValueError(f"{text}: no filesystem for this URI ({str(err).splitlines()[0]})") from None
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def to_uri(fs, path: str) -> str:
    """The path `path` of pyarrow filesystem `fs` written as a URI (a local path stays a path)."""
    found = SCHEME_OF_FILESYSTEM.get(fs.type_name)
    return f"{found}://{path.lstrip('/')}" if found else path


def _info(path):
    fs, inner = filesystem(path)
    return fs.get_file_info(inner)


def is_file(path: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    return _info(path).type == pafs.FileType.File


def is_dir(path: str | os.PathLike) -> bool:
    import pyarrow.fs as pafs

    return _info(path).type == pafs.FileType.Directory


def stat(path: str | os.PathLike) -> tuple[int, int]:
    """(size in bytes, modification time in ns); FileNotFoundError naming `path` when absent."""
    import pyarrow.fs as pafs

    if not is_uri(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    info = _info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"not a file: {path}")
    return int(info.size), int(info.mtime_ns or 0)


def list_dir(path: str | os.PathLike) -> list[str]:
    """Names of the entries directly under `path` (sorted); [] when it does not exist."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.base_name for i in infos)


READ_BUFFER = 4 << 20
"""Bytes fetched per request from an object store: a tar is read in 512-byte headers, and an
unbuffered remote file makes each of those reads an HTTP request (~3 ms each against a local server)."""


def open_input(path: str | os.PathLike):
    """A seekable, buffered binary file (`read`, `seek`, `tell`); FileNotFoundError naming `path`."""
    if not is_uri(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    try:
        return io.BufferedReader(fs.open_input_file(inner), buffer_size=READ_BUFFER)
    except FileNotFoundError:
        raise FileNotFoundError(f"not found: {path}") from None
    except OSError as err:
        raise OSError(f"{path}: {str(err).splitlines()[0]}") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_input(path) as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` (UTF-8) to `path`, replacing it atomically: a local file through a temporary
    name and `os.replace`; an object store writes an object whole on close. Returns `path`."""
    if not is_uri(path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return str(path)
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as out:
        out.write(text.encode("utf-8"))
    return str(path)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a local file; an object (which cannot grow) is rewritten with `text` added."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    write_text(path, (read_text(path) if is_file(path) else "") + text)


def delete(path: str | os.PathLike) -> None:
    """Remove the file `path` (nothing when it is already gone)."""
    fs, inner = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(inner)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy one file between any two locations (local parents created)."""
    import pyarrow.fs as pafs

    src_fs, src_inner = filesystem(src)
    dest_fs, dest_inner = filesystem(dest)
    if not is_uri(dest):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src_inner, dest_inner, source_filesystem=src_fs, destination_filesystem=dest_fs)


def copy_tree(src: str | os.PathLike, dest: str | os.PathLike, skip: Callable[[str], bool] = lambda rel: False) -> int:
    """Copy every file under `src` to the same relative path under `dest`, except those whose
    relative path `skip` returns True for; returns the number of files copied."""
    import pyarrow.fs as pafs

    src_fs, src_inner = filesystem(src)
    infos = src_fs.get_file_info(pafs.FileSelector(src_inner, recursive=True))
    copied = 0
    for info in infos:
        rel = info.path[len(src_inner):].lstrip("/")
        if info.type == pafs.FileType.File and not skip(rel):
            copy_file(src if not rel else join(src, *rel.split("/")), join(dest, *rel.split("/")))
            copied += 1
    return copied


@contextlib.contextmanager
def local_copy(path: str | os.PathLike, skip: Callable[[str], bool] = lambda rel: False) -> Iterator[Path]:
    """A local directory with the contents of `path`: `path` itself when it is local, else a
    temporary copy (removed on exit)."""
    if not is_uri(path):
        yield Path(path)
        return
    tmp = tempfile.mkdtemp(prefix="cascade_storage_")
    try:
        if not copy_tree(path, tmp, skip):
            raise FileNotFoundError(f"nothing found under {path}")
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ray_storage(path: str) -> dict:
    """`storage_path` and `storage_filesystem` for Ray's `RunConfig` (train or tune): a URI's
    filesystem built here, as for every other file the project reads, and its path inside it."""
    if not is_uri(path):
        return {"storage_path": path}
    fs, inner = filesystem(path)
    return {"storage_path": inner, "storage_filesystem": fs}


def node_local_problem(storage_path: str, nodes: list[dict], shared: bool = False) -> str | None:
    """One line when `storage_path` is a node-local path and `nodes` (`ray.nodes()`) has more than
    one alive node: each node would keep its own checkpoints and a restarted worker on another node
    would not find them. None for a URI, a single node, or a local path declared `shared` (an NFS
    mount on every node)."""
    alive = [n for n in nodes if n.get("Alive")]
    if is_uri(storage_path) or shared or len(alive) <= 1:
        return None
    return (f"run.storage_path: {storage_path} is a node-local path, but the Ray cluster has {len(alive)} nodes: "
            f"use an object-store URI (s3://bucket/runs, gs://bucket/runs), or set run.storage_shared=true if "
            f"it is a filesystem mounted on every node")
