"""Turn APPLIANCE_DB_URL into Django's DATABASES entry."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from appliance.core.env import SettingError


def database_from_url(url: str, *, base_dir: Path) -> dict[str, object]:
    parsed = urlparse(url)
    if parsed.scheme in {"postgres", "postgresql"}:
        name = parsed.path.lstrip("/")
        if not name:
            raise SettingError(f"APPLIANCE_DB_URL={url!r}: names no database")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            # ?host=/var/run/postgresql: the Unix socket (peer authentication, as the database owner migrates)
            "HOST": parse_qs(parsed.query).get("host", [parsed.hostname or "127.0.0.1"])[0],
            "PORT": str(parsed.port or 5432),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
            "TEST": {"NAME": f"test_{name}"},
        }
    if parsed.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path
        raw = url[len("sqlite:///") :]
        path = Path(raw) if raw.startswith("/") else base_dir / raw
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path), "OPTIONS": {"timeout": 20}}
    raise SettingError(f"APPLIANCE_DB_URL={url!r}: expected postgresql://… or sqlite:///…")
