"""Node snapshots: the live state of namespaces read back into a `Dataplane`.

Whatever a CNI plugin or a proxy did to a node, the simulator can then
predict it: read every namespace (links with bridge ports, hairpin flags and
veth peers, IPv4 addresses, main-table routes, the sysctls the simulator
models, the whole iptables ruleset), assemble one plain Dataplane (no CNI
attachments, rules to be restored as they are), and give it to the simulator.

Reading goes through `NodeAccess`, one method: run a command inside the
namespace and return its stdout. A node that is a network namespace here
(`backends.netns.snapshot`) and a node inside a container (``docker exec``)
both provide it; everything is read by one shell script per namespace
(`READ_SCRIPT`, iproute2's JSON output and /proc/sys), so a container costs
one exec per namespace.

The reader never guesses: state the simulator does not model (another link
kind that is up, a link that is down, policy routing, multipath or
non-unicast routes, two routes to one prefix, proxy_arp or arp_ignore,
VLAN filtering, bridge port flags other than hairpin, nftables rules, a
queueing discipline that shapes or filters) is a `SnapshotError` naming it
and where.

Listeners (probe servers) and probe sources are not kernel state: they are
carried over from the Dataplane that was deployed (`carry_over`).

`dump_dataplane` / `load_dataplane` write and read a Dataplane as JSON (a
YAML loader reads it too); the round trip is exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal, Protocol

import yaml

from conformance.dataplane import CniAttachment, Dataplane, Link, Listener, NetnsConfig, Role, Route
from conformance.model import PROTOCOLS

API_VERSION = "netconformance.io/v1"
UNDERLAY = "underlay"
LOOPBACK = IPv4Interface("127.0.0.1/8")

# The sysctls the simulator models (backends/sim/kernel.py), and guards it does not.
NS_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.icmp_ratelimit", "net.bridge.bridge-nf-call-iptables")
CONF_KEYS = ("rp_filter", "accept_local", "route_localnet", "send_redirects")
GUARD_KEYS = ("proxy_arp", "arp_ignore")  # must be 0 everywhere: the model answers ARP as arp_ignore=0 does
DEFAULT_RULES = {(0, "local"), (32766, "main"), (32767, "default")}
TABLE_ORDER = ("raw", "mangle", "nat", "filter", "security")
_COUNTERS = re.compile(r"\[\d+:\d+\]$")

# One exec per namespace; sections start with a line "@@name". $1 is the iptables-save to use;
# $2 = "nft" also lists nftables tables (a node whose tools may use iptables-nft).
READ_SCRIPT = r"""
echo @@links; ip -j -d link show
echo; echo @@addresses; ip -j addr show
echo; echo @@routes; ip -j -d route show table main
echo; echo @@rules; ip -j rule show
echo; echo @@nsids; ip -j netns list-id 2>/dev/null || echo '[]'
echo; echo @@qdiscs; if command -v tc >/dev/null 2>&1; then tc -j qdisc show; else echo null; fi
echo; echo @@sysctls
for f in /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/icmp_ratelimit \
    /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/ipv4/conf/*/rp_filter \
    /proc/sys/net/ipv4/conf/*/accept_local /proc/sys/net/ipv4/conf/*/route_localnet \
    /proc/sys/net/ipv4/conf/*/send_redirects /proc/sys/net/ipv4/conf/*/forwarding \
    /proc/sys/net/ipv4/conf/*/proxy_arp /proc/sys/net/ipv4/conf/*/arp_ignore; do
    if [ -r "$f" ]; then printf '%s %s\n' "$f" "$(cat "$f")"; fi
done
echo @@nftables
if [ "$2" = nft ] && command -v nft >/dev/null 2>&1; then nft list tables 2>/dev/null || true; fi
echo @@iptables
"$1"
"""


class SnapshotError(RuntimeError):
    """State the snapshot (or the simulator) cannot represent; names what and where."""


class NodeAccess(Protocol):
    """A way into one network namespace of a node."""

    def run(self, argv: Sequence[str]) -> str:
        """Run a command inside the namespace; its stdout (SnapshotError if it fails)."""
        ...


# -- one namespace, as read ------------------------------------------------------------


@dataclass(frozen=True)
class RawLink:
    name: str
    ifindex: int
    kind: str  # "veth", "bridge", "loopback", or a kind the simulator lacks
    up: bool
    master: str | None = None
    hairpin: bool = False
    peer_netnsid: int | None = None  # None: the peer is in this namespace (or there is none)
    peer_ifindex: int | None = None
    problems: tuple[str, ...] = ()  # bridge/port settings the simulator does not model


@dataclass(frozen=True)
class RawNetns:
    links: tuple[RawLink, ...]
    addresses: tuple[tuple[str, IPv4Interface], ...]
    no_prefix_route: tuple[tuple[str, IPv4Interface], ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str], ...]
    iptables: str
    nsids: Mapping[int, str] = field(default_factory=dict)  # id -> name under /run/netns, as this netns sees them


def split_sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@@") and line[2:].strip().isidentifier():
            current = out.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v) + "\n" for k, v in out.items()}


def parse_netns(sections: Mapping[str, str], where: str) -> RawNetns:
    for name in ("links", "addresses", "routes", "rules", "nsids", "qdiscs", "sysctls", "iptables"):
        if name not in sections:
            raise SnapshotError(f"{where}: the read script printed no {name} section")
    links = parse_links(sections["links"], where)
    sysctls = parse_sysctls(sections["sysctls"], [link.name for link in links], where)
    addresses = parse_addresses(sections["addresses"])
    routes, no_prefix = parse_routes(sections["routes"], addresses, where)
    _check_rules(sections["rules"], where)
    _check_qdiscs(sections["qdiscs"], where)
    if sections.get("nftables", "").strip():
        raise SnapshotError(
            f"{where}: nftables tables present ({sections['nftables'].split()!r}); only iptables is read"
        )
    nsids = {int(item["nsid"]): str(item["name"]) for item in _json_list(sections["nsids"], where) if "name" in item}
    return RawNetns(links, addresses, no_prefix, routes, sysctls, clean_rules(sections["iptables"]), nsids)


def parse_links(text: str, where: str) -> tuple[RawLink, ...]:
    out = []
    for item in _json_list(text, f"{where}: ip -j -d link show"):
        info = item.get("linkinfo") or {}
        kind = str(info.get("info_kind") or ("loopback" if item.get("link_type") == "loopback" else "unknown"))
        problems: list[str] = []
        hairpin = False
        if info.get("info_slave_kind") == "bridge":
            port = info.get("info_slave_data") or {}
            hairpin = bool(port.get("hairpin", False))
            if port.get("state", "forwarding") != "forwarding":
                problems.append(f"bridge port state {port.get('state')}")
            for flag, normal in (("learning", True), ("flood", True), ("proxy_arp", False), ("isolated", False)):
                if flag in port and bool(port[flag]) != normal:
                    problems.append(f"bridge port {flag} {'on' if port[flag] else 'off'}")
        elif info.get("info_slave_kind"):
            problems.append(f"enslaved to a {info['info_slave_kind']}")
        if kind == "bridge" and (info.get("info_data") or {}).get("vlan_filtering"):
            problems.append("vlan_filtering on")
        out.append(
            RawLink(
                name=str(item["ifname"]),
                ifindex=int(item["ifindex"]),
                kind=kind,
                up="UP" in (item.get("flags") or []),
                master=item.get("master"),
                hairpin=hairpin,
                peer_netnsid=item.get("link_netnsid"),
                peer_ifindex=item.get("link_index"),
                problems=tuple(problems),
            )
        )
    return tuple(out)


def parse_addresses(text: str) -> tuple[tuple[str, IPv4Interface], ...]:
    out = []
    for item in _json_list(text, "ip -j addr show"):
        for a in item.get("addr_info") or []:
            if a.get("family") != "inet":
                continue
            iface = IPv4Interface(f"{a['local']}/{a['prefixlen']}")
            if item.get("ifname") == "lo" and iface == LOOPBACK:
                continue  # implicit in every namespace
            out.append((str(item["ifname"]), iface))
    return tuple(out)


def parse_routes(
    text: str, addresses: Sequence[tuple[str, IPv4Interface]], where: str
) -> tuple[tuple[Route, ...], tuple[tuple[str, IPv4Interface], ...]]:
    """Main-table routes minus the connected ones (derived from addresses), and addresses lacking theirs."""
    routes: list[Route] = []
    connected: set[tuple[str, IPv4Network]] = set()
    seen: dict[IPv4Network, str] = {}
    for item in _json_list(text, f"{where}: ip -j route show table main"):
        kind = item.get("type", "unicast")
        dst = IPv4Network("0.0.0.0/0" if item["dst"] == "default" else item["dst"])
        if kind != "unicast":
            raise SnapshotError(f"{where}: route {kind} {dst}: only unicast routes are modelled by the simulator")
        if "nexthops" in item or "dev" not in item:
            raise SnapshotError(f"{where}: route {dst}: multipath routes are not modelled by the simulator")
        if dst in seen:
            raise SnapshotError(f"{where}: two routes to {dst} (metrics): not modelled by the simulator")
        dev = str(item["dev"])
        seen[dst] = dev
        prefsrc = IPv4Address(item["prefsrc"]) if "prefsrc" in item else None
        if item.get("protocol") == "kernel" and any(d == dev and a.network == dst for d, a in addresses):
            connected.add((dev, dst))
            continue
        via = IPv4Address(item["gateway"]) if "gateway" in item else None
        routes.append(Route(dst, dev, via=via, src=prefsrc))
    no_prefix = tuple((d, a) for d, a in addresses if a.network.prefixlen < 32 and (d, a.network) not in connected)
    # On-link routes first: a gateway must be reachable when its route is added (ptp's /32 to the gateway).
    return tuple(sorted(routes, key=lambda r: r.via is not None)), no_prefix


def _check_rules(text: str, where: str) -> None:
    rules = {(int(r.get("priority", -1)), str(r.get("table"))) for r in _json_list(text, f"{where}: ip rule")}
    extra = [r for r in _json_list(text, f"{where}: ip rule") if set(r) - {"priority", "src", "table"}]
    if rules != DEFAULT_RULES or extra:
        raise SnapshotError(f"{where}: policy routing rules ({sorted(rules)}): only the main table is modelled")


# Queueing disciplines that only order and queue packets: with a probe's few packets nothing waits or drops. Any
# other (tbf and htb shape, netem delays and loses, ingress and clsact carry filters that police or redirect, as the
# bandwidth CNI plugin's do) changes what a probe sees, and the simulator models none of them.
PLAIN_QDISCS = frozenset({"noqueue", "pfifo_fast", "pfifo", "bfifo", "fq_codel", "fq", "mq", "sfq", "codel"})


def _check_qdiscs(text: str, where: str) -> None:
    if text.strip() == "null":
        raise SnapshotError(f"{where}: tc is not installed, so its queueing disciplines cannot be read (iproute2's tc)")
    found = [(str(q.get("kind")), str(q.get("dev"))) for q in _json_list(text, f"{where}: tc qdisc")]
    shaping = sorted({f"{kind} on {dev}" for kind, dev in found if kind not in PLAIN_QDISCS})
    if shaping:
        raise SnapshotError(
            f"{where}: queueing discipline(s) {', '.join(shaping)}: traffic shaping, policing and tc filters are not"
            " modelled by the simulator"
        )


def parse_sysctls(text: str, devices: Sequence[str], where: str) -> tuple[tuple[str, str], ...]:
    """The modelled subset, namespace-wide keys first (the order NetnsConfig asks for)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        path, _, value = line.partition(" ")
        if path.startswith("/proc/sys/"):
            values[path[len("/proc/sys/") :].replace("/", ".")] = value.strip()
    for key in GUARD_KEYS:
        for which in ("all", *devices):
            if values.get(f"net.ipv4.conf.{which}.{key}", "0") != "0":
                raise SnapshotError(
                    f"{where}: net.ipv4.conf.{which}.{key}={values[f'net.ipv4.conf.{which}.{key}']}: "
                    "not modelled by the simulator"
                )
    wide = [(k, values[k]) for k in NS_SYSCTLS if k in values]
    for which in ("all", "default"):
        wide += [
            (f"net.ipv4.conf.{which}.{k}", values[f"net.ipv4.conf.{which}.{k}"])
            for k in CONF_KEYS
            if f"net.ipv4.conf.{which}.{k}" in values
        ]
    per_dev: list[tuple[str, str]] = []
    for dev in devices:
        # forwarding per device (all.forwarding is ip_forward, read above).
        for k in (*CONF_KEYS, "forwarding"):
            key = f"net.ipv4.conf.{dev}.{k}"
            if key in values:
                per_dev.append((key, values[key]))
    return tuple(wide + per_dev)


def clean_rules(text: str) -> str:
    """iptables-save output as iptables-restore (and the simulator) take it, minus what is not state.

    Comment lines go, chain counters read ``[0:0]`` and tables come in one
    fixed order: counters are history, not configuration, and the order of
    tables is the order they were first used; either would make equal
    snapshots differ.
    """
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("*") or not blocks:
            blocks.append([])
        if line.startswith(":"):
            line = _COUNTERS.sub("[0:0]", line)
        blocks[-1].append(line + "\n")

    def rank(block: list[str]) -> int:
        name = block[0][1:].strip() if block[0].startswith("*") else ""
        return TABLE_ORDER.index(name) if name in TABLE_ORDER else len(TABLE_ORDER)

    return "".join("".join(block) for block in sorted(blocks, key=rank))


def _json_list(text: str, what: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text.strip() or "[]")
    except json.JSONDecodeError as e:
        raise SnapshotError(f"{what}: not JSON: {e}") from None
    if not isinstance(data, list):
        raise SnapshotError(f"{what}: expected a JSON list")
    return [d for d in data if isinstance(d, dict)]


# -- many namespaces, assembled --------------------------------------------------------


@dataclass(frozen=True)
class NamespaceRead:
    """One namespace as read, with what the reader knows about it."""

    name: str  # logical name in the Dataplane
    role: Role
    raw: RawNetns
    bridge_nf: Mapping[str, bool] = field(default_factory=dict)  # per-bridge nf_call_iptables


def assemble(
    reads: Sequence[NamespaceRead],
    names: Mapping[str, str],
    *,
    outside: Literal["error", "underlay"] = "error",
    implementation: str = "snapshot",
) -> Dataplane:
    """One Dataplane from namespaces read.

    `names` maps the names namespaces have under /run/netns (as `ip netns
    list-id` shows them) to logical names. A veth whose peer is in no
    namespace read is an error, or with ``outside="underlay"`` (a node in a
    container: its uplink's peer is on the host) a port of a synthesized
    underlay bridge.
    """
    by_name = {r.name: r for r in reads}
    links: dict[str, list[Link]] = {r.name: [] for r in reads}
    underlay_ports: list[Link] = []
    declared: set[tuple[str, int]] = set()
    for r in reads:
        for link in r.raw.links:
            where = f"{r.name}: link {link.name}"
            if link.problems:
                raise SnapshotError(f"{where}: {', '.join(link.problems)}: not modelled by the simulator")
            if link.kind not in ("veth", "bridge", "loopback"):
                if link.up:
                    raise SnapshotError(f"{where} of kind {link.kind} is up: not modelled by the simulator")
                continue
            if not link.up:
                raise SnapshotError(f"{where} is down: the simulator models every link up")
            if link.kind == "bridge":
                links[r.name].append(Link(link.name, "bridge"))
    for r in reads:
        for link in sorted(r.raw.links, key=lambda lk: lk.ifindex):
            if link.kind != "veth" or (r.name, link.ifindex) in declared:
                continue
            peer_ns, peer = _peer(r, link, by_name, names)
            if peer_ns is None or peer is None:
                if outside == "error":
                    raise SnapshotError(
                        f"{r.name}: veth {link.name}: its peer is in no namespace read (netnsid {link.peer_netnsid})"
                    )
                if link.master is not None:
                    raise SnapshotError(f"{r.name}: veth {link.name}: an uplink enslaved to {link.master}")
                underlay_ports.append(Link(f"u-{len(underlay_ports)}", "veth", r.name, link.name, master="br0"))
                declared.add((r.name, link.ifindex))
                continue
            declared.update({(r.name, link.ifindex), (peer_ns.name, peer.ifindex)})
            if link.master is not None and peer.master is not None:
                raise SnapshotError(
                    f"{r.name}: veth {link.name} and its peer {peer_ns.name}/{peer.name} are both bridge ports: "
                    "a Dataplane veth has one plain end"
                )
            # Declared from the end with a master (the other end is plain), else from this one.
            if peer.master is not None:
                links[peer_ns.name].append(Link(peer.name, "veth", r.name, link.name, peer.master, peer.hairpin))
            else:
                links[r.name].append(Link(link.name, "veth", peer_ns.name, peer.name, link.master, link.hairpin))
    configs: list[NetnsConfig] = []
    if underlay_ports:
        configs.append(
            NetnsConfig(
                name=UNDERLAY,
                role="underlay",
                links=(Link("br0", "bridge"), *underlay_ports),
                sysctls=(("net.ipv4.ip_forward", "0"), ("net.ipv4.conf.all.rp_filter", "0")),
            )
        )
    for r in reads:
        sysctl = dict(r.raw.sysctls)
        # The kernel runs iptables for bridged frames when the namespace's sysctl OR
        # the bridge's own nf_call_iptables says so; the model knows only the sysctl.
        if sysctl.get("net.bridge.bridge-nf-call-iptables", "1") == "0":
            on = sorted(b for b, flag in r.bridge_nf.items() if flag)
            if on:
                raise SnapshotError(
                    f"{r.name}: bridge(s) {', '.join(on)} call iptables (nf_call_iptables) while "
                    "net.bridge.bridge-nf-call-iptables=0: per-bridge settings are not modelled"
                )
        configs.append(
            NetnsConfig(
                name=r.name,
                role=r.role,
                links=tuple(links[r.name]),
                addresses=r.raw.addresses,
                routes=r.raw.routes,
                sysctls=r.raw.sysctls,
                iptables=r.raw.iptables,
                no_prefix_route=r.raw.no_prefix_route,
            )
        )
    return Dataplane(namespaces=tuple(configs), implementation=implementation)


def _peer(
    r: NamespaceRead, link: RawLink, by_name: Mapping[str, NamespaceRead], names: Mapping[str, str]
) -> tuple[NamespaceRead | None, RawLink | None]:
    if link.peer_ifindex is None:
        return None, None
    if link.peer_netnsid is None:
        other: NamespaceRead | None = r
    else:
        seen_as = r.raw.nsids.get(link.peer_netnsid)
        logical = names.get(seen_as) if seen_as is not None else None
        other = by_name.get(logical) if logical is not None else None
    if other is None:
        return None, None
    peer = next((p for p in other.raw.links if p.ifindex == link.peer_ifindex), None)
    if peer is None:
        raise SnapshotError(f"{r.name}: veth {link.name}: no ifindex {link.peer_ifindex} in {other.name}")
    return other, peer


def parse_bridge_flags(links_json: str) -> dict[str, bool]:
    """Each bridge's own nf_call_iptables (IFLA_BR_NF_CALL_IPTABLES) from `ip -j -d link show`."""
    out = {}
    for item in _json_list(links_json, "ip -j -d link show"):
        info = item.get("linkinfo") or {}
        if info.get("info_kind") == "bridge":
            out[str(item["ifname"])] = bool((info.get("info_data") or {}).get("nf_call_iptables", 0))
    return out


def read_argv(iptables_save: str = "iptables-legacy-save", *, check_nft: bool = True) -> list[str]:
    """The one command that reads a namespace (run it inside; its output goes to `from_output`).

    `check_nft`: fail on nftables tables, which the iptables reader would miss
    (off where every tool is known to use iptables-legacy, as in the netns backend).
    """
    return ["sh", "-c", READ_SCRIPT, "read-netns", iptables_save, "nft" if check_nft else "-"]


def from_output(output: str, name: str, role: Role) -> NamespaceRead:
    sections = split_sections(output)
    return NamespaceRead(name, role, parse_netns(sections, name), parse_bridge_flags(sections["links"]))


def read_namespace(
    access: NodeAccess, name: str, role: Role, *, iptables_save: str = "iptables-legacy-save", check_nft: bool = True
) -> NamespaceRead:
    return from_output(access.run(read_argv(iptables_save, check_nft=check_nft)), name, role)


def carry_over(snapshot: Dataplane, intent: Dataplane) -> Dataplane:
    """The intent's probe servers and probe sources on a snapshot (they are not kernel state)."""
    listeners = {ns.name: ns.listeners for ns in intent.namespaces}
    return replace(
        snapshot,
        namespaces=tuple(replace(ns, listeners=listeners.get(ns.name, ())) for ns in snapshot.namespaces),
        sources=intent.sources,
    )


# -- files -------------------------------------------------------------------------------


def dump_dataplane(dataplane: Dataplane) -> str:
    """A Dataplane as JSON (readable as YAML too)."""
    doc = {
        "apiVersion": API_VERSION,
        "kind": "Dataplane",
        "implementation": dataplane.implementation,
        "sources": [list(pair) for pair in dataplane.sources],
        "namespaces": [_ns_doc(ns) for ns in dataplane.namespaces],
    }
    return json.dumps(doc, indent=1) + "\n"


def _ns_doc(ns: NetnsConfig) -> dict[str, Any]:
    return {
        "name": ns.name,
        "role": ns.role,
        "links": [
            {
                "name": lk.name,
                "kind": lk.kind,
                "peer_netns": lk.peer_netns,
                "peer_name": lk.peer_name,
                "master": lk.master,
                "hairpin": lk.hairpin,
            }
            for lk in ns.links
        ],
        "addresses": [[dev, str(a)] for dev, a in ns.addresses],
        "no_prefix_route": [[dev, str(a)] for dev, a in ns.no_prefix_route],
        "routes": [{"dst": str(r.dst), "dev": r.dev, "via": _opt(r.via), "src": _opt(r.src)} for r in ns.routes],
        "sysctls": [[k, v] for k, v in ns.sysctls],
        "iptables": ns.iptables,
        "iptables_noflush": ns.iptables_noflush,
        "listeners": [{"protocol": li.protocol, "port": li.port, "identity": li.identity} for li in ns.listeners],
        "cni": [
            {
                "conflist": a.conflist,
                "container_id": a.container_id,
                "netns": a.netns,
                "ifname": a.ifname,
                "args": [[k, v] for k, v in a.args],
                "capability_args": a.capability_args,
            }
            for a in ns.cni
        ],
    }


def _opt(value: object | None) -> str | None:
    return None if value is None else str(value)


class DataplaneFormatError(ValueError):
    pass


def load_dataplane(text: str, source: str = "<dataplane>") -> Dataplane:
    """Read what `dump_dataplane` wrote (JSON or YAML); strict about keys and types."""
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an unquoted impossible date such as 2026-13-45
        raise DataplaneFormatError(f"{source}: not JSON/YAML: {e}") from None
    d = _Doc(source)
    top = d.obj(doc, "", {"apiVersion", "kind", "implementation", "sources", "namespaces"})
    if top.get("apiVersion") != API_VERSION or top.get("kind") != "Dataplane":
        raise DataplaneFormatError(f"{source}: expected apiVersion {API_VERSION}, kind Dataplane")
    namespaces = tuple(_ns(d, item, f"namespaces[{i}]") for i, item in enumerate(d.list(top, "namespaces")))
    pairs = [d.pair(x, f"sources[{i}]") for i, x in enumerate(d.list(top, "sources"))]
    sources = tuple((str(a), str(b)) for a, b in pairs)
    return Dataplane(namespaces, sources, implementation=str(top.get("implementation", "")))


ROLES: tuple[Role, ...] = ("node", "pod", "underlay", "client", "sink")


def _ns(d: _Doc, item: object, path: str) -> NetnsConfig:
    keys = {
        "name",
        "role",
        "links",
        "addresses",
        "no_prefix_route",
        "routes",
        "sysctls",
        "iptables",
        "iptables_noflush",
        "listeners",
        "cni",
    }
    o = d.obj(item, path, keys)
    role = o.get("role")
    if role not in ROLES:
        raise DataplaneFormatError(f"{d.source}: {path}.role: {role!r} is not one of {ROLES}")
    links = []
    for i, x in enumerate(d.list(o, "links")):
        lk = d.obj(x, f"{path}.links[{i}]", {"name", "kind", "peer_netns", "peer_name", "master", "hairpin"})
        kind = lk.get("kind")
        if kind not in ("veth", "bridge"):
            raise DataplaneFormatError(f"{d.source}: {path}.links[{i}].kind: {kind!r}")
        links.append(
            Link(
                str(lk["name"]),
                kind,
                _s(lk.get("peer_netns")),
                _s(lk.get("peer_name")),
                _s(lk.get("master")),
                bool(lk.get("hairpin", False)),
            )
        )
    routes = []
    for i, x in enumerate(d.list(o, "routes")):
        r = d.obj(x, f"{path}.routes[{i}]", {"dst", "dev", "via", "src"})
        routes.append(
            Route(
                IPv4Network(str(r["dst"])),
                str(r["dev"]),
                via=None if r.get("via") is None else IPv4Address(str(r["via"])),
                src=None if r.get("src") is None else IPv4Address(str(r["src"])),
            )
        )
    listeners = []
    for i, x in enumerate(d.list(o, "listeners")):
        li = d.obj(x, f"{path}.listeners[{i}]", {"protocol", "port", "identity"})
        proto = li.get("protocol")
        if proto not in PROTOCOLS:
            raise DataplaneFormatError(f"{d.source}: {path}.listeners[{i}].protocol: {proto!r}")
        listeners.append(Listener(proto, int(li["port"]), str(li["identity"])))
    cni = []
    for i, x in enumerate(d.list(o, "cni")):
        a = d.obj(x, f"{path}.cni[{i}]", {"conflist", "container_id", "netns", "ifname", "args", "capability_args"})
        cni.append(
            CniAttachment(
                str(a["conflist"]),
                str(a["container_id"]),
                str(a["netns"]),
                str(a.get("ifname", "eth0")),
                tuple((str(k), str(v)) for k, v in (d.pair(p, f"{path}.cni[{i}].args") for p in a.get("args", []))),
                str(a.get("capability_args", "{}")),
            )
        )
    return NetnsConfig(
        name=str(o["name"]),
        role=role,
        links=tuple(links),
        addresses=tuple(
            (str(dev), IPv4Interface(str(a))) for dev, a in (d.pair(x, path) for x in d.list(o, "addresses"))
        ),
        routes=tuple(routes),
        sysctls=tuple((str(k), str(v)) for k, v in (d.pair(x, path) for x in d.list(o, "sysctls"))),
        iptables=str(o.get("iptables", "")),
        listeners=tuple(listeners),
        cni=tuple(cni),
        iptables_noflush=bool(o.get("iptables_noflush", False)),
        no_prefix_route=tuple(
            (str(dev), IPv4Interface(str(a))) for dev, a in (d.pair(x, path) for x in d.list(o, "no_prefix_route"))
        ),
    )


def _s(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class _Doc:
    source: str

    def obj(self, value: object, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise DataplaneFormatError(f"{self.source}: {path or 'document'}: expected a mapping")
        unknown = set(value) - allowed
        if unknown:
            raise DataplaneFormatError(f"{self.source}: {path or 'document'}: unknown key(s) {sorted(unknown)}")
        return value

    def list(self, o: Mapping[str, Any], key: str) -> list[Any]:
        value = o.get(key, [])
        if not isinstance(value, list):
            raise DataplaneFormatError(f"{self.source}: {key}: expected a list")
        return value

    def pair(self, value: object, path: str) -> tuple[Any, Any]:
        if not isinstance(value, list) or len(value) != 2:
            raise DataplaneFormatError(f"{self.source}: {path}: expected a pair")
        return value[0], value[1]
