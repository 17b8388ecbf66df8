"""hostPorts as the portmap CNI plugin (v1.1.1, snat true) writes them, in the nat table.

Node-local addresses (`-m addrtype --dst-type LOCAL`, in PREROUTING and
OUTPUT) at a pod's hostPort are DNATed to the pod's containerPort; traffic
from the node's pod subnet (a pod reaching a hostPort on its own node,
possibly its own) and from localhost is marked 0x2000 and masqueraded in
POSTROUTING, so the hairpin case is answered through the node's conntrack.
Chain names and layout are portmap's (CNI-HOSTPORT-DNAT -> CNI-DN-<hash>,
CNI-HOSTPORT-SETMARK, CNI-HOSTPORT-MASQ); every rule carries a comment.
"""

from __future__ import annotations

import hashlib

from conformance.implementations.rules import Rule, Ruleset
from conformance.model import Node, Scenario

NETWORK = "cbr0"
DNAT = "CNI-HOSTPORT-DNAT"
MASQ = "CNI-HOSTPORT-MASQ"
SETMARK = "CNI-HOSTPORT-SETMARK"
MARK = "0x2000"


def render(ruleset: Ruleset, scenario: Scenario, node: Node) -> None:
    pods = [p for p in sorted(scenario.pods_on(node.name), key=lambda p: p.ip) if any(c.host_port for c in p.ports)]
    if not pods:
        return
    nat = ruleset.table("nat")
    for chain in (DNAT, MASQ, SETMARK):
        nat.chain(chain)
    local = ("-m addrtype --dst-type LOCAL",)
    # portmap inserts its jumps at the top of the built-in chains.
    nat.prepend("PREROUTING", [Rule("CNI portfwd hostPorts", DNAT, matches=local)])
    nat.prepend("OUTPUT", [Rule("CNI portfwd hostPorts", DNAT, matches=local)])
    nat.prepend("POSTROUTING", [Rule("CNI portfwd requiring masquerade", MASQ)])
    nat.append(MASQ, Rule("CNI portfwd masquerade", "MASQUERADE", matches=(f"-m mark --mark {MARK}/{MARK}",)))
    nat.append(SETMARK, Rule("CNI portfwd masquerade mark", f"MARK --set-xmark {MARK}/{MARK}"))
    for pod in pods:
        comment = f'dnat name: "{NETWORK}" id: "{pod.ref}"'
        chain = nat.chain("CNI-DN-" + hashlib.sha512(f"{NETWORK}{pod.ref}".encode()).hexdigest()[:21])
        for proto in ("tcp", "udp"):
            mapped = [c for c in pod.ports if c.host_port is not None and c.protocol.lower() == proto]
            if not mapped:
                continue
            ports = ",".join(str(c.host_port) for c in mapped)
            nat.append(DNAT, Rule(comment, chain, proto=proto, matches=(f"-m multiport --dports {ports}",)))
            for c in mapped:
                dport = (f"-m {proto} --dport {c.host_port}",)
                nat.append(
                    chain, Rule(f"{comment} hairpin", SETMARK, src=str(node.pod_cidr), proto=proto, matches=dport)
                )
                nat.append(chain, Rule(f"{comment} localhost", SETMARK, src="127.0.0.1/32", proto=proto, matches=dport))
                nat.append(
                    chain,
                    Rule(comment, f"DNAT --to-destination {pod.ip}:{c.port}", proto=proto, matches=dport),
                )
