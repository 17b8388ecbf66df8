"""`netconformance trace` on kube-proxy-style rulesets written from kube-proxy's layout."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from backends.sim.iptables import RulesetError, parse_iptables_save
from backends.sim.kernel import Kernel
from backends.sim.packet import Addr
from conformance.cli import main
from conformance.tracing import Query, TraceError, _dataplane, trace

RULES = Path(__file__).parent / "rulesets" / "kube-proxy-node.txt"
NODE_IP = IPv4Address("172.18.0.2")
POD_CIDR = IPv4Network("10.244.1.0/24")


def query(
    origin: str,
    src: str,
    dst: str,
    dport: int,
    *,
    rules: str | None = None,
    proto: str = "tcp",
    local_ips: tuple[str, ...] = (str(NODE_IP),),
    pod_cidr: str = str(POD_CIDR),
) -> Query:
    return Query(
        rules=rules if rules is not None else RULES.read_text(),
        rules_name="kube-proxy-node.txt",
        local_ips=tuple(IPv4Address(ip) for ip in local_ips),
        pod_cidr=IPv4Network(pod_cidr, strict=False),
        origin=origin,  # type: ignore[arg-type]
        src=IPv4Address(src),
        dst=IPv4Address(dst),
        dport=dport,
        proto=proto,  # type: ignore[arg-type]
    )


def fates(report_results: list[object]) -> dict[str | None, float]:
    return {r.destination: round(r.probability, 6) for r in report_results}  # type: ignore[attr-defined]


def test_cluster_ip_spreads_over_three_endpoints_equally() -> None:
    report = trace(query("pod", "10.244.1.10", "10.96.0.10", 80))
    assert fates(report.results) == {
        "10.244.1.11:8080": 0.333333,
        "10.244.1.12:8080": 0.333333,
        "10.244.2.13:8080": 0.333333,
    }
    assert sum(r.probability for r in report.results) == pytest.approx(1.0)
    for r in report.results:
        assert r.verdict == "forwarded"
        assert r.source == "10.244.1.10"  # pod to ClusterIP: not masqueraded
        assert r.nat == [f"DNAT to {r.destination}"]
    remote = next(r for r in report.results if r.destination == "10.244.2.13:8080")
    assert "via eth0" in remote.summary
    assert not report.warnings


def test_hairpin_branch_alone_is_masqueraded_to_the_bridge_address() -> None:
    report = trace(query("pod", "10.244.1.11", "10.96.0.10", 80))
    by_dst = {r.destination: r for r in report.results}
    assert by_dst["10.244.1.11:8080"].source == "10.244.1.1"
    assert by_dst["10.244.1.11:8080"].nat == ["DNAT to 10.244.1.11:8080", "MASQUERADE to 10.244.1.1"]
    assert by_dst["10.244.1.12:8080"].source == "10.244.1.11"
    assert any("KUBE-MARK-MASQ" in line for line in by_dst["10.244.1.11:8080"].trace)


def test_nodeport_from_outside_is_masqueraded_per_out_device() -> None:
    report = trace(query("external", "192.0.2.7", "172.18.0.2", 30080))
    by_dst = {r.destination: r for r in report.results}
    assert set(by_dst) == {"10.244.1.11:8080", "10.244.1.12:8080", "10.244.2.13:8080"}
    assert by_dst["10.244.1.11:8080"].source == "10.244.1.1"  # out of cni0
    assert by_dst["10.244.2.13:8080"].source == "172.18.0.2"  # out of eth0
    assert all(r.probability == pytest.approx(1 / 3) for r in report.results)


def test_service_without_endpoints_is_rejected_by_its_rule() -> None:
    report = trace(query("pod", "10.244.1.10", "10.96.0.20", 80))
    (r,) = report.results
    assert (r.verdict, r.probability) == ("rejected", 1.0)
    assert r.summary == "rejected with icmp-port-unreachable"
    assert r.rule is not None and '"default/empty:http has no endpoints"' in r.rule


def test_cluster_ip_from_the_node_is_masqueraded() -> None:
    report = trace(query("node", "172.18.0.2", "10.96.0.10", 80))
    assert {r.source for r in report.results} == {"10.244.1.1", "172.18.0.2"}
    assert all(r.nat[-1].startswith("MASQUERADE") for r in report.results)


def test_wrong_port_is_not_translated() -> None:
    (r,) = trace(query("pod", "10.244.1.10", "10.96.0.10", 81)).results
    assert (r.verdict, r.destination, r.nat) == ("forwarded", "10.96.0.10:81", [])
    assert "via eth0" in r.summary  # on to the default gateway, untouched


def test_partial_dump_without_jumps_is_reported_not_guessed() -> None:
    text = "\n".join(
        line
        for line in RULES.read_text().splitlines()
        if "kubernetes service portals" not in line or "-A PREROUTING" not in line
    )
    report = trace(query("pod", "10.244.1.10", "10.96.0.10", 80, rules=text))
    assert any("no jump to KUBE-SERVICES" in w for w in report.warnings)
    (r,) = report.results
    assert r.nat == []  # the walk follows the rules as given


def test_unmodelled_extension_is_an_error_naming_line_and_extension() -> None:
    rules = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m set --match-set blocked src -j DROP\nCOMMIT\n"
    with pytest.raises(RulesetError) as e:
        trace(query("pod", "10.244.1.10", "10.96.0.10", 80, rules=rules))
    assert "kube-proxy-node.txt:3" in str(e.value) and "'set'" in str(e.value)


def test_bad_source_is_a_clear_error() -> None:
    with pytest.raises(TraceError, match="inside --pod-cidr"):
        trace(query("pod", "10.9.9.9", "10.96.0.10", 80))


def test_cli_json_and_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["trace", "--rules", str(RULES), "--local-ip", "172.18.0.2", "--pod-cidr", "10.244.1.0/24"]
    assert main([*args, "--from", "pod", "--src", "10.244.1.10", "--dst", "10.96.0.10", "--dport", "80", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["destination"] for r in doc["results"]} == {"10.244.1.11:8080", "10.244.1.12:8080", "10.244.2.13:8080"}
    assert doc["query"]["from"] == "pod" and doc["warnings"] == []
    bad = tmp_path / "bad.rules"
    bad.write_text("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j CT --notrack\nCOMMIT\n")
    code = main(
        [
            "trace",
            "--rules",
            str(bad),
            "--local-ip",
            "172.18.0.2",
            "--pod-cidr",
            "10.244.1.0/24",
            "--from",
            "pod",
            "--src",
            "10.244.1.10",
            "--dst",
            "10.96.0.10",
            "--dport",
            "80",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.rules:3" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["", "# Generated by iptables-save\n\n# nothing else\n"])
def test_rules_file_without_a_table_is_an_error_naming_it(text: str) -> None:
    with pytest.raises(TraceError, match=r"--rules kube-proxy-node.txt: no \*table in it"):
        trace(query("pod", "10.244.1.10", "10.96.0.10", 80, rules=text))


def test_rules_file_with_an_empty_table_is_traced() -> None:
    (r,) = trace(query("pod", "10.244.1.10", "10.96.0.10", 80, rules="*nat\nCOMMIT\n")).results
    assert (r.verdict, r.destination) == ("forwarded", "10.96.0.10:80")


def test_cli_empty_rules_file_exits_2_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.rules"
    empty.write_text("")
    args = ["--local-ip", "172.18.0.2", "--pod-cidr", "10.244.1.0/24", "--from", "pod", "--src", "10.244.1.10"]
    assert main(["trace", "--rules", str(empty), *args, "--dst", "10.96.0.10", "--dport", "80"]) == 2
    err = capsys.readouterr().err
    assert f"--rules {empty}: no *table in it" in err and "Traceback" not in err


def test_node_source_from_the_pod_cidr_must_be_the_bridge_address() -> None:
    with pytest.raises(TraceError, match=r"a node source must be one of --local-ip \(172.18.0.2\) or the bridge"):
        trace(query("node", "10.244.1.11", "10.96.0.10", 80))
    # cni0's address is the node's own: inside the cluster CIDR, so not masqueraded
    report = trace(query("node", "10.244.1.1", "10.96.0.10", 80))
    assert {r.source for r in report.results} == {"10.244.1.1"}
    assert all(r.nat == [f"DNAT to {r.destination}"] for r in report.results)


@pytest.mark.parametrize(
    ("src", "local_ips", "message"),
    [
        ("10.244.1.1", ("172.18.0.2",), "the bridge cni0's address (the first host of --pod-cidr), the pods'"),
        ("10.244.1.7", ("172.18.0.2", "10.244.1.7"), "the bridge cni0's address (given as --local-ip), the pods'"),
        ("10.244.1.0", ("172.18.0.2",), "the network address of --pod-cidr 10.244.1.0/24, not a pod's"),
        ("10.244.1.255", ("172.18.0.2",), "the broadcast address of --pod-cidr 10.244.1.0/24, not a pod's"),
    ],
)
def test_pod_source_must_be_a_pod_host(src: str, local_ips: tuple[str, ...], message: str) -> None:
    with pytest.raises(TraceError) as e:
        trace(query("pod", src, "10.96.0.10", 80, local_ips=local_ips))
    assert str(e.value).startswith(f"--src {src}: is {message}")


@pytest.mark.parametrize(
    ("src", "what"),
    [
        ("0.0.0.0", '"this network" 0.0.0.0/8'),
        ("255.255.255.255", "the limited broadcast address"),
        ("224.0.0.1", "multicast 224.0.0.0/4"),
        ("127.0.0.1", "loopback 127.0.0.0/8"),
    ],
)
def test_external_source_must_be_a_unicast_host(src: str, what: str) -> None:
    with pytest.raises(TraceError) as e:
        trace(query("external", src, "172.18.0.2", 30080))
    assert str(e.value) == f"--src {src}: is {what}; expected a unicast address of a host outside the node"


@pytest.mark.parametrize(
    ("dst", "what"),
    [
        ("0.0.0.0", '"this network" 0.0.0.0/8'),
        ("255.255.255.255", "the limited broadcast address"),
        ("239.1.1.1", "multicast 224.0.0.0/4"),
        ("10.244.1.255", "the broadcast address of --pod-cidr 10.244.1.0/24"),
        ("10.244.1.0", "the network address of --pod-cidr 10.244.1.0/24"),
    ],
)
def test_destination_must_be_one_unicast_host(dst: str, what: str) -> None:
    with pytest.raises(TraceError) as e:
        trace(query("pod", "10.244.1.10", dst, 80))
    assert str(e.value) == f"--dst {dst}: is {what}; expected the unicast address of one host"


@pytest.mark.parametrize(
    ("origin", "src", "dst", "host"),
    [
        ("pod", "10.244.1.11", "10.244.1.11", "source pod"),
        ("pod", "10.244.1.11", "127.0.0.1", "source pod"),
        ("external", "192.0.2.7", "192.0.2.7", "outside host"),
        ("external", "172.18.0.5", "172.18.0.5", "outside host"),  # an on-link neighbour of the node
    ],
)
def test_destination_in_the_source_itself_never_reaches_the_node(origin: str, src: str, dst: str, host: str) -> None:
    (r,) = trace(query(origin, src, dst, 80)).results
    assert (r.verdict, r.destination, r.source, r.nat) == ("local", f"{dst}:80", src, [])
    assert r.summary == f"stays in the {host}: delivered over its lo at {dst}:80, never reaching the node"
    assert not any(line.startswith("node") for line in r.trace)


def test_node_dialling_its_own_address_still_walks_the_ruleset() -> None:
    report = trace(query("node", "172.18.0.2", "172.18.0.2", 30080))
    assert fates(report.results) == {
        "10.244.1.11:8080": 0.333333,
        "10.244.1.12:8080": 0.333333,
        "10.244.2.13:8080": 0.333333,
    }


@pytest.mark.parametrize(
    ("local_ips", "message"),
    [
        (("0.0.0.0",), '--local-ip 0.0.0.0: is "this network" 0.0.0.0/8; expected a unicast address of the node'),
        (("127.0.0.1",), "--local-ip 127.0.0.1: is loopback 127.0.0.0/8; expected a unicast address of the node"),
        (("224.0.0.5",), "--local-ip 224.0.0.5: is multicast 224.0.0.0/4; expected a unicast address of the node"),
        (("172.18.0.2", "192.0.2.9", "172.18.0.2"), "--local-ip 172.18.0.2: given twice"),
        (
            ("10.244.1.5",),
            "--local-ip 10.244.1.5: inside --pod-cidr 10.244.1.0/24, so it is the bridge cni0's address; "
            "expected also the node's own address on eth0, outside the pod CIDR",
        ),
        (
            ("172.18.0.2", "10.244.1.5", "10.244.1.6"),
            "--local-ip 10.244.1.6: a second address inside --pod-cidr 10.244.1.0/24 (after 10.244.1.5); "
            "expected at most one, the bridge cni0's address: the rest of the pod CIDR belongs to pods",
        ),
        (
            ("172.18.0.2", "10.244.1.255"),
            "--local-ip 10.244.1.255: is the broadcast address of --pod-cidr 10.244.1.0/24; "
            "expected a host address for the bridge cni0",
        ),
    ],
)
def test_bad_local_ip_is_rejected_with_the_reason(local_ips: tuple[str, ...], message: str) -> None:
    with pytest.raises(TraceError) as e:
        trace(query("pod", "10.244.1.10", "10.96.0.10", 80, local_ips=local_ips))
    assert str(e.value) == message


def test_one_local_ip_inside_the_pod_cidr_is_the_bridge_address() -> None:
    report = trace(query("pod", "10.244.1.11", "10.96.0.10", 80, local_ips=("172.18.0.2", "10.244.1.254")))
    by_dst = {r.destination: r for r in report.results}
    assert by_dst["10.244.1.11:8080"].nat == ["DNAT to 10.244.1.11:8080", "MASQUERADE to 10.244.1.254"]


@pytest.mark.parametrize(
    ("pod_cidr", "message"),
    [
        ("0.0.0.0/0", "covers every address; expected the node's pod range, e.g. 10.244.1.0/24"),
        ("10.244.1.0/32", "no room for the bridge cni0 and a pod; expected a prefix of /30 or shorter"),
        ("10.244.1.0/31", "no room for the bridge cni0 and a pod; expected a prefix of /30 or shorter"),
        ("127.0.0.0/24", "overlaps loopback 127.0.0.0/8; expected a range of unicast addresses"),
        (
            "172.18.0.128/25",
            "overlaps 172.18.0.0/24, the node's network on eth0 as the trace models it (the /24 of 172.18.0.2, "
            "the first --local-ip outside the pod CIDR); expected a pod range apart from it",
        ),
    ],
)
def test_bad_pod_cidr_is_rejected_with_the_reason(pod_cidr: str, message: str) -> None:
    with pytest.raises(TraceError) as e:
        trace(query("external", "192.0.2.7", "172.18.0.2", 30080, pod_cidr=pod_cidr))
    assert str(e.value) == f"--pod-cidr {pod_cidr}: {message}"


def test_smallest_pod_cidr_holds_the_bridge_and_one_pod() -> None:
    (r,) = trace(query("pod", "10.244.1.2", "192.0.2.7", 80, pod_cidr="10.244.1.0/30")).results
    assert (r.verdict, r.destination) == ("forwarded", "192.0.2.7:80")


# eth0's network is not given: the trace models it as the /24 of eth0's
# address. An address at that /24's edge is an ordinary host of a larger
# network (10.0.1.255 in a /16), so it is traced, not refused, and the model
# keeps it a unicast address (never the broadcast address of eth0's network).
NODEPORT_FATES = {"10.244.1.11:8080": 0.333333, "10.244.1.12:8080": 0.333333, "10.244.2.13:8080": 0.333333}


@pytest.mark.parametrize(
    ("origin", "src", "local_ips"),
    [
        ("pod", "10.244.1.10", ("10.0.1.255",)),
        ("external", "192.0.2.7", ("10.0.1.255",)),
        ("external", "10.0.1.254", ("10.0.1.255",)),  # on-link, next to it
        ("pod", "10.244.1.10", ("172.18.0.2", "172.18.0.255")),
        ("external", "192.0.2.7", ("172.18.0.2", "172.18.0.255")),
        ("external", "192.0.2.7", ("172.18.0.0",)),
    ],
)
def test_local_ip_at_the_edge_of_a_24_is_a_node_address(origin: str, src: str, local_ips: tuple[str, ...]) -> None:
    dst = local_ips[-1]
    report = trace(query(origin, src, dst, 30080, local_ips=local_ips))
    assert fates(report.results) == NODEPORT_FATES  # addrtype LOCAL: the NodePort is reached
    remote = next(r for r in report.results if r.destination == "10.244.2.13:8080")
    if origin == "external":
        assert remote.source == local_ips[0]  # masqueraded to eth0's address


@pytest.mark.parametrize("dst", ["172.18.0.255", "172.18.0.0", "172.18.0.9"])
def test_destination_on_the_nodes_network_leaves_via_eth0(dst: str) -> None:
    (r,) = trace(query("pod", "10.244.1.10", dst, 80)).results
    assert (r.verdict, r.destination, r.source) == ("forwarded", f"{dst}:80", "10.244.1.10")
    assert r.summary == f"leaves the node via eth0 to {dst}:80, source 10.244.1.10"


@pytest.mark.parametrize("endpoint", ["172.18.0.3", "172.18.0.255"])
def test_dnat_to_a_host_on_the_nodes_network_leaves_via_eth0(endpoint: str) -> None:
    # e.g. the kubernetes Service's endpoint, the API server on another node
    rules = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n"
        f"-A PREROUTING -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination {endpoint}:6443\n"
        "COMMIT\n"
    )
    (r,) = trace(query("pod", "10.244.1.10", "10.96.0.1", 443, rules=rules)).results
    assert (r.verdict, r.destination, r.nat) == ("forwarded", f"{endpoint}:6443", [f"DNAT to {endpoint}:6443"])
    assert "via eth0" in r.summary


def test_eth0_network_that_cannot_be_modelled_is_an_error() -> None:
    # Every prefix of 10.244.1.255 up to /24 has it as broadcast address, its
    # /31 partner is the node's too, and every wider one overlaps the pod CIDR.
    with pytest.raises(TraceError) as e:
        trace(
            query(
                "external",
                "192.0.2.7",
                "10.244.1.255",
                30080,
                local_ips=("10.244.1.255", "10.244.1.254"),
                pod_cidr="10.244.0.0/24",
            )
        )
    assert str(e.value).startswith("--local-ip 10.244.1.255: the trace cannot model eth0's network around it")


# eth0's address is the first --local-ip outside the pod CIDR, whatever the
# order: one inside it is cni0's address.
@pytest.mark.parametrize(
    ("origin", "src", "dst", "dport"),
    [("pod", "10.244.1.11", "10.96.0.10", 80), ("external", "192.0.2.7", "172.18.0.2", 30080)],
)
def test_local_ip_order_does_not_matter(origin: str, src: str, dst: str, dport: int) -> None:
    results = [
        [r.as_json() for r in trace(query(origin, src, dst, dport, local_ips=ips)).results]
        for ips in (("172.18.0.2", "10.244.1.1"), ("10.244.1.1", "172.18.0.2"))
    ]
    assert results[0] == results[1]
    sources = {r["source"] for r in results[0]}
    assert sources == ({"10.244.1.1", "10.244.1.11"} if origin == "pod" else {"10.244.1.1", "172.18.0.2"})


def test_every_local_ip_inside_the_pod_cidr_is_an_error() -> None:
    with pytest.raises(TraceError) as e:
        trace(query("external", "192.0.2.7", "172.18.0.2", 30080, pod_cidr="172.18.0.0/16"))
    assert str(e.value) == (
        "--local-ip 172.18.0.2: inside --pod-cidr 172.18.0.0/16, so it is the bridge cni0's address; "
        "expected also the node's own address on eth0, outside the pod CIDR"
    )


# An external source on the node's (modelled) network is an on-link
# neighbour: the node answers it directly, not through the gateway; one at
# the edge of a /24 is an ordinary host too.
@pytest.mark.parametrize("src", ["172.18.0.9", "172.18.0.255", "8.8.8.8"])
def test_external_source_near_or_far_is_rejected_by_the_rule(src: str) -> None:
    (r,) = trace(query("external", src, "172.18.0.2", 30090)).results
    assert (r.verdict, r.summary) == ("rejected", "rejected with icmp-port-unreachable")
    assert r.rule is not None and '"default/empty:http has no endpoints"' in r.rule
    assert r.trace[-1].startswith(f"outside: delivered locally: icmp 172.18.0.2 -> {src} type 3/3")


def test_external_source_on_the_nodes_network_is_its_on_link_neighbour() -> None:
    q = query("external", "172.18.0.9", "172.18.0.2", 30090)
    dataplane = _dataplane(q, parse_iptables_save(q.rules))
    outside = next(ns for ns in dataplane.namespaces if ns.name == "outside")
    assert ("eth0", IPv4Interface("172.18.0.9/24")) in outside.addresses  # the neighbour itself, same prefix
    kernel = Kernel(dataplane)
    node = kernel.namespaces["node"]
    assert kernel.route_output(node, Addr.of(q.src)).nexthop == Addr.of(q.src)  # no gateway hop
    assert kernel.route_output(node, Addr.of(IPv4Address("8.8.8.8"))).nexthop == Addr.of(IPv4Address("172.18.0.1"))
