"""Real test hosts on this machine, for `ray up` over SSH (imported as `cluster_hosts`).

Each host is its own network, PID, mount and UTS namespace: an address of its own on a
bridge the test makes, its own sshd (Debian's openssh-server) with a key the test
generates, its own hostname, /tmp, /run, HOME and /etc/hosts (mounts inside its mount
namespace). As on a cloud cluster, every host's HOME is the same path (HOST_HOME) and no
host sees another host's files: the folder holding all hosts is hidden under a tmpfs in
each host. A tiny init process is PID 1 of each host, so that:
- `ray stop` inside a host ends only that host's processes;
- SIGKILL to that init tears the whole host down at once (every process in its PID
  namespace dies with it): the "host lost" of a node-failure test.

Everything is made by the test and removed by it, by PID and by the names it created
(bridge, veth pairs, network namespaces, the hosts' folder). Needs root, `ip`, `unshare`,
`sshd`, `ssh-keygen` and `rsync`; `missing_requirements()` says what is absent.

    with TestNetwork() as net:
        head, w1 = net.add_host("head"), net.add_host("w1")
        head.run("hostname")          # a command inside the host (nsenter)
        w1.kill()                     # every process of w1, at once
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# PID 1 of a host: starts sshd, reaps every orphan (Ray's daemons reparent to it), and
# exits when sshd does. Signals from the root namespace reach it; SIGKILL ends the host.
_INIT = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(0)
    if pid == child.pid:
        sys.exit(1)
"""

SSHD_CONFIG = """\
ListenAddress {ip}
Port 22
HostKey {system}/ssh_host_ed25519_key
PidFile {system}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile .ssh/authorized_keys
PermitUserEnvironment no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
MaxStartups 200
MaxSessions 200
Subsystem sftp /usr/lib/openssh/sftp-server
"""

HOST_HOME = "/home/hivg"          # root's HOME on every host (cf. /home/ubuntu on AWS)
HOST_SYSTEM = "/run/hivg-host"    # the host's own sshd files, passwd, hosts, wheelhouse
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "sshd", "ssh", "ssh-keygen", "rsync")


def missing_requirements() -> str | None:
    """None when hosts can be made here, else why not (one line)."""
    if os.geteuid() != 0:
        return "test hosts need root (network and mount namespaces)"
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    if missing:
        return f"test hosts need {', '.join(missing)} (apt-get install openssh-server rsync iproute2)"
    probe = f"hivgp{uuid.uuid4().hex[:8]}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot make a network namespace: {result.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _sh(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kwargs)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route of this machine uses."""
    routes = _sh("ip", "-4", "route", "show", "table", "all").stdout
    used = [ipaddress.ip_network(w, strict=False) for line in routes.splitlines()
            for w in line.split()[:1] if w[0].isdigit()]
    rng = random.Random(uuid.uuid4().int)
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{rng.randrange(200, 250)}.{rng.randrange(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x /24 subnet for the test hosts")


@dataclass
class Host:
    """One test host. `ip` is its address on the test network; `home` its HOME."""

    name: str
    ip: str
    root: Path
    netns: str
    process: subprocess.Popen | None = None   # `unshare`, in the root namespaces
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """The host's HOME, seen from outside (HOST_HOME inside the host)."""
        return self.root / "home"

    @property
    def system(self) -> Path:
        """The host's own system files, seen from outside (HOST_SYSTEM inside)."""
        return self.root / "system"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def init_pid(self) -> int | None:
        """PID (in the root namespace) of the host's PID 1, None once it is gone."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    @property
    def alive(self) -> bool:
        return self.init_pid is not None

    def run(self, command: str, timeout: float = 120, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`command` inside the host (all its namespaces), as root with its HOME, after its
        ~/.bashrc (the environment every login shell there has)."""
        pid = self.init_pid
        if pid is None:
            raise RuntimeError(f"host {self.name} is not running")
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": HOST_HOME,
                    "USER": "root", "LANG": "C.UTF-8", **self.env, **(env or {})}
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "-i", "--wdns=/",
             "bash", "-c", f"cd ~ && . ~/.bashrc >/dev/null 2>&1; {command}"],
            capture_output=True, text=True, timeout=timeout, check=check, env=full_env)

    def processes(self) -> list[int]:
        """PIDs (root namespace) of every process of this host."""
        pid = self.init_pid
        if pid is None:
            return []
        ns = os.readlink(f"/proc/{pid}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "pid") == ns:
                        found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL the host's PID 1: the kernel kills every process in its PID namespace."""
        pid = self.init_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)


