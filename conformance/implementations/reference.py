"""The reference implementation: a Scenario rendered as a kind-like cluster.

Composition only: `wiring` builds the namespaces, `kubeproxy` the Service
rules, `netpol` the NetworkPolicy rules (and `cni` the ipMasq rules of one
broken variant). `Options` selects the variations; the defaults are the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.dataplane import Dataplane, NetnsConfig
from conformance.implementations import cni, hostport, kubeproxy, netpol, wiring
from conformance.implementations.options import Options
from conformance.implementations.rules import Ruleset
from conformance.model import Node, Scenario

REFERENCE_OPTIONS = Options()


def node_iptables(scenario: Scenario, node: Node, options: Options) -> str:
    ruleset = Ruleset()
    kubeproxy.render(ruleset, scenario, node, options)
    # Rendered after kube-proxy: the policy engine inserts its jump above
    # kube-proxy's (KUBE-FORWARD accepts marked packets before policy could).
    netpol.render(ruleset, scenario, node, options)
    if options.host_ports:
        hostport.render(ruleset, scenario, node)
    if options.cni_masquerade_first:
        cni.render_first(ruleset, scenario, node)
    return ruleset.render()


def render(scenario: Scenario, options: Options = REFERENCE_OPTIONS, name: str = "") -> Dataplane:
    namespaces: list[NetnsConfig] = [wiring.underlay(scenario), wiring.external(scenario)]
    for node in scenario.nodes:
        iptables = node_iptables(scenario, node, options)
        namespaces.append(wiring.node(scenario, node, options, iptables))
        namespaces.extend(wiring.pod(scenario, pod, options) for pod in scenario.pods_on(node.name))
    return Dataplane(
        namespaces=tuple(namespaces),
        sources=wiring.sources(scenario),
        implementation=name,
    )


@dataclass(frozen=True)
class Rendered:
    """An implementation made of the reference renderer and its options."""

    name: str
    description: str
    options: Options = field(default_factory=Options)
    broken: bool = False

    def render(self, scenario: Scenario) -> Dataplane:
        return render(scenario, self.options, self.name)


REFERENCE_IMPLEMENTATION = Rendered(
    name="reference",
    description="kube-proxy iptables mode, bridge CNI, NetworkPolicy in the filter table",
)
