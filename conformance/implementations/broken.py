"""Known-broken implementations: the reference with one knob flipped.

Each reproduces a real-world misconfiguration; the conformance specs must
catch every one of them.
"""

from __future__ import annotations

from conformance.implementations.options import Options
from conformance.implementations.reference import Rendered

BROKEN: tuple[Rendered, ...] = (
    Rendered(
        "hairpin-mode-off",
        "bridge ports without hairpin mode: a pod cannot reach itself via its Service",
        Options(hairpin_mode=False),
        broken=True,
    ),
    Rendered(
        "no-hairpin-masquerade",
        "no hairpin masquerade in KUBE-SEP: a pod reaching itself via a Service sees its own IP",
        Options(hairpin_masquerade=False),
        broken=True,
    ),
    Rendered(
        "dnat-ip-only",
        "KUBE-SERVICES matches the ClusterIP alone: any port/protocol reaches the endpoints",
        Options(service_match_port=False),
        broken=True,
    ),
    Rendered(
        "policy-before-dnat",
        "NetworkPolicy in mangle PREROUTING/OUTPUT, before DNAT: it sees ClusterIPs, not pods",
        Options(policy_table="mangle"),
        broken=True,
    ),
    Rendered(
        "bridge-nf-off",
        "net.bridge.bridge-nf-call-iptables=0: bridged pod-to-pod traffic skips iptables",
        Options(bridge_nf_call_iptables=False),
        broken=True,
    ),
    Rendered(
        "cni-masquerade-first",
        "CNI bridge ipMasq rules ahead of KUBE-POSTROUTING: their ACCEPT skips service masquerade",
        Options(cni_masquerade_first=True),
        broken=True,
    ),
    Rendered(
        "no-endpoints-drop",
        "Services without endpoints DROP instead of REJECT: clients time out, not refused",
        Options(no_endpoints_target="DROP"),
        broken=True,
    ),
    Rendered(
        "etp-local-masquerade",
        "externalTrafficPolicy Local treated as Cluster: source lost, remote endpoints used",
        Options(honour_local_traffic_policy=False),
        broken=True,
    ),
    Rendered(
        "accept-local-ignored",
        "the pod's accept_local knob is never applied: the sysctl stays 0",
        Options(accept_local=False),
        broken=True,
    ),
)
