"""A test network on one Linux machine: hosts in network namespaces on a bridge, and a nemesis.

Each host is a network namespace with one veth interface on a bridge that this module creates.
The bridge itself carries two addresses in the machine's own namespace: ``.1`` for storage (the
test's PostgreSQL listens there) and ``.2`` for clients (their sockets bind it), so a host can be
cut from its storage without being cut from its clients. Everything runs as root (``ip`` from
iproute2) and is removed by :meth:`HostNetwork.close`; names carry the creating process's id,
and :func:`reap_stale` removes what a killed run left behind.

Partitions are routing rules inside a host's namespace, so nothing else on the machine sees them:

- ``ip route add blackhole ADDR/32`` drops what the host sends to ADDR;
- ``ip rule add pref 100 from ADDR blackhole`` drops what the host receives from ADDR (the
  local table's rule moves to priority 1000 so that this one is seen first).

Packets are dropped silently (no refusal), as on a real network: dropping what a host receives
from an address cuts TCP with it both ways (the answers never arrive); dropping it on one side
of a pair only, while that side's own requests still arrive, is a one-way drop. Added latency
and packet loss need the kernel's ``sch_netem``: :attr:`HostNetwork.netem` says whether it is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from dataclasses import dataclass, field

log = logging.getLogger("duro.testing.netns")

PREFIX = "duro"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}p{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, FileNotFoundError) as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def reap_stale() -> int:
    """Remove namespaces and bridges of earlier runs whose process is gone; the count."""
    removed = 0
    names = _ip("netns", "list", check=False).stdout.split()
    links = [line.split(":")[1].strip().split("@")[0]
             for line in _ip("-o", "link", "show", check=False).stdout.splitlines()
             if line.count(":") >= 2]
    for name in [*names, *links]:
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            if name in names:
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
            removed += 1
    return removed


@dataclass
class Host:
    """One namespace on the bridge."""

    name: str
    ns: str
    address: str
    cut_out: set[str] = field(default_factory=set)  # addresses it cannot send to
    cut_in: set[str] = field(default_factory=set)  # addresses it does not receive from

    def exec(self, *cmd: str) -> list[str]:
        """The command line that runs *cmd* inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]


class HostNetwork:
    """*hosts* namespaces on a fresh bridge; see the module docstring."""

    def __init__(self, hosts: int = 3, subnet: int | None = None) -> None:
        tag = f"{PREFIX}{os.getpid()}-{id(self) % 10_000}"
        self.subnet = subnet if subnet is not None else 100 + os.getpid() % 150
        base = f"10.213.{self.subnet}"
        self.bridge = f"{tag}b"[:15]
        self.storage_address = f"{base}.1"
        self.client_address = f"{base}.2"
        self.hosts = [Host(f"h{i}", f"{tag}-h{i}", f"{base}.{10 + i}") for i in range(hosts)]
        self._links: list[str] = []
        self.netem = False
        try:
            self._up(base)
        except BaseException:
            self.close()
            raise

    def _up(self, base: str) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.storage_address}/24", "dev", self.bridge)
        _ip("addr", "add", f"{self.client_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, h in enumerate(self.hosts):
            _ip("netns", "add", h.ns)
            outside = f"{self.bridge[:10]}v{i}"
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            self._links.append(outside)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("addr", "add", f"{h.address}/24", "dev", "eth0", ns=h.ns)
            _ip("link", "set", "eth0", "up", ns=h.ns)
            _ip("link", "set", "lo", "up", ns=h.ns)
            # Local delivery is decided by the rule at priority 0 (table local); move it after
            # the drop rules, or an incoming drop would never see a packet meant for this host.
            _ip("rule", "add", "pref", "1000", "lookup", "local", ns=h.ns)
            _ip("rule", "del", "pref", "0", "lookup", "local", ns=h.ns)
        probe = subprocess.run(["ip", "netns", "exec", self.hosts[0].ns, "tc", "qdisc", "add",
                                "dev", "lo", "root", "netem", "delay", "1ms"],
                               capture_output=True, text=True, timeout=30)
        self.netem = probe.returncode == 0
        if self.netem:
            subprocess.run(["ip", "netns", "exec", self.hosts[0].ns, "tc", "qdisc", "del", "dev",
                            "lo", "root"], capture_output=True, timeout=30)

    # -- the nemesis's tools -------------------------------------------------------------------

    def drop(self, host: Host, address: str, *, outgoing: bool = False,
             incoming: bool = True) -> None:
        """Drop what *host* receives from *address* (and, with *outgoing*, what it sends there).

        Dropping the incoming side alone already cuts TCP both ways, silently: the host's
        packets still leave, the answers never arrive, and its calls hang until their timeouts,
        as across a real partition. An outgoing blackhole route instead fails ``connect()`` at
        once with ``EINVAL``, which no real network does."""
        if outgoing and address not in host.cut_out:
            _ip("route", "add", "blackhole", f"{address}/32", ns=host.ns)
            host.cut_out.add(address)
        if incoming and address not in host.cut_in:
            _ip("rule", "add", "pref", "100", "from", f"{address}/32", "blackhole", ns=host.ns)
            host.cut_in.add(address)

    def heal(self) -> None:
        """Remove every drop."""
        for h in self.hosts:
            for a in sorted(h.cut_out):
                _ip("route", "del", "blackhole", f"{a}/32", ns=h.ns, check=False)
            for a in sorted(h.cut_in):
                _ip("rule", "del", "pref", "100", "from", f"{a}/32", "blackhole", ns=h.ns,
                    check=False)
            h.cut_out.clear()
            h.cut_in.clear()

    def isolate_from_storage(self, host: Host) -> None:
        """*host* can no longer reach its storage (its clients still reach it)."""
        self.drop(host, self.storage_address)  # silent: its storage calls hang

    def isolate_from_peers(self, host: Host) -> None:
        """*host* and the other hosts can no longer reach each other."""
        for other in self.hosts:
            if other is not host:
                self.drop(host, other.address)
                self.drop(other, host.address)

    def split(self, minority: list[Host]) -> None:
        """Cut *minority* from the others and from storage (the majority keeps storage)."""
        for h in minority:
            self.isolate_from_storage(h)
            for other in self.hosts:
                if other not in minority:
                    self.drop(h, other.address)
                    self.drop(other, h.address)

    def close(self) -> None:
        """Remove the namespaces and links. Idempotent."""
        for h in self.hosts:
            _ip("netns", "del", h.ns, check=False)
        for link in reversed(self._links):
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", link, check=False)
        self._links.clear()

    def __enter__(self) -> HostNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
