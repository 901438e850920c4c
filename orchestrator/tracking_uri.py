"""MLflow tracking URIs: which are supported, and what a URI's scheme says about it. Defined once, parsed
by scheme (urllib.parse), not by string prefix. Pure and import-light: the config schema imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "databricks")
DRIVER_SCHEMES = ("postgresql", "mysql")  # SQLAlchemy URLs name a driver: postgresql+psycopg2://
SCHEME_FORMS = ("sqlite:///PATH", "file:///PATH", "http(s)://HOST", "postgresql[+DRIVER]://", "mysql[+DRIVER]://",
                "databricks")
DEFAULT_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class TrackingUri:
    scheme: str  # one of SCHEMES, without the driver
    driver: str | None
    netloc: str
    path: str
    query: str = ""


def parse_tracking_uri(uri: str) -> TrackingUri:
    """The URI split by scheme, or a ValueError naming the supported forms."""
    refused = ValueError(f"unsupported tracking URI {uri!r}; use one of {', '.join(SCHEME_FORMS)}")
    if uri == "databricks":  # MLflow's bare profile-less form has no "://"
        return TrackingUri("databricks", None, "", "")
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. a malformed IPv6 host
        raise refused from None
    scheme, plus, driver = parts.scheme.partition("+")
    if scheme not in SCHEMES or "://" not in uri or plus and (scheme not in DRIVER_SCHEMES or not driver):
        raise refused
    if scheme == "sqlite" and (parts.netloc or len(parts.path) < 2):  # a file: sqlite:///rel.db or sqlite:////abs.db
        raise refused
    if scheme in ("http", "https") and not parts.netloc or scheme == "file" and not parts.path:
        raise refused
    if scheme in DRIVER_SCHEMES and not (parts.netloc or parts.path.strip("/")):  # neither a host nor a database
        raise refused
    return TrackingUri(scheme, driver or None, parts.netloc, parts.path, parts.query)


def _parsed(uri: str) -> TrackingUri | None:
    try:
        return parse_tracking_uri(uri)
    except ValueError:
        return None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (relative as written), else None."""
    parsed = _parsed(uri)
    return Path(parsed.path[1:]) if parsed and parsed.scheme == "sqlite" else None


def is_remote_http(uri: str) -> bool:
    parsed = _parsed(uri)
    return parsed is not None and parsed.scheme in ("http", "https")


def is_remote_db(uri: str) -> bool:
    """A database server (PostgreSQL, MySQL) used directly as the store: it can go away and come back."""
    parsed = _parsed(uri)
    return parsed is not None and parsed.scheme in DRIVER_SCHEMES


def is_durable_in_ray_job(uri: str) -> bool:
    """Inside a Ray job the working folder is temporary: only a server or an absolute sqlite path outlives it."""
    path = sqlite_path(uri)
    return is_remote_http(uri) or (path is not None and path.is_absolute())


def resolve_tracking_uri(configured: str | None) -> str:
    """MLFLOW_TRACKING_URI wins, then the config, then sqlite:///mlflow.db made absolute (Ray actors and
    jobs run in other folders, where a relative path would point elsewhere)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        query = parse_tracking_uri(uri).query
        uri = "sqlite:///" + str(path.resolve()) + (f"?{query}" if query else "")
    return uri
