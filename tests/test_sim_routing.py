"""The simulator's IPv4 routing: route_output, route_input, fib_validate_source.

Every test builds a small Dataplane by hand so that one mechanism decides
the result: client -- router -- server over two veths, the router's sysctls,
routes and addresses varied per test.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from backends.sim.kernel import Arrived, Kernel, Lost, NetNS, SendError, SimError, Walk
from backends.sim.packet import Addr, Packet
from backends.sim.probing import ScriptedChooser, observe
from conformance.dataplane import Dataplane, Link, Listener, NetnsConfig, Route
from conformance.model import Protocol
from conformance.probes import Observation, Outcome, Probe

A = IPv4Address
N = IPv4Network
DEFAULT = N("0.0.0.0/0")
CLIENT_IP = A("10.0.0.2")
ROUTER_IN = A("10.0.0.1")  # router eth0, the client's side
ROUTER_OUT = A("10.1.0.1")  # router eth1, the server's side
SERVER_IP = A("10.1.0.2")
ELSEWHERE = A("198.51.100.7")  # routed nowhere

Sysctls = tuple[tuple[str, str], ...]


def addr(dev: str, cidr: str) -> tuple[str, IPv4Interface]:
    return (dev, IPv4Interface(cidr))


def routed(
    *,
    router_sysctls: Sysctls = (("net.ipv4.ip_forward", "1"),),
    router_routes: tuple[Route, ...] = (),
    router_addresses: tuple[tuple[str, IPv4Interface], ...] = (),
    router_iptables: str = "",
) -> Dataplane:
    """client (10.0.0.2) -- eth0 router eth1 -- server (10.1.0.2), default routes via the router."""
    client = NetnsConfig(
        name="client",
        role="client",
        addresses=(addr("eth0", "10.0.0.2/24"),),
        routes=(Route(DEFAULT, "eth0", via=ROUTER_IN),),
    )
    router = NetnsConfig(
        name="router",
        role="node",
        links=(Link("eth0", "veth", "client", "eth0"), Link("eth1", "veth", "server", "eth0")),
        addresses=(addr("eth0", "10.0.0.1/24"), addr("eth1", "10.1.0.1/24"), *router_addresses),
        routes=router_routes,
        sysctls=router_sysctls,
        iptables=router_iptables,
    )
    server = NetnsConfig(
        name="server",
        role="pod",
        addresses=(addr("eth0", "10.1.0.2/24"),),
        routes=(Route(DEFAULT, "eth0", via=ROUTER_OUT),),
        listeners=(Listener("TCP", 8080, "server"), Listener("UDP", 8080, "server")),
    )
    return Dataplane(
        namespaces=(client, router, server),
        sources=(("client", "client"), ("router", "router"), ("server", "server")),
    )


def only(obs: Observation) -> Outcome:
    assert len(obs.outcomes) == 1, obs.describe()
    outcome, p = obs.outcomes[0]
    assert p == 1.0
    return outcome


def walk() -> Walk:
    return Walk(ScriptedChooser([]), [])


def udp(src: IPv4Address, dst: IPv4Address) -> Packet:
    return Packet(Addr.of(src), Addr.of(dst), "udp", 41000, 8080)


def router_of(dp: Dataplane) -> tuple[Kernel, NetNS]:
    kernel = Kernel(dp)
    return kernel, kernel.namespaces["router"]


# ---------------------------------------------------------------- route_output


def test_longest_prefix_match_picks_the_most_specific_route() -> None:
    routes = (
        Route(DEFAULT, "eth0", via=CLIENT_IP),
        Route(N("172.16.0.0/12"), "eth1", via=SERVER_IP),
        Route(N("172.16.5.0/24"), "eth0", via=CLIENT_IP),
        Route(N("172.16.5.9/32"), "eth1", via=SERVER_IP),
    )
    kernel, router = router_of(routed(router_routes=routes))
    expected = {
        "8.8.8.8": ("eth0", CLIENT_IP),
        "172.20.1.1": ("eth1", SERVER_IP),
        "172.16.5.1": ("eth0", CLIENT_IP),
        "172.16.5.9": ("eth1", SERVER_IP),
    }
    for dst, (dev, nexthop) in expected.items():
        route = kernel.route_output(router, Addr.of(A(dst)))
        assert route.kind == "forward", dst
        assert route.dev is not None
        assert (route.dev.name, route.nexthop) == (dev, Addr.of(nexthop)), dst


def test_connected_routes_come_from_addresses_except_host_addresses() -> None:
    extra = (addr("eth1", "192.0.2.1/32"),)
    kernel, router = router_of(routed(router_addresses=extra))
    route = kernel.route_output(router, Addr.of(A("10.1.0.77")))
    assert route.kind == "forward"
    assert route.dev is not None and route.dev.name == "eth1"
    # On-link: the next hop is the destination itself; the source is the prefsrc.
    assert (route.nexthop, route.src) == (Addr.of(A("10.1.0.77")), Addr.of(ROUTER_OUT))
    # A /32 address adds no connected route for its neighbours.
    assert kernel.route_output(router, Addr.of(A("192.0.2.2"))).error == "ENETUNREACH"


def test_local_table_wins_over_a_more_specific_main_route() -> None:
    # A /32 in the main table pointing away cannot steal a local address.
    routes = (Route(N("10.1.0.1/32"), "eth0"),)
    kernel, router = router_of(routed(router_routes=routes))
    out = kernel.route_output(router, Addr.of(ROUTER_OUT))
    assert out.kind == "local"
    assert out.dev is not None and out.dev.name == "lo"
    arriving = kernel.route_input(router, udp(CLIENT_IP, ROUTER_OUT), router.devices["eth0"])
    assert arriving.kind == "local"


def test_source_selection_explicit_src_gateway_subnet_and_fallback() -> None:
    routes = (
        Route(N("203.0.113.0/24"), "eth1", via=A("192.168.50.9")),
        Route(N("198.18.0.0/15"), "eth1", via=SERVER_IP, src=A("10.0.0.1")),
    )
    extra = (addr("eth1", "192.168.50.1/24"),)
    kernel, router = router_of(routed(router_routes=routes, router_addresses=extra))
    # eth1 has 10.1.0.1 first; the address on the gateway's subnet is preferred.
    assert kernel.route_output(router, Addr.of(A("203.0.113.5"))).src == Addr.of(A("192.168.50.1"))
    # An explicit `src` on the route wins over selection.
    assert kernel.route_output(router, Addr.of(A("198.18.1.1"))).src == Addr.of(A("10.0.0.1"))


def test_source_selection_falls_back_to_another_device_never_loopback() -> None:
    client = NetnsConfig(
        name="client",
        role="client",
        links=(Link("eth0", "veth", "peer", "up"), Link("bare", "veth", "peer", "down")),
        addresses=(addr("eth0", "10.0.0.2/24"),),
        routes=(Route(N("10.50.0.0/16"), "bare"),),
    )
    peer = NetnsConfig(name="peer", role="pod", addresses=(addr("down", "10.50.0.1/16"),))
    kernel = Kernel(Dataplane((client, peer), sources=(("client", "client"),)))
    route = kernel.route_output(kernel.namespaces["client"], Addr.of(A("10.50.3.3")))
    assert route.kind == "forward"
    assert route.dev is not None and route.dev.name == "bare"
    assert route.src == Addr.of(CLIENT_IP)


def test_no_route_is_enetunreach_for_local_sends() -> None:
    client = NetnsConfig(
        name="client",
        role="client",
        links=(Link("eth0", "veth", "peer", "eth0"),),
        addresses=(addr("eth0", "10.0.0.2/24"),),
    )
    peer = NetnsConfig(name="peer", role="pod", addresses=(addr("eth0", "10.0.0.3/24"),))
    kernel = Kernel(Dataplane((client, peer), sources=(("client", "client"),)))
    ns = kernel.namespaces["client"]
    landing = kernel.send(walk(), ns, udp(A(0), ELSEWHERE))
    assert isinstance(landing, SendError)
    assert "ENETUNREACH" in landing.reason
    for proto in ("TCP", "UDP"):
        outcome = only(observe(kernel, Probe("client", ELSEWHERE, 80, proto)))
        assert outcome.verdict == "refused"
        assert "ENETUNREACH" in outcome.reason
    # The connected route still works.
    assert isinstance(kernel.send(walk(), ns, udp(A(0), A("10.0.0.3"))), Arrived)


# ---------------------------------------------------------------- forwarding


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_forwarding_on_with_a_route_delivers(proto: Protocol) -> None:
    kernel = Kernel(routed())
    outcome = only(observe(kernel, Probe("client", SERVER_IP, 8080, proto)))
    assert outcome.verdict == "delivered"
    assert (outcome.served_by, outcome.server_saw, outcome.client_saw) == ("server", CLIENT_IP, SERVER_IP)


@pytest.mark.parametrize("dst", [SERVER_IP, ELSEWHERE], ids=["routable", "no-route"])
@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_forwarding_off_drops_silently(proto: Protocol, dst: IPv4Address) -> None:
    kernel = Kernel(routed(router_sysctls=(("net.ipv4.ip_forward", "0"),)))
    outcome = only(observe(kernel, Probe("client", dst, 8080, proto)))
    assert outcome.verdict == "dropped"
    assert not any("sends ICMP" in line for line in outcome.trace)


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
def test_forwarding_on_without_a_route_answers_icmp_net_unreachable(proto: Protocol) -> None:
    kernel = Kernel(routed())
    outcome = only(observe(kernel, Probe("client", ELSEWHERE, 80, proto)))
    assert outcome.verdict == "refused"
    assert outcome.reason == f"ENETUNREACH (ICMP from {ROUTER_IN})"
    assert any("router: sends ICMP type 3 code 0" in line for line in outcome.trace)


def test_per_device_forwarding_enables_routing_from_that_device_only() -> None:
    sysctls = (("net.ipv4.ip_forward", "0"), ("net.ipv4.conf.eth0.forwarding", "1"))
    kernel, router = router_of(routed(router_sysctls=sysctls))
    assert kernel.route_input(router, udp(CLIENT_IP, SERVER_IP), router.devices["eth0"]).kind == "forward"
    back = kernel.route_input(router, udp(SERVER_IP, CLIENT_IP), router.devices["eth1"])
    assert (back.kind, back.error) == ("error", "EHOSTUNREACH")


def test_default_forwarding_reaches_every_device() -> None:
    # The Dataplane contract applies namespace-wide sysctls before the links
    # exist, so `default` is what every device starts with.
    sysctls = (("net.ipv4.ip_forward", "0"), ("net.ipv4.conf.default.forwarding", "1"))
    kernel, router = router_of(routed(router_sysctls=sysctls))
    route = kernel.route_input(router, udp(CLIENT_IP, SERVER_IP), router.devices["eth0"])
    assert route.kind == "forward"


def test_per_device_forwarding_is_applied_after_namespace_wide_keys() -> None:
    # Per-device keys come after the links exist, whatever their place in the list.
    sysctls = (("net.ipv4.conf.eth0.forwarding", "0"), ("net.ipv4.ip_forward", "1"))
    kernel, router = router_of(routed(router_sysctls=sysctls))
    route = kernel.route_input(router, udp(CLIENT_IP, SERVER_IP), router.devices["eth0"])
    assert (route.kind, route.error) == ("error", "EHOSTUNREACH")


# ---------------------------------------------------------------- martians


def own_address_arrival(sysctls: Sysctls) -> str:
    """A packet from the router's own eth1 address arrives on eth0: '' or the error."""
    kernel, router = router_of(routed(router_sysctls=(("net.ipv4.ip_forward", "1"), *sysctls)))
    route = kernel.route_input(router, udp(ROUTER_OUT, ROUTER_IN), router.devices["eth0"])
    assert route.kind in ("local", "error")
    return route.error


