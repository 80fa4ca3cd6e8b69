"""A CPU budget for a process: a cgroup with a CFS quota (cgroup v1's cpu controller, or
cgroup v2's cpu.max), so that a benchmark can give each gateway process the same fixed
share of a CPU on a machine too small to give each one a core of its own.

Needs root and a writable cpu controller; `CpuBudget.available()` says why not otherwise.
Bench-only: the appliance never changes cgroups.
"""

from __future__ import annotations

import os
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")


class CpuBudget:
    def __init__(self, name: str, cpus: float, period_us: int = 100_000) -> None:
        """`cpus` of CPU time per `period_us` of wall time (the kernel's default period: a
        shorter one holds a throttled process back for less, but in slices so short that a
        thread is often stopped holding a lock the others then wait for)."""
        problem = self.available()
        if problem:
            raise RuntimeError(problem)
        self.quota_us = max(1000, round(cpus * period_us))
        self.v1 = (V1 / "cpu.cfs_quota_us").is_file()
        root = V1 if self.v1 else V2
        self.root = root
        self.path = root / f"bench-{name}-{os.getpid()}"
        self.path.mkdir()
        if self.v1:
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        else:
            (self.path / "cpu.max").write_text(f"{self.quota_us} {period_us}")

    @staticmethod
    def available() -> str:
        """Empty when budgets can be set here, else the reason they cannot."""
        if os.geteuid() != 0:
            return "CPU budgets need root (they create cgroups)"
        if (V1 / "cpu.cfs_quota_us").is_file():
            return "" if os.access(V1, os.W_OK) else f"{V1} is not writable"
        controllers = V2 / "cgroup.subtree_control"
        if controllers.is_file() and "cpu" in controllers.read_text().split():
            return "" if os.access(V2, os.W_OK) else f"{V2} is not writable"
        return "no cgroup cpu controller (v1 cpu, or v2 with +cpu in cgroup.subtree_control)"

    def add(self, pid: int) -> None:
        """Move the process, every thread of it, into the budget."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Hand any process still inside back to the root group, then remove the group."""
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                (self.root / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        self.path.rmdir()
