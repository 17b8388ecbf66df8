"""Which container realises which namespace of a dataplane.

* Each `node` namespace is a container (its own network namespace), as a kind node is.
* The `underlay` namespace is one more container. Its bridge's ports toward
  nodes become the Docker network: one Docker interface per container is
  the wire between them. In a node it takes the name the dataplane gives
  the node end of that veth (eth0); in the underlay container it joins the
  bridge, which keeps the underlay's address (the nodes' gateway).
* Every other namespace (pods, the external client) is created inside the
  container of the namespace its veth connects it to, or of the node whose
  CNI plugins attach it.

What a Docker network cannot be is refused with the reason, never bent:
a hairpin flag on a port of the wire (the host's bridge is not ours to
configure), two wires, or a veth between two containers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from backends.docker.wire import Part, Uplink
from conformance.dataplane import Dataplane, Link, NetnsConfig

UNDERLAY_CONTAINER = "underlay"
WIRE_NAME = "wire0"  # the Docker interface in the underlay container, a port of its bridge
CONTAINER_ROLES = ("node", "underlay")


class PlacementError(ValueError):
    """A dataplane this backend cannot realise with containers; says what and why."""


@dataclass(frozen=True)
class Plan:
    parts: dict[str, Part]  # container (its logical name) -> what it realises
    hosts: dict[str, str]  # namespace -> the container it lives in

    def container_of_source(self, dataplane: Dataplane, source: str) -> tuple[str, str]:
        netns = dataplane.source_netns(source)
        return self.hosts[netns], netns


def _veths(ns: NetnsConfig) -> Iterable[Link]:
    return (link for link in ns.links if link.kind == "veth")


def place(dataplane: Dataplane) -> Plan:
    by_name = {ns.name: ns for ns in dataplane.namespaces}
    underlays = [ns for ns in dataplane.namespaces if ns.role == "underlay"]
    if len(underlays) > 1:
        raise PlacementError(f"{len(underlays)} underlay namespaces; one Docker network stands for exactly one")
    hosts: dict[str, str] = {ns.name: ns.name for ns in dataplane.namespaces if ns.role == "node"}
    uplinks: dict[str, Uplink] = {}
    underlay_part: tuple[NetnsConfig, Uplink | None] | None = None
    if underlays:
        underlay = underlays[0]
        hosts[underlay.name] = UNDERLAY_CONTAINER
        wire = [
            link for link in _veths(underlay) if link.peer_netns in by_name and by_name[link.peer_netns].role == "node"
        ]
        masters = {link.master for link in wire}
        if None in masters or len(masters) > 1:
            raise PlacementError(
                f"underlay {underlay.name}: its links to nodes must all be ports of one bridge "
                f"(the Docker network), found masters {sorted(str(m) for m in masters)}"
            )
        for link in wire:
            if link.hairpin:
                raise PlacementError(
                    f"underlay {underlay.name}: hairpin on {link.name}: a port of the host's Docker bridge cannot be set"
                )
            assert link.peer_netns is not None
            if link.peer_netns in uplinks:
                raise PlacementError(f"node {link.peer_netns}: two links to the underlay; a container has one wire")
            uplinks[link.peer_netns] = Uplink(link.peer_name or "eth0")
        own = dataclasses.replace(underlay, links=tuple(link for link in underlay.links if link not in wire))
        master = next(iter(masters)) if wire else None
        underlay_part = (own, Uplink(WIRE_NAME, master) if master is not None else None)
    # Everything else lives with whatever its veths reach, transitively; a pod that
    # a CNI plugin attaches lives with the node the plugin runs in.
    changed = True
    while changed:
        changed = False
        for ns in dataplane.namespaces:
            for att in ns.cni:
                if att.netns not in by_name:
                    raise PlacementError(
                        f"{ns.name}: CNI attachment {att.container_id[:12]} names no namespace {att.netns!r}"
                    )
                if ns.name in hosts and att.netns not in hosts:
                    hosts[att.netns], changed = hosts[ns.name], True
            for link in _veths(ns):
                peer = link.peer_netns
                if peer is None or peer not in by_name:
                    raise PlacementError(f"{ns.name}: veth {link.name} has no peer namespace")
                if ns.name in hosts and peer not in hosts:
                    hosts[peer], changed = hosts[ns.name], True
                elif peer in hosts and ns.name not in hosts:
                    hosts[ns.name], changed = hosts[peer], True
    for ns in dataplane.namespaces:
        if ns.name not in hosts:
            raise PlacementError(
                f"{ns.name} ({ns.role}) is connected to no node or underlay: no container to put it in"
            )
        for link in _veths(ns):
            assert link.peer_netns is not None
            crosses = hosts[link.peer_netns] != hosts[ns.name]
            if crosses and not (ns.role == "underlay" and link.peer_netns in uplinks):
                raise PlacementError(
                    f"{ns.name}: veth {link.name} to {link.peer_netns} would join two containers; only the "
                    f"underlay's bridge ports can (they are the Docker network)"
                )
    parts: dict[str, Part] = {}
    for container in dict.fromkeys(hosts.values()):
        inner = tuple(ns for ns in dataplane.namespaces if hosts[ns.name] == container and ns.name != container)
        if container == UNDERLAY_CONTAINER and underlay_part is not None:
            own, uplink = underlay_part
            inner = tuple(ns for ns in inner if ns.name != own.name)
        else:
            own, uplink = by_name[container], uplinks.get(container)
        parts[container] = Part(own=own, inner=inner, uplink=uplink)
    return Plan(parts, hosts)
