"""The one weights loader: a trained cascade from a checkpoint or run directory, without DeepSpeed.

Every checkpoint the runtime writes (`runtime.checkpoint`) holds, beside DeepSpeed's own files
(for resuming), `cascade.pt`: the cascade's state dict as plain tensors, and `config.yaml`: the
run's resolved config. Rebuilding needs only the config's `model`, `eval` and `data` sections and
`torch.load(weights_only=True)`: nothing is unpickled and no DeepSpeed, Ray or MLflow is imported.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data import storage
from ..data.config import DataConfig
from ..method.evaluate import EvalConfig
from ..method.models import Cascade, ModelConfig

WEIGHTS_FILE = "cascade.pt"
CONFIG_FILE = "config.yaml"


@dataclass
class LoadedCascade:
    """A cascade rebuilt from a checkpoint (eval mode), the config sections it was trained with,
    and the checkpoint directory it came from."""

    model: Cascade
    model_config: ModelConfig
    eval_config: EvalConfig
    data_config: DataConfig
    checkpoint: Path
    """The local checkpoint directory (for a URI checkpoint: the local copy of its files)."""
    source: str = ""
    """Where it was loaded from, as given: a local directory or a URI."""
    topk: int = 1
    """The run's `objective.topk`: the k its accuracies count (the label among the k most probable)."""


def save_weights(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write `model`'s state dict as `cascade.pt` in `directory`, atomically (temporary name, then
    `os.replace`), with every tensor copied to the CPU."""
    path = Path(directory) / WEIGHTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path


def find_checkpoint(path: str | Path) -> Path | str:
    """`path` itself if it holds `cascade.pt`, else the newest `checkpoint_*` directory of a run
    directory (`runs/<name>`) that holds one. A URI (s3://bucket/runs/<name>) gives a URI."""
    if storage.is_uri(path):
        return _find_remote_checkpoint(str(path))
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path} is not a directory")
    if (path / WEIGHTS_FILE).is_file():
        return path
    found = sorted(p for p in path.glob("checkpoint_*") if (p / WEIGHTS_FILE).is_file())
    if not found:
        raise FileNotFoundError(f"checkpoint not found: no {WEIGHTS_FILE} in {path} or its checkpoint_* "
                                f"directories (expected a Ray checkpoint directory or a run directory holding some)")
    return found[-1]


def _find_remote_checkpoint(uri: str) -> str:
    if storage.is_file(storage.join(uri, WEIGHTS_FILE)):
        return uri.rstrip("/")
    found = [storage.join(uri, n) for n in storage.list_dir(uri) if n.startswith("checkpoint_")]
    found = [c for c in found if storage.is_file(storage.join(c, WEIGHTS_FILE))]
    if not found:
        raise FileNotFoundError(f"checkpoint not found: no {WEIGHTS_FILE} in {uri} or its checkpoint_* directories")
    return found[-1]


def fetch_checkpoint(uri: str) -> Path:
    """A local copy of a URI checkpoint's files for inference (`cascade.pt`, `config.yaml`, the
    calibration, `report.json`; not DeepSpeed's `checkpoint/` states), with the run directory's
    `config.yaml` when the checkpoint has none. A temporary directory, removed at exit."""
    local = Path(tempfile.mkdtemp(prefix="cascade_checkpoint_"))
    atexit.register(shutil.rmtree, local, True)
    storage.copy_tree(uri, local, skip=lambda rel: "/" in rel)
    run_config = storage.join(storage.parent(uri), CONFIG_FILE)
    if not (local / CONFIG_FILE).is_file() and storage.is_file(run_config):
        storage.copy_file(run_config, local / CONFIG_FILE)
    return local


def checkpoint_config(checkpoint: Path) -> Path:
    """The run's resolved `config.yaml`: in the checkpoint directory, else in its run directory."""
    for candidate in (checkpoint / CONFIG_FILE, checkpoint.parent / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {CONFIG_FILE} in {checkpoint} or {checkpoint.parent}: cannot rebuild the cascade")


def read_sections(config_file: Path) -> tuple[ModelConfig, EvalConfig, DataConfig]:
    """The `model`, `eval` and `data` sections of a run's config.yaml, each built (and checked) by its class."""
    try:
        tree = OmegaConf.load(config_file)
        out = []
        for name, cls in (("model", ModelConfig), ("eval", EvalConfig), ("data", DataConfig)):
            node = OmegaConf.merge(OmegaConf.structured(cls), tree.get(name) or {})
            out.append(OmegaConf.to_object(node))
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ValueError(f"{config_file}: {str(err).splitlines()[0]}") from None
    return tuple(out)


def read_topk(config_file: Path) -> int:
    """The run's `objective.topk` (1 when the config predates it)."""
    topk = OmegaConf.select(OmegaConf.load(config_file), "objective.topk", default=1)
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"{config_file}: objective.topk must be an integer >= 1, got {topk!r}")
    return topk


def load_error_line(path: str | Path, err: BaseException) -> str:
    """One line for a file `torch.load(weights_only=True)` could not load: the file, and for a
    weights-only refusal the disallowed global (torch's own message spans a screen)."""
    text = str(err)
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)  # both of torch's phrasings
    if found:
        return f"{path}: refused, it holds the disallowed global {found.group(1)} (loaded with weights_only=True)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{path}: unreadable ({type(err).__name__}: {first[:200]})"


def load_weights(model: torch.nn.Module, file: Path) -> torch.nn.Module:
    """Load a `cascade.pt` state dict into `model` (weights only; errors name the file)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises many kinds for a bad file)
        raise ValueError(load_error_line(file, err)) from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{file} does not fit the cascade: {str(err).splitlines()[0]}") from None
    return model


def load_cascade(path: str | Path) -> LoadedCascade:
    """The cascade of a checkpoint or run directory (a local path or a URI), in eval mode, with the
    sections it was trained with."""
    if storage.scheme(path) == "file":
        path = storage.resolve_storage(path)
    found = find_checkpoint(path)
    checkpoint = fetch_checkpoint(found) if storage.is_uri(found) else found
    config_file = checkpoint_config(checkpoint)
    model_cfg, eval_cfg, data_cfg = read_sections(config_file)
    model_cfg.weights = None  # the checkpoint holds every weight: no per-classifier files needed
    model = load_weights(model_cfg.build(), checkpoint / WEIGHTS_FILE)
    return LoadedCascade(model.eval(), model_cfg, eval_cfg, data_cfg, checkpoint, str(found),
                         read_topk(config_file))
