"""Several machines on one: Linux network namespaces joined by a private bridge (root only).

Every name starts with ``swk<pid>`` (the pid of the process that made it), so
that what a crashed run left behind is recognised and removed by the next one
(:func:`remove_leftovers`), and two runs at once never touch each other's.

The network is a /24 of 10.213.0.0/16 that nothing here uses yet: the bridge,
in the root namespace, has ``.1``; host ``i`` (1-based) has ``.(i+1)``. There
is no default route, no NAT and no forwarding, and IPv6 is off on every link:
a host reaches the bridge address and the other hosts, and nothing else.
Each host's commands run in its namespace under a hostname of its own (a UTS
namespace per command), so ``socket.gethostname()`` tells the hosts apart.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "swk"
_OURS = re.compile(rf"^{PREFIX}(\d+)(h\d+|v\d+|br)$")
_SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for program in ("ip", "unshare", "hostname", "sysctl"):
        if shutil.which(program) is None:
            return f"'{program}' is not installed"
    probe = f"{PREFIX}{os.getpid()}h0"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"'ip netns add' does not work here ({exc})"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    index: int
    namespace: str
    """Also its hostname."""
    address: str
    port: str
    """Its cable's end on the bridge, in the root namespace."""

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host: in its namespace, under its hostname."""
        set_name = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c", set_name,
                self.namespace, *argv]  # fmt: skip

    def pids(self) -> list[int]:
        """Every process in this host's namespace."""
        return [int(p) for p in _ip("netns", "pids", self.namespace, check=False).split()]

    def kill_all(self, signum: int = signal.SIGKILL) -> list[int]:
        """Send ``signum`` to every process of this host; the pids it was sent to."""
        hit = []
        for pid in self.pids():
            try:
                os.kill(pid, signum)
                hit.append(pid)
            except ProcessLookupError:
                continue
        return hit


@dataclass(frozen=True)
class Network:
    bridge: str
    gateway: str
    """The bridge's address: what the hosts reach the root namespace's servers at."""
    hosts: tuple[Host, ...]

    def cut(self, host: Host) -> None:
        """Unplug ``host``: its port on the bridge goes down, so what it sends is lost without an error."""
        _ip("link", "set", host.port, "down")

    def mend(self, host: Host) -> None:
        _ip("link", "set", host.port, "up")


def _addresses() -> list[ipaddress.IPv4Network]:
    """The subnet of every IPv4 address in the root namespace (one entry per address)."""
    nets = []
    for line in _ip("-o", "-4", "addr", "show").splitlines():
        match = re.search(r"\sinet\s+(\S+)", line)
        if match:
            nets.append(ipaddress.IPv4Interface(match.group(1)).network)
    return nets


def _in_use() -> list[ipaddress.IPv4Network]:
    nets = _addresses()
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        if first[:1].isdigit():
            nets.append(ipaddress.IPv4Network(first if "/" in first else f"{first}/32", strict=False))
    return nets


def _free_subnet(start: int) -> ipaddress.IPv4Network:
    used = _in_use()
    candidates = list(_SUBNETS.subnets(new_prefix=24))
    for i in range(len(candidates)):
        net = candidates[(start + i) % len(candidates)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /24 left in 10.213.0.0/16")


def _no_ipv6(link: str, namespace: str | None = None) -> None:
    """IPv6 off, so that the link sends no router solicitation or other multicast."""
    setting = f"net.ipv6.conf.{link}.disable_ipv6=1"
    inside = [] if namespace is None else ["ip", "netns", "exec", namespace]
    cmd = [*inside, "sysctl", "-qw", setting]
    subprocess.run(cmd, capture_output=True, timeout=30)  # a kernel without IPv6: nothing to turn off


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def remove_leftovers() -> list[str]:
    """Remove the namespaces and links of runs whose process is gone (a crash); their names."""
    removed = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = _OURS.match(name)
        if match and not _alive(int(match.group(1))):
            _kill_namespace(name)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        match = _OURS.match(name)
        if match and not _alive(int(match.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _kill_namespace(namespace: str, port: str | None = None) -> None:
    """SIGKILL every process in ``namespace`` (a stopped one too), wait for them to go, delete it.

    Its veth pair goes with the namespace, but only once the kernel gets round to it: ``port``
    (the pair's end in the root namespace) is deleted here at once.
    """
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        time.sleep(0.2)
    if port is not None:
        _ip("link", "del", port, check=False)
    _ip("netns", "del", namespace, check=False)


@contextmanager
def network(n_hosts: int) -> Iterator[Network]:
    """``n_hosts`` namespaces on a fresh bridge; everything is removed on the way out, whatever happened.

    Raises:
        RuntimeError: an ``ip`` command failed (the partial network is removed first).
    """
    tag = f"{PREFIX}{os.getpid()}"
    bridge = f"{tag}br"
    namespaces: list[tuple[str, str]] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _no_ipv6(bridge)
        subnet = _claim(bridge)
        hosts = []
        for i in range(1, n_hosts + 1):
            namespace, port, inside = f"{tag}h{i}", f"{tag}v{i}", f"{tag}e{i}"
            _ip("netns", "add", namespace)
            namespaces.append((namespace, port))
            for link in ("all", "default"):
                _no_ipv6(link, namespace)
            _ip("link", "add", port, "type", "veth", "peer", "name", inside, "netns", namespace)
            _no_ipv6(port)
            _ip("link", "set", port, "master", bridge)
            _ip("link", "set", port, "up")
            address = str(subnet[i + 1])
            run = ["netns", "exec", namespace, "ip"]
            _ip(*run, "link", "set", "lo", "up")
            _ip(*run, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", inside)
            _ip(*run, "link", "set", inside, "up")
            hosts.append(Host(index=i, namespace=namespace, address=address, port=port))
        yield Network(bridge=bridge, gateway=str(subnet[1]), hosts=tuple(hosts))
    finally:
        for namespace, port in namespaces:
            _kill_namespace(namespace, port)
        _ip("link", "del", bridge, check=False)


def _claim(bridge: str) -> ipaddress.IPv4Network:
    """Give ``bridge`` the first address of a free /24 and bring it up; its subnet."""
    start = os.getpid()
    for _ in range(8):
        subnet = _free_subnet(start)
        _ip("addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", bridge)
        clash = [n for n in _addresses() if n.overlaps(subnet)]
        if len(clash) == 1:  # only ours: no other run took the same one at the same moment
            _ip("link", "set", bridge, "up")
            return subnet
        _ip("addr", "del", f"{subnet[1]}/{subnet.prefixlen}", "dev", bridge, check=False)
        start += 1 + os.getpid() % 7
    raise RuntimeError("no free /24 in 10.213.0.0/16 after 8 tries")
