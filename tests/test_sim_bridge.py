"""The simulator's Linux bridge: FDB learning, hairpin, br_netfilter, bridged DNAT.

A hand-built node namespace with a `cni0` bridge (10.244.1.1/24) and one veth
port per pod; each pod routes everything via 10.244.1.1. The node's rules,
hairpin flag and bridge-nf-call-iptables vary per test.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from backends.sim.kernel import Arrived, Kernel, Lost, SimError, Walk
from backends.sim.packet import Addr, Packet
from backends.sim.probing import ScriptedChooser, observe
from conformance.dataplane import Dataplane, Link, Listener, NetnsConfig, Route
from conformance.model import Protocol
from conformance.probes import Observation, Outcome, Probe

A = IPv4Address
BRIDGE_IP = A("10.244.1.1")
POD_A = A("10.244.1.10")
POD_B = A("10.244.1.11")
POD_C = A("10.244.1.12")
VIP = A("10.96.0.100")

FILTER_ACCEPT = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""

FORWARD_DROP = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s 10.244.1.10/32 -d 10.244.1.11/32 -m comment --comment "isolate pod-b" -j DROP
COMMIT
"""


def service_nat(endpoint: IPv4Address, *, masquerade_self: bool = True) -> str:
    """kube-proxy in miniature: VIP:80 -> endpoint:8080, hairpin masquerade by mark."""
    masq = f"-A SEP -s {endpoint}/32 -j MARK --or-mark 0x4000\n" if masquerade_self else ""
    return (
        "*nat\n"
        ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        ":SEP - [0:0]\n:MASQ - [0:0]\n"
        f"-A PREROUTING -d {VIP}/32 -p tcp -m tcp --dport 80 -j SEP\n"
        f"-A PREROUTING -d {VIP}/32 -p udp -m udp --dport 80 -j SEP\n"
        "-A POSTROUTING -j MASQ\n"
        f"{masq}"
        f"-A SEP -p tcp -j DNAT --to-destination {endpoint}:8080\n"
        f"-A SEP -p udp -j DNAT --to-destination {endpoint}:8080\n"
        "-A MASQ -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        "-A MASQ -j MASQUERADE\n"
        "COMMIT\n"
    )


def bridge_node(
    *,
    iptables: str = FILTER_ACCEPT,
    bridge_nf: bool = True,
    hairpin: bool = True,
    pods: tuple[IPv4Address, ...] = (POD_A, POD_B),
) -> Dataplane:
    """Namespace `node` with cni0 and pods `pod-10`, `pod-11`, ... (named by the last octet)."""
    names = {ip: f"pod-{str(ip).rsplit('.', 1)[1]}" for ip in pods}
    node = NetnsConfig(
        name="node",
        role="node",
        links=(
            Link("cni0", "bridge"),
            *(Link(f"veth-{names[ip]}", "veth", names[ip], "eth0", master="cni0", hairpin=hairpin) for ip in pods),
        ),
        addresses=(("cni0", IPv4Interface("10.244.1.1/24")),),
        sysctls=(
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.bridge.bridge-nf-call-iptables", "1" if bridge_nf else "0"),
        ),
        iptables=iptables,
    )
    pod_configs = tuple(
        NetnsConfig(
            name=names[ip],
            role="pod",
            addresses=(("eth0", IPv4Interface(f"{ip}/24")),),
            routes=(Route(IPv4Network("0.0.0.0/0"), "eth0", via=BRIDGE_IP),),
            listeners=(Listener("TCP", 8080, names[ip]), Listener("UDP", 8080, names[ip])),
        )
        for ip in pods
    )
    return Dataplane((node, *pod_configs), sources=tuple((name, name) for name in names.values()))


def only(obs: Observation) -> Outcome:
    assert len(obs.outcomes) == 1, obs.describe()
    outcome, p = obs.outcomes[0]
    assert p == 1.0
    return outcome


def probe(kernel: Kernel, source: str, dst: IPv4Address, port: int, proto: Protocol) -> Outcome:
    return only(observe(kernel, Probe(source, dst, port, proto)))


def walk() -> Walk:
    return Walk(ScriptedChooser([]), [])


# ---------------------------------------------------------------- FDB and ARP


def test_arp_resolution_teaches_the_bridge_both_macs() -> None:
    kernel = Kernel(bridge_node())
    cni0 = kernel.namespaces["node"].devices["cni0"]
    a_eth0 = kernel.namespaces["pod-10"].devices["eth0"]
    b_eth0 = kernel.namespaces["pod-11"].devices["eth0"]
    assert cni0.fdb == {}
    assert kernel.resolve(walk(), a_eth0, Addr.of(POD_B)) == b_eth0.mac
    node = kernel.namespaces["node"]
    assert cni0.fdb == {a_eth0.mac: node.devices["veth-pod-10"], b_eth0.mac: node.devices["veth-pod-11"]}
    # The answer is cached in the asking namespace's neighbour table.
    assert kernel.namespaces["pod-10"].neigh[("eth0", Addr.of(POD_B))] == b_eth0.mac


