"""The run's configuration: one tree of typed dataclasses, loaded with OmegaConf.

`load_config(file, overrides)` merges, in order: the dataclass defaults, a YAML file (a shipped
name such as `demo` or a path) and `dotted.key=value` overrides; then `validate` checks the whole
tree (fields, the classifier registry, the shards' manifests) and reports every bad field as one
line naming its dotted key, before any worker starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .evaluate import EvalConfig, thresholds
from .objective import ObjectiveConfig
from .training import OptimConfig

CONFIG_PACKAGE = "cascade_dist.configs"
DEFAULT_CONFIG = "demo"


@dataclass
class ModelConfig:
    """The cascade: classifier names in order of cost, and the policies' hidden width."""

    classifiers: list[str] = field(default_factory=lambda: ["preact_resnet8", "preact_resnet20"])
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    policy_hidden: int = 64
    policy_input: str = "softmax"
    """What π_t reads: "softmax" (the paper's) or "sorted_softmax" (its sorted confidence profile)."""
    weights: Optional[list[Optional[str]]] = None
    """Local state-dict files, one per classifier (null entries: random init)."""


@dataclass
class DataConfig:
    """Shards written by `python -m data_shards` and the loader over them."""

    shards: str = "shards/fashion-mnist"
    backend: str = "dali"
    batch_size: int = 128
    """Per worker; the global batch is batch_size × num_workers."""
    eval_batch_size: int = 256
    eval_split: str = "test"
    loader_workers: int = 1
    augment: bool = True
    on_error: str = "raise"


@dataclass
class RunConfig:
    """Ray Train, DeepSpeed and checkpointing."""

    name: str = "demo"
    storage_path: str = "runs"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    zero_stage: int = 0
    bf16: bool = False
    """bf16 mixed precision (GPU workers only)."""
    seed: int = 0
    max_failures: int = 0
    checkpoints_to_keep: int = 2
    progress: bool = True
    fail_at_epoch: Optional[int] = None
    """Fault injection for tests: a worker dies once, early in the epoch after this one."""
    warm_start: Optional[str] = None
    """A checkpoint directory of a warm-up-only run (`optim.joint_epochs=0`): a new run (no state
    of its own under `run.name`) starts from its weights at its epoch + 1, with this run's LRs and
    a new MLflow run. Resuming a run of the same name takes precedence (the Tune sweep's shared warm-up)."""


@dataclass
class TrackingConfig:
    """MLflow, written from rank 0."""

    enabled: bool = True
    tracking_uri: Optional[str] = None
    """None: $MLFLOW_TRACKING_URI, else a local sqlite store under the run directory."""
    experiment: str = "cascade_dist"
    log_model: bool = True
    parent_run_id: Optional[str] = None
    """Nest this run under a parent (set by the Tune sweep)."""


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
    return f"{key}: {msg}" if key else msg


def load_config(file: str | Path | None = DEFAULT_CONFIG, overrides: list[str] = (), check_data: bool = True) -> Config:
    """Defaults ← YAML ← `key=value` overrides, validated; raises ConfigError listing bad fields."""
    schema = OmegaConf.structured(Config)
    try:
        layers = [schema]
        if file is not None:
            layers.append(OmegaConf.load(config_path(file)))
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


