"""The CNI bridge plugin's ipMasq rules (only used by a broken variant).

With `ipMasq: true` the bridge plugin appends, per container, a POSTROUTING
jump on the pod's IP to a chain that ACCEPTs traffic to the pod network and
masquerades the rest (multicast excepted). An ACCEPT in nat POSTROUTING ends
the chain: when these rules come first, kube-proxy's KUBE-POSTROUTING never
sees pod-to-pod traffic (hairpin masquerade is lost).
"""

from __future__ import annotations

import hashlib

from conformance.implementations.rules import Rule, Ruleset
from conformance.model import Node, Pod, Scenario

NETWORK = "cbr0"


def container_id(pod: Pod) -> str:
    """A stand-in for the runtime's 64-hex container id (deterministic)."""
    return hashlib.sha256(pod.ref.encode()).hexdigest()


def chain_name(pod: Pod) -> str:
    # As the plugin's utils.FormatChainName: "CNI-" + sha512(name + id), 28 chars.
    digest = hashlib.sha512((NETWORK + container_id(pod)).encode()).hexdigest()
    return "CNI-" + digest[:24]


def render_first(ruleset: Ruleset, scenario: Scenario, node: Node) -> None:
    """Put the ipMasq rules of every local pod ahead of POSTROUTING's rules."""
    nat = ruleset.table("nat")
    jumps: list[Rule] = []
    for pod in sorted(scenario.pods_on(node.name), key=lambda p: p.ip):
        comment = f'name: "{NETWORK}" id: "{container_id(pod)}"'
        chain = nat.chain(chain_name(pod))
        jumps.append(Rule(comment, chain, src=f"{pod.ip}/32"))
        nat.append(chain, Rule(comment, "ACCEPT", dst=str(node.pod_cidr)))
        nat.append(chain, Rule(comment, "MASQUERADE", not_dst="224.0.0.0/4"))
    nat.prepend("POSTROUTING", jumps)