def test_arp_for_the_bridge_address_answers_with_the_bridge_mac() -> None:
    kernel = Kernel(bridge_node())
    cni0 = kernel.namespaces["node"].devices["cni0"]
    a_eth0 = kernel.namespaces["pod-10"].devices["eth0"]
    assert kernel.resolve(walk(), a_eth0, Addr.of(BRIDGE_IP)) == cni0.mac
    assert cni0.fdb == {a_eth0.mac: kernel.namespaces["node"].devices["veth-pod-10"]}


def test_arp_for_an_absent_address_gets_no_answer_and_caches_nothing() -> None:
    kernel = Kernel(bridge_node())
    a = kernel.namespaces["pod-10"]
    assert kernel.resolve(walk(), a.devices["eth0"], Addr.of(A("10.244.1.99"))) is None
    assert a.neigh == {}


def test_frames_teach_the_bridge_their_source_port() -> None:
    kernel = Kernel(bridge_node())
    node = kernel.namespaces["node"]
    cni0 = node.devices["cni0"]
    # Learned from a frame, not from ARP: the source MAC maps to the ingress port.
    pkt = Packet(Addr.of(POD_A), Addr.of(BRIDGE_IP), "udp", 41000, 9)
    pkt.src_mac, pkt.dst_mac = "02:00:00:00:00:aa", cni0.mac
    kernel.br_handle_frame(walk(), cni0, node.devices["veth-pod-10"], pkt)
    assert cni0.fdb["02:00:00:00:00:aa"] is node.devices["veth-pod-10"]


def test_unknown_unicast_is_a_simerror_not_a_guess() -> None:
    kernel = Kernel(bridge_node(bridge_nf=False))
    node = kernel.namespaces["node"]
    pkt = Packet(Addr.of(POD_A), Addr.of(POD_B), "udp", 41000, 8080)
    pkt.dst_mac = "02:00:00:00:00:99"
    with pytest.raises(SimError, match="flooding is not modelled"):
        kernel.br_forward(walk(), node.devices["cni0"], node.devices["veth-pod-10"], pkt, netfilter=False)


# ---------------------------------------------------------------- hairpin


@pytest.mark.parametrize("hairpin", [False, True])
def test_frame_back_out_of_its_ingress_port_needs_hairpin_mode(hairpin: bool) -> None:
    kernel = Kernel(bridge_node(hairpin=hairpin, bridge_nf=False))
    node = kernel.namespaces["node"]
    a = kernel.namespaces["pod-10"]
    cni0, port_a = node.devices["cni0"], node.devices["veth-pod-10"]
    cni0.fdb[a.devices["eth0"].mac] = port_a
    pkt = Packet(Addr.of(POD_B), Addr.of(POD_A), "udp", 41000, 8080)
    pkt.dst_mac = a.devices["eth0"].mac
    landing = kernel.br_forward(walk(), cni0, port_a, pkt, netfilter=False)
    if hairpin:
        assert isinstance(landing, Arrived)
        assert landing.netns is a
    else:
        assert isinstance(landing, Lost)
        assert "the port it came in on, and hairpin mode is off" in landing.reason


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
@pytest.mark.parametrize("hairpin", [False, True])
def test_bridged_hairpin_to_self_via_a_service(proto: Protocol, hairpin: bool) -> None:
    kernel = Kernel(bridge_node(iptables=service_nat(POD_B) + FILTER_ACCEPT, hairpin=hairpin))
    outcome = probe(kernel, "pod-11", VIP, 80, proto)
    if hairpin:
        assert outcome.verdict == "delivered"
        assert (outcome.served_by, outcome.server_saw, outcome.client_saw) == ("pod-11", BRIDGE_IP, VIP)
    else:
        assert outcome.verdict == "dropped"
        assert "hairpin mode is off" in outcome.reason


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
@pytest.mark.parametrize("hairpin", [False, True])
def test_without_br_netfilter_a_service_connection_is_routed_and_hairpin_is_irrelevant(
    proto: Protocol, hairpin: bool
) -> None:
    # Measured: with brnf=0 the packet goes veth In, cni0 In, cni0 Out, veth
    # Out: routed by the node and sent by br_dev_xmit, no ingress-port check.
    kernel = Kernel(bridge_node(iptables=service_nat(POD_B) + FILTER_ACCEPT, hairpin=hairpin, bridge_nf=False))
    outcome = probe(kernel, "pod-11", VIP, 80, proto)
    assert outcome.verdict == "delivered"
    assert (outcome.served_by, outcome.server_saw, outcome.client_saw) == ("pod-11", BRIDGE_IP, VIP)
    assert any("node: forward" in line and "from cni0 to cni0" in line for line in outcome.trace)
    assert not any("DNAT'ed frame is bridged" in line for line in outcome.trace)