class TestNetwork:
    """A bridge with an address of its own (the "laptop" side) and hosts attached to it.

    `env`: variables every shell on the hosts has (the hosts' machine image, so to speak:
    written to each host's ~/.bashrc before anything else)."""

    __test__ = False  # not a pytest class

    def __init__(self, base: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self._next = iter(str(a) for a in addresses[1:])
        self.bridge = f"hvbr{self.id}"
        # Outside /tmp: each host mounts its own folder over /tmp.
        self.base = Path(base or tempfile.mkdtemp(prefix=f"hivg-hosts-{self.id}-", dir="/var/tmp"))
        self.env = dict(env or {})
        self.hosts: list[Host] = []
        self.key = self.base / "id_ed25519"
        self.system_files: list[Path] = []  # copied into every host's HOST_SYSTEM
        self._veths: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "TestNetwork":
        try:
            _sh("ip", "link", "add", self.bridge, "type", "bridge")
            _sh("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _sh("ip", "link", "set", self.bridge, "up")
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hivg-test-{self.id}",
                "-f", str(self.key))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill every host, then remove namespaces, links and folders (by their names)."""
        for host in self.hosts:
            host.kill()
        for host in self.hosts:
            _sh("ip", "netns", "delete", host.netns, check=False)
        for veth in self._veths:
            _sh("ip", "link", "delete", veth, check=False)
        _sh("ip", "link", "delete", self.bridge, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- hosts ---------------------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        ip = next(self._next)
        root = self.base / name
        host = Host(name=name, ip=ip, root=root, netns=f"hivg-{self.id}-{name}",
                    env=dict(self.env))
        self.hosts.append(host)
        self._wire(host)
        self._write_files(host)
        self._start(host)
        return host

    def _wire(self, host: Host) -> None:
        veth = f"hv{self.id}{len(self._veths)}"
        self._veths.append(veth)
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _sh("ip", "link", "set", veth, "master", self.bridge, "up")
        inside = ("ip", "netns", "exec", host.netns, "ip")
        _sh(*inside, "addr", "add", f"{host.ip}/{self.subnet.prefixlen}", "dev", "eth0")
        _sh(*inside, "link", "set", "eth0", "up")
        _sh(*inside, "link", "set", "lo", "up")

    def _write_files(self, host: Host) -> None:
        root = host.root
        for sub in ("system", "home/.ssh", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        host.tmp.chmod(0o1777)
        host.home.chmod(0o700)
        shutil.copy(f"{self.key}.pub", host.home / ".ssh" / "authorized_keys")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
            str(host.system / "ssh_host_ed25519_key"))
        (host.system / "sshd_config").write_text(SSHD_CONFIG.format(ip=host.ip, system=HOST_SYSTEM))
        for extra in self.system_files:  # e.g. a wheelhouse, copied into every host
            target = host.system / extra.name
            (shutil.copytree if extra.is_dir() else shutil.copy)(extra, target)
        passwd = []
        for line in Path("/etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == "root":
                parts[5] = HOST_HOME
            passwd.append(":".join(parts))
        (host.system / "passwd").write_text("\n".join(passwd) + "\n")
        self._write_hosts_files()
        python_bin = str(Path(sys.executable).parent)
        exports = {"PATH": f"{python_bin}:$PATH", **host.env}
        (host.home / ".bashrc").write_text(
            "# The test host's environment (its machine image).\n"
            + "".join(f"export {k}=\"{v}\"\n" for k, v in exports.items()))
        (host.home / ".profile").write_text("[ -f ~/.bashrc ] && . ~/.bashrc\n")

    def _write_hosts_files(self) -> None:
        """Every host resolves every host's name (a private network's DNS)."""
        lines = ["127.0.0.1 localhost"] + [f"{h.ip} {h.name}" for h in self.hosts]
        for h in self.hosts:
            (h.system / "hosts").write_text("\n".join(lines) + "\n")

    def _start(self, host: Host) -> None:
        root = host.root
        system = HOST_SYSTEM
        setup = " && ".join([
            f"hostname {host.name}",
            # The host's own files where it looks for them ...
            "mount -t tmpfs none /run", f"mkdir -p /run/sshd {system}",
            f"mount --bind {root}/system {system}",
            f"mount --bind {system}/passwd /etc/passwd",
            f"mount --bind {system}/hosts /etc/hosts",
            f"mount -t tmpfs none /home", f"mkdir -p {HOST_HOME}",
            f"mount --bind {root}/home {HOST_HOME}",
            f"mount --bind {root}/tmp /tmp",
            # ... and nothing of the other hosts (nor of this one's folder as such).
            f"mount -t tmpfs none {self.base}",
            f"exec {sys.executable} -c '{_INIT}' /usr/sbin/sshd -D -e -f {system}/sshd_config",
        ])
        log = open(root / "init.log", "w")  # outside: written by `ip netns exec`
        host.process = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--pid", "--fork", "--mount-proc",
             "--mount", "--uts", "--propagation", "private", "sh", "-c", setup],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + 30
        while True:
            probe = self.ssh(host, "true", timeout=10, check=False)
            if probe.returncode == 0:
                return
            if host.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"host {host.name}: sshd did not answer: "
                                   f"{(root / 'init.log').read_text()[-1500:]} {probe.stderr[-500:]}")
            time.sleep(0.3)

    def ssh(self, host: Host, command: str, timeout: float = 60, check: bool = True
            ) -> subprocess.CompletedProcess:
        """`command` over SSH as root, the way the cluster launcher reaches a host."""
        return _sh("ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                   "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                   "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{host.ip}", command,
                   check=check, timeout=timeout)