def test_own_source_address_is_martian_with_accept_local_0() -> None:
    error = own_address_arrival(())
    assert error.startswith("EINVAL")
    assert "martian source 10.1.0.1" in error


@pytest.mark.parametrize(
    ("all_", "dev", "martian"),
    [("0", "0", True), ("1", "0", False), ("0", "1", False), ("1", "1", False)],
)
def test_accept_local_is_or_of_all_and_device(all_: str, dev: str, martian: bool) -> None:
    sysctls = (("net.ipv4.conf.all.accept_local", all_), ("net.ipv4.conf.eth0.accept_local", dev))
    assert own_address_arrival(sysctls).startswith("EINVAL") is martian


def test_accept_local_default_applies_only_where_the_device_has_no_value() -> None:
    assert own_address_arrival((("net.ipv4.conf.default.accept_local", "1"),)) == ""
    overridden = (("net.ipv4.conf.default.accept_local", "1"), ("net.ipv4.conf.eth0.accept_local", "0"))
    assert own_address_arrival(overridden).startswith("EINVAL")


def test_own_source_is_martian_for_forwarded_packets_too() -> None:
    kernel, router = router_of(routed())
    route = kernel.route_input(router, udp(ROUTER_OUT, SERVER_IP), router.devices["eth0"])
    assert route.error.startswith("EINVAL")


