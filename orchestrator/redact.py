"""Credentials in URIs never leave the process: `postgresql://user:secret@db/mlflow` is recorded, printed and
raised as `postgresql://user:***@db/mlflow`.

One helper, used everywhere a URI or text that may hold one is recorded (MLflow params, tags, artifacts,
failure reasons; Optuna study attributes), printed, or put in an error message. Credentials passed by the
environment (MLFLOW_TRACKING_PASSWORD, PGPASSWORD) are never recorded in the first place.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:password@ : the password runs to the last '@' before the host (an unencoded '@' in a
# password is common enough in hand-written URIs); never across whitespace, quotes or a new URI.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<secret>[^\s'\"]*?)@(?=[^\s@'\"]*(?:[\s'\"]|$))")


def redact(text: str) -> str:
    """text with the password of every `scheme://user:password@` in it replaced by ***."""
    if "://" not in text or "@" not in text:
        return text
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)


def redact_tree(obj: Any) -> Any:
    """redact() applied to every string in nested dicts, lists and tuples (params, tags, dict artifacts)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj


def is_redacted(uri: str | None) -> bool:
    """A URI read back from a record, whose password was masked: it cannot be used to connect."""
    return bool(uri) and f":{MASK}@" in uri
