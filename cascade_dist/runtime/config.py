"""The run's configuration: one tree of typed dataclasses, loaded with OmegaConf.

`load_config(file, overrides)` merges, in order: the dataclass defaults, a YAML file (a shipped
name such as `demo` or a path) and `dotted.key=value` overrides; then `validate` checks the whole
tree (fields, the classifier registry, the shards' manifests) and reports every bad field as one
line naming its dotted key, before any worker starts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data import storage
from ..data.config import DataConfig
from ..data.redact import redact_tree
from ..method.evaluate import EvalConfig
from ..method.exit_rule import ExitRule
from ..method.models import ModelConfig
from ..method.objective import ObjectiveConfig
from ..method.sections import ConfigFieldError, Problem, Section
from ..method.training import OptimConfig
from .elastic import accumulation_steps

CONFIG_PACKAGE = "cascade_dist.configs"
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray placement-group strategies for the Train workers (SPREAD: one per node where it can)."""
FAIL_MODES = ("exit", "pause")
"""`run.fail_mode`s of the test fault injection (`runtime.worker._maybe_inject_fault`)."""
TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
DEFAULT_CONFIG = "demo"


@dataclass
class RunConfig(Section):
    """Ray Train, DeepSpeed and checkpointing."""

    name: str = "demo"
    storage_path: str = "runs"
    """Run state, checkpoints and (with a SQLite tracking store) MLflow artifacts: a local path, or a
    URI (s3://bucket/runs, gs://bucket/runs, file:///abs/path) read and written through pyarrow.fs."""
    storage_shared: bool = False
    """Declare a local storage_path a filesystem mounted on every node (NFS): without it a local
    path is refused on a multi-node Ray cluster."""
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    placement_strategy: str = "PACK"
    """How Ray places the workers (`ScalingConfig.placement_strategy`): PACK fills a node first,
    SPREAD puts one per node where it can (STRICT_ variants fail rather than fall back)."""
    zero_stage: int = 0
    bf16: bool = False
    """bf16 weights and activations (DeepSpeed's bf16 mode); the policies' outputs, loss, rewards,
    costs and metrics stay float32. Allowed on CPU workers (slower there than float32 without AMX:
    a correctness check of the GPU path; a note is logged)."""
    fp16: bool = False
    """fp16 mixed precision with DeepSpeed's dynamic loss scaling (GPU workers only)."""
    channels_last: bool = False
    """The classifiers' weights, and so their activations, in channels_last memory format (timm's
    `--channels-last`): 1.15-1.4x faster float32 training of the preact ResNets on a 2-core CPU.
    float32 with ZeRO stage 0 only."""
    seed: int = 0
    max_failures: int = 0
    checkpoints_to_keep: int = 2
    progress: bool = True
    checkpoint_every_steps: Optional[int] = None
    """Also checkpoint every this many training steps within an epoch (model, optimiser, LR
    schedule, budget α, every rank's RNG and data position): a resumed run continues from the next
    batch, every sample of the epoch seen once. None: at the end of each epoch only."""
    log_sample_keys: bool = False
    """Write each step's sample keys into the checkpoints' step logs (`steps_rank<r>_epoch<e>.json`):
    which images every rank trained on, step by step (a check of exact resumption; large for ImageNet)."""
    fail_at_epoch: Optional[int] = None
    """Fault injection for tests: the last rank dies once in this epoch, after `fail_at_step` steps."""
    fail_at_step: int = 1
    fail_mode: str = "exit"
    """"exit": the last rank exits (a crash inside the run); "pause": every rank waits there (120 s, once)
    for the test to kill a worker process from outside, e.g. the one on another node."""
    control: bool = False
    """Also train the static control and print it beside the cascade (`runtime.control`): the
    warm-up runs once as `<name>-warmup`, then the cascade's joint epochs (`<name>`) and, from the same
    checkpoint, the classifiers alone for the same total number of epochs (`<name>-static`)."""
    warm_start: Optional[str] = None
    """A checkpoint directory of a warm-up-only run (`optim.joint_epochs=0`): a new run (no state
    of its own under `run.name`) starts from its weights at its epoch + 1, with this run's LRs and
    a new MLflow run. Resuming a run of the same name takes precedence (the Tune sweep's shared warm-up)."""

    def problems(self) -> list[Problem]:
        out = []
        if self.num_workers < 1:
            out.append(("num_workers", f"must be >= 1, got {self.num_workers}"))
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            out.append(("placement_strategy", f"expected one of {', '.join(PLACEMENT_STRATEGIES)}, "
                                              f"got {self.placement_strategy!r}"))
        if self.zero_stage not in (0, 1, 2):
            out.append(("zero_stage", f"expected 0, 1 or 2, got {self.zero_stage}"))
        if self.fp16 and not self.use_gpu:
            out.append(("fp16", "fp16 needs run.use_gpu=true (use run.bf16=true on CPU workers)"))
        if self.fp16 and self.bf16:
            out.append(("fp16", "run.fp16 and run.bf16 are exclusive; pick one"))
        if self.channels_last and not out and (self.bf16 or self.fp16 or self.zero_stage):
            out.append(("channels_last", "needs float32 and zero_stage 0 (DeepSpeed's bf16/fp16 and ZeRO optimisers "
                                         "keep the parameters in flat buffers); set run.channels_last=false"))
        if problem := storage.scheme_problem(self.storage_path):
            out.append(("storage_path", problem))
        if self.max_failures < -1:
            out.append(("max_failures", f"must be >= -1 (-1 = forever), got {self.max_failures}"))
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            out.append(("checkpoint_every_steps", f"must be >= 1 (or null: per epoch only), got {self.checkpoint_every_steps}"))
        if self.fail_at_step < 1:
            out.append(("fail_at_step", f"must be >= 1 (the worker dies after that many steps), got {self.fail_at_step}"))
        if self.fail_mode not in FAIL_MODES:
            out.append(("fail_mode", f"expected one of {', '.join(FAIL_MODES)}, got {self.fail_mode!r}"))
        if self.checkpoints_to_keep < 1:
            out.append(("checkpoints_to_keep", f"must be >= 1, got {self.checkpoints_to_keep}"))
        if self.cpus_per_worker <= 0:
            out.append(("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}"))
        if not self.name or "/" in self.name or "\\" in self.name or self.name.strip(".") == "":
            out.append(("name", f"must be a non-empty name without '/', '\\' or only dots "
                                f"(it is a folder under storage_path), got {self.name!r}"))
        return out


