"""A model of the Linux IPv4 dataplane, walked one packet at a time.

Each function mirrors a kernel path and names it (ip_rcv, ip_route_input,
br_handle_frame, br_nf_pre_routing_finish, ...), so a disagreement with the
real kernel can be traced to one place. What the model does not cover is a
`SimError` naming the feature, never a guess.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from typing import Literal

from backends.sim import freeports
from backends.sim.conntrack import INIT_STATUS, ConntrackTable, Manip, bind, nat_packet, track
from backends.sim.freeports import FreePorts
from backends.sim.iptables import NatTarget, Ruleset, parse_iptables_save
from backends.sim.netfilter import (
    Chooser,
    CompiledTable,
    Decision,
    HookContext,
    NetfilterState,
    compiled_tables,
    traverse_compiled,
)
from backends.sim.packet import ANY, Addr, Conn, Packet
from conformance.dataplane import Dataplane, NetnsConfig

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
LIMITED_BROADCAST = Addr(0xFFFFFFFF)


RANDOM_PORTS = frozenset({"random", "random-fully"})
RANDOM_PORT_LABEL = 50000  # how a --random NAT port shows in traces, unless a server uses it
_LOCAL, _BROADCAST = frozenset({"LOCAL"}), frozenset({"BROADCAST"})
_MULTICAST, _UNICAST = frozenset({"MULTICAST"}), frozenset({"UNICAST"})


def _loopback(ip: int) -> bool:  # 127.0.0.0/8
    return (ip >> 24) == 127


def _multicast(ip: int) -> bool:  # 224.0.0.0/4
    return (ip >> 28) == 14


def _zeronet(ip: int) -> bool:  # 0.0.0.0/8
    return (ip >> 24) == 0


MAX_HOPS = 64


class SimError(RuntimeError):
    """The configuration uses something the simulator does not model."""


def _check_simulable(cfg: NetnsConfig) -> None:
    """What only a real kernel can do: run CNI plugins, add rules to unknown ones."""
    if cfg.cni:
        raise SimError(
            f"netns {cfg.name}: {len(cfg.cni)} CNI plugin attachment(s): the simulator does not run plugin "
            "binaries; deploy on netns and simulate a snapshot of the result (backend sim-snapshot, "
            "conformance.snapshot)"
        )
    if cfg.iptables_noflush:
        raise SimError(
            f"netns {cfg.name}: iptables-restore --noflush adds to rules the simulator does not know; "
            "simulate a snapshot of the deployed node instead"
        )


# ---------------------------------------------------------------- topology


@dataclass(eq=False)
class Device:
    name: str
    kind: Literal["lo", "veth", "bridge"]
    mac: str
    netns: NetNS
    peer: Device | None = None
    master: Device | None = None
    hairpin: bool = False
    addresses: list[IPv4Interface] = field(default_factory=list)
    ports: list[Device] = field(default_factory=list)  # bridge only
    fdb: dict[str, Device] = field(default_factory=dict)  # bridge only

    def __repr__(self) -> str:
        return f"{self.netns.name}/{self.name}"


@dataclass(frozen=True)
class RouteEntry:
    dst: IPv4Network
    dev: Device
    via: Addr | None
    src: Addr | None
    # dst as integers, for the longest-prefix match
    net: int = 0
    mask: int = 0

    @staticmethod
    def make(dst: IPv4Network, dev: Device, via: Addr | None, src: Addr | None) -> RouteEntry:
        return RouteEntry(dst, dev, via, src, int(dst.network_address), int(dst.netmask))


SYSCTL_DEFAULTS = {
    "rp_filter": 0,
    "accept_local": 0,
    "route_localnet": 0,
    "send_redirects": 1,
}
CONF_KEYS = frozenset(SYSCTL_DEFAULTS) | {"forwarding"}
# Accepted and deliberately without effect in the model (documented why).
INERT_SYSCTLS = {
    # One probe at a time never reaches the ICMP rate limit's burst.
    "net.ipv4.icmp_ratelimit",
}


@dataclass(eq=False)
class NetNS:
    name: str
    role: str
    devices: dict[str, Device] = field(default_factory=dict)
    routes: list[RouteEntry] = field(default_factory=list)
    conf: dict[tuple[str, str], int] = field(default_factory=dict)  # (dev|all|default, key)
    ip_forward: int = 0
    bridge_nf_call_iptables: int = 1
    ruleset: Ruleset | None = None
    tables: dict[str, CompiledTable] = field(default_factory=dict)  # the ruleset, compiled
    has_nat: bool = False
    tracks: bool = False  # conntrack hooks are registered in this namespace
    nf_state: NetfilterState = field(default_factory=NetfilterState)
    conntrack: ConntrackTable = field(default_factory=ConntrackTable)
    listeners: dict[tuple[str, int], str] = field(default_factory=dict)  # (proto, port) -> identity
    neigh: dict[tuple[str, Addr], str] = field(default_factory=dict)
    stages: dict[str, tuple[str, ...]] = field(default_factory=dict)  # hook -> what runs there, in order
    contexts: dict[tuple[object, ...], HookContext] = field(default_factory=dict)  # see Kernel._ctx

    # Address views, computed once the namespace is configured (the walk
    # never changes addresses); `forget_addresses` invalidates them.
    _local: dict[Addr, Device] | None = None
    _broadcast: frozenset[Addr] | None = None
    # Lookups that only depend on configuration (routes, sysctls, address
    # types) are memoised: the walk asks the same questions over and over.
    _memo: dict[tuple[object, ...], object] = field(default_factory=dict)

    # -- addresses ---------------------------------------------------------
    def forget_addresses(self) -> None:
        self._local, self._broadcast = None, None
        self._memo.clear()

    def forget_learned(self) -> None:
        """Memoised lookups, hook contexts, ARP and FDB entries (see Kernel.forget_learned)."""
        self._memo.clear()
        self.contexts.clear()
        self.neigh.clear()
        for dev in self.devices.values():
            dev.fdb.clear()

    def local_addresses(self) -> dict[Addr, Device]:
        if self._local is None:
            self._local = {Addr.of(a.ip): dev for dev in self.devices.values() for a in dev.addresses}
        return self._local

    def is_local(self, ip: Addr) -> bool:
        return ip in self.local_addresses() or _loopback(ip)

    def is_broadcast(self, ip: Addr) -> bool:
        if self._broadcast is None:
            self._broadcast = frozenset(
                Addr.of(a.network.broadcast_address)
                for dev in self.devices.values()
                for a in dev.addresses
                if a.network.prefixlen < 31
            ) | {LIMITED_BROADCAST}
        return ip in self._broadcast

    def addr_type(self, ip: Addr, limit_iface: str | None) -> frozenset[str]:
        """What `-m addrtype` sees: the local routing table's view of an address."""
        key = ("addrtype", ip, limit_iface)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._addr_type(ip, limit_iface)
        return hit  # type: ignore[return-value]

    def _addr_type(self, ip: Addr, limit_iface: str | None) -> frozenset[str]:
        # inet_dev_addr_type: multicast, 0.0.0.0/8 and 255.255.255.255 by their value; otherwise the type of the
        # local table's route, but only when that route's device is the --limit-iface one. An address without a
        # route is UNICAST, not UNREACHABLE (measured: no table holds an unreachable route for it).
        if _multicast(ip):
            return _MULTICAST
        if ip == LIMITED_BROADCAST or (ip >> 24) == 0:
            return _BROADCAST
        dev = self.local_addresses().get(ip)
        if dev is not None or _loopback(ip):
            kind, on = _LOCAL, dev.name if dev is not None else "lo"
        elif self.is_broadcast(ip):
            kind, on = _BROADCAST, self._broadcast_device(ip)
        else:
            return _UNICAST
        return kind if limit_iface is None or limit_iface == on else _UNICAST

    def _broadcast_device(self, ip: Addr) -> str:
        return next(
            dev.name
            for dev in self.devices.values()
            for a in dev.addresses
            if a.network.prefixlen < 31 and Addr.of(a.network.broadcast_address) == ip
        )

    # -- sysctls -----------------------------------------------------------
    def conf_value(self, dev: Device, key: str) -> int:
        memo = ("conf", dev.name, key)
        hit = self._memo.get(memo)
        if hit is None:
            hit = self._memo[memo] = self._conf_value(dev, key)
        return hit  # type: ignore[return-value]

    def _conf_value(self, dev: Device, key: str) -> int:
        specific = self.conf.get((dev.name, key))
        if specific is None:
            specific = self.conf.get(("default", key), SYSCTL_DEFAULTS[key])
        everywhere = self.conf.get(("all", key), SYSCTL_DEFAULTS[key])
        if key == "rp_filter":  # IN_DEV_MAXCONF
            return max(specific, everywhere)
        return 1 if (specific or everywhere) else 0  # IN_DEV_ORCONF

    def forwarding(self, dev: Device) -> bool:
        return bool(self.conf.get((dev.name, "forwarding"), self.ip_forward))

    # -- routing -----------------------------------------------------------
    def lookup_main(self, ip: Addr) -> RouteEntry | None:
        key = ("route", ip)
        if key not in self._memo:
            self._memo[key] = self._lookup_main(ip)
        return self._memo[key]  # type: ignore[return-value]

    def _lookup_main(self, ip: Addr) -> RouteEntry | None:
        best: RouteEntry | None = None
        for r in self.routes:
            if (ip & r.mask) == r.net and (best is None or r.mask > best.mask):
                best = r
        return best

    def select_src(self, dev: Device, toward: Addr) -> Addr | None:
        """inet_select_addr: prefer an address of `dev` on the same subnet."""
        for a in dev.addresses:
            if (toward & int(a.network.netmask)) == int(a.network.network_address):
                return Addr.of(a.ip)
        if dev.addresses:
            return Addr.of(dev.addresses[0].ip)
        for other in self.devices.values():
            for a in other.addresses:
                if not a.ip.is_loopback:
                    return Addr.of(a.ip)
        return None


