"""Passwords in URIs are redacted in the config file and the MLflow params (one home: data.redact)."""

from __future__ import annotations

from cascade_dist.data.redact import redact, redact_tree


def test_redact_masks_the_password_and_keeps_the_rest():
    assert redact("postgresql://user:secret@db:5432/mlflow") == "postgresql://user:***@db:5432/mlflow"
    assert redact("s3://k:secret@b x://u:secret@h") == "s3://k:***@b x://u:***@h"
    assert redact("/plain/path and http://host/x") == "/plain/path and http://host/x"
    tree = {"a": ["https://u:secret@h/p", 3], "b": {"c": "ftp://x:secret@y"}, "d": None}
    assert "secret" not in repr(redact_tree(tree)) and redact_tree(tree)["a"][1] == 3

