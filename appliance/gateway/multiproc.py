"""Where the gateway's worker processes keep their Prometheus metric files.

Kept apart from metrics.py on purpose: prometheus_client decides at the creation
of each metric whether it is multiprocess, so the directory must be set before
metrics.py (or anything importing it) is imported.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> None:
    """Called once, before the workers fork: a clean directory for their metric files."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(path)