@dataclass(frozen=True)
class Route:
    """The result of a route lookup for one packet."""

    kind: Literal["local", "forward", "error"]
    dev: Device | None = None
    nexthop: Addr | None = None
    src: Addr | None = None
    error: str = ""  # ENETUNREACH, EHOSTUNREACH, EINVAL (martian), EXDEV (rp_filter)
    icmp_code: int | None = None  # the ICMP unreachable code ip_error sends, if any


# ---------------------------------------------------------------- walking


# The landings are not frozen: a frozen dataclass is built through
# object.__setattr__, and every packet sent ends in one of these.
@dataclass(slots=True)
class Arrived:
    """A packet reached the transport layer of a namespace."""

    netns: NetNS
    pkt: Packet


@dataclass(slots=True)
class Lost:
    reason: str


@dataclass(slots=True)
class SendError:
    """The sending socket got an immediate error (e.g. no route)."""

    reason: str


Landing = Arrived | Lost | SendError


@dataclass(slots=True)
class Walk:
    """Per-path state: the trace, the chooser for random rules, a hop budget."""

    chooser: Chooser
    trace: list[str]
    hops: int = 0
    # Traces cost more than the walk itself: callers build notes only when on.
    tracing: bool = True
    # Ports the kernel picked at random on this path, as far as rules have fixed them.
    free: FreePorts = field(default_factory=FreePorts)

    def note(self, ns: NetNS, text: str) -> None:
        self.trace.append(f"{ns.name}: {text}")


HOOK_TABLES: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "conntrack", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "nat", "confirm"),
    "FORWARD": ("mangle", "filter"),
    "OUTPUT": ("raw", "conntrack", "mangle", "nat", "filter"),
    "POSTROUTING": ("mangle", "nat", "confirm"),
}
MANIP: dict[str, Manip] = {
    "PREROUTING": "DST",
    "OUTPUT": "DST",
    "INPUT": "SRC",
    "POSTROUTING": "SRC",
}

REJECT_CODES = {
    "icmp-net-unreachable": 0,
    "icmp-host-unreachable": 1,
    "icmp-proto-unreachable": 2,
    "icmp-port-unreachable": 3,
    "icmp-net-prohibited": 9,
    "icmp-host-prohibited": 10,
    "icmp-admin-prohibited": 13,
}


@dataclass(frozen=True)
class HookResult:
    verdict: Literal["ACCEPT", "DROP", "REJECT"]
    decision: Decision | None = None