# ---------------------------------------------------------------- rp_filter


def rp_check(sysctls: Sysctls, src: IPv4Address, *, routes: tuple[Route, ...] = ()) -> str:
    """A packet from `src` arrives on the router's eth0 for the server: '' or the error."""
    kernel, router = router_of(routed(router_sysctls=(("net.ipv4.ip_forward", "1"), *sysctls), router_routes=routes))
    route = kernel.route_input(router, udp(src, SERVER_IP), router.devices["eth0"])
    assert route.kind in ("forward", "error")
    return route.error


def rp(value: str) -> Sysctls:
    return (("net.ipv4.conf.all.rp_filter", value),)


SPOOFED = A("10.1.0.50")  # on eth1's subnet, arriving on eth0
UNROUTABLE = A("203.0.113.9")


@pytest.mark.parametrize(("mode", "accepted"), [("0", True), ("1", False), ("2", True)])
def test_rp_filter_reverse_route_via_another_interface(mode: str, accepted: bool) -> None:
    error = rp_check(rp(mode), SPOOFED)
    assert (error == "") is accepted
    if not accepted:
        assert error.startswith("EXDEV") and "rp_filter=1" in error


@pytest.mark.parametrize(("mode", "accepted"), [("0", True), ("1", False), ("2", False)])
def test_rp_filter_without_any_reverse_route(mode: str, accepted: bool) -> None:
    error = rp_check(rp(mode), UNROUTABLE)
    assert (error == "") is accepted
    if not accepted:
        assert error.startswith("EXDEV") and "no route back" in error


