from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from appliance.catalog.artifacts import (
    ArtifactError,
    artifact_path,
    artifact_put,
    artifact_read_verified,
    check_archive,
    unpack_into,
)
from triton_models.packaging import pack_files


def test_store_is_content_addressed_and_idempotent() -> None:
    data = os.urandom(4096)
    sha, size = artifact_put(io.BytesIO(data))
    assert sha == hashlib.sha256(data).hexdigest() and size == 4096
    assert artifact_put(io.BytesIO(data)) == (sha, size)
    assert artifact_read_verified(sha) == data


def test_corruption_is_detected_on_read() -> None:
    sha, _ = artifact_put(io.BytesIO(os.urandom(100)))
    path = artifact_path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        artifact_read_verified(sha)


def test_unsafe_archives_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArtifactError, match="escapes"):
        check_archive(buf.getvalue())
    with pytest.raises(ArtifactError, match="not a readable tar"):
        check_archive(b"not a tarball")


def test_python_artifact_unpacks_into_the_version_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = pack_files({"model.py": b"print('hi')\n", "weights.npz": b"\x00\x01"})
    assert sorted(check_archive(data)) == ["model.py", "weights.npz"]
    unpack_into(data, "python", tmp_path / "1")
    assert (tmp_path / "1" / "model.py").read_bytes() == b"print('hi')\n"
    assert pack_files({"a": b"1"}) == pack_files({"a": b"1"}), "artifacts must be reproducible"


def test_digits_build_is_accurate_and_reproducible(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from triton_models.digits import build

    accuracy = build.build(tmp_path / "a")
    build.build(tmp_path / "b")
    assert accuracy >= 0.95
    assert (tmp_path / "a" / "digits.tar.gz").read_bytes() == (tmp_path / "b" / "digits.tar.gz").read_bytes()
