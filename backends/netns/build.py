"""Apply `NetnsConfig`s to real namespaces: netlink for links, /proc/sys, iptables-restore.

Every function here runs on the `NetnsWorker` thread and touches a
namespace only inside `worker.inside(fd)`; nothing is done in the root
namespace. The order matters (KERNEL-NOTES pitfall 1): a new device copies
the namespace's `default` sysctls when it is created, so `all`/`default`
values are written right after the namespace exists, before any link, and
per-device values once the device exists.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from backends import BackendError
from backends.netns.nsutil import NetnsWorker
from conformance.dataplane import Link, NetnsConfig

RESTORE = "iptables-legacy-restore"
IFA_F_NOPREFIXROUTE = 0x200
RT_SCOPE_LINK = 253

# Builtin chains per table, to reset a table a new ruleset no longer names.
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# Not part of any dataplane: IPv6 is outside the model, and turning it off
# keeps the namespaces quiet (no DAD, router or MLD traffic) and faster.
QUIET_SYSCTLS = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)


class BuildError(BackendError):
    """A namespace could not be built as configured (the message says which and what the kernel answered)."""


@dataclass
class Netns:
    """A logical namespace and the kernel one that realises it."""

    config: NetnsConfig
    kname: str  # the name under /run/netns
    fd: int = -1  # open while deployed: setns target (and it keeps the netns alive)


def is_device_sysctl(key: str) -> bool:
    """net.ipv4.conf.eth0.x (a device) versus net.ipv4.conf.all.x or net.ipv4.ip_forward."""
    parts = key.split(".")
    return (
        len(parts) >= 5 and parts[0] == "net" and parts[2] in ("conf", "neigh") and parts[3] not in ("all", "default")
    )


def write_sysctl(ns: Netns, key: str, value: str, *, optional: bool = False) -> None:
    # /proc/sys/net follows the calling thread's namespace (pitfall 3).
    # os.open/os.write: pathlib's text layer was a tenth of a topology build.
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except FileNotFoundError:
        if optional:
            return
        raise BuildError(f"{ns.config.name}: no sysctl {key}") from None
    except OSError as e:
        raise BuildError(f"{ns.config.name}: sysctl {key}={value}: {e.strerror}") from None


def create(worker: NetnsWorker, ns: Netns) -> None:
    """Create the namespace and write its namespace-wide sysctls (before any link)."""
    ns.fd = worker.create(ns.kname)
    with worker.inside(ns.fd):
        for key, value in QUIET_SYSCTLS:
            write_sysctl(ns, key, value, optional=True)
        for key, value in ns.config.sysctls:
            if not is_device_sysctl(key):
                write_sysctl(ns, key, value)


def _indexes() -> dict[str, int]:
    # libc's if_nameindex asks the calling thread's namespace (the worker is
    # inside it); pyroute2's dumps decode every attribute of every link in
    # Python, which was a third of a topology build.
    return {name: index for index, name in socket.if_nameindex()}


def _index(indexes: dict[str, int], ns: Netns, dev: str) -> int:
    if dev not in indexes:
        raise BuildError(f"{ns.config.name}: no device {dev!r}")
    return indexes[dev]


def create_links(worker: NetnsWorker, ns: Netns, peers: dict[str, Netns]) -> None:
    """Bridges, then veths born with their peer end already in the peer namespace.

    Passing the peer's namespace fd in the veth request means the peer never
    exists anywhere else, not even for a moment in the root namespace.
    """
    bridges = [link for link in ns.config.links if link.kind == "bridge"]
    others = [link for link in ns.config.links if link.kind != "bridge"]
    if not bridges and not others:
        return
    with worker.inside(ns.fd), IPRoute() as ipr:
        for link in bridges:
            _create_link(ipr, ns, link, peers, {})
        indexes = _indexes()
        for link in others:
            _create_link(ipr, ns, link, peers, indexes)
        hairpins = [link for link in ns.config.links if link.master and link.hairpin]
        if hairpins:
            indexes = _indexes()
            for link in hairpins:
                ipr.brport("set", index=_index(indexes, ns, link.name), mode=1)  # IFLA_BRPORT_MODE


def _create_link(ipr: IPRoute, ns: Netns, link: Link, peers: dict[str, Netns], indexes: dict[str, int]) -> None:
    extra: dict[str, object] = {}
    if link.master:
        extra["master"] = _index(indexes, ns, link.master)
    if link.kind == "bridge":
        ipr.link("add", ifname=link.name, kind="bridge", **extra)
    elif link.kind == "veth":
        if link.peer_netns is None or link.peer_netns not in peers:
            raise BuildError(f"{ns.config.name}: veth {link.name} has no peer namespace")
        peer: dict[str, object] = {"net_ns_fd": peers[link.peer_netns].fd}
        if link.peer_name:
            peer["ifname"] = link.peer_name
        ipr.link("add", ifname=link.name, kind="veth", peer=peer, **extra)
    else:
        raise BuildError(f"{ns.config.name}: unsupported link kind {link.kind!r}")


def configure(worker: NetnsWorker, ns: Netns) -> None:
    """Per-device sysctls, addresses, every device up (lo included), routes."""
    cfg = ns.config
    with worker.inside(ns.fd):
        for key, value in cfg.sysctls:
            if is_device_sysctl(key):
                write_sysctl(ns, key, value)
        with IPRoute() as ipr:
            indexes = _indexes()
            for dev, iface in cfg.addresses:
                extra: dict[str, object] = {}
                if (dev, iface) in cfg.no_prefix_route:
                    extra["IFA_FLAGS"] = IFA_F_NOPREFIXROUTE
                ipr.addr(
                    "add",
                    index=_index(indexes, ns, dev),
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    **extra,
                )
            for index in indexes.values():
                ipr.link("set", index=index, state="up")  # a no-op for a link already up
            # After the addresses and links: a gateway must be on a connected, up link.
            for route in cfg.routes:
                spec: dict[str, object] = {"dst": str(route.dst), "oif": _index(indexes, ns, route.dev)}
                if route.via is not None:
                    spec["gateway"] = str(route.via)
                else:
                    spec["scope"] = RT_SCOPE_LINK  # as `ip route add` does: a gateway may sit behind it
                if route.src is not None:
                    spec["prefsrc"] = str(route.src)
                try:
                    ipr.route("add", **spec)
                except Exception as e:
                    raise BuildError(f"{cfg.name}: route {route}: {e}") from e


def table_blocks(text: str) -> dict[str, str]:
    """iptables-save text split per table: name -> its lines from *name to COMMIT."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = blocks.setdefault(line[1:].strip(), [])
        if current is not None:
            current.append(line)
        if line.strip() == "COMMIT":
            current = None
    return {table: "\n".join(lines) + "\n" for table, lines in blocks.items()}


