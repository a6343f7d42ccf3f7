"""Per-stage export: the exported runtime exits and predicts exactly as the eager cascade; loading
unpickles nothing."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile

import pytest
import torch
from cascade_fixtures import load_split, spread_cascade

from cascade_dist.inference.calibration import CALIBRATION_FILE, Calibration, calibrate, collect_exit_table
from cascade_dist.inference.export import MANIFEST, ExportedCascade, check_pickle_free, export_cascade
from cascade_dist.inference.predictor import CascadePrediction, CascadePredictor


@pytest.fixture(scope="module")
def exported(small_fashion_mnist_shards, tmp_path_factory):
    images, targets = load_split(small_fashion_mnist_shards, "test", 256)
    cascade = spread_cascade(images)
    table = collect_exit_table(cascade, [(images[:128], targets[:128])])
    cal = calibrate(table, cascade.macs, budget=100.0, per_stage=True, split="val")
    out = export_cascade(cascade, tmp_path_factory.mktemp("export") / "cascade", calibration=cal)
    return cascade, images, cal, out


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_exported_cascade_equals_the_eager_one(exported, batch_size):
    cascade, images, cal, out = exported
    images = images[: {1: 12, 7: 63, 256: 256}[batch_size]]
    runtime = ExportedCascade.load(out)
    eager = CascadePredictor(cascade, theta=cal.theta)

    def run(predictor):
        return CascadePrediction.cat([predictor(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    got, want = run(runtime.predictor()), run(eager)
    for field in ("exit_stage", "predictions", "macs", "probs", "stop_log_odds"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    if batch_size == 256:
        assert len(got.exit_stage.unique()) == 3


def test_manifest_carries_names_costs_and_calibration(exported):
    cascade, _, cal, out = exported
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["names"] == cascade.names and manifest["theta"] == cal.theta
    assert manifest["macs"]["classifier"] == list(cascade.macs.classifier)
    assert [s["file"] for s in manifest["stages"]] == ["stage0.pt2", "stage1.pt2", "stage2.pt2"]
    assert Calibration.load(out / CALIBRATION_FILE) == cal
    runtime = ExportedCascade.load(out)
    assert runtime.macs == cascade.macs and runtime.theta == cal.theta
    assert runtime.predictor(tau=0.5).theta.tolist()[:2] == [0.0, 0.0]


def _copy(out, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def _rewrite(path, name_suffix: str, content: bytes, manifest_dir) -> None:
    """Replace one archive entry and record the new sha256, as a forger would."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    target = next(n for n in entries if n.endswith(name_suffix))
    entries[target] = content
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    manifest = json.loads((manifest_dir / MANIFEST).read_text())
    for stage in manifest["stages"]:
        if stage["file"] == path.name:
            stage["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (manifest_dir / MANIFEST).write_text(json.dumps(manifest))


class _Payload:
    """Unpickling this creates a file: proof that the loader ran foreign code."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_entry_is_refused_before_anything_is_unpickled(exported, tmp_path):
    _, _, _, out = exported
    dst = _copy(out, tmp_path)
    _Payload.marker = tmp_path / "unpickled"
    buf = io.BytesIO()
    torch.save(_Payload(), buf)
    _rewrite(dst / "stage1.pt2", "sample_inputs/model.pt", buf.getvalue(), dst)
    with pytest.raises(ValueError, match="not loadable with weights_only=True"):
        ExportedCascade.load(dst)
    assert not _Payload.marker.exists()


def test_a_payload_flagged_for_pickle_is_refused(exported, tmp_path):
    _, _, _, out = exported
    dst = _copy(out, tmp_path)
    with zipfile.ZipFile(dst / "stage0.pt2") as z:
        name = next(n for n in z.namelist() if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(z.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    _rewrite(dst / "stage0.pt2", "data/weights/model_weights_config.json", json.dumps(config).encode(), dst)
    with pytest.raises(ValueError, match="refusing pickled payload"):
        check_pickle_free(dst / "stage0.pt2")


def test_a_changed_stage_file_or_missing_manifest_is_refused(exported, tmp_path):
    _, _, _, out = exported
    dst = _copy(out, tmp_path)
    with open(dst / "stage2.pt2", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="stage2.pt2: sha256 does not match"):
        ExportedCascade.load(dst)
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        ExportedCascade.load(tmp_path)