def test_rp_filter_loose_accepts_any_source_covered_by_a_default_route() -> None:
    routes = (Route(DEFAULT, "eth1", via=SERVER_IP),)
    assert rp_check(rp("2"), UNROUTABLE, routes=routes) == ""
    assert rp_check(rp("1"), UNROUTABLE, routes=routes).startswith("EXDEV")


def test_rp_filter_accepts_the_source_on_the_arrival_interface() -> None:
    assert rp_check(rp("1"), CLIENT_IP) == ""


@pytest.mark.parametrize(
    ("all_", "dev", "accepted"),
    [("1", "0", False), ("0", "1", False), ("2", "1", True), ("1", "2", True)],
)
def test_rp_filter_is_the_max_of_all_and_device(all_: str, dev: str, accepted: bool) -> None:
    sysctls = (("net.ipv4.conf.all.rp_filter", all_), ("net.ipv4.conf.eth0.rp_filter", dev))
    assert (rp_check(sysctls, SPOOFED) == "") is accepted


def test_rp_filter_strict_drops_a_spoofed_frame_but_not_the_genuine_client() -> None:
    strict = rp("1")
    kernel = Kernel(routed(router_sysctls=(("net.ipv4.ip_forward", "1"), *strict)))
    assert only(observe(kernel, Probe("client", SERVER_IP, 8080, "UDP"))).verdict == "delivered"
    client_eth0 = kernel.namespaces["client"].devices["eth0"]
    router_mac = kernel.namespaces["router"].devices["eth0"].mac
    spoofed = udp(SPOOFED, SERVER_IP)
    spoofed.src_mac, spoofed.dst_mac = client_eth0.mac, router_mac
    landing = kernel.xmit(walk(), client_eth0, spoofed)
    assert isinstance(landing, Lost)
    assert "EXDEV (rp_filter=1" in landing.reason


# ---------------------------------------------------------------- 127/8


@pytest.mark.parametrize(("localnet", "martian"), [("0", True), ("1", False)])
def test_loopback_destination_from_outside_needs_route_localnet(localnet: str, martian: bool) -> None:
    sysctls = (("net.ipv4.conf.eth0.route_localnet", localnet),)
    kernel, router = router_of(routed(router_sysctls=sysctls))
    route = kernel.route_input(router, udp(CLIENT_IP, A("127.0.0.1")), router.devices["eth0"])
    if martian:
        assert route.error == "EINVAL (martian destination)"
    else:
        assert route.kind == "local"