ACCEPTED = HookResult("ACCEPT")


class Kernel:
    """All namespaces of a deployed dataplane."""

    def __init__(self, dataplane: Dataplane) -> None:
        self.dataplane = dataplane
        self.namespaces: dict[str, NetNS] = {}
        self._mac_counter = 0
        for cfg in dataplane.namespaces:
            _check_simulable(cfg)
            self.namespaces[cfg.name] = NetNS(cfg.name, cfg.role)
        for cfg in dataplane.namespaces:
            self._build_links(cfg)
        for cfg in dataplane.namespaces:
            self._configure(cfg)
        self._sources = dict(dataplane.sources)  # probe source -> its namespace's name
        for ns in self.namespaces.values():
            # Callers skip a hook with nothing registered without calling it.
            ns.stages = {hook: self._stages(ns, hook) for hook in HOOK_TABLES}
            ns.local_addresses()  # the address views, built with the namespace
            ns.is_broadcast(ANY)
        # Only these can hold per-connection state: conntrack entries need
        # conntrack hooks, match state (nth, recent) needs rules.
        self.stateful_namespaces = tuple(ns for ns in self.namespaces.values() if ns.tracks or ns.ruleset is not None)
        # Port numbers real packets carry (servers, NAT targets): a random port's label must be none of them.
        self._in_use: dict[int, frozenset[int]] = {}
        self.used_ports = frozenset(
            {port for ns in self.namespaces.values() for _, port in ns.listeners}
            | {
                rule.target.port
                for ns in self.namespaces.values()
                if ns.ruleset is not None
                for table in ns.ruleset.tables.values()
                for chain in table.chains.values()
                for rule in chain.rules
                if isinstance(rule.target, NatTarget) and rule.target.port is not None
            }
        )

    def ports_in_use(self, port: int) -> frozenset[int]:
        """used_ports and one more (a probe's destination port), built once per port."""
        taken = self._in_use.get(port)
        if taken is None:
            taken = self._in_use[port] = self.used_ports | {port}
        return taken

    def source_namespace(self, source: str) -> NetNS:
        """The namespace a probe source's socket lives in (Dataplane.source_netns, by dict)."""
        name = self._sources.get(source)
        if name is None:
            raise KeyError(f"no probe source {source!r} in dataplane")
        return self.namespaces[name]

    def forget_learned(self) -> None:
        """Back to the state right after deployment: no memoised lookups, ARP or FDB entries.

        Rules stay parsed and compiled. Benchmarks use this so that repeating
        probes does not measure warm caches a fresh deployment lacks.
        """
        for ns in self.namespaces.values():
            ns.forget_learned()

    # -- building ----------------------------------------------------------
    def _mac(self, seed: str) -> str:
        digest = hashlib.sha256(seed.encode()).digest()
        return "02:" + ":".join(f"{b:02x}" for b in digest[:5])

    def _add(self, ns: NetNS, name: str, kind: Literal["lo", "veth", "bridge"]) -> Device:
        if name in ns.devices:
            raise SimError(f"netns {ns.name}: link {name!r} defined twice")
        dev = Device(name, kind, self._mac(f"{ns.name}/{name}"), ns)
        ns.devices[name] = dev
        return dev

    def _build_links(self, cfg: NetnsConfig) -> None:
        ns = self.namespaces[cfg.name]
        if "lo" not in ns.devices:
            lo = self._add(ns, "lo", "lo")
            lo.addresses.append(IPv4Interface("127.0.0.1/8"))
        for link in cfg.links:
            if link.kind == "bridge":
                self._add(ns, link.name, "bridge")
        for link in cfg.links:
            if link.kind != "veth":
                continue
            dev = self._add(ns, link.name, "veth")
            if link.peer_netns is None or link.peer_name is None:
                raise SimError(f"netns {ns.name}: veth {link.name} has no peer")
            if link.peer_netns not in self.namespaces:
                raise SimError(f"netns {ns.name}: veth {link.name}: no namespace {link.peer_netns}")
            peer = self._add(self.namespaces[link.peer_netns], link.peer_name, "veth")
            dev.peer, peer.peer = peer, dev
        for link in cfg.links:
            if link.master is None:
                continue
            port = ns.devices[link.name]
            bridge = ns.devices.get(link.master)
            if bridge is None or bridge.kind != "bridge":
                raise SimError(f"netns {ns.name}: {link.name}: master {link.master} is not a bridge")
            port.master, port.hairpin = bridge, link.hairpin
            bridge.ports.append(port)

    def _configure(self, cfg: NetnsConfig) -> None:
        ns = self.namespaces[cfg.name]
        for dev_name, addr in cfg.addresses:
            dev = self._dev(ns, dev_name, "address")
            dev.addresses.append(addr)
            ns.forget_addresses()
            # A no-prefix-route address (the ptp plugin's pods) has no connected route.
            if addr.network.prefixlen < 32 and (dev_name, addr) not in cfg.no_prefix_route:
                ns.routes.append(RouteEntry.make(addr.network, dev, None, Addr.of(addr.ip)))
        for r in cfg.routes:
            dev = self._dev(ns, r.dev, f"route {r.dst}")
            if r.via is not None and not any(r.via in a.network for a in dev.addresses):
                raise SimError(f"netns {ns.name}: route {r.dst} via {r.via}: gateway not on-link on {r.dev}")
            ns.routes.append(
                RouteEntry.make(
                    r.dst, dev, None if r.via is None else Addr.of(r.via), None if r.src is None else Addr.of(r.src)
                )
            )
        for key, value in cfg.sysctls:
            self._sysctl(ns, key, value)
        ns.forget_addresses()
        if cfg.iptables.strip():
            ns.ruleset, uses_conntrack = _parsed(cfg.iptables, f"{cfg.name} iptables")
            ns.tables = compiled_tables(ns.ruleset)
            ns.has_nat = "nat" in ns.ruleset.tables
            ns.tracks = ns.has_nat or uses_conntrack
        for li in cfg.listeners:
            ns.listeners[(li.protocol.lower(), li.port)] = li.identity

    def _dev(self, ns: NetNS, name: str, what: str) -> Device:
        dev = ns.devices.get(name)
        if dev is None:
            raise SimError(f"netns {ns.name}: {what}: no link {name!r}")
        return dev

    def _sysctl(self, ns: NetNS, key: str, value: str) -> None:
        try:
            number = int(value)
        except ValueError:
            raise SimError(f"netns {ns.name}: sysctl {key}={value!r}: expected an integer") from None
        parts = key.split(".")
        if key == "net.ipv4.ip_forward":
            ns.ip_forward = number
        elif key == "net.bridge.bridge-nf-call-iptables":
            ns.bridge_nf_call_iptables = number
        elif key in INERT_SYSCTLS:
            pass
        elif len(parts) == 5 and parts[:3] == ["net", "ipv4", "conf"] and parts[4] in CONF_KEYS:
            which, conf_key = parts[3], parts[4]
            if conf_key == "forwarding" and which in ("all", "default"):
                ns.ip_forward = number  # devinet: all.forwarding is ip_forward
            else:
                ns.conf[(which, conf_key)] = number
        else:
            raise SimError(f"netns {ns.name}: sysctl {key} is not modelled by the simulator")

    # -- netfilter hooks -----------------------------------------------------
    def hook(
        self,
        walk: Walk,
        ns: NetNS,
        hook: str,
        pkt: Packet,
        *,
        in_dev: Device | None,
        out_dev: Device | None,
        physin: Device | None = None,
        physout: Device | None = None,
    ) -> HookResult:
        """Run one netfilter hook: its tables in the kernel's priority order."""
        ctx: HookContext | None = None
        for table in ns.stages[hook]:
            if table == "conntrack":
                track(ns.conntrack, pkt)
                if walk.tracing and pkt.ctstate == "NEW" and pkt.ct is not None:
                    walk.note(ns, f"{hook} conntrack: new connection {pkt.ct.original}")
                continue
            if table == "confirm":
                if pkt.ct is not None and pkt.ctstate != "RELATED":
                    ns.conntrack.confirm(pkt.ct)
                continue
            if table == "nat":
                result = self._nat(walk, ns, hook, pkt, in_dev, out_dev, physin, physout)
                if result is not None:
                    return result
                continue
            if ctx is None:
                ctx = self._ctx(walk, ns, hook, in_dev, out_dev, physin, physout)
            decision = traverse_compiled(ns.tables.get(table), pkt, ctx)
            if decision.verdict != "ACCEPT":
                return HookResult(decision.verdict, decision)
        return ACCEPTED

    @staticmethod
    def _stages(ns: NetNS, hook: str) -> tuple[str, ...]:
        """The parts of a hook that can do anything in this namespace, in order."""
        tables = ns.ruleset.tables if ns.ruleset is not None else {}
        out: list[str] = []
        for stage in HOOK_TABLES[hook]:
            if stage in ("conntrack", "confirm"):
                if ns.tracks:
                    out.append(stage)
            elif stage == "nat":
                if ns.has_nat and hook in MANIP:
                    out.append(stage)
            elif stage in tables:
                out.append(stage)
        return tuple(out)

    def _ctx(
        self,
        walk: Walk,
        ns: NetNS,
        hook: str,
        in_dev: Device | None,
        out_dev: Device | None,
        physin: Device | None,
        physout: Device | None,
    ) -> HookContext:
        # One context per (hook, devices), reused: building it was a tenth of
        # the walk. Only the per-path parts are refreshed.
        key = (hook, in_dev, out_dev, physin, physout)
        ctx = ns.contexts.get(key)
        if ctx is None:
            ctx = ns.contexts[key] = HookContext(
                netns=ns.name,
                hook=hook,
                in_dev=in_dev.name if in_dev else None,
                out_dev=out_dev.name if out_dev else None,
                addr_type=ns.addr_type,
                chooser=walk.chooser,
                state=ns.nf_state,
                physdev_in=physin.name if physin else None,
                physdev_out=physout.name if physout else None,
                bridged=physin is not None or physout is not None,
            )
        ctx.chooser = walk.chooser
        ctx.free = walk.free
        ctx.state = ns.nf_state
        ctx.trace = walk.trace if walk.tracing else None
        return ctx

    def _nat(
        self,
        walk: Walk,
        ns: NetNS,
        hook: str,
        pkt: Packet,
        in_dev: Device | None,
        out_dev: Device | None,
        physin: Device | None,
        physout: Device | None,
    ) -> HookResult | None:
        """nf_nat_inet_fn: decide a binding on a new connection, then rewrite."""
        conn = pkt.ct
        if not ns.has_nat or conn is None or hook not in MANIP:
            return None
        manip = MANIP[hook]
        if pkt.ctstate == "NEW" and "CONFIRMED" not in conn.status and INIT_STATUS[manip] not in conn.status:
            decision = traverse_compiled(
                ns.tables.get("nat"), pkt, self._ctx(walk, ns, hook, in_dev, out_dev, physin, physout)
            )
            if decision.verdict != "ACCEPT":
                return HookResult(decision.verdict, decision)
            nat = decision.nat
            if nat is None:
                bind(conn, manip, None, None)
            elif nat.kind == "DNAT":
                bind(conn, "DST", nat.ip, nat.port)
            else:
                ip = nat.ip
                if nat.kind == "MASQUERADE":
                    if out_dev is None:
                        raise SimError(f"{ns.name}: MASQUERADE without an output device")
                    toward = self._nexthop_toward(ns, pkt.dst, out_dev)
                    ip = ns.select_src(out_dev, toward)
                    if ip is None:
                        return HookResult("DROP")
                port = nat.port
                if (
                    port is None
                    and ip is not None
                    and not nat.flags.isdisjoint(RANDOM_PORTS)
                    and pkt.proto in ("tcp", "udp")
                ):
                    port = self._random_port(walk, conn, ip)
                bind(conn, "SRC", ip, port)
            if nat is not None and walk.tracing:
                r = conn.reply
                to = f"{r.src}:{r.sport}" if manip == "DST" else f"{r.dst}"
                walk.note(ns, f"{hook} nat: {nat.kind} to {to} (replies will look like {r})")
        before = pkt.describe() if walk.tracing else ""
        if nat_packet(pkt, manip) and walk.tracing:
            walk.note(ns, f"{hook} nat: {before} rewritten to {pkt.describe()}")
        return None

    def _random_port(self, walk: Walk, conn: Conn, ip: Addr) -> int:
        """get_unique_tuple with --random/--random-fully: a new source port from the original's range even when
        the original is free, so it may be any of the range, the original too (then, with the address kept, the
        connection is not SNAT'ed)."""
        original = conn.reply.dport
        lo, hi = (1024, 65535) if original >= 1024 else (600, 1023) if original >= 512 else (1, 511)
        values: freeports.Ranges = ((lo, hi),)
        if ip == conn.reply.dst:
            where = f"a --random NAT port that happens to be the original, {original}"
            if walk.chooser.choose(1.0 / (hi - lo + 1), where):
                return original
            if original not in walk.free.labels:
                # A labelled original (a client's port) is not that number but any of its values: then the
                # range stays whole, a superset by one port, so no outcome is lost.
                values = freeports.subtract(values, ((original, original),))
        return walk.free.new(values, prefer=RANDOM_PORT_LABEL, taken=self.ports_in_use(original))

    def _nexthop_toward(self, ns: NetNS, dst: Addr, dev: Device) -> Addr:
        r = ns.lookup_main(dst)
        if r is not None and r.dev is dev and r.via is not None:
            return r.via
        return dst

    # -- routing -------------------------------------------------------------
    def route_output(self, ns: NetNS, dst: Addr) -> Route:
        # Routing depends only on configuration, which the walk never changes.
        key = ("output", dst)
        hit = ns._memo.get(key)
        if hit is None:
            hit = ns._memo[key] = self._route_output(ns, dst)
        return hit  # type: ignore[return-value]

    def _route_output(self, ns: NetNS, dst: Addr) -> Route:
        lo = ns.devices["lo"]
        if ns.is_local(dst) or ns.is_broadcast(dst):
            return Route("local", lo, dst, dst if ns.is_local(dst) else None)
        r = ns.lookup_main(dst)
        if r is None:
            return Route("error", error="ENETUNREACH")
        nexthop = r.via or dst
        return Route("forward", r.dev, nexthop, r.src or ns.select_src(r.dev, nexthop))

    def route_input(self, ns: NetNS, pkt: Packet, dev: Device) -> Route:
        """ip_route_input_slow, with fib_validate_source."""
        key = ("input", dev, pkt.src, pkt.dst)
        hit = ns._memo.get(key)
        if hit is None:
            hit = ns._memo[key] = self._route_input(ns, pkt.src, pkt.dst, dev)
        return hit  # type: ignore[return-value]

    def _route_input(self, ns: NetNS, src: Addr, dst: Addr, dev: Device) -> Route:
        if _multicast(src) or src == LIMITED_BROADCAST or _zeronet(src):
            return Route("error", error="EINVAL", icmp_code=None)
        if dev.kind != "lo":
            if _loopback(dst) and not ns.conf_value(dev, "route_localnet"):
                return Route("error", error="EINVAL (martian destination)")
            if _loopback(src) and not ns.conf_value(dev, "route_localnet"):
                return Route("error", error="EINVAL (martian source)")
        if ns.role == "sink":
            # A test sink answers for every address (like an AnyIP local route).
            return Route("local", ns.devices["lo"], dst)
        if ns.is_local(dst) or ns.is_broadcast(dst):
            err = self.validate_source(ns, src, dev, oif=None)
            if err:
                return Route("error", error=err)
            return Route("local", ns.devices["lo"], dst)
        r = ns.lookup_main(dst)
        if r is None:
            if not ns.forwarding(dev):
                return Route("error", error="EHOSTUNREACH")
            return Route("error", error="ENETUNREACH", icmp_code=0)
        if not ns.forwarding(dev):
            return Route("error", error="EHOSTUNREACH")
        err = self.validate_source(ns, src, dev, oif=r.dev)
        if err:
            return Route("error", error=err)
        return Route("forward", r.dev, r.via or dst)

    def validate_source(self, ns: NetNS, src: Addr, dev: Device, oif: Device | None) -> str:
        """fib_validate_source: '' if acceptable, else why the packet is a martian."""
        rpf = ns.conf_value(dev, "rp_filter")
        accept_local = ns.conf_value(dev, "accept_local")
        redirects = ns.conf_value(dev, "send_redirects")
        if rpf == 0 and (oif is not dev or not redirects):
            if accept_local:
                return ""
            if src in ns.local_addresses():
                return f"EINVAL (martian source {src}: a local address of {ns.name}, accept_local=0 on {dev.name})"
            return ""
        # __fib_validate_source: the reverse route must exist (and for strict
        # mode point back out of the arrival device).
        if ns.is_local(src):
            if not accept_local:
                return f"EINVAL (martian source {src}: a local address, accept_local=0 on {dev.name})"
            rev_dev: Device | None = ns.local_addresses().get(src, ns.devices["lo"])
        else:
            r = ns.lookup_main(src)
            if r is None:
                return f"EXDEV (rp_filter={rpf}: no route back to {src})" if rpf else ""
            rev_dev = r.dev
        if rev_dev is dev:
            return ""
        if rpf == 1:
            return f"EXDEV (rp_filter=1: route back to {src} is via {rev_dev.name if rev_dev else '?'}, not {dev.name})"
        return ""

    # -- layer 2 -------------------------------------------------------------
    def resolve(self, walk: Walk, dev: Device, ip: Addr) -> str | None:
        """ARP: who on dev's segment answers for ip (arp_ignore=0: any local address)."""
        ns = dev.netns
        cached = ns.neigh.get((dev.name, ip))
        if cached is not None:
            return cached
        answer = self._arp(dev, ip, dev.mac, set())
        if answer is not None:
            ns.neigh[(dev.name, ip)] = answer
        return answer

    def _arp(self, dev: Device, ip: Addr, requester: str, seen: set[int]) -> str | None:
        # Follow the wire from dev; bridges learn both MACs as the request
        # floods and the reply comes back, exactly as a real exchange would.
        if id(dev) in seen:
            return None
        seen.add(id(dev))
        if dev.kind == "bridge":
            candidates = list(dev.ports)
            for port in candidates:
                found = self._arp_out_port(port, ip, requester, seen)
                if found is not None:
                    mac, _ = found
                    dev.fdb[mac] = port
                    return mac
            return None
        if dev.kind == "veth" and dev.peer is not None:
            if dev.master is not None:
                dev.master.fdb[requester] = dev
            return self._arp_at(dev.peer, ip, requester, seen)
        return None

    def _arp_out_port(self, port: Device, ip: Addr, requester: str, seen: set[int]) -> tuple[str, Device] | None:
        if port.peer is None:
            return None
        mac = self._arp_at(port.peer, ip, requester, seen)
        return (mac, port) if mac is not None else None

    def _arp_at(self, dev: Device, ip: Addr, requester: str, seen: set[int]) -> str | None:
        """A request arrives at dev (the far end of a wire)."""
        if dev.master is not None:
            bridge = dev.master
            bridge.fdb[requester] = dev
            if bridge.netns.is_local(ip) and not _loopback(ip):
                return bridge.mac
            for port in bridge.ports:
                if port is dev and not port.hairpin:
                    continue
                if id(port) in seen:
                    continue
                seen.add(id(port))
                found = self._arp_out_port(port, ip, requester, seen)
                if found is not None:
                    mac, out = found
                    bridge.fdb[mac] = out
                    return mac
            return None
        if dev.netns.is_local(ip) and not _loopback(ip):
            return dev.mac
        return None

    def xmit(self, walk: Walk, dev: Device, pkt: Packet) -> Landing:
        """dev_queue_xmit on a device."""
        walk.hops += 1
        if walk.hops > MAX_HOPS:
            raise SimError(f"routing loop: {pkt.describe()} crossed more than {MAX_HOPS} devices")
        if dev.kind == "lo":
            # A looped-back packet keeps its output route (skb_valid_dst), so
            # ip_rcv_finish does no input route lookup and no source check.
            return self.ip_rcv(walk, dev.netns, dev, pkt, route=Route("local", dev, pkt.dst))
        if dev.kind == "bridge":
            # br_dev_xmit: frames from the host are forwarded by the FDB and
            # never count as coming back out of their own port.
            port = dev.fdb.get(pkt.dst_mac)
            if port is None:
                return Lost(f"{dev!r}: no FDB entry for {pkt.dst_mac}")
            return self.xmit(walk, port, pkt)
        assert dev.peer is not None
        # veth_xmit scrubs the skb: conntrack and br_netfilter's record always, the mark across netns.
        pkt.ct, pkt.ctstate, pkt.ct_reply, pkt.physin = None, "INVALID", False, None
        if dev.peer.netns is not dev.netns:
            pkt.mark = 0
        return self.netif_receive(walk, dev.peer, pkt)

    def netif_receive(self, walk: Walk, dev: Device, pkt: Packet) -> Landing:
        if dev.master is not None:
            return self.br_handle_frame(walk, dev.master, dev, pkt)
        if pkt.dst_mac not in (dev.mac, BROADCAST_MAC):
            return Lost(f"{dev!r}: frame for {pkt.dst_mac} is not for this interface")
        return self.ip_rcv(walk, dev.netns, dev, pkt)

    # -- the bridge ----------------------------------------------------------
    def br_handle_frame(self, walk: Walk, br: Device, port: Device, pkt: Packet) -> Landing:
        ns = br.netns
        br.fdb[pkt.src_mac] = port
        if not ns.bridge_nf_call_iptables:
            if pkt.dst_mac == br.mac:
                if walk.tracing:
                    walk.note(ns, f"{br.name}: frame from {port.name} to the bridge itself, up to IP")
                return self.ip_rcv(walk, ns, br, pkt)
            return self.br_forward(walk, br, port, pkt, netfilter=False)
        # br_netfilter: iptables PREROUTING runs at bridge level, with -i <bridge>; the frame keeps its port.
        pkt.physin = port
        if walk.tracing:
            walk.note(ns, f"{br.name}: frame from {port.name}, br_netfilter calls iptables PREROUTING")
        daddr = pkt.dst
        res = (
            self.hook(walk, ns, "PREROUTING", pkt, in_dev=br, out_dev=None, physin=port)
            if ns.stages["PREROUTING"]
            else ACCEPTED
        )
        if res.verdict != "ACCEPT":
            return self._refuse(walk, ns, "PREROUTING", pkt, res)
        if pkt.dst != daddr:
            # br_nf_pre_routing_finish: the destination changed, route it.
            route = self.route_input(ns, pkt, br)
            if route.kind == "error":
                if route.error == "EHOSTUNREACH" and not ns.forwarding(br):
                    out = self.route_output(ns, pkt.dst)
                    if out.kind == "forward" and out.dev is br:
                        return self._bridged_dnat(walk, br, port, pkt, out)
                return self._route_error(walk, ns, pkt, route, br)
            if route.kind == "forward" and route.dev is br:
                return self._bridged_dnat(walk, br, port, pkt, route)
            pkt.dst_mac = br.mac
            return self.ip_rcv_finish(walk, ns, br, pkt, route)
        if pkt.dst_mac == br.mac or pkt.dst_mac == BROADCAST_MAC:
            # Up to IP; ip_sabotage_in keeps PREROUTING from running twice.
            return self.ip_rcv_finish(walk, ns, br, pkt, self.route_input(ns, pkt, br))
        return self.br_forward(walk, br, port, pkt, netfilter=True)

    def _bridged_dnat(self, walk: Walk, br: Device, port: Device, pkt: Packet, route: Route) -> Landing:
        assert route.nexthop is not None
        mac = self.resolve(walk, br, route.nexthop)
        if mac is None:
            return Lost(f"{br!r}: no ARP answer for {route.nexthop}")
        pkt.dst_mac = mac
        if walk.tracing:
            walk.note(br.netns, f"{br.name}: DNAT'ed frame is bridged to {mac} ({route.nexthop})")
        return self.br_forward(walk, br, port, pkt, netfilter=True)

    def br_forward(self, walk: Walk, br: Device, inport: Device, pkt: Packet, *, netfilter: bool) -> Landing:
        ns = br.netns
        out = br.fdb.get(pkt.dst_mac)
        if out is None:
            raise SimError(f"{br!r}: unknown unicast {pkt.dst_mac} would be flooded; flooding is not modelled")
        if out is inport and not inport.hairpin:
            return Lost(
                f"{br.name}: frame would leave by {inport.name}, the port it came in on, and hairpin mode is off"
            )
        if netfilter:
            res = (
                self.hook(walk, ns, "FORWARD", pkt, in_dev=br, out_dev=br, physin=inport, physout=out)
                if ns.stages["FORWARD"]
                else ACCEPTED
            )
            if res.verdict != "ACCEPT":
                return self._refuse(walk, ns, "FORWARD", pkt, res)
            res = (
                self.hook(walk, ns, "POSTROUTING", pkt, in_dev=None, out_dev=br, physin=inport, physout=out)
                if ns.stages["POSTROUTING"]
                else ACCEPTED
            )
            if res.verdict != "ACCEPT":
                return self._refuse(walk, ns, "POSTROUTING", pkt, res)
        if walk.tracing:
            walk.note(ns, f"{br.name}: bridged {pkt.describe()} out of {out.name}")
        return self.xmit(walk, out, pkt)

    # -- IP input ------------------------------------------------------------
    def ip_rcv(self, walk: Walk, ns: NetNS, dev: Device, pkt: Packet, *, route: Route | None = None) -> Landing:
        res = self.hook(walk, ns, "PREROUTING", pkt, in_dev=dev, out_dev=None) if ns.stages["PREROUTING"] else ACCEPTED
        if res.verdict != "ACCEPT":
            return self._refuse(walk, ns, "PREROUTING", pkt, res)
        return self.ip_rcv_finish(walk, ns, dev, pkt, route or self.route_input(ns, pkt, dev))

    def ip_rcv_finish(self, walk: Walk, ns: NetNS, dev: Device, pkt: Packet, route: Route) -> Landing:
        if route.kind == "error":
            return self._route_error(walk, ns, pkt, route, dev)
        if route.kind == "local":
            res = (
                self.hook(walk, ns, "INPUT", pkt, in_dev=dev, out_dev=None, physin=pkt.physin)
                if ns.stages["INPUT"]
                else ACCEPTED
            )
            if res.verdict != "ACCEPT":
                return self._refuse(walk, ns, "INPUT", pkt, res)
            if walk.tracing:
                walk.note(ns, f"delivered locally: {pkt.describe()}")
            return Arrived(ns, pkt)
        return self.ip_forward(walk, ns, dev, pkt, route)

    def _route_error(self, walk: Walk, ns: NetNS, pkt: Packet, route: Route, dev: Device) -> Landing:
        if walk.tracing:
            walk.note(ns, f"route input on {dev.name} for {pkt.describe()}: {route.error}")
        if route.icmp_code is not None and pkt.proto != "icmp":
            return self.icmp_send(walk, ns, pkt, 3, route.icmp_code, in_dev=dev)
        return Lost(f"{ns.name}: {route.error} for {pkt.describe()} arriving on {dev.name}")

    def ip_forward(self, walk: Walk, ns: NetNS, in_dev: Device, pkt: Packet, route: Route) -> Landing:
        assert route.dev is not None and route.nexthop is not None
        if route.dev is in_dev and ns.conf_value(in_dev, "send_redirects") and self._redirect_escapes(ns, pkt):
            raise SimError(
                f"{ns.name}: forwarding {pkt.describe()} back out of {in_dev.name} sends an ICMP redirect "
                "(send_redirects=1) that changes later routing; redirects are not modelled: set "
                f"net.ipv4.conf.all/default/{in_dev.name}.send_redirects=0"
            )
        res = (
            self.hook(walk, ns, "FORWARD", pkt, in_dev=in_dev, out_dev=route.dev, physin=pkt.physin)
            if ns.stages["FORWARD"]
            else ACCEPTED
        )
        if res.verdict != "ACCEPT":
            return self._refuse(walk, ns, "FORWARD", pkt, res)
        if pkt.ttl <= 1:
            raise SimError(f"{ns.name}: TTL expired forwarding {pkt.describe()}; ICMP time exceeded is not modelled")
        pkt.ttl -= 1
        if walk.tracing:
            walk.note(ns, f"forward {pkt.describe()} from {in_dev.name} to {route.dev.name} via {route.nexthop}")
        return self.ip_output(walk, ns, route.dev, route.nexthop, pkt)

    @staticmethod
    def _redirect_escapes(ns: NetNS, pkt: Packet) -> bool:
        # Measured: with NAT loaded, the redirect for a connection's first
        # packet (not yet confirmed) and for any DNAT'ed connection is
        # dropped by nf_nat, so it never reaches the sender.
        if not ns.has_nat or pkt.ct is None:
            return True
        return "CONFIRMED" in pkt.ct.status and "DNAT" not in pkt.ct.status

    def ip_output(self, walk: Walk, ns: NetNS, dev: Device, nexthop: Addr, pkt: Packet) -> Landing:
        res = (
            self.hook(walk, ns, "POSTROUTING", pkt, in_dev=None, out_dev=dev, physin=pkt.physin)
            if ns.stages["POSTROUTING"]
            else ACCEPTED
        )
        if res.verdict != "ACCEPT":
            return self._refuse(walk, ns, "POSTROUTING", pkt, res)
        if dev.kind == "lo":
            return self.xmit(walk, dev, pkt)
        mac = self.resolve(walk, dev, nexthop)
        if mac is None:
            return Lost(f"{ns.name}: no ARP answer for {nexthop} on {dev.name}")
        pkt.src_mac, pkt.dst_mac = dev.mac, mac
        return self.xmit(walk, dev, pkt)

    # -- local output ----------------------------------------------------------
    def send(self, walk: Walk, ns: NetNS, pkt: Packet) -> Landing:
        """A socket in ns sends pkt (pkt.src None-equivalent 0.0.0.0: pick one)."""
        route = self.route_output(ns, pkt.dst)
        if route.kind == "error":
            return SendError(f"{ns.name}: {route.error} sending to {pkt.dst}")
        if pkt.src == ANY:
            if route.src is None:
                return SendError(f"{ns.name}: no source address for {pkt.dst}")
            pkt.src = route.src
        dialled = pkt.dst
        res = self.hook(walk, ns, "OUTPUT", pkt, in_dev=None, out_dev=route.dev) if ns.stages["OUTPUT"] else ACCEPTED
        if res.verdict != "ACCEPT":
            return self._refuse(walk, ns, "OUTPUT", pkt, res)
        if pkt.dst != dialled:
            # ip_route_me_harder: nat OUTPUT changed the destination.
            again = self.route_output(ns, pkt.dst)
            if again.kind == "error":
                return SendError(f"{ns.name}: {again.error} after NAT to {pkt.dst}")
            route = again
        assert route.dev is not None and route.nexthop is not None
        if walk.tracing:
            walk.note(ns, f"send {pkt.describe()} out of {route.dev.name}")
        return self.ip_output(walk, ns, route.dev, route.nexthop, pkt)

    # -- errors and rejects -----------------------------------------------------
    def _refuse(
        self,
        walk: Walk,
        ns: NetNS,
        hook: str,
        pkt: Packet,
        res: HookResult,
    ) -> Landing:
        rule = res.decision.rule.text if res.decision and res.decision.rule else "chain policy"
        if res.verdict == "DROP":
            if hook == "OUTPUT":
                # A locally generated packet dropped by netfilter: the sending
                # call fails with EPERM (TCP's connect ignores it and retries).
                return SendError(f"EPERM: dropped in {ns.name} OUTPUT by {rule}")
            return Lost(f"{ns.name}: dropped in {hook} by {rule}")
        assert res.decision is not None
        how = res.decision.reject_with or "icmp-port-unreachable"
        # A bridged frame's ICMP error is an ordinary local send of the node's (icmp_send takes br_netfilter's
        # route; the source is picked by routing back to the sender): the same path as a routed packet's.
        if walk.tracing:
            walk.note(ns, f"{hook}: rejected with {how} by {rule}")
        if how == "tcp-reset":
            answer = self._send_reset(walk, ns, pkt)
        else:
            code = REJECT_CODES.get(how)
            if code is None:
                raise SimError(f"{ns.name}: REJECT --reject-with {how} is not modelled")
            answer = self.icmp_send(walk, ns, pkt, 3, code, in_dev=None)
        if hook == "OUTPUT" and not isinstance(answer, Arrived):
            # REJECT's verdict is NF_DROP: the sending call fails with EPERM whatever becomes of the answer.
            return SendError(f"EPERM: rejected in {ns.name} OUTPUT by {rule} ({answer.reason})")
        return answer

    def icmp_send(
        self, walk: Walk, ns: NetNS, offending: Packet, icmp_type: int, code: int, *, in_dev: Device | None
    ) -> Landing:
        """icmp_send: an error about `offending`, from ns back to its source."""
        if offending.proto == "icmp" and offending.icmp_type not in (0, 8):
            return Lost(f"{ns.name}: no ICMP error about an ICMP error")
        src = offending.dst if ns.is_local(offending.dst) else ANY
        err = Packet(
            src=src,
            dst=offending.src,
            proto="icmp",
            icmp_type=icmp_type,
            icmp_code=code,
            inner=offending.copy(),
        )
        # nf_ct_attach: the error carries the offending packet's connection.
        if offending.ct is not None:
            err.ct, err.ct_reply, err.ctstate = offending.ct, not offending.ct_reply, "RELATED"
        if walk.tracing:
            walk.note(ns, f"sends ICMP type {icmp_type} code {code} to {offending.src}")
        return _own(self.send(walk, ns, err), ns, "ICMP error")

    def _send_reset(self, walk: Walk, ns: NetNS, pkt: Packet) -> Landing:
        if pkt.proto != "tcp" or "RST" in pkt.tcp_flags:
            return Lost(f"{ns.name}: tcp-reset for a non-TCP packet")
        rst = Packet(pkt.dst, pkt.src, "tcp", pkt.dport, pkt.sport, frozenset({"RST", "ACK"}))
        if pkt.ct is not None:
            # nf_ct_attach: the reset belongs to the connection as RELATED (measured), in the other direction.
            rst.ct, rst.ct_reply, rst.ctstate = pkt.ct, not pkt.ct_reply, "RELATED"
        if pkt.physin is not None:
            # nf_send_reset: a packet that came in on a bridge port is answered straight out of that port, the
            # Ethernet header turned round: no OUTPUT, no POSTROUTING, so no NAT on the way back (measured). It
            # still needs a route back (ip_route_me_harder), or no reset is sent.
            if self.route_output(ns, rst.dst).kind == "error":
                return Lost(f"{ns.name}: no route back for the tcp-reset to {rst.dst}")
            rst.src_mac, rst.dst_mac = pkt.dst_mac, pkt.src_mac
            if walk.tracing:
                walk.note(ns, f"tcp-reset sent straight out of bridge port {pkt.physin.name}: {rst.describe()}")
            return self.xmit(walk, pkt.physin, rst)
        return _own(self.send(walk, ns, rst), ns, "tcp-reset")


def _own(landing: Landing, ns: NetNS, what: str) -> Landing:
    """A packet the kernel makes itself (an ICMP error, a reset) has no socket to tell that it could not be
    sent: the failure stays in the kernel and nobody gets an answer (measured: a node's ICMP error dropped in
    its OUTPUT leaves a remote client waiting, not refused)."""
    if isinstance(landing, SendError):
        return Lost(f"{ns.name}: its {what} was not sent: {landing.reason}")
    return landing


@functools.lru_cache(maxsize=256)
def _parsed(text: str, source: str) -> tuple[Ruleset, bool]:
    """The ruleset and whether it uses conntrack, once per text: Hypothesis
    revisits the same node rulesets often while it generates and shrinks.
    Rulesets are never changed after parsing, so sharing one is safe."""
    ruleset = parse_iptables_save(text, source=source)
    return ruleset, _uses_conntrack(ruleset)


def _uses_conntrack(ruleset: Ruleset) -> bool:
    for table in ruleset.tables.values():
        for chain in table.chains.values():
            for rule in chain.rules:
                words = rule.text.split()
                if any(w in ("conntrack", "state", "connmark", "CONNMARK", "NOTRACK", "CT") for w in words):
                    return True
    return False
