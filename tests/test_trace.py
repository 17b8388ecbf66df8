"""`netconformance trace` on kube-proxy-style rulesets written from kube-proxy's layout."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from backends.sim.iptables import RulesetError
from conformance.cli import main
from conformance.tracing import Query, TraceError, trace

RULES = Path(__file__).parent / "rulesets" / "kube-proxy-node.txt"
NODE_IP = IPv4Address("172.18.0.2")
POD_CIDR = IPv4Network("10.244.1.0/24")


def query(origin: str, src: str, dst: str, dport: int, *, rules: str | None = None, proto: str = "tcp") -> Query:
    return Query(
        rules=rules if rules is not None else RULES.read_text(),
        rules_name="kube-proxy-node.txt",
        local_ips=(NODE_IP,),
        pod_cidr=POD_CIDR,
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
