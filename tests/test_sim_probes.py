"""Probes on the simulated kernel, and the classic scenario against the real kernel.

The first half runs probes over small hand-built Dataplanes, one mechanism
each. The second half renders the classic scenario with the reference and
every broken implementation and checks the outcomes measured on Linux 6.18
(bridge CNI + kube-proxy iptables rules, see the kernel experiment tables:
exp 1 hairpin, exp 2 pod-to-Service, exp 3 rp_filter, exp 5 CNI ipMasq
first, exp 6 no endpoints / no route).
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from backends.sim.kernel import Kernel, SimError
from backends.sim.probing import observe
from conformance.dataplane import Dataplane, Link, Listener, NetnsConfig, Route
from conformance.implementations import IMPLEMENTATIONS, get_implementation
from conformance.implementations.options import Options
from conformance.implementations.reference import render as render_with
from conformance.model import Pod, Protocol, Scenario, Service, ServicePort, labels
from conformance.probes import Observation, Outcome, Probe
from conformance.strategies import classic_scenario

from live import MEASURED, simulated

A = IPv4Address
DEFAULT = IPv4Network("0.0.0.0/0")
PROTOS: tuple[Protocol, ...] = ("TCP", "UDP")
CLIENT = A("10.0.0.2")
ROUTER_IN = A("10.0.0.1")
SERVER = A("10.1.0.2")


def only(obs: Observation) -> Outcome:
    assert len(obs.outcomes) == 1, obs.describe()
    outcome, p = obs.outcomes[0]
    assert p == 1.0
    return outcome


def run(kernel: Kernel, source: str, dst: IPv4Address, port: int, proto: Protocol) -> Outcome:
    return only(observe(kernel, Probe(source, dst, port, proto)))


def rules(table: str, *lines: str, chains: tuple[str, ...]) -> str:
    head = "".join(f":{c} ACCEPT [0:0]\n" for c in chains)
    return f"*{table}\n{head}" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


def filter_(*lines: str) -> str:
    return rules("filter", *lines, chains=("INPUT", "FORWARD", "OUTPUT"))


def routed(*, client_iptables: str = "", router_iptables: str = "", server_iptables: str = "") -> Dataplane:
    """client 10.0.0.2 -- router -- server 10.1.0.2 (listens on 8080 tcp and udp)."""
    client = NetnsConfig(
        name="client",
        role="client",
        addresses=(("eth0", IPv4Interface("10.0.0.2/24")),),
        routes=(Route(DEFAULT, "eth0", via=ROUTER_IN),),
        iptables=client_iptables,
    )
    router = NetnsConfig(
        name="router",
        role="node",
        links=(Link("eth0", "veth", "client", "eth0"), Link("eth1", "veth", "server", "eth0")),
        addresses=(("eth0", IPv4Interface("10.0.0.1/24")), ("eth1", IPv4Interface("10.1.0.1/24"))),
        sysctls=(("net.ipv4.ip_forward", "1"),),
        iptables=router_iptables,
    )
    server = NetnsConfig(
        name="server",
        role="pod",
        addresses=(("eth0", IPv4Interface("10.1.0.2/24")),),
        routes=(Route(DEFAULT, "eth0", via=A("10.1.0.1")),),
        listeners=(Listener("TCP", 8080, "server"), Listener("UDP", 8080, "server")),
        iptables=server_iptables,
    )
    return Dataplane((client, router, server), sources=(("client", "client"), ("server", "server")))


# ---------------------------------------------------------------- basic verdicts


@pytest.mark.parametrize("proto", PROTOS)
def test_delivered_reports_server_and_addresses(proto: Protocol) -> None:
    outcome = run(Kernel(routed()), "client", SERVER, 8080, proto)
    assert outcome == Outcome("delivered", "server", 8080, CLIENT, SERVER)


def test_tcp_without_listener_is_refused_by_rst() -> None:
    outcome = run(Kernel(routed()), "client", SERVER, 9090, "TCP")
    assert (outcome.verdict, outcome.reason) == ("refused", f"ECONNREFUSED (RST from {SERVER})")


def test_sctp_probe_is_an_explicit_not_modelled_error() -> None:
    # The simulator never guesses: an SCTP connection is not modelled, and says so (the CLI exits 2 on SimError).
    with pytest.raises(SimError, match=r"client -> 10.1.0.2:8080/SCTP: SCTP probes are not modelled by the simulator"):
        observe(Kernel(routed()), Probe("client", SERVER, 8080, "SCTP"))


def test_udp_without_listener_is_refused_by_icmp_port_unreachable() -> None:
    outcome = run(Kernel(routed()), "client", SERVER, 9090, "UDP")
    assert (outcome.verdict, outcome.reason) == ("refused", f"ECONNREFUSED (ICMP from {SERVER})")
    assert any("server: sends ICMP type 3 code 3" in line for line in outcome.trace)


@pytest.mark.parametrize("proto", PROTOS)
def test_input_drop_at_the_server_is_dropped(proto: Protocol) -> None:
    kernel = Kernel(routed(server_iptables=filter_("-A INPUT -j DROP")))
    assert run(kernel, "client", SERVER, 8080, proto).verdict == "dropped"


@pytest.mark.parametrize("proto", PROTOS)
def test_reject_in_output_is_refused(proto: Protocol) -> None:
    kernel = Kernel(routed(client_iptables=filter_("-A OUTPUT -d 10.1.0.2/32 -j REJECT")))
    outcome = run(kernel, "client", SERVER, 8080, proto)
    assert outcome.verdict == "refused"
    assert outcome.reason.startswith("ECONNREFUSED")


TCP_RESET = "-p tcp -j REJECT --reject-with tcp-reset"


@pytest.mark.parametrize(
    "where",
    [
        {"client_iptables": filter_(f"-A OUTPUT -d 10.1.0.2/32 {TCP_RESET}")},
        {"router_iptables": filter_(f"-A FORWARD -d 10.1.0.2/32 {TCP_RESET}")},
        {"server_iptables": filter_(f"-A INPUT {TCP_RESET}")},
    ],
    ids=["client-OUTPUT", "router-FORWARD", "server-INPUT"],
)
def test_reject_with_tcp_reset_is_refused(where: dict[str, str]) -> None:
    outcome = run(Kernel(routed(**where)), "client", SERVER, 8080, "TCP")
    assert (outcome.verdict, outcome.reason) == ("refused", f"ECONNREFUSED (RST from {SERVER})")


def test_drop_in_output_tcp_times_out_udp_gets_eperm() -> None:
    kernel = Kernel(routed(client_iptables=filter_("-A OUTPUT -d 10.1.0.2/32 -j DROP")))
    tcp = run(kernel, "client", SERVER, 8080, "TCP")
    udp = run(kernel, "client", SERVER, 8080, "UDP")
    # connect() ignores the local EPERM and retransmits; sendto() returns it.
    assert tcp.verdict == "dropped" and "EPERM" in tcp.reason
    assert udp.verdict == "refused" and "EPERM" in udp.reason


def triangle() -> Dataplane:
    """client, router and server on one switch; the router DNATs 10.96.0.1:80 to the server.

    The server answers the client directly (same subnet), so the reply skips
    the router and its un-DNAT.
    """
    ports = ("client", "router", "server")
    lan = NetnsConfig(
        name="lan",
        role="underlay",
        links=(Link("br0", "bridge"), *(Link(f"p-{n}", "veth", n, "eth0", master="br0") for n in ports)),
    )
    nat = rules(
        "nat",
        "-A PREROUTING -d 10.96.0.1/32 -p tcp -j DNAT --to-destination 10.0.0.20:8080",
        "-A PREROUTING -d 10.96.0.1/32 -p udp -j DNAT --to-destination 10.0.0.20:8080",
        chains=("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    )
    router = NetnsConfig(
        name="router",
        role="node",
        addresses=(("eth0", IPv4Interface("10.0.0.1/24")),),
        sysctls=(
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ),
        iptables=nat,
    )
    client = NetnsConfig(
        name="client",
        role="client",
        addresses=(("eth0", IPv4Interface("10.0.0.10/24")),),
        routes=(Route(DEFAULT, "eth0", via=A("10.0.0.1")),),
    )
    server = NetnsConfig(
        name="server",
        role="pod",
        addresses=(("eth0", IPv4Interface("10.0.0.20/24")),),
        listeners=(Listener("TCP", 8080, "server"), Listener("UDP", 8080, "server")),
    )
    return Dataplane((lan, router, client, server), sources=(("client", "client"),))


def test_tcp_reply_from_the_wrong_source_is_reset_by_the_client() -> None:
    outcome = run(Kernel(triangle()), "client", A("10.96.0.1"), 80, "TCP")
    assert outcome.verdict == "dropped"
    assert "SYN-ACK reached client as tcp 10.0.0.20:8080 -> 10.0.0.10" in outcome.reason
    assert any("matches no connection: answered with RST" in line for line in outcome.trace)


def test_udp_reply_from_the_wrong_source_is_accepted_by_an_unconnected_socket() -> None:
    outcome = run(Kernel(triangle()), "client", A("10.96.0.1"), 80, "UDP")
    assert outcome == Outcome("delivered", "server", 8080, A("10.0.0.10"), A("10.0.0.20"))


# ---------------------------------------------------------------- traces


def test_trace_names_namespaces_hooks_chains_and_the_deciding_rule() -> None:
    rule = '-A FORWARD -d 10.1.0.2/32 -p udp -m comment --comment "no udp to the server" -j DROP'
    kernel = Kernel(routed(router_iptables=filter_(rule)))
    outcome = run(kernel, "client", SERVER, 8080, "UDP")
    assert outcome.verdict == "dropped"
    assert f"router FORWARD filter/FORWARD: {rule} => DROP" in outcome.trace
    assert outcome.reason == f"datagram lost: router: dropped in FORWARD by {rule}"
    assert outcome.trace[0].startswith("client: send udp 10.0.0.2:")


def test_trace_of_a_delivered_probe_follows_the_packets() -> None:
    outcome = run(Kernel(routed()), "client", SERVER, 8080, "TCP")
    namespaces = [line.split(":", 1)[0] for line in outcome.trace]
    # SYN, SYN-ACK, ACK and answer each cross the router.
    assert namespaces.count("router") == 4
    assert "server: listener server accepts SYN from 10.0.0.2:41000" in outcome.trace


# ---------------------------------------------------------------- random branches


def three_endpoints() -> Scenario:
    base = classic_scenario()
    ports = base.pods[0].ports
    endpoints = tuple(
        Pod("default", f"pod-b{i}", "node-1", A(f"10.244.1.{11 + i}"), labels({"app": "b"}), ports) for i in range(3)
    )
    return replace(base, pods=(base.pods[0], *endpoints))


@pytest.mark.parametrize("proto", PROTOS)
def test_kube_proxy_three_endpoints_give_three_outcomes_of_one_third(proto: Protocol) -> None:
    kernel = Kernel(get_implementation("reference").render(three_endpoints()))
    obs = observe(kernel, Probe("pod:default/pod-a", A("10.96.0.100"), 80, proto))
    assert obs.exact
    assert {o.served_by for o, _ in obs.outcomes} == {"default/pod-b0", "default/pod-b1", "default/pod-b2"}
    assert len(obs.outcomes) == 3
    for outcome, p in obs.outcomes:
        assert p == pytest.approx(1 / 3)
        assert (outcome.verdict, outcome.server_saw, outcome.client_saw) == (
            "delivered",
            A("10.244.1.10"),
            A("10.96.0.100"),
        )
    assert sum(p for _, p in obs.outcomes) == pytest.approx(1.0)


def test_observe_leaves_no_connection_state_behind() -> None:
    kernel = Kernel(get_implementation("reference").render(three_endpoints()))
    probe = Probe("pod:default/pod-a", A("10.96.0.100"), 80, "UDP")
    first = observe(kernel, probe)
    assert all(not ns.conntrack.by_tuple for ns in kernel.namespaces.values())
    assert observe(kernel, probe).outcomes == first.outcomes


# ---------------------------------------------------------------- the classic scenario vs the kernel

VIP = A("10.96.0.100")
NO_ENDPOINTS_VIP = A("10.96.0.200")
CNI0 = A("10.244.1.1")
POD_A = A("10.244.1.10")
POD_B = A("10.244.1.11")
HAIRPIN = "pod:default/pod-b"
FROM_A = "pod:default/pod-a"
NODE = "node:node-1"

OK_HAIRPIN = Outcome("delivered", "default/pod-b", 8080, CNI0, VIP)
OK_FROM_A = Outcome("delivered", "default/pod-b", 8080, POD_A, VIP)
SELF = Outcome("delivered", "default/pod-b", 8080, POD_B, POD_B)  # own address, not un-DNATed
DROPPED = Outcome("dropped")


def classic(
    *,
    accept_local: bool = False,
    masquerade_hairpin: bool = True,
    hairpin_mode: bool = True,
    no_endpoints_service: bool = False,
) -> Scenario:
    sc = classic_scenario()
    node = replace(sc.nodes[0], hairpin_mode=hairpin_mode)
    pods = tuple(replace(p, accept_local=accept_local) for p in sc.pods)
    services = sc.services
    if no_endpoints_service:
        ports = (ServicePort(80, 8080, "TCP", name="tcp"), ServicePort(80, 8080, "UDP", name="udp"))
        services = (*services, Service("default", "svc-none", NO_ENDPOINTS_VIP, ports, labels({"app": "none"})))
    return replace(sc, nodes=(node,), pods=pods, services=services, masquerade_hairpin=masquerade_hairpin)


def kernel_for(implementation: str, scenario: Scenario) -> Kernel:
    return Kernel(get_implementation(implementation).render(scenario))


def expect(kernel: Kernel, source: str, proto: Protocol, expected: Outcome, port: int = 80) -> None:
    outcome = run(kernel, source, VIP, port, proto)
    assert outcome == expected, outcome.summary()


@pytest.mark.parametrize("accept_local", [False, True])
@pytest.mark.parametrize("proto", PROTOS)
def test_reference_hairpin_and_pod_to_service(proto: Protocol, accept_local: bool) -> None:
    # exp 1 (brnf=1, hp on, masq, al 0/1) and exp 2 (brnf=1).
    kernel = kernel_for("reference", classic(accept_local=accept_local))
    expect(kernel, HAIRPIN, proto, OK_HAIRPIN)
    expect(kernel, FROM_A, proto, OK_FROM_A)


@pytest.mark.parametrize("accept_local", [False, True])
@pytest.mark.parametrize("proto", PROTOS)
def test_hairpin_mode_off(proto: Protocol, accept_local: bool) -> None:
    # exp 1: brnf=1, hp off: the bridge will not send the frame back out veth-pb.
    kernel = kernel_for("hairpin-mode-off", classic(accept_local=accept_local))
    outcome = run(kernel, HAIRPIN, VIP, 80, proto)
    assert outcome == DROPPED
    assert "hairpin mode is off" in outcome.reason
    expect(kernel, FROM_A, proto, OK_FROM_A)


@pytest.mark.parametrize("implementation", ["no-hairpin-masquerade", "cni-masquerade-first"])
@pytest.mark.parametrize("proto", PROTOS)
def test_hairpin_without_masquerade_accept_local_0_is_a_martian(implementation: str, proto: Protocol) -> None:
    # exp 1 (masq absent, al=0) and exp 5 (CNI ACCEPT ends nat POSTROUTING first).
    kernel = kernel_for(implementation, classic())
    outcome = run(kernel, HAIRPIN, VIP, 80, proto)
    assert outcome == DROPPED
    assert "martian source 10.244.1.11" in outcome.reason
    expect(kernel, FROM_A, proto, OK_FROM_A)


@pytest.mark.parametrize("implementation", ["no-hairpin-masquerade", "cni-masquerade-first"])
def test_hairpin_without_masquerade_accept_local_1(implementation: str) -> None:
    # exp 1 / exp 5, al=1: the SYN-ACK goes to the pod's own address via lo
    # and is reset; the UDP reply is accepted from 10.244.1.11:8080.
    kernel = kernel_for(implementation, classic(accept_local=True))
    tcp = run(kernel, HAIRPIN, VIP, 80, "TCP")
    assert tcp == DROPPED
    assert "SYN-ACK" in tcp.reason
    expect(kernel, HAIRPIN, "UDP", SELF)
    expect(kernel, FROM_A, "TCP", OK_FROM_A)
    expect(kernel, FROM_A, "UDP", OK_FROM_A)


@pytest.mark.parametrize("hairpin_mode", [True, False])
@pytest.mark.parametrize("accept_local", [False, True])
def test_bridge_nf_off(accept_local: bool, hairpin_mode: bool) -> None:
    # exp 1 (brnf=0: hairpin works, hp irrelevant) and exp 2 (brnf=0: the
    # reply is bridged straight to pod-a, never un-DNATed).
    kernel = kernel_for("bridge-nf-off", classic(accept_local=accept_local, hairpin_mode=hairpin_mode))
    expect(kernel, HAIRPIN, "TCP", OK_HAIRPIN)
    expect(kernel, HAIRPIN, "UDP", OK_HAIRPIN)
    expect(kernel, FROM_A, "TCP", DROPPED)
    expect(kernel, FROM_A, "UDP", Outcome("delivered", "default/pod-b", 8080, POD_A, POD_B))


@pytest.mark.parametrize("proto", PROTOS)
def test_bridge_nf_off_without_masquerade_accept_local_0(proto: Protocol) -> None:
    kernel = kernel_for("bridge-nf-off", classic(masquerade_hairpin=False))
    expect(kernel, HAIRPIN, proto, DROPPED)


def test_bridge_nf_off_without_masquerade_accept_local_1() -> None:
    kernel = kernel_for("bridge-nf-off", classic(masquerade_hairpin=False, accept_local=True))
    expect(kernel, HAIRPIN, "TCP", DROPPED)
    expect(kernel, HAIRPIN, "UDP", SELF)


@pytest.mark.parametrize("accept_local", [False, True])
def test_cni_masquerade_first_with_bridge_nf_off(accept_local: bool) -> None:
    # exp 5, brnf=0 rows.
    options = Options(bridge_nf_call_iptables=False, cni_masquerade_first=True)
    kernel = Kernel(render_with(classic(accept_local=accept_local), options))
    expect(kernel, HAIRPIN, "TCP", DROPPED)
    expect(kernel, HAIRPIN, "UDP", SELF if accept_local else DROPPED)
    expect(kernel, FROM_A, "TCP", DROPPED)
    expect(kernel, FROM_A, "UDP", Outcome("delivered", "default/pod-b", 8080, POD_A, POD_B))


def test_accept_local_ignored_keeps_the_martian_drop() -> None:
    # The pod asks for accept_local=1; the broken render leaves 0: exp 1's
    # al=0 row instead of the al=1 row the reference gives.
    scenario = classic(masquerade_hairpin=False, accept_local=True)
    reference, broken = kernel_for("reference", scenario), kernel_for("accept-local-ignored", scenario)
    expect(reference, HAIRPIN, "UDP", SELF)
    expect(broken, HAIRPIN, "UDP", DROPPED)
    expect(broken, HAIRPIN, "TCP", DROPPED)


UNAFFECTED = ["dnat-ip-only", "policy-before-dnat", "no-endpoints-drop", "etp-local-masquerade", "accept-local-ignored"]


@pytest.mark.parametrize("implementation", UNAFFECTED)
@pytest.mark.parametrize("proto", PROTOS)
def test_other_broken_implementations_keep_the_measured_classic_outcomes(implementation: str, proto: Protocol) -> None:
    # brnf=1, hairpin on, masquerade present: exp 1 row 1 and exp 2 brnf=1.
    kernel = kernel_for(implementation, classic())
    expect(kernel, HAIRPIN, proto, OK_HAIRPIN)
    expect(kernel, FROM_A, proto, OK_FROM_A)


def test_every_implementation_is_covered() -> None:
    covered = {
        "reference",
        "hairpin-mode-off",
        "no-hairpin-masquerade",
        "cni-masquerade-first",
        "bridge-nf-off",
        *UNAFFECTED,
    }
    assert covered == set(IMPLEMENTATIONS)


@pytest.mark.parametrize("rp_filter", ["1", "2"])
@pytest.mark.parametrize("implementation", ["reference", "bridge-nf-off"])
def test_node_rp_filter_has_no_effect(implementation: str, rp_filter: str) -> None:
    # exp 3: rp_filter 0/1/2 on all, cni0 and the veth ports changed nothing.
    dp = get_implementation(implementation).render(classic())
    node = dp.netns("node-node-1")
    devices = ("all", "default", "cni0", *(link.name for link in node.links if link.kind == "veth"))
    sysctls = (*node.sysctls, *((f"net.ipv4.conf.{d}.rp_filter", rp_filter) for d in devices))
    dp = replace(dp, namespaces=tuple(replace(ns, sysctls=sysctls) if ns is node else ns for ns in dp.namespaces))
    baseline = kernel_for(implementation, classic())
    kernel = Kernel(dp)
    for source in (HAIRPIN, FROM_A):
        for proto in PROTOS:
            probe = Probe(source, VIP, 80, proto)
            assert observe(kernel, probe).outcomes == observe(baseline, probe).outcomes


# -- exp 6: a Service without endpoints, an unmatched port, no route


def without_node_default_route(dp: Dataplane) -> Dataplane:
    def strip(ns: NetnsConfig) -> NetnsConfig:
        if ns.role != "node":
            return ns
        return replace(ns, routes=tuple(r for r in ns.routes if r.dst != DEFAULT))

    return replace(dp, namespaces=tuple(strip(ns) for ns in dp.namespaces))


@pytest.mark.parametrize("proto", PROTOS)
def test_no_endpoints_reject_with_a_default_route_is_refused(proto: Protocol) -> None:
    kernel = kernel_for("reference", classic(no_endpoints_service=True))
    outcome = run(kernel, FROM_A, NO_ENDPOINTS_VIP, 80, proto)
    assert (outcome.verdict, outcome.reason) == ("refused", f"ECONNREFUSED (ICMP from {CNI0})")
    assert run(kernel, NODE, NO_ENDPOINTS_VIP, 80, proto).verdict == "refused"


@pytest.mark.parametrize("proto", PROTOS)
def test_no_endpoints_drop_times_out(proto: Protocol) -> None:
    kernel = kernel_for("no-endpoints-drop", classic(no_endpoints_service=True))
    assert run(kernel, FROM_A, NO_ENDPOINTS_VIP, 80, proto) == DROPPED


@pytest.mark.parametrize("proto", PROTOS)
def test_unmatched_service_port_goes_to_the_dead_end_gateway(proto: Protocol) -> None:
    kernel = kernel_for("reference", classic())
    assert run(kernel, FROM_A, VIP, 81, proto) == DROPPED
    assert run(kernel, NODE, VIP, 81, proto) == DROPPED
    # dnat-ip-only sends any port of the ClusterIP to the endpoint.
    broken = kernel_for("dnat-ip-only", classic())
    expect(broken, FROM_A, proto, OK_FROM_A, port=81)


@pytest.mark.parametrize("proto", PROTOS)
def test_without_a_node_default_route_service_traffic_is_enetunreach(proto: Protocol) -> None:
    dp = without_node_default_route(get_implementation("reference").render(classic(no_endpoints_service=True)))
    kernel = Kernel(dp)
    # The route lookup fails before FORWARD: ip_error's net unreachable, the
    # REJECT rule is never reached.
    for dst, port in ((NO_ENDPOINTS_VIP, 80), (VIP, 81)):
        outcome = run(kernel, FROM_A, dst, port, proto)
        assert (outcome.verdict, outcome.reason) == ("refused", f"ENETUNREACH (ICMP from {CNI0})"), dst
        assert not any("REJECT" in line for line in outcome.trace)
    # A node-local client cannot even reach a real ClusterIP.
    outcome = run(kernel, NODE, VIP, 80, proto)
    assert (outcome.verdict, outcome.reason) == ("refused", "connect: ENETUNREACH")
    # From a pod the DNAT happens before routing: still fine.
    expect(kernel, FROM_A, proto, OK_FROM_A)


@pytest.mark.parametrize("proto", PROTOS)
def test_node_local_client_keeps_the_source_of_its_default_route(proto: Protocol) -> None:
    # exp 6, last row: kube-proxy rules with masquerade only in KUBE-SEP; the
    # node's source is picked from the default-route device and not NATed.
    dp = get_implementation("reference").render(classic())
    node = dp.netns("node-node-1")
    kept = [line for line in node.iptables.splitlines() if "! -s 10.244.0.0/16" not in line]
    assert len(kept) < len(node.iptables.splitlines())
    dp = replace(
        dp,
        namespaces=tuple(replace(ns, iptables="\n".join(kept) + "\n") if ns is node else ns for ns in dp.namespaces),
    )
    outcome = run(Kernel(dp), NODE, VIP, 80, proto)
    assert outcome == Outcome("delivered", "default/pod-b", 8080, A("172.18.0.2"), VIP)


@pytest.mark.parametrize("name", list(MEASURED))
def test_verdicts_measured_on_the_kernel(name: str) -> None:
    # test_netns checks the same cases against the real kernel
    case = MEASURED[name]
    [obs] = simulated(case.dataplane(), [case.probe])
    assert {o.verdict for o, _ in obs.outcomes} == {case.verdict}, obs.describe()