def restore_text(old: str, new: str) -> str:
    """What to feed iptables-restore to go from ruleset `old` to `new`.

    iptables-restore replaces exactly the tables it names, so only tables
    whose text changed are sent (each replacement costs a few ms here); a
    table only the old ruleset had is emptied, its builtin chains back to
    ACCEPT. Empty when nothing changed.
    """
    before, after = table_blocks(old), table_blocks(new)
    out = "".join(block for table, block in after.items() if before.get(table) != block)
    for table in before:
        if table not in after:
            chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in BUILTIN_CHAINS.get(table, ()))
            out += f"*{table}\n{chains}COMMIT\n"
    return out


def lock_file(run_dir: Path, ns: Netns) -> Path:
    """The xtables lock of a namespace's rules: iptables-restore and the CNI plugins' iptables share it."""
    return run_dir / f"{ns.kname}.xtables.lock"


def restore_env(lock: Path) -> dict[str, str]:
    """iptables-restore's environment: PATH, and a lock file of its own (the default one is shared with every
    iptables user on the host, pitfall 9)."""
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "XTABLES_LOCKFILE": str(lock)}


def restore_rules(worker: NetnsWorker, jobs: Iterable[tuple[Netns, str]], run_dir: Path) -> None:
    """Run iptables-restore inside each namespace, all at once, and wait for all.

    A child forked by the worker thread inherits the thread's namespace, so
    each process is started while the worker is inside its namespace. Each
    namespace gets its own lock file in the run's directory (pitfall 9):
    legacy tables are per namespace, so nothing needs to serialise them.
    """
    started: list[tuple[Netns, subprocess.Popen[bytes], str]] = []
    try:
        for ns, text in jobs:
            if not text:
                continue
            env = restore_env(lock_file(run_dir, ns))
            # A CNI plugin's rules are already there: add to them (the text says where).
            noflush = ["--noflush"] if ns.config.iptables_noflush else []
            with worker.inside(ns.fd):
                proc = subprocess.Popen(
                    [RESTORE, "-w", "5", *noflush],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
            started.append((ns, proc, text))
    except BaseException:
        for _, proc, _ in started:
            proc.kill()
            proc.wait()
        raise
    failures: list[str] = []
    for ns, proc, text in started:
        _, err = proc.communicate(text.encode(), timeout=30)
        if proc.returncode != 0:
            failures.append(f"{ns.config.name}: {RESTORE} exited {proc.returncode}: {err.decode().strip()}")
    if failures:
        raise BuildError("; ".join(failures))


def flush_route_cache(worker: NetnsWorker, ns: Netns) -> None:
    """Forget learned route exceptions (redirects, PMTU) as a fresh namespace would."""
    with worker.inside(ns.fd):
        write_sysctl(ns, "net.ipv4.route.flush", "1")


# The thread's own namespace: /proc/self/net would be the process's.
RECENT_LISTS = "/proc/thread-self/net/xt_recent"
_USES_RECENT = re.compile(r"(?:^|\s)(?:-m|--match)\s+recent(?:\s|$)", re.MULTILINE)


@functools.lru_cache(maxsize=64)
def _uses_recent(iptables: str) -> bool:
    # Once per ruleset text, not on every reset: a large ruleset is scanned once.
    return _USES_RECENT.search(iptables) is not None


def forget_recent_lists_of(worker: NetnsWorker, namespaces: Iterable[Netns]) -> None:
    """Empty the `-m recent` lists of those namespaces whose rules use any (one worker job, none if no rule does)."""
    recent = [ns for ns in namespaces if _uses_recent(ns.config.iptables)]
    if recent:

        def job() -> None:
            for ns in recent:
                forget_recent_lists(worker, ns)

        worker.run(job)


def forget_recent_lists(worker: NetnsWorker, ns: Netns) -> None:
    """Empty the namespace's `-m recent` lists, as a fresh namespace has them.

    The kernel keeps a list while any rule names it: a conntrack flush and a
    rules swap that keeps the name both leave its addresses in (measured), so
    one example's probes would decide the next example's.
    """
    with worker.inside(ns.fd):
        try:
            names = os.listdir(RECENT_LISTS)
        except FileNotFoundError:
            return  # xt_recent is not loaded: no lists anywhere
        for name in names:
            fd = os.open(f"{RECENT_LISTS}/{name}", os.O_WRONLY)
            try:
                os.write(fd, b"/\n")  # "/" empties the list
            finally:
                os.close(fd)
