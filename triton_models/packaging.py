"""Packs files into a python-format artifact (.tar.gz) with reproducible bytes."""

from __future__ import annotations

import gzip
import io
import tarfile


def pack_files(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for name in sorted(files):
                info = tarfile.TarInfo(name)
                info.size = len(files[name])
                info.mode = 0o644
                info.mtime = 0
                archive.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()
