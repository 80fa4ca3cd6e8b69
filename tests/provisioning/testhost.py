"""Booted test hosts for the provisioning tests: a Debian 12 root file system (debootstrap,
cached as a tarball outside the clone, keyed by what it holds) booted under systemd-nspawn
with a real systemd as PID 1, in a network namespace of its own reached over a veth pair,
with sshd inside. Ansible provisions it over SSH like any server; it has no route out.

The host's side of the veth is 10.231.<n>.1, the test host 10.231.<n>.2. Services of this
machine that listen on loopback only (PostgreSQL, RabbitMQ) are forwarded to the host's side
by `Forwarder`: what the node reaches is exactly what a real node would reach of its control
plane, and nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "var" / "build" / "ansible" / "bin" / "ansible-playbook"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
CACHE = Path(os.environ.get("APPLIANCE_TESTHOST_CACHE", Path.home() / ".cache" / "appliance"))
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# A minimal Debian server: what an operator's installer leaves, plus sshd (how Ansible comes in).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "ca-certificates", "sudo")


def rootfs_tarball(mirrored: tuple[str, ...] = ()) -> Path:
    """The cached root file system (about 80 MB compressed), made once per package list.
    `mirrored`: packages whose .debs (with what they depend on) lie in the image's apt cache,
    with the archive's package lists, as a site's local mirror would serve them to a host with
    no route out (the control plane's PostgreSQL, RabbitMQ, Redis, nginx); not installed."""
    held = f"{SUITE} {MIRROR} {' '.join(PACKAGES)}" + (f" mirrored: {' '.join(mirrored)}" if mirrored else "")
    key = hashlib.sha256(held.encode()).hexdigest()[:16]
    tarball = CACHE / f"testhost-{SUITE}-{key}.tar.gz"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "testhost.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        work = CACHE / f"testhost-build-{uuid.uuid4().hex[:8]}"
        try:
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(work), MIRROR],
                           check=True, capture_output=True)  # fmt: skip
            if mirrored:
                shutil.copy("/etc/resolv.conf", work / "etc" / "resolv.conf")
                for command in (["apt-get", "update", "-q"],
                                ["apt-get", "install", "-y", "-q", "--download-only", *mirrored]):  # fmt: skip
                    subprocess.run(["chroot", str(work), *command], check=True, capture_output=True,
                                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
                (work / "etc" / "resolv.conf").unlink()
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "--numeric-owner", "-czf", str(partial), "-C", str(work), "."], check=True)
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


