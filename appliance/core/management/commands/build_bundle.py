from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

# What a node or the control plane runs from the release: the code, the model builders'
# runtime parts, the pins. The native gateway front is added where it was built.
RELEASE_PATHS = ("manage.py", "appliance", "triton_models", "requirements.txt", "requirements-triton.txt")
# Each environment's pins, downloaded apart (their numpy pins differ); pip itself comes along,
# so that a node without python3-venv's ensurepip installs it from its wheel.
REQUIREMENTS = ("requirements.txt", "requirements-triton.txt")
# Debian packages a node needs beyond a minimal install, carried in the bundle too: Triton's
# Python-backend stub links the interpreter's shared library, and it comes with the rest of
# the interpreter at one version (installed together, offline, by the triton role).
# The Python the servers run the environments on: Debian 12's (markers such as redis's
# `python_full_version < "3.11.3"` pick wheels by it, not by the builder's Python).
TARGET_PYTHON = "3.11.2"
DEBS = ("libpython3.11", "libpython3.11-stdlib", "libpython3.11-minimal", "python3.11", "python3.11-minimal")


def _deterministic(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def write_tar(target: Path, files: list[tuple[str, Path]], *, compress: bool) -> None:
    """A tarball whose bytes depend only on the files' contents and names (sorted, no times,
    no owners), so that the same release gets the same sum and a re-run of the play changes nothing."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(files):
            tar.add(path, arcname=name, recursive=False, filter=_deterministic)
    data = raw.getvalue()
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    target.write_bytes(data)


def release_files(root: Path) -> list[tuple[str, Path]]:
    """The release's files: tracked by git where the tree is a checkout (no caches, no local
    state), else every file under RELEASE_PATHS but bytecode."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *RELEASE_PATHS], cwd=root, check=True,
                                capture_output=True).stdout.decode().split("\0")  # fmt: skip
        names = [n for n in listed if n and (root / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(root)) for top in RELEASE_PATHS for p in sorted((root / top).rglob("*") if (root / top).is_dir() else [root / top])
                 if p.is_file() and "__pycache__" not in p.parts]  # fmt: skip
    files = [(n, root / n) for n in names]
    native = settings.GATEWAY_NATIVE_BINARY
    if native.is_file():
        files.append(("var/build/gatewayd", native))
    return files


class Command(BaseCommand):
    help = (
        "Build the air-gapped bundle the provisioning installs from: wheelhouse.tar (every wheel of "
        "requirements.txt and requirements-triton.txt, and pip), release.tar.gz (the appliance's code) and "
        "SHA256SUMS. Copy the directory to the control plane (ansible: appliance_bundle_dir), which serves it "
        "to the nodes under /bundle/."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, required=True, help="directory to write the bundle into")
        parser.add_argument("--wheelhouse", type=Path, default=None,
                            help="a cache of wheels, one directory per set of pins (downloaded when missing)")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        root = Path(settings.BASE_DIR)
        out: Path = options["out"]
        out.mkdir(parents=True, exist_ok=True)
        # One directory of wheels per set of pins (kept between builds when --wheelhouse names a cache).
        wheels: Path = (options["wheelhouse"] or out / "wheels") / self._pins_digest(root)
        marker = wheels / ".complete"
        if not marker.exists():
            wheels.mkdir(parents=True, exist_ok=True)
            for requirements in REQUIREMENTS:
                self._download(wheels, "-r", str(root / requirements))
            self._download(wheels, "pip")
            self._debs(wheels / "debs")
            marker.write_text("")
        files = [(p.name, p) for p in wheels.glob("*.whl")] + [(r, root / r) for r in REQUIREMENTS]
        files += [(f"debs/{p.name}", p) for p in (wheels / "debs").glob("*.deb")]
        write_tar(out / "wheelhouse.tar", files, compress=False)
        write_tar(out / "release.tar.gz", release_files(root), compress=True)
        sums = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("wheelhouse.tar", "release.tar.gz")}
        (out / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))
        for name, digest in sorted(sums.items()):
            self.stdout.write(f"{name}: {(out / name).stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}…")

    @staticmethod
    def _pins_digest(root: Path) -> str:
        pins = b"".join((root / r).read_bytes() for r in REQUIREMENTS) + TARGET_PYTHON.encode()
        return hashlib.sha256(pins).hexdigest()[:16]

    @staticmethod
    def _debs(target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.deb"):
            old.unlink()
        done = subprocess.run(["apt-get", "download", *DEBS], cwd=target, capture_output=True, text=True)
        if done.returncode != 0:
            raise CommandError(f"apt-get download {' '.join(DEBS)} failed (build the bundle on Debian 12): "
                               f"{done.stderr[-2000:]}")  # fmt: skip

    @staticmethod
    def _download(wheels: Path, *what: str) -> None:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--python-version", TARGET_PYTHON, "--dest", str(wheels), *what]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise CommandError(f"pip download {' '.join(what)} failed: {done.stderr[-2000:]}")
