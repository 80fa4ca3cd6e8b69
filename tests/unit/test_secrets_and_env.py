from __future__ import annotations

import pytest

from appliance.accounts.secrets import hash_secret, make_secret
from appliance.core.dburl import database_from_url
from appliance.core.env import SettingError, env_bool, env_int, env_str


def test_secret_is_random_and_only_its_hash_matches() -> None:
    a, b = make_secret("ak"), make_secret("ak")
    assert a.plaintext != b.plaintext
    assert a.plaintext.startswith(a.prefix + "_")
    assert hash_secret(a.plaintext) == a.digest
    assert a.digest != a.plaintext and len(a.digest) == 64


def test_env_helpers_fail_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("APPLIANCE_X_INT", "seven")
    with pytest.raises(SettingError, match="expected an integer"):
        env_int("X_INT", 1)
    monkeypatch.setenv("APPLIANCE_X_BOOL", "maybe")
    with pytest.raises(SettingError, match="true or false"):
        env_bool("X_BOOL", False)
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("APPLIANCE_X_SECRET_FILE", str(secret))
    assert env_str("X_SECRET", "") == "s3cret"


def test_database_url_parsing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pg = database_from_url("postgresql://app:p%40ss@db.local:6543/fleet", base_dir=tmp_path)
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == ("fleet", "app", "p@ss", "db.local", "6543")
    socket = database_from_url("postgresql:///fleet?host=/var/run/postgresql", base_dir=tmp_path)
    assert (socket["NAME"], socket["USER"], socket["HOST"]) == ("fleet", "", "/var/run/postgresql")  # peer auth
    lite = database_from_url("sqlite:///var/x.sqlite3", base_dir=tmp_path)
    assert lite["NAME"] == str(tmp_path / "var" / "x.sqlite3")
    with pytest.raises(SettingError):
        database_from_url("mysql://x/y", base_dir=tmp_path)
