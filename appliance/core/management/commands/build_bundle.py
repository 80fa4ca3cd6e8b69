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
                            help="reuse this directory of wheels (downloaded into it when missing)")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        root = Path(settings.BASE_DIR)
        out: Path = options["out"]
        out.mkdir(parents=True, exist_ok=True)
        wheels: Path = options["wheelhouse"] or out / "wheels"
        marker = wheels / f".complete-{self._pins_digest(root)}"
        if not marker.exists():
            wheels.mkdir(parents=True, exist_ok=True)
            for requirements in REQUIREMENTS:
                self._download(wheels, "-r", str(root / requirements))
            self._download(wheels, "pip")
            marker.write_text("")
        files = [(p.name, p) for p in wheels.glob("*.whl")] + [(r, root / r) for r in REQUIREMENTS]
        write_tar(out / "wheelhouse.tar", files, compress=False)
        write_tar(out / "release.tar.gz", release_files(root), compress=True)
        sums = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("wheelhouse.tar", "release.tar.gz")}
        (out / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))
        for name, digest in sorted(sums.items()):
            self.stdout.write(f"{name}: {(out / name).stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}…")

    @staticmethod
    def _pins_digest(root: Path) -> str:
        return hashlib.sha256(b"".join((root / r).read_bytes() for r in REQUIREMENTS)).hexdigest()[:16]

    @staticmethod
    def _download(wheels: Path, *what: str) -> None:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--dest", str(wheels), *what]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise CommandError(f"pip download {' '.join(what)} failed: {done.stderr[-2000:]}")