@dataclass
class TrackingConfig(Section):
    """MLflow, written from rank 0."""

    enabled: bool = True
    tracking_uri: Optional[str] = None
    """None: $MLFLOW_TRACKING_URI, else a local sqlite store under the run directory."""
    experiment: str = "cascade_dist"
    log_model: bool = True
    parent_run_id: Optional[str] = None
    """Nest this run under a parent (set by the Tune sweep)."""

    def problems(self) -> list[Problem]:
        uri = self.tracking_uri
        if uri is None or "://" not in uri:
            return []  # None or a local path (MLflow's file store)
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in TRACKING_SCHEMES:
            return [("tracking_uri", f"unsupported scheme {scheme!r} in {uri!r}; expected one of "
                                     f"{', '.join(TRACKING_SCHEMES)} or a local path")]
        return []


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SECTIONS = tuple(f.name for f in fields(Config))


class ConfigError(ValueError):
    """One or more bad fields; `str()` has one line per field, each naming its dotted key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

    def print_lines(self, prog: str) -> int:
        """Print one `prog: config error: ...` line per problem to stderr; returns exit code 2."""
        for problem in self.problems:
            print(f"{prog}: config error: {problem}", file=sys.stderr)
        return 2


def shipped_configs() -> list[str]:
    """Names of the YAML configs shipped in cascade_dist/configs."""
    return sorted(p.name[:-5] for p in resources.files(CONFIG_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """A shipped config name (`demo`) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError([f"config file not found: {path}"])
        return path
    shipped = resources.files(CONFIG_PACKAGE) / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError([f"unknown config {str(name_or_path)!r}; shipped: {', '.join(shipped_configs())}"])
    return Path(str(shipped))