@pytest.mark.parametrize(("localnet", "martian"), [("0", True), ("1", False)])
def test_loopback_source_from_outside_needs_route_localnet(localnet: str, martian: bool) -> None:
    sysctls = (("net.ipv4.conf.all.route_localnet", localnet),)
    kernel, router = router_of(routed(router_sysctls=sysctls))
    route = kernel.route_input(router, udp(A("127.0.0.9"), ROUTER_IN), router.devices["eth0"])
    if martian:
        assert route.error == "EINVAL (martian source)"
    else:
        assert route.kind == "local"


def test_sending_to_an_own_address_loops_back_without_a_source_check() -> None:
    # The looped-back packet keeps its output route: no martian check, even
    # though its source is a local address and accept_local is 0.
    kernel, router = router_of(routed())
    landing = kernel.send(walk(), router, udp(A(0), ROUTER_OUT))
    assert isinstance(landing, Arrived)
    assert landing.netns is router
    assert (landing.pkt.src, landing.pkt.dst) == (Addr.of(ROUTER_OUT), Addr.of(ROUTER_OUT))


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "key", ["net.ipv4.tcp_syncookies", "net.ipv4.conf.eth0.arp_ignore", "net.bridge.bridge-nf-call-arptables"]
)
def test_unknown_sysctl_is_a_simerror_naming_it(key: str) -> None:
    with pytest.raises(SimError, match=key.replace(".", r"\.")):
        Kernel(routed(router_sysctls=((key, "1"),)))


def test_non_integer_sysctl_value_is_a_simerror() -> None:
    with pytest.raises(SimError, match="expected an integer"):
        Kernel(routed(router_sysctls=(("net.ipv4.ip_forward", "yes"),)))


def test_icmp_ratelimit_is_accepted_and_inert() -> None:
    kernel = Kernel(routed(router_sysctls=(("net.ipv4.ip_forward", "1"), ("net.ipv4.icmp_ratelimit", "0"))))
    assert only(observe(kernel, Probe("client", SERVER_IP, 8080, "TCP"))).verdict == "delivered"


def test_gateway_not_on_link_is_a_simerror() -> None:
    routes = (Route(N("172.16.0.0/12"), "eth1", via=A("10.0.0.9")),)
    with pytest.raises(SimError, match=r"172\.16\.0\.0/12 via 10\.0\.0\.9: gateway not on-link on eth1"):
        Kernel(routed(router_routes=routes))


def test_route_on_a_missing_device_is_a_simerror() -> None:
    with pytest.raises(SimError, match="no link 'eth9'"):
        Kernel(routed(router_routes=(Route(N("172.16.0.0/12"), "eth9"),)))


def test_addrtype_reads_the_local_table_and_limit_iface_its_device() -> None:
    # Measured: an address with no route is UNICAST; LOCAL and BROADCAST hold only on the device whose address
    # it is (10.9.9.9 on lo is UNICAST to --limit-iface-in eth0); value-typed addresses ignore the device.
    node = NetnsConfig(
        name="node",
        role="node",
        links=(Link("eth0", "veth", "peer", "eth0"),),
        addresses=(addr("eth0", "10.0.0.1/24"), addr("lo", "10.9.9.9/32")),
    )
    peer = NetnsConfig(name="peer", role="pod", addresses=(addr("eth0", "10.0.0.3/24"),))
    ns = Kernel(Dataplane((node, peer))).namespaces["node"]

    def types(ip: str, limit: str | None = None) -> set[str]:
        return set(ns.addr_type(Addr.of(A(ip)), limit))

    assert types("192.168.5.5") == types("192.168.5.5", "eth0") == {"UNICAST"}
    assert types("10.0.0.1") == types("10.0.0.1", "eth0") == {"LOCAL"}
    assert types("10.0.0.1", "eth1") == {"UNICAST"}
    assert types("10.9.9.9") == types("10.9.9.9", "lo") == {"LOCAL"}
    assert types("10.9.9.9", "eth0") == types("127.0.0.1", "eth0") == {"UNICAST"}
    assert types("127.0.0.1", "lo") == {"LOCAL"}
    assert types("10.0.0.255") == types("10.0.0.255", "eth0") == {"BROADCAST"}
    assert types("10.0.0.255", "lo") == {"UNICAST"}
    assert types("255.255.255.255", "lo") == types("0.1.2.3", "eth0") == {"BROADCAST"}
    assert types("224.0.0.1", "eth0") == {"MULTICAST"}
