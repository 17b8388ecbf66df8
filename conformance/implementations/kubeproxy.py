"""Service rules as kube-proxy's iptables mode writes them (nat and filter).

Same chains, names, marks and comments as pkg/proxy/iptables/proxier.go:
KUBE-SERVICES -> KUBE-SVC-<hash> -> KUBE-SEP-<hash> (DNAT), NodePorts via
KUBE-NODEPORTS -> KUBE-EXT-<hash> (-> KUBE-SVL-<hash> for
externalTrafficPolicy: Local), masquerade by mark in KUBE-POSTROUTING, and
filter rules rejecting Services without endpoints. Unlike kube-proxy, every
rule carries a comment. Services are sorted by namespace/name and endpoints by
IP so that renders compare equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conformance.implementations.options import Options
from conformance.implementations.rules import Rule, Ruleset, Table, chain_hash
from conformance.model import Node, Pod, Scenario, Service, ServicePort

MASQ_MARK = "0x4000"
SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
FORWARD = "KUBE-FORWARD"
NODEPORTS = "KUBE-NODEPORTS"
POSTROUTING = "KUBE-POSTROUTING"
MARK_MASQ = "KUBE-MARK-MASQ"
NODEPORTS_LAST = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


@dataclass(frozen=True)
class PortChains:
    """Names kube-proxy derives for one service port."""

    name: str  # the ServicePortName, "ns/svc:port"
    proto: str  # lower case, as in iptables
    svc: str
    ext: str
    svl: str

    @staticmethod
    def of(service: Service, port: ServicePort) -> PortChains:
        # kube-proxy omits ":" for an unnamed port; the model allows several
        # unnamed ports per Service, so name them by number to keep chains apart.
        name = f"{service.ref}:{port.name or port.port}"
        proto = port.protocol.lower()
        h = chain_hash(name + proto)
        return PortChains(name, proto, f"KUBE-SVC-{h}", f"KUBE-EXT-{h}", f"KUBE-SVL-{h}")

    def sep(self, endpoint: str) -> str:
        return f"KUBE-SEP-{chain_hash(self.name + self.proto + endpoint)}"


def render(ruleset: Ruleset, scenario: Scenario, node: Node, options: Options) -> None:
    nat = ruleset.table("nat")
    filter_ = ruleset.table("filter")
    _skeleton(nat, filter_)
    for service in sorted(scenario.services, key=lambda s: (s.namespace, s.name)):
        endpoints = sorted(scenario.endpoints(service), key=lambda p: p.ip)
        for port in service.ports:
            _cluster_ip(nat, filter_, scenario, options, service, port, endpoints)
            if service.type == "NodePort" and port.node_port is not None:
                _node_port(nat, filter_, scenario, node, options, service, port, endpoints)
    nat.append(
        SERVICES,
        Rule(NODEPORTS_LAST, NODEPORTS, matches=("-m addrtype --dst-type LOCAL",)),
    )


def _skeleton(nat: Table, filter_: Table) -> None:
    for chain in (SERVICES, POSTROUTING, MARK_MASQ, NODEPORTS):
        nat.chain(chain)
    # kube-proxy inserts its jumps at the top of the built-in chains.
    portals = Rule("kubernetes service portals", SERVICES)
    nat.prepend("PREROUTING", [portals])
    nat.prepend("OUTPUT", [portals])
    nat.prepend("POSTROUTING", [Rule("kubernetes postrouting rules", POSTROUTING)])
    nat.append(MARK_MASQ, Rule("mark for kubernetes SNAT", f"MARK --or-mark {MASQ_MARK}"))
    nat.append(
        POSTROUTING,
        Rule(
            "not marked for kubernetes SNAT",
            "RETURN",
            matches=(f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK}",),
        ),
    )
    # Clear the mark so a re-routed packet is not masqueraded twice.
    nat.append(POSTROUTING, Rule("clear the kubernetes SNAT mark", f"MARK --xor-mark {MASQ_MARK}"))
    nat.append(
        POSTROUTING,
        Rule("kubernetes service traffic requiring SNAT", "MASQUERADE --random-fully"),
    )

    for chain in (SERVICES, EXTERNAL_SERVICES, FORWARD):
        filter_.chain(chain)
    new = ("-m conntrack --ctstate NEW",)
    external = Rule("kubernetes externally-visible service portals", EXTERNAL_SERVICES, matches=new)
    filter_.prepend("INPUT", [external])
    filter_.prepend(
        "FORWARD",
        [
            Rule("kubernetes forwarding rules", FORWARD),
            Rule("kubernetes service portals", SERVICES, matches=new),
            external,
        ],
    )
    filter_.prepend("OUTPUT", [Rule("kubernetes service portals", SERVICES, matches=new)])
    filter_.append(
        FORWARD,
        Rule(
            "kubernetes forwarding invalid packets",
            "DROP",
            matches=("-m conntrack --ctstate INVALID",),
        ),
    )
    filter_.append(
        FORWARD,
        Rule(
            "kubernetes forwarding rules",
            "ACCEPT",
            matches=(f"-m mark --mark {MASQ_MARK}/{MASQ_MARK}",),
        ),
    )
    filter_.append(
        FORWARD,
        Rule(
            "kubernetes forwarding conntrack rule",
            "ACCEPT",
            matches=("-m conntrack --ctstate RELATED,ESTABLISHED",),
        ),
    )


def _no_endpoints_target(options: Options) -> str:
    if options.no_endpoints_target == "DROP":
        return "DROP"
    return "REJECT --reject-with icmp-port-unreachable"


def _cluster_ip(
    nat: Table,
    filter_: Table,
    scenario: Scenario,
    options: Options,
    service: Service,
    port: ServicePort,
    endpoints: Sequence[Pod],
) -> None:
    c = PortChains.of(service, port)
    dst = f"{service.cluster_ip}/32"
    dport = (f"-m {c.proto} --dport {port.port}",)
    if not endpoints:
        filter_.append(
            SERVICES,
            Rule(
                f"{c.name} has no endpoints",
                _no_endpoints_target(options),
                dst=dst,
                proto=c.proto,
                matches=dport,
            ),
        )
        return

    nat.chain(c.svc)
    comment = f"{c.name} cluster IP"
    if options.service_match_port:
        nat.append(SERVICES, Rule(comment, c.svc, dst=dst, proto=c.proto, matches=dport))
    else:
        nat.append(SERVICES, Rule(comment, c.svc, dst=dst))
    # Off-cluster sources reaching a ClusterIP are masqueraded so that the
    # reply comes back through this node.
    nat.append(
        c.svc,
        Rule(
            comment,
            MARK_MASQ,
            not_src=str(scenario.cluster_cidr),
            dst=dst,
            proto=c.proto,
            matches=dport,
        ),
    )
    _balance(nat, c, port, c.svc, endpoints)
    hairpin_masquerade = scenario.masquerade_hairpin and options.hairpin_masquerade
    for pod in endpoints:
        endpoint = f"{pod.ip}:{port.target_port}"
        sep = nat.chain(c.sep(endpoint))
        if hairpin_masquerade:
            # An endpoint reaching itself through the Service must see the reply
            # come back from the Service: masquerade it (hairpin).
            nat.append(sep, Rule(c.name, MARK_MASQ, src=f"{pod.ip}/32"))
        nat.append(
            sep,
            Rule(
                c.name,
                f"DNAT --to-destination {endpoint}",
                proto=c.proto,
                matches=(f"-m {c.proto}",),
            ),
        )


def _balance(nat: Table, c: PortChains, port: ServicePort, chain: str, endpoints: Sequence[Pod]) -> None:
    """Pick one endpoint uniformly: rule i matches with probability 1/(n-i)."""
    n = len(endpoints)
    for i, pod in enumerate(endpoints):
        endpoint = f"{pod.ip}:{port.target_port}"
        matches: tuple[str, ...] = ()
        if i < n - 1:
            matches = (f"-m statistic --mode random --probability {1.0 / (n - i):.10f}",)
        nat.append(chain, Rule(f"{c.name} -> {endpoint}", c.sep(endpoint), matches=matches))


def _node_port(
    nat: Table,
    filter_: Table,
    scenario: Scenario,
    node: Node,
    options: Options,
    service: Service,
    port: ServicePort,
    endpoints: Sequence[Pod],
) -> None:
    c = PortChains.of(service, port)
    dport = f"-m {c.proto} --dport {port.node_port}"
    local_policy = service.external_traffic_policy == "Local" and options.honour_local_traffic_policy
    local = [p for p in endpoints if p.node == node.name]
    external_endpoints = local if local_policy else list(endpoints)

    if endpoints:
        ext = nat.chain(c.ext)
        nat.append(NODEPORTS, Rule(c.name, ext, proto=c.proto, matches=(dport,)))
        if not local_policy:
            # Endpoints may be on other nodes: masquerade so replies return here.
            nat.append(ext, Rule(f"masquerade traffic for {c.name} external destinations", MARK_MASQ))
            nat.append(ext, Rule(f"route traffic for {c.name} external destinations", c.svc))
        else:
            # Pods and the node itself are not "external": they use every
            # endpoint, as if they went out to a load balancer and came back.
            nat.append(
                ext,
                Rule(
                    f"pod traffic for {c.name} external destinations",
                    c.svc,
                    src=str(scenario.cluster_cidr),
                ),
            )
            local_src = ("-m addrtype --src-type LOCAL",)
            nat.append(
                ext,
                Rule(
                    f"masquerade LOCAL traffic for {c.name} external destinations",
                    MARK_MASQ,
                    matches=local_src,
                ),
            )
            nat.append(
                ext,
                Rule(
                    f"route LOCAL traffic for {c.name} external destinations",
                    c.svc,
                    matches=local_src,
                ),
            )
            if local:
                # Everyone else keeps its source address and only gets this
                # node's endpoints.
                svl = nat.chain(c.svl)
                nat.append(ext, Rule(f"local endpoints for {c.name} external destinations", svl))
                _balance(nat, c, port, svl, local)

    if not external_endpoints:
        comment, target = f"{c.name} has no endpoints", _no_endpoints_target(options)
        if endpoints:
            comment, target = f"{c.name} has no local endpoints", "DROP"
        filter_.append(
            EXTERNAL_SERVICES,
            Rule(
                comment,
                target,
                proto=c.proto,
                matches=("-m addrtype --dst-type LOCAL", dport),
            ),
        )
