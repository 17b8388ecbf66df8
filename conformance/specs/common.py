"""What the specs share: reading probes against the intent, and wording."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from hypothesis import strategies as st

from conformance.cases import Case
from conformance.model import Node, Pod, Scenario
from conformance.probes import Observation, Outcome, Probe


def external_ip(s: Scenario) -> IPv4Address:
    """The address of the client outside the cluster (on the underlay)."""
    return s.node_cidr.network_address + 250


def source_pod(s: Scenario, probe: Probe) -> Pod | None:
    if probe.source.startswith("pod:"):
        return s.pod(probe.source[4:])
    return None


def source_node(s: Scenario, probe: Probe) -> str | None:
    return probe.source[5:] if probe.source.startswith("node:") else None


def node_with_ip(s: Scenario, ip: IPv4Address) -> str | None:
    for n in s.nodes:
        if n.ip == ip:
            return n.name
    return None


def cases_of(
    scenarios: st.SearchStrategy[Scenario],
    probes: Callable[[Scenario], st.SearchStrategy[Probe]],
    *,
    max_probes: int = 4,
) -> st.SearchStrategy[Case]:
    """Scenarios, each with 1..max_probes distinct probes drawn within it."""

    def with_probes(s: Scenario) -> st.SearchStrategy[Case]:
        if probes(s).is_empty:
            return st.nothing()  # this scenario offers no such probe: rejected
        return st.lists(probes(s), min_size=1, max_size=max_probes, unique=True).map(lambda ps: Case(s, tuple(ps)))

    return scenarios.flatmap(with_probes)


def violation(probe: Probe, expected: str, outcome: Outcome | None = None, *, p: float | None = None) -> str:
    seen = f"observed {outcome.summary()}" if outcome is not None else "observed nothing"
    chance = f" (p={p:.3f})" if p is not None and p < 1 else ""
    return f"{probe}: expected {expected}; {seen}{chance}"


def each_outcome(obs: Observation) -> Iterable[tuple[Outcome, float]]:
    return ((o, p) for o, p in obs.outcomes if p > 0)


def served_set(obs: Observation) -> set[str]:
    return {o.served_by for o, _ in each_outcome(obs) if o.verdict == "delivered" and o.served_by}


def second_node(s: Scenario) -> Node:
    """A second node for pinned examples: node-2, next address, next pod CIDR."""
    first = s.nodes[0]
    return replace(first, name="node-2", ip=first.ip + 1, pod_cidr=IPv4Network("10.244.2.0/24"))