# ---------------------------------------------------------------- br_netfilter


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_forward_drop_stops_bridged_traffic_with_bridge_nf_call_iptables(proto: Protocol) -> None:
    kernel = Kernel(bridge_node(iptables=FORWARD_DROP, bridge_nf=True, pods=(POD_A, POD_B, POD_C)))
    outcome = probe(kernel, "pod-10", POD_B, 8080, proto)
    assert outcome.verdict == "dropped"
    assert "dropped in FORWARD by -A FORWARD" in outcome.reason and "isolate pod-b" in outcome.reason
    # A pod the rule does not name is reached through the same bridge.
    assert probe(kernel, "pod-10", POD_C, 8080, proto).verdict == "delivered"


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_forward_drop_is_bypassed_without_bridge_nf_call_iptables(proto: Protocol) -> None:
    kernel = Kernel(bridge_node(iptables=FORWARD_DROP, bridge_nf=False))
    outcome = probe(kernel, "pod-10", POD_B, 8080, proto)
    assert outcome.verdict == "delivered"
    assert (outcome.server_saw, outcome.client_saw) == (POD_A, POD_B)
    assert not any("filter/FORWARD" in line for line in outcome.trace)


def test_br_netfilter_hooks_see_the_bridge_and_its_ports() -> None:
    rules = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i cni0 -o cni0 -m physdev --physdev-in veth-pod-10 --physdev-out veth-pod-11 -j DROP
COMMIT
"""
    kernel = Kernel(bridge_node(iptables=rules, pods=(POD_A, POD_B, POD_C)))
    assert probe(kernel, "pod-10", POD_B, 8080, "UDP").verdict == "dropped"
    assert probe(kernel, "pod-10", POD_C, 8080, "UDP").verdict == "delivered"
    assert probe(kernel, "pod-12", POD_B, 8080, "UDP").verdict == "delivered"


@pytest.mark.parametrize("bridge_nf", [True, False])
def test_the_ingress_port_is_known_to_routed_hooks_until_a_veth(bridge_nf: bool) -> None:
    # br_netfilter keeps the port a frame came in on for every later hook of the node, routed ones too
    # (measured); a frame it never saw has no port, and neither has a packet that crossed a veth since.
    rules = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m physdev --physdev-in veth-pod-11 -j DROP
COMMIT
"""
    dataplane = bridge_node(iptables=rules, bridge_nf=bridge_nf)
    kernel = Kernel(dataclasses.replace(dataplane, sources=(*dataplane.sources, ("node", "node"))))
    # The answer from pod-11 comes up through cni0 to the node.
    assert probe(kernel, "node", POD_B, 8080, "UDP").verdict == ("dropped" if bridge_nf else "delivered")
    assert probe(kernel, "node", POD_A, 8080, "UDP").verdict == "delivered"


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_bridged_dnat_to_a_pod_on_the_same_bridge(proto: Protocol) -> None:
    kernel = Kernel(bridge_node(iptables=service_nat(POD_B) + FILTER_ACCEPT, hairpin=False))
    outcome = probe(kernel, "pod-10", VIP, 80, proto)
    assert outcome.verdict == "delivered"
    assert (outcome.served_by, outcome.served_port) == ("pod-11", 8080)
    # No masquerade for another pod; the reply is un-DNATed at bridge level.
    assert (outcome.server_saw, outcome.client_saw) == (POD_A, VIP)
    assert any("cni0: DNAT'ed frame is bridged" in line for line in outcome.trace)
    # br_nf_pre_routing_finish bridges it: the node never IP-forwards it.
    assert not any("node: forward" in line for line in outcome.trace)


def test_without_br_netfilter_the_reply_bypasses_the_node_tcp_fails() -> None:
    # Measured (exp 2, brnf=0): the SYN-ACK from 10.244.1.11 is bridged
    # straight to pod-a, not un-DNATed; pod-a resets it: a timeout.
    kernel = Kernel(bridge_node(iptables=service_nat(POD_B) + FILTER_ACCEPT, bridge_nf=False))
    outcome = probe(kernel, "pod-10", VIP, 80, "TCP")
    assert outcome.verdict == "dropped"
    assert "SYN-ACK reached pod-10 as tcp 10.244.1.11:8080" in outcome.reason


def test_without_br_netfilter_the_udp_reply_comes_from_the_endpoint() -> None:
    kernel = Kernel(bridge_node(iptables=service_nat(POD_B) + FILTER_ACCEPT, bridge_nf=False))
    outcome = probe(kernel, "pod-10", VIP, 80, "UDP")
    assert outcome.verdict == "delivered"
    assert (outcome.server_saw, outcome.client_saw) == (POD_A, POD_B)