def save_config(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def validate(merged, check_data: bool = True) -> Config:
    """Build the typed tree (each section's own checks) and check the fields that span sections."""
    problems: list[str] = []
    sections = {}
    for name in SECTIONS:
        try:
            sections[name] = OmegaConf.to_object(merged[name])
        except OmegaConfBaseException as err:
            problems.append(f"{name}: {_one_line(err)}")
        except ValueError as err:
            problems.append(_keyed(name, merged[name], str(err)))
    ok = set(sections)
    cfg = Config(**sections)  # defaults stand in for bad sections: only checks on valid ones run
    if {"model", "eval", "objective"} <= ok:
        problems += _check_model(cfg)
    if "data" in ok:
        problems += _check_data_fields(cfg)
    if "run" in ok:
        problems += _check_run(cfg)
    if check_data and {"model", "data"} <= ok and not any(p.startswith(("model", "data")) for p in problems):
        problems += _check_against_manifest(cfg) + _check_warm_start(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _keyed(section: str, node, message: str) -> str:
    """'alpha must be >= 0' from section 'objective' → 'objective.alpha: must be >= 0'."""
    field, _, rest = message.partition(" ")
    if field in node:
        return f"{section}.{field}: {rest}"
    return f"{section}: {message}"


def _check_model(cfg: Config) -> list[str]:
    from .models import list_classifiers

    m, out = cfg.model, []
    known = list_classifiers()
    for i, name in enumerate(m.classifiers):
        if name not in known:
            out.append(f"model.classifiers[{i}]: unknown classifier {name!r}; known: {', '.join(known)}")
    if len(m.classifiers) < 2:
        out.append(f"model.classifiers: a cascade needs K >= 2 classifiers, got {len(m.classifiers)}")
    for key in ("num_classes", "in_channels", "image_size", "policy_hidden"):
        if getattr(m, key) < 1:
            out.append(f"model.{key}: must be >= 1, got {getattr(m, key)}")
    if m.policy_input not in ("softmax", "sorted_softmax"):
        out.append(f"model.policy_input: expected 'softmax' or 'sorted_softmax', got {m.policy_input!r}")
    if m.weights is not None and len(m.weights) != len(m.classifiers):
        out.append(f"model.weights: {len(m.weights)} files for {len(m.classifiers)} classifiers")
    if len(m.classifiers) >= 2:
        try:
            thresholds(cfg.eval.tau, len(m.classifiers))
        except ValueError as err:
            out.append(f"eval.tau: {err}")
    if cfg.objective.topk > m.num_classes:
        out.append(f"objective.topk: {cfg.objective.topk} exceeds model.num_classes={m.num_classes}")
    if not out and cfg.objective.budget is not None:
        out += _check_budget(cfg)
    return out


def _check_budget(cfg: Config) -> list[str]:
    """Budget mode needs a budget the cascade can meet: at least the first stage's cost."""
    from .models import Cascade

    m = cfg.model
    cascade = Cascade(m.classifiers, m.num_classes, m.in_channels, m.image_size, m.policy_hidden,
                      policy_input=m.policy_input)
    floor = 100 * float(cascade.costs[0])
    if cfg.objective.budget < floor:
        return [f"objective.budget: {cfg.objective.budget} % is below the first stage's cost "
                f"({floor:.2f} % of the largest classifier); no stopping policy can meet it"]
    return []


def _check_data_fields(cfg: Config) -> list[str]:
    d, out = cfg.data, []
    if d.backend not in ("dali", "torch"):
        out.append(f"data.backend: expected 'dali' or 'torch', got {d.backend!r}")
    if d.on_error not in ("raise", "skip"):
        out.append(f"data.on_error: expected 'raise' or 'skip', got {d.on_error!r}")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(d, key) < 1:
            out.append(f"data.{key}: must be >= 1, got {getattr(d, key)}")
    if d.loader_workers < 0:
        out.append(f"data.loader_workers: must be >= 0, got {d.loader_workers}")
    return out


def _check_run(cfg: Config) -> list[str]:
    r, out = cfg.run, []
    if r.num_workers < 1:
        out.append(f"run.num_workers: must be >= 1, got {r.num_workers}")
    if r.zero_stage not in (0, 1, 2):
        out.append(f"run.zero_stage: expected 0, 1 or 2, got {r.zero_stage}")
    if r.bf16 and not r.use_gpu:
        out.append("run.bf16: bf16 needs run.use_gpu=true (CPU workers train in float32)")
    if r.max_failures < -1:
        out.append(f"run.max_failures: must be >= -1 (-1 = forever), got {r.max_failures}")
    if r.checkpoints_to_keep < 1:
        out.append(f"run.checkpoints_to_keep: must be >= 1, got {r.checkpoints_to_keep}")
    if not r.name or "/" in r.name:
        out.append(f"run.name: must be a non-empty name without '/', got {r.name!r}")
    return out


def _check_warm_start(cfg: Config) -> list[str]:
    ws = cfg.run.warm_start
    if ws is not None and not (Path(ws) / "checkpoint").is_dir():
        return [f"run.warm_start: no DeepSpeed checkpoint (a 'checkpoint/' folder) under {ws}"]
    return []


def _check_against_manifest(cfg: Config) -> list[str]:
    from .data.manifest import Manifest

    shards = Path(cfg.data.shards)
    if not shards.is_dir():
        return [f"data.shards: shard directory not found: {shards} (build it with `python -m data_shards`)"]
    out, manifests = [], {}
    for split in ("train", cfg.data.eval_split):
        try:
            manifests[split] = Manifest.load(shards / split)
        except (OSError, ValueError) as err:
            out.append(f"data.shards: {err}")
    train = manifests.get("train")
    if train is not None:
        where = shards / "train" / "manifest.json"
        if train.num_classes != cfg.model.num_classes:
            out.append(f"model.num_classes: {cfg.model.num_classes} but {where} has num_classes={train.num_classes}")
        if train.channels != cfg.model.in_channels:
            out.append(f"model.in_channels: {cfg.model.in_channels} but {where} has channels={train.channels}")
        other = manifests.get(cfg.data.eval_split)
        if other is not None and other.num_classes != train.num_classes:
            out.append(f"data.eval_split: {shards / cfg.data.eval_split} has {other.num_classes} classes, "
                       f"train has {train.num_classes}")
    return out
