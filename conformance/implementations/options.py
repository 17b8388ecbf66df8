"""The knobs of the reference renderer.

The defaults are the reference implementation. Each broken implementation
flips exactly one knob, so the difference from the reference is one
well-named line (see `broken.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Options:
    # Bridge ports get hairpin mode when the Node asks for it (False: never).
    hairpin_mode: bool = True
    # net.bridge.bridge-nf-call-iptables as the Node asks (False: always 0).
    bridge_nf_call_iptables: bool = True
    # KUBE-SEP masquerades an endpoint reaching itself, when the Scenario asks.
    hairpin_masquerade: bool = True
    # KUBE-SERVICES matches protocol and port, not just the ClusterIP.
    service_match_port: bool = True
    # What a Service without endpoints answers with.
    no_endpoints_target: Literal["REJECT", "DROP"] = "REJECT"
    # externalTrafficPolicy: Local keeps the source and only uses local endpoints.
    honour_local_traffic_policy: bool = True
    # Where NetworkPolicy is enforced: filter sees post-DNAT addresses, mangle does not.
    policy_table: Literal["filter", "mangle"] = "filter"
    # The pod's accept_local sysctl as the Pod asks (False: always 0).
    accept_local: bool = True
    # A CNI bridge-plugin ipMasq chain ahead of kube-proxy's KUBE-POSTROUTING jump.
    cni_masquerade_first: bool = False
    # hostPorts DNATed as the portmap plugin does (False: left to real CNI plugins).
    host_ports: bool = True
