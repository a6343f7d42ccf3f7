"""One home for redaction: passwords in URIs (`scheme://user:secret@host`) never reach params, config
files or logs. `redact` is the string form, `redact_tree` walks the plain data of a config."""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` replaced by `***` (the user kept)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact_tree(obj: Any) -> Any:
    """A copy of nested dicts/lists with every string `redact`ed."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj
