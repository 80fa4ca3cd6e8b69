"""Child processes, supervised: the one way the appliance starts, watches, restarts and
stops the processes it runs.

Used by the launcher (`make run`), the end-to-end fleet, the gateway launcher (its native
front, gatewayd) and the node agent (tritonserver, one per node and per MIG device).

Each child leads a session of its own, hence a process group of its own, and the
supervisor owns that whole group: whatever the child starts (Triton's Python-backend
stubs, gunicorn's workers) stays in it even after the child dies and they are
re-parented to init, so a dead child is reaped together with what it left behind and a
stop ends the group as a whole (TERM, a wait, then KILL).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_SETPRIV = shutil.which("setpriv")


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """If the parent is killed outright, the child must not linger holding ports (a node
    agent's Triton, the gateway's native front). Not with a preexec_fn: the parent has
    gRPC threads, and Python code between fork and exec can then crash it (gRPC skips its
    fork handlers). util-linux's setpriv sets the parent-death signal, then execs.

    The kernel sends it when the *thread* that started the child ends, so children are
    started from a thread that outlives them (Supervisor's own)."""
    return [_SETPRIV, "--pdeathsig", "TERM", *argv] if _SETPRIV else argv


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the kernel hands out now (all held until the last is bound).
    Another process may take one before the caller binds it; a caller that cannot afford
    that keeps a socket bound instead (run_gateway's reservation)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Does something accept TCP connections there? The readiness probe of a server
    that has no better one."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening(pid: int, port: int) -> bool:
    """Does process `pid` itself hold a socket listening on TCP `port`? Stricter than
    port_open: another process on the port (a stale server, one sharing it with
    SO_REUSEPORT) does not count."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        for line in _read(f"/proc/{pid}/net/{table}").decode().splitlines()[1:]:
            fields = line.split()
            # local address (hex ip:port), state 0A = LISTEN, inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                return True
    return False


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Polls until the predicate holds or the deadline passes; True if it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


@dataclass(frozen=True)
class LivingProcess:
    """A process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int

    def cmdline(self) -> bytes:
        """NUL-separated arguments."""
        return _read(f"/proc/{self.pid}/cmdline")

    def environ(self) -> list[bytes]:
        """NAME=value entries (only for processes of our own user)."""
        return _read(f"/proc/{self.pid}/environ").split(b"\0")


def living_processes() -> list[LivingProcess]:
    """Every process on the machine except zombies: they hold nothing, and a container's
    init may never reap the ones re-parented to it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        raw = _read(f"/proc/{entry}/stat").decode(errors="replace")
        fields = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
        if len(fields) > 2 and fields[0] != "Z":
            found.append(LivingProcess(pid=int(entry), ppid=int(fields[1]), pgid=int(fields[2])))
    return found


def group_members(pgid: int) -> list[int]:
    """The living processes of a process group."""
    return [p.pid for p in living_processes() if p.pgid == pgid]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ProcessTree:
    """One child process and everything it starts: the child leads a new session (its
    process group id is its pid), which this object signals, waits for and reaps."""

    name: str
    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    log_path: Path | None = None  # stdout and stderr appended here; None: inherited
    parent_death_signal: bool = True
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        argv = with_parent_death_signal(self.argv) if self.parent_death_signal else list(self.argv)
        if self.log_path is None:
            self.popen = subprocess.Popen(argv, cwd=self.cwd, env=self.env, start_new_session=True)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as out:
                self.popen = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)  # fmt: skip
        return self.popen

    def start_ready(self, ready: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
        """Starts the tree and waits until `ready()` holds or the child exits; whether it is ready
        (a private server: the profile search's Triton, a gate run's vLLM engine)."""
        self.start()
        wait_until(lambda: not self.alive() or ready(), timeout=timeout, interval=interval)
        return bool(ready())

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def members(self) -> list[int]:
        """Every living process of the tree (the child, if alive, and all it started)."""
        return group_members(self.popen.pid) if self.popen is not None else []

    def signal(self, sig: int) -> None:
        """Signals the whole group; only while it has a member, so that a recycled id is never hit."""
        if self.popen is not None and self.members():
            _killpg(self.popen.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """The child's exit status once it exited (None if still running after `timeout`)."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """TERM to the group, up to `timeout` for the child to exit, then KILL to the group;
        then whatever is left of it is killed. Returns the child's exit status."""
        stop_all([self], timeout)
        return self.returncode

    def reap(self, timeout: float = 10.0) -> list[int]:
        """After the child exited: kills what is left of its group and waits until it is
        gone. Returns the pids that were left (a killed Triton's backend stubs)."""
        left = self.members()
        if not left:
            return []
        log.warning("%s left %d process(es) behind (%s); killing them", self.name, len(left), " ".join(map(str, left)))
        self.signal(signal.SIGKILL)
        if not wait_until(lambda: not self.members(), timeout=timeout, interval=0.05):
            log.error("processes of %s's group survive SIGKILL: %s", self.name, self.members())
        return left


@dataclass
class Supervisor:
    """Keeps one ProcessTree running. When its child exits, what is left of its group is
    killed first (a killed Triton's backend stubs would otherwise hold memory, GPU memory
    on a GPU node, for as long as they live), then it is started again after a back-off
    that doubles from `first_backoff_s` up to `max_backoff_s` and goes back to the first
    once the child has been ready; `on_ready` callbacks run after each start once `ready()`
    holds (reloading a Triton's models)."""

    tree: ProcessTree
    ready: Callable[[], bool] = field(default=lambda: True)
    on_ready: list[Callable[[], None]] = field(default_factory=list)
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    interval_s: float = 0.5  # how often readiness is probed after a start
    # A start not ready this long after it began is stopped and counts as failed (0: wait for ever):
    # a child that hangs instead of exiting when it cannot serve.
    ready_timeout_s: float = 0.0
    # After this many starts in a row that died before they were ready, on_give_up is called
    # and the child is left down (0: never give up).
    give_up_after: int = 0
    on_give_up: Callable[[], None] | None = None
    restarts: int = 0
    failed_starts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.tree.name

    def start(self) -> None:
        """Runs the watch loop in a thread of its own, which starts the child: the child's
        parent-death signal is bound to that thread, which lives as long as the supervision."""
        self._thread = threading.Thread(target=self.watch, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self.tree.alive()

    def _spawn(self) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            self.tree.start()
            return True

    def watch(self) -> None:
        backoff = self.first_backoff_s
        waiting_ready = False
        started_at = 0.0
        while not self._stop.is_set():
            try:
                if not self.tree.alive():
                    if self._stop.is_set():
                        return
                    if self.tree.popen is not None:
                        code = self.tree.popen.returncode
                        self.tree.reap()  # before the restart: nothing of the old tree may outlive it
                        if waiting_ready:
                            self.failed_starts += 1
                            if self.give_up_after and self.failed_starts >= self.give_up_after:
                                log.error("%s exited %d times in a row before it was ready; giving up",
                                          self.name, self.failed_starts)  # fmt: skip
                                if self.on_give_up is not None:
                                    self.on_give_up()
                                return
                        self.restarts += 1
                        log.warning("%s exited with %s; restarting in %.1f s", self.name, code, backoff)
                        if self._stop.wait(backoff):
                            return
                        backoff = min(backoff * 2, self.max_backoff_s)
                    if not self._spawn():
                        return
                    waiting_ready, started_at = True, time.monotonic()
                if waiting_ready and self.ready():
                    backoff = self.first_backoff_s
                    waiting_ready = False
                    self.failed_starts = 0
                    self._run_callbacks()
                elif waiting_ready and self.ready_timeout_s and time.monotonic() - started_at > self.ready_timeout_s:
                    log.warning("%s is not ready %.0f s after its start; stopping it", self.name, self.ready_timeout_s)
                    with self._lock:
                        self.tree.stop(timeout=5)  # the next turn counts it as a failed start
            except Exception:  # the supervision must outlive anything (a failed start is retried)
                log.exception("supervising %s", self.name)
                if self._stop.wait(backoff):
                    return
            if waiting_ready:
                self._stop.wait(self.interval_s)
            else:
                self.tree.wait()  # blocks, without polling, until the child exits (stop() ends it too)

    def _run_callbacks(self) -> None:
        for callback in self.on_ready:
            try:
                callback()
            except Exception:  # a failed callback records its own failure
                log.exception("after-start callback of %s failed", self.name)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        with self._lock:
            self.tree.stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)


def stop_all(trees: list[ProcessTree], timeout: float = 20.0) -> None:
    """Stops several trees at once: TERM to every group (last started first), up to
    `timeout` in all for them to exit, KILL to those that did not, then their leftovers."""
    for tree in reversed(trees):
        tree.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for tree in trees:
        if tree.wait(max(0.1, deadline - time.monotonic())) is None:
            log.warning("%s did not stop within %.0f s of SIGTERM; killing it", tree.name, timeout)
            tree.signal(signal.SIGKILL)
            tree.wait(10)
        tree.reap()


def stop_on_signals() -> None:
    """SIGINT and SIGTERM alike raise KeyboardInterrupt in the main thread. Installed
    explicitly because a shell starts a background job with SIGINT ignored and Python keeps
    an ignore it inherits: a script's `make run &` would otherwise stop on SIGTERM only.
    (Children started after this get both signals' defaults back: exec resets handlers.)"""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