@dataclass
class TestHost:
    """One booted test host; `boot()` after `create()`, `reboot()` as a server would."""

    name: str
    index: int  # the /24 it sits in: 10.231.<index>.0
    root: Path
    key: Path  # the SSH private key Ansible uses
    log: Path
    process: subprocess.Popen[bytes] | None = None

    __test__ = False  # not a test class, whatever pytest thinks of the name

    @property
    def address(self) -> str:
        return f"10.231.{self.index}.2"

    @property
    def host_side(self) -> str:
        return f"10.231.{self.index}.1"

    @property
    def veth(self) -> str:
        return f"ve-{self.name}"[:15]

    @classmethod
    def create(cls, name: str, index: int, workdir: Path, mirrored: tuple[str, ...] = ()) -> TestHost:
        root = workdir / name
        root.mkdir(parents=True)
        with tarfile.open(rootfs_tarball(mirrored)) as tar:
            tar.extractall(root, numeric_owner=True, filter="fully_trusted")
        key = workdir / f"{name}.key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        host = cls(name=name, index=index, root=root, key=key, log=workdir / f"{name}.console.log")
        ssh = root / "root" / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(key.with_suffix(".key.pub").read_text())
        (root / "etc" / "hostname").write_text(f"{name}\n")
        # As Debian's installer writes it: the host's own name resolves (RabbitMQ's node name needs it).
        (root / "etc" / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost\n")
        (root / "etc" / "systemd" / "network" / "10-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={host.address}/24\n")  # fmt: skip
        wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for unit in ("systemd-networkd.service", "ssh.service"):
            link = wants / unit
            if not link.is_symlink():
                link.symlink_to(f"/lib/systemd/system/{unit}")
        return host

    def boot(self, timeout: float = 60.0) -> None:
        """Starts the container (systemd as PID 1) and waits for sshd on its address."""
        with self.log.open("ab") as console:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", str(self.root), "--register=no", "--keep-unit", "-b",
                 "--network-veth", "-M", self.name],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _link_exists(self.veth):
            self._alive_or_raise()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no veth after {timeout:.0f} s")
            time.sleep(0.1)
        subprocess.run(["ip", "addr", "replace", f"{self.host_side}/24", "dev", self.veth], check=True)
        subprocess.run(["ip", "link", "set", self.veth, "up"], check=True)
        while self.ssh("true", check=False, timeout=5).returncode != 0:
            self._alive_or_raise()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: sshd did not answer within {timeout:.0f} s:\n{self.console()}")
            time.sleep(0.2)

    def reboot(self, timeout: float = 120.0) -> None:
        """`systemctl reboot` inside; systemd-nspawn ends (exit 133, as systemd-nspawn@.service
        restarts on) and the machine is started again, as a server comes back."""
        assert self.process is not None
        self.ssh("systemctl reboot", check=False)
        code = self.process.wait(timeout=timeout)
        assert code == 133, f"{self.name}: nspawn ended with {code} on reboot, not 133:\n{self.console()}"
        self.boot(timeout=timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # nspawn powers the container off
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ssh", *self.ssh_options(), f"root@{self.address}", command],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}$ {command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def ansible_vars(self) -> dict[str, str]:
        """How Ansible reaches this host (root over SSH with the host's key)."""
        return {"ansible_user": "root", "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}  # fmt: skip

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "BatchMode=yes"]  # fmt: skip

    def console(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def _alive_or_raise(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name}: nspawn exited with {self.process.returncode}:\n{self.console()}")


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


class Forwarder:
    """TCP forwarding from the host's side of a veth to a loopback-only service of this
    machine (PostgreSQL, RabbitMQ), in a thread with its own event loop."""

    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        self.routes = routes
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.servers: list[asyncio.Server] = []

    def __enter__(self) -> Forwarder:
        self.thread.start()
        assert self.ready.wait(10), "the forwarder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _close(self) -> None:
        for server in self.servers:
            server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.servers = [self.loop.run_until_complete(asyncio.start_server(self._handler(target), host, port, reuse_address=True))
                        for (host, port), target in self.routes.items()]  # fmt: skip
        self.ready.set()
        self.loop.run_forever()

    @staticmethod
    def _handler(target: tuple[str, int]):  # type: ignore[no-untyped-def]
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            except asyncio.CancelledError:
                pass  # the forwarder is closing: both ends are closed below
            finally:
                for end in (writer, up_writer):
                    end.close()

        return handle


@contextlib.contextmanager
def booted(names: list[str], workdir: Path, first_index: int = 231,
           mirrored: tuple[str, ...] = ()) -> Iterator[list[TestHost]]:  # fmt: skip
    hosts = [TestHost.create(name, first_index + i, workdir, mirrored) for i, name in enumerate(names)]
    try:
        for host in hosts:
            host.boot()
        yield hosts
    finally:
        for host in hosts:
            host.stop()


def run_playbook(playbook: str, *, inventory: Path, variables: Path, host: str,
                 env: dict[str, str] | None = None) -> tuple[dict[str, int], str, float]:  # fmt: skip
    """ansible-playbook (the project's pinned one) against test hosts: the recap of `host`,
    all of the output, and the seconds it took."""
    started = time.monotonic()
    base = env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home())}
    done = subprocess.run([str(ANSIBLE), "-i", str(inventory), playbook, "-e", f"@{variables}"],
                          cwd=ROOT / "ansible", capture_output=True, text=True, timeout=1800,
                          env={**base, "PATH": f"{ANSIBLE.parent}:{base.get('PATH', '')}", "ANSIBLE_FORCE_COLOR": "0",
                               "ANSIBLE_NOCOLOR": "1"})  # fmt: skip
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    recap = {m.group(1): m for m in RECAP.finditer(output)}.get(host)
    assert recap is not None, f"no recap for {host} (exit {done.returncode}):\n{output[-6000:]}"
    counts = {"ok": int(recap.group(2)), "changed": int(recap.group(3)), "unreachable": int(recap.group(4)),
              "failed": int(recap.group(5))}  # fmt: skip
    return counts, output, seconds
