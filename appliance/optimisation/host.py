"""The host measurements are taken on, as jobs and profile searches record it."""

from __future__ import annotations

import os
import platform
import socket


def machine() -> str:
    """"name (CPU model, N CPUs)"."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{socket.gethostname()} ({cpu}, {os.cpu_count()} CPUs)"
