"""NetworkPolicy as iptables rules, the way policy engines enforce it.

Enforced in the filter table (after DNAT, so rules see pod IPs, never
ClusterIPs), on the node hosting the pod: NETPOL-FORWARD, jumped to from
the top of FORWARD and OUTPUT, first accepts replies of allowed connections,
then sends traffic from each egress-isolated local pod to its NETPOL-EG-<hash>
chain and traffic to each ingress-isolated local pod to its NETPOL-IN-<hash>
chain. A per-pod chain RETURNs what some rule allows and ends in DROP, so
both ends of a local connection are checked and rule order never matters.

Peers are expanded to concrete pod IPs at render time. An ipBlock with
`except` entries becomes the exact set of CIDRs that remain, so that every
rule is a plain address match.

Semantics rendered here straight from the model (Kubernetes' rules): a pod is
isolated for a direction when a policy of its namespace selects it and lists
that direction in policyTypes; the union of those policies' rules is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network
from typing import Literal

from conformance.implementations.options import Options
from conformance.implementations.rules import Rule, Ruleset, chain_hash
from conformance.model import (
    LabelSelector,
    NetworkPolicy,
    Node,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Scenario,
)

Direction = Literal["Ingress", "Egress"]
FORWARD = "NETPOL-FORWARD"
# Built-in chains the policy chain is jumped to from, per table: filter sees
# traffic after DNAT; mangle (a deliberately broken choice) sees it before.
HOOKS: dict[str, tuple[str, ...]] = {
    "filter": ("FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "OUTPUT"),
}


def pod_chain(pod: Pod, direction: Direction) -> str:
    prefix = "NETPOL-IN-" if direction == "Ingress" else "NETPOL-EG-"
    return prefix + chain_hash(pod.ref)


def isolating(scenario: Scenario, pod: Pod, direction: Direction) -> tuple[NetworkPolicy, ...]:
    """Policies that isolate `pod` for `direction`, sorted by namespace/name."""
    return tuple(
        sorted(
            (
                p
                for p in scenario.policies
                if p.namespace == pod.namespace and direction in p.policy_types and p.pod_selector.matches(pod.labels)
            ),
            key=lambda p: (p.namespace, p.name),
        )
    )


def peer_pods(scenario: Scenario, policy: NetworkPolicy, peer: PolicyPeer) -> list[Pod]:
    """Pods a selector peer stands for (sorted by IP)."""
    if peer.pod_selector is None and peer.namespace_selector is None:
        return []
    pod_selector = peer.pod_selector or LabelSelector()
    ns_selector = peer.namespace_selector

    def namespace_ok(namespace: str) -> bool:
        if ns_selector is None:  # podSelector alone: the policy's own namespace
            return namespace == policy.namespace
        return ns_selector.matches(scenario.namespace_labels(namespace))

    pods = (p for p in scenario.pods if namespace_ok(p.namespace) and pod_selector.matches(p.labels))
    return sorted(pods, key=lambda p: p.ip)


def subtract(cidr: IPv4Network, excepts: Iterable[IPv4Network]) -> list[IPv4Network]:
    """`cidr` minus `excepts`, as a sorted list of disjoint CIDRs."""
    remaining = [cidr]
    for ex in excepts:
        nxt: list[IPv4Network] = []
        for net in remaining:
            if ex.supernet_of(net):
                continue
            if net.supernet_of(ex):
                nxt.extend(net.address_exclude(ex))
            else:
                nxt.append(net)
        remaining = nxt
    return sorted(remaining)


def _peers(scenario: Scenario, policy: NetworkPolicy, rule: PolicyRule) -> list[tuple[str, str]]:
    """(address, description) for every peer of a rule; empty peers = anyone."""
    if not rule.peers:
        return [("", "anywhere")]
    out: list[tuple[str, str]] = []
    for peer in rule.peers:
        if peer.ip_block is not None:  # an ipBlock peer has no selectors
            block = peer.ip_block
            desc = f"ipBlock {block.cidr}"
            if block.except_:
                desc += " except " + ",".join(str(e) for e in block.except_)
            out.extend((str(net), desc) for net in subtract(block.cidr, block.except_))
        else:
            out.extend((f"{p.ip}/32", f"pod {p.ref}") for p in peer_pods(scenario, policy, peer))
    return out


def _ports(rule: PolicyRule) -> list[tuple[str, tuple[str, ...], str]]:
    """(protocol, matches, description) per port; empty ports = everything."""
    if not rule.ports:
        return [("", (), "all ports")]
    return [_port(port) for port in rule.ports]


def _port(port: PolicyPort) -> tuple[str, tuple[str, ...], str]:
    proto = port.protocol.lower()
    if port.port is None:
        return proto, (), f"all {proto} ports"
    spec = str(port.port)
    if port.end_port is not None and port.end_port != port.port:
        spec = f"{port.port}:{port.end_port}"
    return proto, (f"-m {proto} --dport {spec}",), f"{proto} {spec}"


def render(ruleset: Ruleset, scenario: Scenario, node: Node, options: Options) -> None:
    table = ruleset.table(options.policy_table)
    table.chain(FORWARD)
    for hook in HOOKS[options.policy_table]:
        table.prepend(hook, [Rule("network policy", FORWARD)])
    table.append(
        FORWARD,
        Rule(
            "replies of allowed connections",
            "ACCEPT",
            matches=("-m conntrack --ctstate RELATED,ESTABLISHED",),
        ),
    )
    local = sorted(scenario.pods_on(node.name), key=lambda p: p.ip)
    directions: tuple[Direction, ...] = ("Egress", "Ingress")
    for direction in directions:
        word = direction.lower()
        for pod in local:
            policies = isolating(scenario, pod, direction)
            if not policies:
                continue
            chain = table.chain(pod_chain(pod, direction))
            own = f"{pod.ip}/32"
            comment = f"{pod.ref} is isolated for {word}"
            if direction == "Egress":
                table.append(FORWARD, Rule(comment, chain, src=own))
                table.append(chain, Rule(f"{pod.ref} may always reach itself", "RETURN", dst=own))
            else:
                table.append(FORWARD, Rule(comment, chain, dst=own))
                table.append(chain, Rule(f"{pod.ref} may always reach itself", "RETURN", src=own))
                # NetworkPolicy never blocks the pod's own node (whose source
                # toward its pods is a local address: cni0's, usually).
                table.append(
                    chain,
                    Rule(
                        f"the node of {pod.ref} may always reach it",
                        "RETURN",
                        matches=("-m addrtype --src-type LOCAL",),
                    ),
                )
            for policy in policies:
                rules = policy.ingress if direction == "Ingress" else policy.egress
                for i, rule in enumerate(rules):
                    for address, peer_desc in _peers(scenario, policy, rule):
                        for proto, ports, port_desc in _ports(rule):
                            comment = f"{policy.ref} {word} rule {i}: {peer_desc}, {port_desc}"
                            if direction == "Ingress":
                                r = Rule(comment, "RETURN", src=address, proto=proto, matches=ports)
                            else:
                                r = Rule(comment, "RETURN", dst=address, proto=proto, matches=ports)
                            table.append(chain, r)
            table.append(chain, Rule(f"{pod.ref}: default deny {word}", "DROP"))