def _one_line(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).strip().splitlines()[0]
    if "is not a ListConfig, list or tuple" in msg:
        msg = "expected a list (e.g. [0.5, 0.7]), got a single value"
    return f"{key}: {msg}" if key else msg


def _load_yaml(path: Path):
    """The YAML file as a DictConfig; a syntax error or a top level that is not a mapping names the file (and line)."""
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([f"{where}: malformed YAML: {what}"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot read config: {err.strerror or err}"]) from None
    if not isinstance(node, DictConfig):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (model, data, ...), "
                           f"got a {type(node).__name__.replace('Config', '').lower()}"])
    return node


def load_config(file: str | Path | None = DEFAULT_CONFIG, overrides: list[str] = (), check_data: bool = True) -> Config:
    """Defaults ← YAML ← `key=value` overrides, validated; raises ConfigError listing bad fields."""
    schema = OmegaConf.structured(Config)
    try:
        layers = [schema]
        if file is not None:
            layers.append(_load_yaml(config_path(file)))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError([f"override {o!r} is not of the form dotted.key=value" for o in bad])
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise ConfigError([_one_line(err)]) from None
    return validate(merged, check_data=check_data)


def to_container(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (for YAML, MLflow params, Ray)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_container(data: dict[str, Any]) -> Config:
    """Inverse of `to_container` (a worker rebuilds the typed tree from plain data)."""
    return validate(OmegaConf.merge(OmegaConf.structured(Config), data), check_data=False)


def save_config(cfg: Config, path: str | Path) -> Path | str:
    """The config as YAML (a local path or a URI), passwords in URIs redacted (`data.redact`): no
    secret reaches a file."""
    storage.write_text(path, OmegaConf.to_yaml(redact_tree(to_container(cfg))))
    return path if storage.is_uri(path) else Path(path)


def validate(merged, check_data: bool = True) -> Config:
    """Build the typed tree (each section checks its own fields) and check what spans sections."""
    problems: list[str] = []
    sections = {}
    for name in SECTIONS:
        try:
            sections[name] = OmegaConf.to_object(merged[name])
        except OmegaConfBaseException as err:
            problems.append(f"{name}: {_one_line(err)}")
        except ConfigFieldError as err:
            problems += [f"{name}.{field}: {message}" for field, message in err.problems]
        except ValueError as err:
            problems.append(f"{name}: {err}")
    ok = set(sections)
    cfg = Config(**sections)  # defaults stand in for bad sections: only checks on valid ones run
    if {"model", "eval", "objective"} <= ok:
        problems += _check_model(cfg)
    if {"run", "tracking"} <= ok:
        problems += _check_tracking_store(cfg)
    if {"data", "run"} <= ok and cfg.data.global_batch_size is not None:
        try:
            accumulation_steps(cfg.data.global_batch_size, cfg.data.batch_size, cfg.run.num_workers)
        except ValueError as err:
            problems.append(str(err))
    if check_data and {"model", "data", "run"} <= ok and not any(p.startswith(("model", "data")) for p in problems):
        problems += _check_against_manifest(cfg) + _check_warm_start(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _check_model(cfg: Config) -> list[str]:
    """The fields that depend on the cascade: τ per stage, top-k, the budget against the stage costs."""
    m, out = cfg.model, []
    try:
        ExitRule.from_tau(cfg.eval.tau, len(m.classifiers))
    except ValueError as err:
        out.append(f"eval.tau: {err}")
    if cfg.objective.topk > m.num_classes:
        out.append(f"objective.topk: {cfg.objective.topk} exceeds model.num_classes={m.num_classes}")
    if cfg.objective.budget is not None:
        floor = 100 * float(m.macs().costs()[0])
        if cfg.objective.budget < floor:
            out.append(f"objective.budget: {cfg.objective.budget} % is below the first stage's cost "
                       f"({floor:.2f} % of the largest classifier); no stopping policy can meet it")
        ceiling = 100 * float(m.macs().costs().sum())
        if cfg.objective.budget > ceiling:
            out.append(f"objective.budget: {cfg.objective.budget} % is above the whole cascade's cost "
                       f"({ceiling:.2f} % of the largest classifier, every stage run); the budget would never bind")
    return out


def _check_tracking_store(cfg: Config) -> list[str]:
    """The default tracking store is a SQLite file under run.storage_path: impossible on an object store."""
    if not cfg.tracking.enabled or cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return []
    if not storage.is_uri(cfg.run.storage_path) or storage.scheme(cfg.run.storage_path) == "file":
        return []
    return [f"tracking.tracking_uri: run.storage_path={cfg.run.storage_path} is an object store, where MLflow's "
            f"default SQLite store cannot live: set tracking.tracking_uri (an MLflow server http://host:5000, or "
            f"sqlite:////local/mlflow.db on a single node) or $MLFLOW_TRACKING_URI, or tracking.enabled=false"]


def _check_warm_start(cfg: Config) -> list[str]:
    ws = cfg.run.warm_start
    if ws is not None and not storage.is_dir(storage.join(ws, "checkpoint")):
        return [f"run.warm_start: no DeepSpeed checkpoint (a 'checkpoint/' folder) under {ws}"]
    return []


def _check_against_manifest(cfg: Config) -> list[str]:
    from ..data.augment import default_augment
    from ..data.contract import open_split

    shards = cfg.data.shards if storage.is_uri(cfg.data.shards) else Path(cfg.data.shards)
    try:
        found = storage.is_dir(shards)
    except (OSError, ValueError) as err:
        return [f"data.shards: cannot read {shards}: {str(err).splitlines()[0]}"]
    if not found:
        return [f"data.shards: shard directory not found: {shards} (build it with `python -m data_shards`)"]
    out, manifests = [], {}
    for split in ("train", cfg.data.eval_split):
        try:  # files, index counts and sha256 (hashed once per node): a changed shard stops here
            manifests[split] = open_split(shards, split).manifest
        except (OSError, ValueError) as err:
            out.append(f"data.shards: {err}")
    train = manifests.get("train")
    if train is not None:
        where = storage.join(shards, "train", "manifest.json")
        if train.num_classes != cfg.model.num_classes:
            out.append(f"model.num_classes: {cfg.model.num_classes} but {where} has num_classes={train.num_classes}")
        if train.channels != cfg.model.in_channels:
            out.append(f"model.in_channels: {cfg.model.in_channels} but {where} has channels={train.channels}")
        seen = default_augment(train, train=False).output_size(train.image_size) if cfg.data.augment else train.image_size
        if seen is not None and list(seen) != [cfg.model.image_size, cfg.model.image_size]:
            out.append(f"model.image_size: {cfg.model.image_size} but the model sees {list(seen)} images from {where} "
                       f"(the MACs would be counted for the wrong input)")
        share = train.num_samples // max(cfg.run.num_workers, 1)
        if cfg.data.batch_size > share:
            out.append(f"data.batch_size: {cfg.data.batch_size} exceeds a rank's share of {storage.parent(where)} "
                       f"({train.num_samples} samples / run.num_workers={cfg.run.num_workers} = {share})")
        other = manifests.get(cfg.data.eval_split)
        if other is not None and other.num_classes != train.num_classes:
            out.append(f"data.eval_split: {storage.join(shards, cfg.data.eval_split)} has {other.num_classes} classes, "
                       f"train has {train.num_classes}")
    return out
