"""Scenario addresses <-> the addresses the cluster assigned.

A real cluster picks pod IPs, ClusterIPs and NodePorts itself, so a probe
written against the scenario is sent to the real counterparts, and what
comes back (the peer the server saw, the source of the reply) is mapped to
the scenario's addresses before any spec looks at it.

An address the map does not know (a CNI gateway, a node's address on some
other link) passes through unchanged, unless it happens to equal a
scenario address: then it becomes 0.0.0.0 (no scenario entity has it) and
the real address is kept in the outcome's reason, so a coincidence can
never pass for, say, a pod seeing its own IP.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from conformance.model import Protocol, Scenario
from conformance.probes import Outcome, Probe

UNKNOWN = IPv4Address("0.0.0.0")


class UnmappedProbe(LookupError):
    """A probe at an address (or NodePort) that has no real counterpart."""


@dataclass
class AddressMap:
    scenario: Scenario
    to_real: dict[IPv4Address, IPv4Address] = field(default_factory=dict)
    # (scenario NodePort, protocol) -> the NodePort the cluster allocated
    node_ports: dict[tuple[int, Protocol], int] = field(default_factory=dict)

    def add(self, scenario_ip: IPv4Address, real_ip: IPv4Address) -> None:
        known = self.to_real.get(scenario_ip)
        if known is not None and known != real_ip:
            raise ValueError(f"{scenario_ip} already maps to {known}, not {real_ip}")
        self.to_real[scenario_ip] = real_ip

    @property
    def to_scenario(self) -> dict[IPv4Address, IPv4Address]:
        return {real: mine for mine, real in self.to_real.items()}

    def _scenario_ips(self) -> set[IPv4Address]:
        s = self.scenario
        return {p.ip for p in s.pods} | {n.ip for n in s.nodes} | {v.cluster_ip for v in s.services} | set(self.to_real)

    def real_target(self, probe: Probe) -> tuple[IPv4Address, int, Protocol]:
        """Where the probe goes in the cluster."""
        real = self.to_real.get(probe.dst)
        if real is None:
            raise UnmappedProbe(f"{probe}: {probe.dst} has no counterpart in the cluster")
        port = probe.port
        if any(n.ip == probe.dst for n in self.scenario.nodes):
            allocated = self.node_ports.get((probe.port, probe.protocol))
            if allocated is None:
                raise UnmappedProbe(f"{probe}: {probe.port}/{probe.protocol} is not a NodePort of the scenario")
            port = allocated
        return real, port, probe.protocol

    def scenario_address(self, real: IPv4Address | None) -> tuple[IPv4Address | None, str]:
        """The scenario's name for a real address, and a note when it had none."""
        if real is None:
            return None, ""
        mine = self.to_scenario.get(real)
        if mine is not None:
            return mine, ""
        if real in self._scenario_ips():
            return UNKNOWN, f"{real} is an address of the cluster's own (not of the scenario)"
        return real, ""

    def to_scenario_outcome(self, outcome: Outcome) -> Outcome:
        server_saw, note_a = self.scenario_address(outcome.server_saw)
        client_saw, note_b = self.scenario_address(outcome.client_saw)
        notes = [n for n in (outcome.reason, note_a, note_b) if n]
        return replace(outcome, server_saw=server_saw, client_saw=client_saw, reason="; ".join(notes))
