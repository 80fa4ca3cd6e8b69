"""Content-addressed artifact store: files named by their sha256, verified on every copy."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from django.conf import settings

from appliance.core.errors import DomainError


class ArtifactError(DomainError):
    """An artifact is missing, too large, corrupt or unsafe to unpack."""


_CHUNK = 1024 * 1024


def _root() -> Path:
    return Path(settings.ARTIFACT_ROOT)


def artifact_path(sha256: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ArtifactError(f"{sha256!r} is not a sha256 hex digest")
    return _root() / "sha256" / sha256[:2] / sha256


def artifact_put(stream: IO[bytes]) -> tuple[str, int]:
    """Stores the stream; returns (sha256, size). Storing the same bytes twice is a no-op."""
    root = _root()
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=root / "tmp", delete=False) as tmp:
        try:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > settings.ARTIFACT_MAX_BYTES:
                    raise ArtifactError(f"artifact is larger than the limit of {settings.ARTIFACT_MAX_BYTES} bytes")
                digest.update(chunk)
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    sha = digest.hexdigest()
    final = artifact_path(sha)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp.name, final)
    os.chmod(final, 0o444)
    return sha, size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_read_verified(sha256: str) -> bytes:
    """The artifact's bytes, after checking they still hash to their name."""
    path = artifact_path(sha256)
    if not path.exists():
        raise ArtifactError(f"artifact {sha256} is not in the store")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ArtifactError(f"artifact {sha256} is corrupt: its content hashes to {actual}")
    return data


def check_archive(data: bytes) -> list[str]:
    """Names of the regular files in a .tar.gz artifact; refuses anything unsafe to unpack,
    or that would unpack to more than ARTIFACT_MAX_UNPACKED_BYTES. Headers are read one at a
    time, each before the data it announces is decompressed, so a refusal costs no more
    than the limit's worth of decompression, and nothing is written."""
    limit = settings.ARTIFACT_MAX_UNPACKED_BYTES
    unpacked = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            names = []
            for member in archive:
                name = member.name
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ArtifactError(f"archive member {name!r} escapes the version directory")
                if not (member.isfile() or member.isdir()):
                    raise ArtifactError(f"archive member {name!r} is not a regular file or directory")
                # Each entry counts its header block too, so a million empty files is bounded as well.
                unpacked += tarfile.BLOCKSIZE + member.size
                if unpacked > limit:
                    raise ArtifactError(f"the artifact unpacks to more than the limit of {limit} bytes "
                                        f"(APPLIANCE_ARTIFACT_MAX_UNPACKED_BYTES); reached at member {name!r}")  # fmt: skip
                if member.isfile():
                    names.append(name.removeprefix("./"))
            return names
    except tarfile.TarError as exc:
        raise ArtifactError(f"artifact is not a readable tar archive: {exc}") from exc


def unpack_into(data: bytes, fmt: str, target: Path) -> None:
    """Writes a version directory's content from the artifact bytes."""
    from appliance.catalog.choices import ArtifactFormat

    target.mkdir(parents=True, exist_ok=True)
    if fmt == ArtifactFormat.ONNX:
        (target / "model.onnx").write_bytes(data)
    elif fmt == ArtifactFormat.TENSORRT_PLAN:
        (target / "model.plan").write_bytes(data)
    elif fmt == ArtifactFormat.ENSEMBLE:
        pass  # an ensemble's version directory is empty: its steps are in config.pbtxt
    else:
        check_archive(data)
        # Written member by member rather than with extractall(filter="data"), which Python
        # 3.11 has only from 3.11.4 (a Debian 12 node runs 3.11.2): check_archive has let
        # through regular files and directories only, inside the target; modes are plain.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive:
                path = target / member.name.removeprefix("./")
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None  # a regular file (check_archive)
                path.write_bytes(source.read())
                path.chmod(0o755 if member.mode & 0o111 else 0o644)


def artifact_fetch(sha256: str, *, base_url: str, credential: str, ca_file: str = "") -> bytes:
    """An artifact this node's store lacks, from the control plane (a provisioned node shares
    no disk with it): GET /api/v1/node-artifacts/<sha256>/ with the node's own credential, checked
    against its sha256, then kept in the node's store so the next load reads it locally."""
    import urllib.error

    from appliance.core.node_door import node_get

    artifact_path(sha256)  # a malformed digest never reaches a URL
    try:
        data = node_get(base_url, f"/api/v1/node-artifacts/{sha256}/", credential=credential, ca_file=ca_file,
                        limit=settings.ARTIFACT_MAX_BYTES + 1)  # fmt: skip
    except urllib.error.HTTPError as exc:
        raise ArtifactError(f"the control plane answered {exc.code} for artifact {sha256}") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot fetch artifact {sha256} from the control plane: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ArtifactError(f"artifact {sha256} came corrupt from the control plane: its content hashes to {actual}")
    artifact_put(io.BytesIO(data))
    return data
