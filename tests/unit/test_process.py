"""The one process supervisor (appliance/core/process.py), with real processes: a child
that starts a process of its own which ignores SIGTERM, as Triton's Python-backend stubs do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from appliance.core.process import (
    ProcessTree,
    Supervisor,
    free_ports,
    group_members,
    listening,
    living_processes,
    port_open,
    wait_until,
)

# Ignores SIGTERM and would sleep for minutes: only the supervisor's KILL ends it.
STUB = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"


def _parent(pids: Path) -> list[str]:
    """A child that starts a stub, writes '<its pid> <the stub's pid>' to `pids`, then sleeps."""
    script = (
        "import os, subprocess, sys, time\n"
        f"stub = subprocess.Popen([sys.executable, '-c', {STUB!r}])\n"
        f"with open({str(pids)!r}, 'a') as out:\n"
        "    out.write(f'{os.getpid()} {stub.pid}\\n')\n"
        "time.sleep(300)\n"
    )
    return [sys.executable, "-c", script]


def _lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def _living(pid: int) -> bool:
    return pid in {p.pid for p in living_processes()}


def test_stop_ends_the_whole_tree_even_what_ignores_sigterm(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    tree = ProcessTree(name="parent", argv=_parent(pids), log_path=tmp_path / "log")
    tree.start()
    assert wait_until(lambda: _lines(pids), timeout=30)
    parent, stub = _lines(pids)[0]
    assert tree.pid == parent and set(tree.members()) == {parent, stub}, "the stub is in the child's own group"
    assert os.getpgid(parent) != os.getpgid(0), "the child leads a group of its own, not ours"
    tree.stop(timeout=10)
    assert tree.returncode == -signal.SIGTERM
    assert not _living(stub) and group_members(parent) == []


def test_a_killed_child_is_reaped_with_its_stub_before_it_is_started_again(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    readied: list[int] = []
    supervisor = Supervisor(ProcessTree(name="parent", argv=_parent(pids)), ready=lambda: len(_lines(pids)) > len(readied),
                            on_ready=[lambda: readied.append(1)], first_backoff_s=0.1, interval_s=0.05)  # fmt: skip
    supervisor.start()
    try:
        assert wait_until(lambda: readied, timeout=30)
        parent, stub = _lines(pids)[0]
        os.kill(parent, signal.SIGKILL)
        assert wait_until(lambda: len(_lines(pids)) == 2, timeout=30), "started again"
        # The stub, re-parented and alive for minutes otherwise, was killed before the restart.
        assert not _living(stub)
        assert supervisor.restarts == 1 and supervisor.tree.pid == _lines(pids)[1][0]
        assert wait_until(lambda: len(readied) == 2, timeout=30), "the on-ready callbacks ran after the restart too"
    finally:
        supervisor.stop(timeout=10)
    second, second_stub = _lines(pids)[1]
    assert not _living(second) and not _living(second_stub)


def test_a_child_that_never_gets_ready_is_given_up_after_so_many_starts(tmp_path: Path) -> None:
    gave_up: list[int] = []
    supervisor = Supervisor(ProcessTree(name="broken", argv=[sys.executable, "-c", "raise SystemExit(3)"]),
                            ready=lambda: False, first_backoff_s=0.05, max_backoff_s=0.1, interval_s=0.05,
                            give_up_after=3, on_give_up=lambda: gave_up.append(supervisor.restarts))  # fmt: skip
    supervisor.start()
    try:
        assert wait_until(lambda: gave_up, timeout=30)
    finally:
        supervisor.stop(timeout=5)
    assert gave_up == [2] and supervisor.failed_starts == 3 and supervisor.tree.returncode == 3


def test_free_ports_are_distinct_and_a_listener_is_seen_with_its_owner() -> None:
    import socket

    ports = free_ports(5)
    assert len(set(ports)) == 5
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", ports[0]))
            assert not port_open("127.0.0.1", ports[0]) and not listening(os.getpid(), ports[0])
            server.listen()
            assert port_open("127.0.0.1", ports[0]) and listening(os.getpid(), ports[0])
            assert not listening(other.pid, ports[0]), "open, but not by that process"
            assert not listening(os.getpid(), ports[1])
    finally:
        other.kill()
        other.wait()


def test_a_background_job_stops_on_sigint_with_the_handlers_installed() -> None:
    """A shell starts a background job with SIGINT ignored; Python keeps that ignore unless
    told otherwise. stop_on_signals() makes SIGINT stop it as SIGTERM does."""
    script = (
        "import sys, time\n"
        "ignored = int(next(l for l in open('/proc/self/status') if l.startswith('SigIgn:')).split()[1], 16)\n"
        "print('sigint-ignored' if ignored & (1 << (2 - 1)) else 'sigint-default', flush=True)\n"
        "from appliance.core.process import stop_on_signals\n"
        "stop_on_signals()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
        "except KeyboardInterrupt as stop:\n"
        "    print(f'stopped by {stop}', flush=True)\n"
        "    sys.exit(3)\n"
    )
    root = Path(__file__).resolve().parents[2]
    shell = subprocess.Popen(["bash", "-c", 'python_bin="$1"; shift; "$python_bin" -c "$1" & echo $!; wait',
                              "bash", sys.executable, script],
                             cwd=root, stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    assert shell.stdout is not None
    try:
        pid = int(shell.stdout.readline())
        assert shell.stdout.readline().strip() == "sigint-ignored", "the premise: a background job starts with SIGINT ignored"
        assert shell.stdout.readline().strip() == "ready"
        os.kill(pid, signal.SIGINT)
        assert shell.stdout.readline().strip() == "stopped by SIGINT"
        assert shell.wait(timeout=30) == 0
        assert not _living(pid)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)


def test_a_child_that_hangs_instead_of_getting_ready_is_stopped_and_counts_as_failed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    gave_up: list[int] = []
    supervisor = Supervisor(ProcessTree(name="hangs", argv=_parent(pids)), ready=lambda: False, first_backoff_s=0.05,
                            interval_s=0.05, ready_timeout_s=0.5, give_up_after=2,
                            on_give_up=lambda: gave_up.append(supervisor.restarts))  # fmt: skip
    supervisor.start()
    try:
        assert wait_until(lambda: gave_up, timeout=60)
    finally:
        supervisor.stop(timeout=5)
    assert gave_up == [1] and len(_lines(pids)) == 2, "started twice, stopped twice, then given up"
    assert not any(_living(pid) for pair in _lines(pids) for pid in pair), "each stopped with its stub"
