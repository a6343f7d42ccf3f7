"""Per-stage export of a cascade (`torch.export`) and `ExportedCascade`, the runtime that loads it.

>>> export_cascade(cascade, "export/", theta=cal.theta)        # stage0.pt2 … stageK-1.pt2, manifest.json
>>> runtime = ExportedCascade.load("export/")                 # no cascade_dist model code involved
>>> runtime.predictor()(images)                               # the same early-exit loop

Each stage (C_t and π_t) is one `torch.export` program with a dynamic batch dimension, returning
(log-softmax of C_t, log π_t(stop), log π_t(continue)). `manifest.json` holds the stage names, MACs, input shape and
the thresholds (θ, from a calibration when given); `ExportedCascade` runs the stages through
`CascadePredictor`, so the exported cascade exits exactly where the eager one does.

Loading unpickles nothing: the manifest is JSON, every `.pt2` must match the sha256 the manifest
records, and before `torch.export.load` reads it each archive is checked to hold no pickled
payload (`torch.export.load` would unpickle a legacy weight file, a tensor subclass, a custom or
opaque object, or sample inputs that `weights_only=True` refuses): weights are raw tensor bytes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..method.exit_rule import ExitRule
from ..method.flops import CascadeMACs
from ..method.models import Cascade, CascadeOutput, StageOutput, dense_forward, stage_forward
from .calibration import CALIBRATION_FILE, Calibration
from .predictor import CascadePredictor

MANIFEST = "manifest.json"
FORMAT = "cascade_dist.export/2"


class _ExportStage(nn.Module):
    """C_t and π_t returning a plain tuple (what an exported program can carry without classes)."""

    def __init__(self, classifier: nn.Module, policy: nn.Module | None):
        super().__init__()
        self.classifier, self.policy = classifier, policy

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(stage_forward(self.classifier, self.policy, images))


def export_cascade(
    model: Cascade,
    out_dir: str | Path,
    tau: float | Sequence[float] = 0.5,
    theta: Sequence[float] | None = None,
    ensemble: bool = True,
    calibration: Calibration | None = None,
) -> Path:
    """Export every stage of `model` into `out_dir`; the thresholds: `calibration`, else `theta`, else `tau`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if calibration is not None:
        theta = calibration.theta
    rule = ExitRule.of(model.num_stages, tau, theta)
    model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()  # CPU float32 (also from bf16); `load` moves it
    example = torch.zeros(2, *model.input_shape)  # batch 2: the batch dimension stays dynamic
    batch = torch.export.Dim("batch", min=1)
    files = []
    for t in range(model.num_stages):
        policy = model.policies[t] if t < model.num_stages - 1 else None
        with torch.no_grad():
            program = torch.export.export(_ExportStage(model.classifiers[t], policy), (example,),
                                          dynamic_shapes=({0: batch},))
        path = out_dir / f"stage{t}.pt2"
        torch.export.save(program, path)
        files.append({"file": path.name, "sha256": _sha256(path)})
    manifest = {
        "format": FORMAT,
        "names": list(model.names),
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "macs": {"classifier": list(model.macs.classifier), "policy": list(model.macs.policy)},
        "theta": list(rule.theta),
        "tau": rule.tau,
        "ensemble": ensemble,
        "stages": files,
        "torch": torch.__version__,
    }
    if calibration is not None:
        calibration.save(out_dir / CALIBRATION_FILE)
    tmp = out_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / MANIFEST)  # written last, atomically: the export's commit
    return out_dir


@dataclass
class ExportedCascade:
    """The exported stages and their manifest: a `StageRunner` for `CascadePredictor`."""

    names: list[str]
    num_classes: int
    input_shape: tuple[int, ...]
    macs: CascadeMACs
    theta: list[float]
    ensemble: bool
    stages: list[nn.Module]
    device: torch.device

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def run_stage(self, t: int, images: torch.Tensor) -> StageOutput:
        return StageOutput(*self.stages[t](images))

    def __call__(self, images: torch.Tensor) -> CascadeOutput:
        """Every stage on every image (the dense reference)."""
        return dense_forward(self, images)

    def predictor(
        self, tau: float | Sequence[float] | None = None, theta: Sequence[float] | None = None
    ) -> CascadePredictor:
        """The early-exit predictor at the manifest's thresholds, or at `tau` / `theta` when given."""
        if tau is None and theta is None:
            theta = self.theta
        return CascadePredictor(self, tau=tau if tau is not None else 0.5, theta=theta, ensemble=self.ensemble,
                                device=self.device)

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "ExportedCascade":
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"not an exported cascade: {path} is missing")
        try:
            m = json.loads(path.read_text())
            if m.get("format") != FORMAT:
                raise ValueError(f"format {m.get('format')!r}, expected {FORMAT!r}")
            stages = []
            for entry in m["stages"]:
                file = directory / entry["file"]
                if Path(entry["file"]).name != entry["file"] or not file.is_file():
                    raise ValueError(f"stage file {entry['file']!r} missing or outside {directory}")
                if _sha256(file) != entry["sha256"]:
                    raise ValueError(f"{file}: sha256 does not match the manifest")
                check_pickle_free(file)
                stages.append(torch.export.load(file).module().to(device))
            macs = CascadeMACs(tuple(m["macs"]["classifier"]), tuple(m["macs"]["policy"]))
            return cls(list(m["names"]), int(m["num_classes"]), tuple(m["input_shape"]), macs,
                       [float(t) for t in m["theta"]], bool(m["ensemble"]), stages, torch.device(device))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None


def check_pickle_free(path: str | Path) -> None:
    """Refuse a `.pt2` archive holding anything `torch.export.load` would unpickle."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a .pt2 archive") from None
    with archive:
        for name in archive.namelist():
            if name.endswith((".pkl", ".pickle")):
                raise ValueError(f"{path}: refusing pickled entry {name}")
            if name.endswith(".pt"):  # legacy weights/constants, sample inputs: must load weights-only
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise ValueError(f"{path}: entry {name} is not loadable with weights_only=True") from None
            if name.endswith("_config.json") and ("/data/weights/" in name or "/data/constants/" in name):
                for key, payload in json.loads(archive.read(name))["config"].items():
                    raw = str(payload.get("path_name", "")).startswith(("weight_", "tensor_"))
                    if payload.get("use_pickle") or not raw:
                        raise ValueError(f"{path}: refusing pickled payload {key!r} in {name}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
