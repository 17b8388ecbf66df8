"""The kind backend: everything that can be checked without a cluster, checked for real.

- manifests: scenarios (fixed, loaded and generated) become objects that the
  official client's API models accept exactly (unknown or mistyped fields
  fail), with valid names and labels;
- the probe agent (server and client) runs on this machine in a private
  network namespace, and its output is parsed; the parser is also fed
  garbage, duplicates and truncated output;
- the backend's orchestration runs against a fake API server, and the specs
  judge what it observes (address mapping included);
- the snapshot reader reads a node built from namespaces (and a docker
  container standing for a kind node, when one can run) and the simulator
  predicts from what it read;
- the live test runs the five specs on a kind cluster when there is one
  (skipped with the preflight's reason here; failed when
  NETCONFORMANCE_REQUIRE_BACKENDS names "kind").
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from backends import BackendUnavailable, get_backend
from backends.kind import KindBackend, agent, cluster_facts, delete_run
from backends.kind import manifests as m
from backends.kind.addresses import UNKNOWN, AddressMap, UnmappedProbe
from backends.kind.cluster import ExecResult, KubeClient, Settings, check_tools, profile_path
from backends.kind.probe_output import ProbeOutputError, parse_probe_output, probe_command
from backends.kind.snapshot import (
    PodInfo,
    assemble,
    docker_exec,
    netns_exec,
    parse_routes,
    parse_sysctls,
    read_node,
)
from backends.sim import SimBackend
from conformance import strategies
from conformance.cases import Case
from conformance.dataplane import Dataplane, Listener
from conformance.loader import load_scenario
from conformance.model import IPBlock, LabelSelector, NetworkPolicy, PolicyPeer, PolicyRule, Scenario
from conformance.probes import Observation, Outcome, Probe
from conformance.specs import Spec, all_specs
from conformance.specs.accept_local import SPEC as ACCEPT_LOCAL
from conformance.specs.hairpin import SPEC as HAIRPIN
from conformance.strategies import classic_scenario

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((REPO / "tests" / "scenarios").glob("*.yaml"))
FIXTURES = REPO / "tests" / "kind"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

FACTS = m.ClusterFacts(
    nodes=(
        m.RealNode("nc-control-plane", IPv4Address("172.19.0.4"), IPv4Network("10.244.0.0/24"), control_plane=True),
        m.RealNode("nc-worker", IPv4Address("172.19.0.2"), IPv4Network("10.244.2.0/24")),
        m.RealNode("nc-worker2", IPv4Address("172.19.0.3"), IPv4Network("10.244.1.0/24")),
    ),
    node_cidr=IPv4Network("172.19.0.0/16"),
)
TARGET = m.Target("0a1b2c3d", 1)


# -- manifests against the API schema ----------------------------------------------


def _model(kind: str) -> Any:
    from kubernetes import client

    return {
        "Namespace": client.V1Namespace,
        "Pod": client.V1Pod,
        "Service": client.V1Service,
        "NetworkPolicy": client.V1NetworkPolicy,
    }[kind]


def validate(manifest: Mapping[str, Any]) -> None:
    """The client's generated model takes it, and gives back exactly it (nothing dropped or coerced)."""
    model = _model(manifest["kind"]).model_validate(manifest)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == manifest
    meta = manifest["metadata"]
    assert DNS_LABEL.match(meta.get("namespace", "default")), meta
    name_re = DNS_LABEL if manifest["kind"] in ("Namespace", "Service") else DNS_SUBDOMAIN
    assert name_re.match(meta["name"]), meta["name"]
    for k, v in (meta.get("labels") or {}).items():
        assert LABEL_KEY.match(k) and LABEL_VALUE.match(v), (k, v)


def all_manifests(s: Scenario, facts: m.ClusterFacts = FACTS) -> list[dict[str, Any]]:
    plan = m.plan(s, TARGET, facts)
    cluster_ips = {v.cluster_ip: IPv4Address("10.96.200.1") + i for i, v in enumerate(s.services)}
    policies = [m.policy_manifest(p, s, TARGET, facts, cluster_ips) for p in s.policies]
    return [*plan.namespaces, *plan.services, *policies, *plan.pods]


def realisable(s: Scenario) -> Scenario:
    """The scenario with the fixed knobs at the cluster's values."""
    nodes = tuple(replace(n, hairpin_mode=True, bridge_nf_call_iptables=True) for n in s.nodes)
    pods = tuple(replace(p, accept_local=False) for p in s.pods)
    return replace(s, nodes=nodes, pods=pods, masquerade_hairpin=True)


def test_the_schema_check_catches_mistakes() -> None:
    good = m.pod_manifest(classic_scenario().pods[0], TARGET, FACTS.nodes[1])
    validate(good)
    typo = json.loads(json.dumps(good))
    typo["spec"]["nodename"] = "x"
    with pytest.raises(ValueError, match="nodename"):
        validate(typo)
    wrong_type = json.loads(json.dumps(good))
    wrong_type["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(ValueError, match="containerPort"):
        validate(wrong_type)


def test_classic_scenario_objects() -> None:
    s = classic_scenario()
    objs = all_manifests(s)
    for obj in objs:
        validate(obj)
    ns, svc, pod_a, pod_b = objs
    assert ns["metadata"]["name"] == "nc-0a1b2c3d-1-default"
    assert ns["metadata"]["labels"][m.RUN_LABEL] == "0a1b2c3d"
    assert m.NAME_LABEL not in ns["metadata"]["labels"]  # the API server owns it
    # Scenario nodes map onto workers first.
    assert pod_a["spec"]["nodeName"] == pod_b["spec"]["nodeName"] == "nc-worker"
    assert pod_b["metadata"]["labels"] == {"app": "b"}
    container = pod_b["spec"]["containers"][0]
    assert container["args"] == ["serve", "default/pod-b", "8080/TCP", "8080/UDP"]
    assert container["command"][:2] == ["python3", "-c"] and "def serve(" in container["command"][2]
    assert {(p["containerPort"], p["protocol"]) for p in container["ports"]} == {(8080, "TCP"), (8080, "UDP")}
    # The cluster picks ClusterIP and NodePorts: nothing requested.
    assert "clusterIP" not in svc["spec"] and all("nodePort" not in p for p in svc["spec"]["ports"])
    assert svc["spec"]["selector"] == {"app": "b"}


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_files_objects(path: Path) -> None:
    s = load_scenario(path)
    reason = m.unrealisable(s, FACTS)
    if reason is not None:
        assert "fixed by the cluster" in reason
        s = realisable(s)
    if m.unrealisable(s, FACTS) is not None:
        pytest.skip(str(m.unrealisable(s, FACTS)))
    for obj in all_manifests(s):
        validate(obj)


def test_policies_file_translates_selectors_and_blocks() -> None:
    s = realisable(load_scenario(REPO / "tests" / "scenarios" / "policies.yaml"))
    assert m.unrealisable(s, FACTS) is None
    policies = {o["metadata"]["name"]: o for o in all_manifests(s) if o["kind"] == "NetworkPolicy"}
    web = next(p for p in policies.values() if p["spec"]["podSelector"] == {"matchLabels": {"app": "web"}})
    assert web["metadata"]["namespace"] == "nc-0a1b2c3d-1-default"
    peers = web["spec"]["ingress"][0]["from"]
    # node-2's pod CIDR (10.244.2.0/24) is the podCIDR of the node it maps to, nc-worker2.
    assert peers[0] == {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.1.0/24"]}}
    assert peers[1]["namespaceSelector"] == {"matchLabels": {"team": "blue"}}
    assert web["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000, "endPort": 8999}]
    other = next(o for o in all_manifests(s) if o["kind"] == "Namespace" and "other" in o["metadata"]["name"])
    assert other["metadata"]["labels"]["team"] == "blue"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(strategies.scenarios(knobs=False))
def test_generated_scenarios_objects(s: Scenario) -> None:
    reason = m.unrealisable(s, FACTS)
    if reason is not None:
        assert "pod IP" in reason  # the only thing a knob-free scenario can ask that a cluster cannot
        return
    objs = all_manifests(s)
    for obj in objs:
        validate(obj)
    for obj in objs:
        if obj["kind"] == "NetworkPolicy":
            for rule in obj["spec"].get("ingress", []) + obj["spec"].get("egress", []):
                for peer in rule.get("from", []) + rule.get("to", []):
                    sel = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                    if m.NAME_LABEL in sel:  # only ever the run's own namespaces
                        assert sel[m.NAME_LABEL].startswith("nc-0a1b2c3d-1-")


def test_namespace_names_in_selectors_are_always_the_runs() -> None:
    s = classic_scenario()
    absent = PolicyPeer(namespace_selector=LabelSelector(((m.NAME_LABEL, "kube-system"),)))
    pol = NetworkPolicy("default", "p", ingress=(PolicyRule((absent,)),))
    made = m.policy_manifest(pol, replace(s, policies=(pol,)), TARGET, FACTS, {})
    peer = made["spec"]["ingress"][0]["from"][0]
    # A real kube-system exists; the scenario's "kube-system" has no pods, so neither may the selected one.
    assert peer == {"namespaceSelector": {"matchLabels": {m.NAME_LABEL: "nc-0a1b2c3d-1-kube-system"}}}


def test_ip_blocks_map_to_the_clusters_networks() -> None:
    s = classic_scenario()
    nodes = m.node_mapping(s, FACTS)
    ips = {s.services[0].cluster_ip: IPv4Address("10.96.7.7")}

    def tr(cidr: str, *excepts: str) -> dict[str, Any]:
        block = IPBlock(IPv4Network(cidr), tuple(IPv4Network(e) for e in excepts))
        return m.translate_block(block, s, FACTS, nodes, ips)

    assert tr("10.244.1.0/24") == {"cidr": "10.244.2.0/24"}  # node-1 is nc-worker, whose podCIDR this is
    assert tr("10.244.0.0/16", "10.244.1.0/24") == {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}
    assert tr("172.18.0.2/32") == {"cidr": "172.19.0.2/32"}
    assert tr("172.18.0.0/24") == {"cidr": "172.19.0.0/16"}
    assert tr("10.96.0.100/32") == {"cidr": "10.96.7.7/32"}
    assert tr("0.0.0.0/0", "10.244.0.0/16") == {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}
    with pytest.raises(m.Unrealisable, match="pod IP"):
        tr("10.244.1.10/32")
    with pytest.raises(m.Unrealisable, match="no counterpart"):
        tr("192.0.2.0/24")
    unknown_underlay = replace(FACTS, node_cidr=None)
    with pytest.raises(m.Unrealisable, match="node network is not known"):
        m.translate_block(IPBlock(IPv4Network("172.18.0.0/24")), s, unknown_underlay, nodes, ips)


def test_fixed_knobs_are_reported_not_ignored() -> None:
    s = classic_scenario()
    assert m.unrealisable(s, FACTS) is None
    for case in ACCEPT_LOCAL.examples:
        reason = m.unrealisable(case.scenario, FACTS)
        want_ok = case.scenario.masquerade_hairpin and not any(p.accept_local for p in case.scenario.pods)
        assert (reason is None) == want_ok, reason
    r = m.unrealisable(replace(s, masquerade_hairpin=False), FACTS)
    assert r is not None and "masquerade_hairpin=False" in r
    node = replace(s.nodes[0], hairpin_mode=False)
    r = m.unrealisable(replace(s, nodes=(node,)), FACTS)
    assert r is not None and "hairpin_mode=False" in r
    one_node = replace(FACTS, nodes=FACTS.nodes[:1])
    two = load_scenario(REPO / "tests" / "scenarios" / "policies.yaml")
    r = m.unrealisable(two, one_node)
    assert r is not None and "2 nodes, the cluster 1" in r
    with pytest.raises(m.Unrealisable):
        m.plan(replace(s, masquerade_hairpin=False), TARGET, FACTS)
    assert set(m.FIXED_KNOBS) == {"hairpin_mode", "bridge_nf_call_iptables", "accept_local", "masquerade_hairpin"}
    backend = KindBackend(Settings(kubeconfig="/dev/null"), kube=FakeCluster())
    assert backend.fixed_knob_reason([]) is None
    reason = backend.fixed_knob_reason(["masquerade_hairpin", "accept_local", "not-a-knob"])
    assert reason == (
        "kind backend: a real cluster fixes accept_local=False, masquerade_hairpin=True; a spec varying them cannot run here"
    )


def test_long_names_stay_dns_labels() -> None:
    name = m.namespace_name(m.Target("0a1b2c3d", 12345), "a-very-long-namespace-name-" * 3)
    assert DNS_LABEL.match(name) and len(name) <= 63


def test_profiles_are_kind_cluster_configs() -> None:
    for name in ("iptables", "nftables", "byo-cni"):
        cfg = yaml.safe_load(profile_path(name).read_text())
        assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
        net = cfg["networking"]
        assert net["podSubnet"] == str(Scenario.cluster_cidr) and net["serviceSubnet"] == str(Scenario.service_cidr)
        assert 2 <= len(cfg["nodes"]) <= 3 and cfg["nodes"][0]["role"] == "control-plane"
        assert set(cfg) <= {"kind", "apiVersion", "networking", "nodes", "featureGates", "kubeadmConfigPatches"}
    assert yaml.safe_load(profile_path("nftables").read_text())["networking"]["kubeProxyMode"] == "nftables"
    assert yaml.safe_load(profile_path("iptables").read_text())["networking"]["kubeProxyMode"] == "iptables"
    assert yaml.safe_load(profile_path("byo-cni").read_text())["networking"]["disableDefaultCNI"] is True
    with pytest.raises(BackendUnavailable, match="neither a profile"):
        profile_path("no-such-profile")


# -- the probe agent, for real, in a private network namespace ---------------------------

AGENT_SCRIPT = textwrap.dedent(
    """
    set -e
    ip link set lo up
    ip addr add 10.0.0.2/32 dev lo
    iptables -A INPUT -p tcp --dport 18090 -j DROP
    iptables -A OUTPUT -p udp --dport 18091 -j DROP
    NC_READY_FILE="$READY" "$PY" -c "$SRC" serve default/pod-b 18080/TCP 18080/UDP 18092/UDP > /dev/null &
    SERVER=$!
    for i in $(seq 100); do [ -e "$READY" ] && break; sleep 0.05; done
    "$PY" -c "$SRC" probe 0.5 127.0.0.1:18080/TCP 10.0.0.2:18080/UDP 127.0.0.1:18081/TCP \
        127.0.0.1:18081/UDP 127.0.0.1:18090/TCP 127.0.0.1:18091/UDP 10.9.9.9:80/TCP
    kill $SERVER
    """
)


def _can_unshare() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private network namespace via unshare)"
    for tool in ("unshare", "ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    return None


def test_agent_server_and_client_for_real(tmp_path: Path) -> None:
    why = _can_unshare()
    if why is not None:
        pytest.skip(why)
    env = dict(os.environ, PY=sys.executable, SRC=m.AGENT_SOURCE, READY=str(tmp_path / "ready"))
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", AGENT_SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = parse_probe_output(done.stdout, 7)
    lo, other = IPv4Address("127.0.0.1"), IPv4Address("10.0.0.2")
    assert out[0] == Outcome("delivered", "default/pod-b", 18080, lo, lo)
    assert out[1] == Outcome("delivered", "default/pod-b", 18080, other, other)
    assert out[2].verdict == "refused" and "ECONNREFUSED" in out[2].reason  # RST
    assert out[3].verdict == "refused" and "ECONNREFUSED" in out[3].reason  # ICMP port unreachable
    assert out[4].verdict == "dropped" and "no answer within 0.5 s" in out[4].reason  # SYN dropped
    assert out[5].verdict == "refused" and "EPERM" in out[5].reason  # local netfilter drop on sendto
    assert out[6].verdict == "refused" and "ENETUNREACH" in out[6].reason  # no route at all


def test_probe_command_is_the_agent() -> None:
    cmd = probe_command(1.5, [(IPv4Address("10.96.0.10"), 80, "TCP"), (IPv4Address("10.244.1.5"), 53, "UDP")])
    assert cmd[:3] == ["python3", "-c", m.AGENT_SOURCE]
    assert cmd[3:] == ["probe", "1.5", "10.96.0.10:80/TCP", "10.244.1.5:53/UDP"]


def test_agent_probe_reports_unanswered_in_order() -> None:
    # Nothing answers on a port nobody listens on and nothing leaves: a closed
    # UDP port on loopback in this namespace would be refused, so use an
    # unroutable TEST-NET address only to check ordering and the output format.
    buf = io.StringIO()
    results = agent.probe(0.05, [], out=buf)
    assert results == [] and buf.getvalue() == ""


# -- the probe output parser ------------------------------------------------------------


def _line(**kw: Any) -> str:
    return "NCPROBE " + json.dumps(kw)


def test_parser_reads_realistic_output() -> None:
    text = "\n".join(
        [
            'Defaulted container "probe" out of: probe',  # kubectl-style noise
            _line(i=1, verdict="refused", errno="ECONNREFUSED", answer=None, reply_from=None, reason="ECONNREFUSED"),
            _line(
                i=0,
                verdict="delivered",
                errno=None,
                answer="default/pod-b 8080 10.244.1.1",
                reply_from="10.96.0.100",
                reason="",
            ),
            _line(i=2, verdict="dropped", errno=None, answer=None, reply_from=None, reason="no answer within 1 s"),
            _line(i=3, verdict="delivered", errno=None, answer="HTTP/1.1 400", reply_from="10.96.0.7", reason=""),
            "",
        ]
    )
    out = parse_probe_output(text, 4)
    assert out[0] == Outcome("delivered", "default/pod-b", 8080, IPv4Address("10.244.1.1"), IPv4Address("10.96.0.100"))
    assert out[1].verdict == "refused" and out[1].reason == "ECONNREFUSED"
    assert out[2].verdict == "dropped" and "1 s" in out[2].reason
    assert out[3].verdict == "dropped" and "no answer line" in out[3].reason  # not a probe server's answer


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"no result for probes \[0, 1\]"),
        ("error: unable to upgrade connection: container not found", "no result for probes"),
        (_line(i=0, verdict="dropped", reason="") + "\nNCPROBE {truncated", "not JSON"),
        (_line(i=0, verdict="lost", reason=""), "verdict 'lost'"),
        (_line(i=5, verdict="dropped", reason=""), r"probe index 5 is not one of 0..1"),
        (_line(i=True, verdict="dropped", reason=""), "probe index True"),
        (_line(i=0, verdict="dropped") + "\n" + _line(i=0, verdict="refused"), "a second result for probe 0"),
        ("NCPROBE [1, 2]", "expected an object"),
        (_line(i=0, verdict="delivered", answer="a/b 80 10.0.0.1", reply_from="nowhere"), "reply_from 'nowhere'"),
        (_line(i=0, verdict="refused", errno=111), "errno 111"),
    ],
)
def test_parser_rejects_what_is_not_one_result_per_probe(text: str, match: str) -> None:
    with pytest.raises(ProbeOutputError, match=match):
        parse_probe_output(text, 2)


def test_parser_on_captured_output() -> None:
    """Output captured from the agent on this machine (tests/kind/probe-output.txt)."""
    text = (FIXTURES / "probe-output.txt").read_text()
    out = parse_probe_output(text, 4)
    assert [o.verdict for o in out] == ["delivered", "refused", "dropped", "delivered"]


# -- addresses ---------------------------------------------------------------------------


def test_address_map_round_trip_and_collisions() -> None:
    s = classic_scenario()
    amap = AddressMap(s)
    amap.add(IPv4Address("10.244.1.10"), IPv4Address("10.244.2.7"))  # pod-a
    amap.add(IPv4Address("10.244.1.11"), IPv4Address("10.244.1.10"))  # pod-b got pod-a's scenario IP!
    amap.add(IPv4Address("10.96.0.100"), IPv4Address("10.96.44.1"))
    amap.add(IPv4Address("172.18.0.2"), IPv4Address("172.19.0.2"))
    svc = s.services[0]
    assert amap.real_target(Probe("pod:default/pod-a", svc.cluster_ip, 80, "UDP")) == (
        IPv4Address("10.96.44.1"),
        80,
        "UDP",
    )
    seen = Outcome(
        "delivered", "default/pod-b", 8080, server_saw=IPv4Address("10.244.1.10"), client_saw=IPv4Address("10.96.44.1")
    )
    mapped = amap.to_scenario_outcome(seen)
    assert mapped.server_saw == IPv4Address("10.244.1.11")  # pod-b's real IP is pod-b in the scenario
    assert mapped.client_saw == svc.cluster_ip
    # A cluster address that equals a scenario address of something else is never taken for it.
    odd = amap.to_scenario_outcome(replace(seen, server_saw=IPv4Address("10.96.0.100")))
    assert odd.server_saw == UNKNOWN and "10.96.0.100" in odd.reason
    # Unknown and harmless: passes through.
    gw = amap.to_scenario_outcome(replace(seen, server_saw=IPv4Address("10.244.2.1")))
    assert gw.server_saw == IPv4Address("10.244.2.1")
    with pytest.raises(UnmappedProbe):
        amap.real_target(Probe("pod:default/pod-a", IPv4Address("192.0.2.1"), 80))
    with pytest.raises(UnmappedProbe, match="not a NodePort"):
        amap.real_target(Probe("pod:default/pod-a", IPv4Address("172.18.0.2"), 30080))
    amap.node_ports[(30080, "TCP")] = 31234
    assert amap.real_target(Probe("external", IPv4Address("172.18.0.2"), 30080)) == (
        IPv4Address("172.19.0.2"),
        31234,
        "TCP",
    )
    with pytest.raises(ValueError, match="already maps"):
        amap.add(IPv4Address("10.244.1.10"), IPv4Address("10.244.9.9"))


# -- the backend against a fake API server ---------------------------------------------


Objects = list[dict[str, Any]]  # FakeCluster.list shadows the builtin in its class body


class FakeCluster:
    """Just enough of an API server and a dataplane: pods get IPs, Services ClusterIPs and
    EndpointSlices, and exec'd probe clients get answers computed from the objects.

    `masquerade` is what the cluster's proxy does for hairpin traffic."""

    def __init__(self, *, masquerade: bool = True, pull_error: bool = False) -> None:
        self.masquerade = masquerade
        self.pull_error = pull_error
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str, str]] = []
        self.execs: list[tuple[str, str, list[str]]] = []
        self.next_ip = {n.name: 5 for n in FACTS.nodes}
        self.next_svc = 1
        self.create({"kind": "Namespace", "metadata": {"name": "someone-elses", "labels": {m.RUN_LABEL: "other"}}})
        for n in FACTS.nodes:
            labels = {"node-role.kubernetes.io/control-plane": ""} if n.control_plane else {}
            self.objects[("Node", "", n.name)] = {
                "kind": "Node",
                "metadata": {"name": n.name, "labels": labels},
                "spec": {"podCIDR": str(n.pod_cidr)},
                "status": {"addresses": [{"type": "InternalIP", "address": str(n.ip)}]},
            }

    def version(self) -> str:
        return "v1.33.1"

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(json.dumps(manifest))
        if obj["kind"] != "Namespace" or obj["metadata"]["name"] != "someone-elses":
            validate(manifest)
        kind, meta = obj["kind"], obj["metadata"]
        ns = meta.get("namespace", "")
        key = (kind, ns, meta["name"])
        assert key not in self.objects, f"{key} exists"
        if kind == "Pod":
            node = next(n for n in FACTS.nodes if n.name == obj["spec"]["nodeName"])
            if obj["spec"].get("hostNetwork"):
                ip = node.ip
            else:
                assert node.pod_cidr is not None
                ip = node.pod_cidr.network_address + self.next_ip[node.name]
                self.next_ip[node.name] += 1
            waiting = {"waiting": {"reason": "ErrImagePull", "message": "not found"}} if self.pull_error else {}
            obj["status"] = {
                "phase": "Pending" if self.pull_error else "Running",
                "podIP": None if self.pull_error else str(ip),
                "conditions": [{"type": "Ready", "status": "False" if self.pull_error else "True"}],
                "containerStatuses": [{"state": waiting}],
            }
        if kind == "Service":
            obj["spec"]["clusterIP"] = str(IPv4Address("10.96.50.0") + self.next_svc)
            self.next_svc += 1
            for i, p in enumerate(obj["spec"]["ports"]):
                if obj["spec"].get("type") == "NodePort":
                    p["nodePort"] = 32000 + self.next_svc * 10 + i
        self.objects[key] = obj
        return obj

    def list(self, kind: str, namespace: str | None = None, label_selector: str = "") -> Objects:
        if kind == "EndpointSlice":
            return self._slices(namespace or "", label_selector)
        out = []
        for (k, ns, _), obj in self.objects.items():
            if k != kind or (namespace is not None and ns != namespace):
                continue
            if label_selector and not _selects(label_selector, obj["metadata"].get("labels") or {}):
                continue
            out.append(obj)
        return out

    def _slices(self, namespace: str, selector: str) -> Objects:
        name = selector.split("=", 1)[1]
        svc = self.objects.get(("Service", namespace, name))
        if svc is None or "selector" not in svc["spec"]:
            return []
        eps = [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True}} for p in self._endpoints(svc)]
        return [{"metadata": {"name": f"{name}-x"}, "endpoints": eps}]

    def _endpoints(self, svc: dict[str, Any]) -> Objects:
        ns, sel = svc["metadata"]["namespace"], svc["spec"].get("selector")
        if not sel:
            return []
        return [
            o
            for (k, n, _), o in sorted(self.objects.items())
            if k == "Pod" and n == ns and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in sel.items())
        ]

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        key = (kind, namespace or "", name)
        self.deleted.append(key)
        self.objects.pop(key, None)
        if kind == "Namespace":
            for k in [k for k in self.objects if k[1] == name]:
                del self.objects[k]

    def exec(self, namespace: str, pod: str, command: Sequence[str], timeout: float) -> ExecResult:
        self.execs.append((namespace, pod, list(command)))
        assert list(command[:3]) == ["python3", "-c", m.AGENT_SOURCE] and command[3] == "probe"
        me = self.objects[("Pod", namespace, pod)]
        lines = []
        for i, spec in enumerate(command[5:]):
            target, _, proto = spec.rpartition("/")
            host, _, port = target.rpartition(":")
            lines.append("NCPROBE " + json.dumps(self._answer(i, me, IPv4Address(host), int(port), proto)))
        return ExecResult(0, "\n".join(lines) + "\n", "")

    def _answer(self, i: int, me: dict[str, Any], dst: IPv4Address, port: int, proto: str) -> dict[str, Any]:
        src = IPv4Address(me["status"]["podIP"])
        for svc in [o for (k, _, _), o in self.objects.items() if k == "Service"]:
            if IPv4Address(svc["spec"]["clusterIP"]) != dst:
                continue
            sp = next((p for p in svc["spec"]["ports"] if p["port"] == port and p["protocol"] == proto), None)
            eps = self._endpoints(svc)
            if sp is None or not eps:
                return {"i": i, "verdict": "refused", "errno": "ECONNREFUSED", "reason": "ECONNREFUSED"}
            ep = eps[0]
            ep_ip = IPv4Address(ep["status"]["podIP"])
            seen = src
            if ep is me and self.masquerade:
                seen = ep_ip - (int(ep_ip) & 0xFF) + 1  # the node's gateway on the pod network
            ident = ep["metadata"]["annotations"][m.IDENTITY_ANNOTATION] if "annotations" in ep["metadata"] else "?"
            if ep is me and not self.masquerade:
                return {"i": i, "verdict": "dropped", "reason": "no answer within 1 s"}
            answer = f"{ident} {sp['targetPort']} {seen}"
            return {"i": i, "verdict": "delivered", "answer": answer, "reply_from": str(dst), "reason": ""}
        for pod in [o for (k, _, _), o in self.objects.items() if k == "Pod"]:
            if pod["status"]["podIP"] == str(dst) and not pod["spec"].get("hostNetwork"):
                listens = any(
                    p["containerPort"] == port and p["protocol"] == proto
                    for p in pod["spec"]["containers"][0].get("ports", [])
                )
                if not listens:
                    return {"i": i, "verdict": "refused", "errno": "ECONNREFUSED", "reason": "ECONNREFUSED"}
                ident = pod["metadata"].get("annotations", {}).get(m.IDENTITY_ANNOTATION, "fence")
                answer = f"{ident} {port} {src}"
                return {"i": i, "verdict": "delivered", "answer": answer, "reply_from": str(dst), "reason": ""}
        return {"i": i, "verdict": "dropped", "reason": "no answer within 1 s"}


def _selects(selector: str, labels: Mapping[str, str]) -> bool:
    for term in selector.split(","):
        key, eq, value = term.partition("=")
        if (eq and labels.get(key) != value) or (not eq and key not in labels):
            return False
    return True


def _kind_backend(fake: FakeCluster) -> KindBackend:
    s = Settings(kubeconfig="/dev/null", ready_timeout=5.0, node_cidr=FACTS.node_cidr)
    return KindBackend(s, kube=fake, run_id="feedbeef")


def test_backend_deploys_observes_and_cleans_up() -> None:
    fake = FakeCluster()
    b = _kind_backend(fake)
    case = HAIRPIN.examples[0]
    assert b.supports(case.scenario) is None
    with pytest.raises(TypeError, match="deploy_scenario"):
        b.deploy(Dataplane(()))
    b.deploy_scenario(case.scenario)
    created = [k for k in fake.objects if k[0] in ("Namespace", "Pod", "Service")]
    assert ("Namespace", "", "nc-feedbeef-1-default") in created
    assert ("Namespace", "", "nc-feedbeef-agents") in created
    assert ("Pod", "nc-feedbeef-1-default", "pod-b") in created
    # The fence: one probe per node from its host-network agent, then the fence Service is gone.
    fence_execs = [e for e in fake.execs if e[0] == "nc-feedbeef-agents"]
    assert len(fence_execs) == len(FACTS.nodes)
    assert not [k for k in fake.objects if k[0] == "Service" and k[1] == "nc-feedbeef-agents"]
    observations = b.observe(case.probes)
    assert HAIRPIN.check(case, observations, False) == []
    tcp = observations[0].outcomes[0][0]
    assert tcp.served_by == "default/pod-b" and tcp.client_saw == case.scenario.services[0].cluster_ip
    # Same scenario: nothing new is created.
    before = len(fake.objects)
    b.deploy_scenario(case.scenario)
    assert len(fake.objects) == before
    # A new scenario is a new generation; the old one is deleted.
    b.deploy_scenario(replace(case.scenario, services=()))
    assert ("Namespace", "", "nc-feedbeef-2-default") in fake.objects
    assert ("Namespace", "", "nc-feedbeef-1-default") in fake.deleted
    b.teardown()
    assert list(fake.objects) == [("Namespace", "", "someone-elses")] + [k for k in fake.objects if k[0] == "Node"]
    b.teardown()  # twice is fine


def test_backend_results_feed_the_specs_and_catch_a_broken_cluster() -> None:
    b = _kind_backend(FakeCluster(masquerade=False))
    case = HAIRPIN.examples[0]
    b.deploy_scenario(case.scenario)
    violations = HAIRPIN.check(case, b.observe(case.probes), False)
    assert violations and "expected served by one of ['default/pod-b']" in violations[0]
    b.teardown()


def test_backend_names_unrealisable_scenarios_and_unpullable_images() -> None:
    b = _kind_backend(FakeCluster())
    broken = ACCEPT_LOCAL.examples[0].scenario  # masquerade off, accept_local 0
    reason = b.supports(broken)
    assert reason is not None and "masquerade_hairpin=False" in reason
    with pytest.raises(m.Unrealisable, match="masquerade_hairpin"):
        b.deploy_scenario(broken)
    b.teardown()
    b = _kind_backend(FakeCluster(pull_error=True))
    with pytest.raises(RuntimeError, match=r"ErrImagePull.*kind load docker-image"):
        b.deploy_scenario(classic_scenario())
    b.teardown()


def test_cluster_facts_and_cleanup_by_label() -> None:
    fake = FakeCluster()
    facts = cluster_facts(fake, Settings(kubeconfig="/dev/null", node_cidr=IPv4Network("172.19.0.0/16")))
    assert {n.name for n in facts.nodes} == {n.name for n in FACTS.nodes}
    assert next(n for n in facts.nodes if n.name == "nc-control-plane").control_plane
    assert facts.node_cidr == IPv4Network("172.19.0.0/16")
    fake.create({"kind": "Namespace", "metadata": {"name": "nc-abc-1-x", "labels": {m.RUN_LABEL: "abc"}}})
    assert delete_run(fake, "abc", deadline=0.0) == ["nc-abc-1-x"]
    assert ("Namespace", "", "someone-elses") in fake.objects


def test_preflight_says_exactly_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match=r"kind binary is not on PATH.*NETCONFORMANCE_KUBECONFIG"):
        check_tools(Settings())
    with pytest.raises(BackendUnavailable, match="is not a file"):
        check_tools(Settings(kubeconfig=str(tmp_path / "nope")))
    fake_kind = tmp_path / "kind"
    fake_kind.write_text("#!/bin/sh\nexit 0\n")
    fake_kind.chmod(0o755)
    with pytest.raises(BackendUnavailable, match="docker CLI is not on PATH"):
        check_tools(Settings())
    assert Settings.from_env({"NETCONFORMANCE_KIND_CONFIG": "nftables"}).config == "nftables"
    assert Settings.from_env({"NETCONFORMANCE_KUBECONFIG": "/k"}).uses_kind is False


class _ApiHandler(BaseHTTPRequestHandler):
    """A tiny API server: records requests, echoes created objects, lists what it holds."""

    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def _reply(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, None))
        if self.path.startswith("/version"):
            info = {
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.1",
                "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
            }
            info |= {"gitTreeState": "clean", "buildDate": "2025-05-21T08:00:00Z", "goVersion": "go1.24.2"}
            self._reply(info | {"compiler": "gc", "platform": "linux/amd64"})
        elif self.path.startswith("/apis/discovery.k8s.io/v1/namespaces/ns1/endpointslices"):
            ep = {"addresses": ["10.244.1.5"], "conditions": {"ready": True}}
            item = {"addressType": "IPv4", "metadata": {"name": "s-1"}, "endpoints": [ep]}
            self._reply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "items": [item]})
        else:
            self._reply({"kind": "Status", "status": "Failure", "code": 404}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, json.loads(json.dumps(body))))
        if body["kind"] == "Service":
            body["spec"]["clusterIP"] = "10.96.33.1"
        self._reply(body, 201)

    def do_DELETE(self) -> None:
        self.seen.append(("DELETE", self.path, None))
        self._reply({"kind": "Status", "status": "Failure", "code": 404}, 404)  # already gone

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_kube_client_speaks_the_api(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        kube = KubeClient(config, context="x")
        assert kube.version() == "v1.33.1"
        svc = m.service_manifest(classic_scenario().services[0], TARGET)
        made = kube.create(svc)
        assert made["spec"]["clusterIP"] == "10.96.33.1" and made["spec"]["selector"] == {"app": "b"}
        method, path, body = _ApiHandler.seen[-1]
        assert method == "POST" and path.startswith("/api/v1/namespaces/nc-0a1b2c3d-1-default/services")
        assert "fieldValidation=Strict" in path and body == svc
        slices = kube.list("EndpointSlice", "ns1", "kubernetes.io/service-name=svc-b")
        assert slices[0]["endpoints"][0]["addresses"] == ["10.244.1.5"]
        assert "labelSelector=kubernetes.io/service-name%3Dsvc-b" in _ApiHandler.seen[-1][1]
        kube.delete("Namespace", "nc-gone")  # a 404 is what deleting wanted
        assert _ApiHandler.seen[-1][:2] == ("DELETE", "/api/v1/namespaces/nc-gone")
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_api_is_a_precise_preflight_failure(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    server = "https://127.0.0.1:1"  # nothing listens on port 1
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    backend = KindBackend(Settings(kubeconfig=str(kubeconfig)))
    with pytest.raises(BackendUnavailable, match=rf"API server of kubeconfig {kubeconfig} does not answer"):
        backend.preflight()


# -- node snapshots --------------------------------------------------------------------

NODE_SETUP = textwrap.dedent(
    """
    set -e
    {run} ip link add cni0 type bridge
    {run} ip addr add 10.244.1.1/24 dev cni0
    {run} ip link set cni0 up
    for p in a b; do
      {netns_add} {pre}pod-$p
      {run} ip link add veth-$p type veth peer name eth0 netns {pre}pod-$p
      {run} ip link set veth-$p master cni0 up
      {run} ip link set veth-$p type bridge_slave hairpin on
      {inpod} ip link set lo up
      {inpod} ip link set eth0 up
    done
    {run} ip netns exec {pre}pod-a ip addr add 10.244.1.10/24 dev eth0
    {run} ip netns exec {pre}pod-b ip addr add 10.244.1.11/24 dev eth0
    {run} ip netns exec {pre}pod-a ip route add default via 10.244.1.1
    {run} ip netns exec {pre}pod-b ip route add default via 10.244.1.1
    {run} sysctl -qw net.ipv4.ip_forward=1
    {run} iptables-restore < {rules}
    """
)


def _node_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.write_text((FIXTURES / "node-rules.txt").read_text())
    return rules


def _check_snapshot_predicts(snap_nodes: list[Any], pre: str) -> None:
    s = classic_scenario()
    pods = {
        IPv4Address("10.244.1.10"): PodInfo("pod-default-pod-a", (), "pod:default/pod-a"),
        IPv4Address("10.244.1.11"): PodInfo(
            "pod-default-pod-b",
            tuple(Listener(c.protocol, c.port, "default/pod-b") for c in s.pods[1].ports),
            "pod:default/pod-b",
        ),
    }
    dp = assemble(snap_nodes, pods, {"node:node-1": snap_nodes[0].node})
    node = dp.netns(f"node-{snap_nodes[0].node}")
    assert {(link.name, link.kind, link.master, link.hairpin) for link in node.links} >= {
        ("cni0", "bridge", None, False),
        ("veth-a", "veth", "cni0", True),
        ("veth-b", "veth", "cni0", True),
    }
    assert node.sysctl("net.ipv4.ip_forward") == "1"
    assert "KUBE-SVC-TEST" in node.iptables and not node.iptables.startswith("#")
    assert dp.source_netns("pod:default/pod-a") == "pod-default-pod-a"
    pod_a = dp.netns("pod-default-pod-a")
    assert pod_a.routes and pod_a.routes[0].via == IPv4Address("10.244.1.1")
    sim = SimBackend()
    sim.deploy(dp)
    probes = [
        Probe("pod:default/pod-a", IPv4Address("10.96.0.100"), 80, "TCP"),
        Probe("pod:default/pod-b", IPv4Address("10.96.0.100"), 80, "TCP"),
        Probe("pod:default/pod-a", IPv4Address("10.244.1.11"), 9999, "TCP"),
    ]
    served, hairpin, closed = (o.outcomes for o in sim.observe(probes))
    assert served == (
        (Outcome("delivered", "default/pod-b", 8080, IPv4Address("10.244.1.10"), IPv4Address("10.96.0.100")), 1.0),
    )
    assert hairpin[0][0].verdict == "delivered" and hairpin[0][0].server_saw == IPv4Address("10.244.1.1")
    assert closed[0][0].verdict == "refused"


def test_snapshot_of_a_node_made_of_namespaces(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables-restore") is None:
        pytest.skip("needs root, ip and iptables-restore (network namespaces standing for a node)")
    pre = f"nckt{secrets.token_hex(3)}-"
    node = f"{pre}node"
    script = NODE_SETUP.format(
        run=f"ip netns exec {node}",
        netns_add="ip netns add",
        pre=pre,
        inpod=f"ip netns exec {pre}pod-$p",
        rules=_node_rules(tmp_path),
    )
    try:
        subprocess.run(["ip", "netns", "add", node], check=True)
        subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True)
        # The pods' namespaces are seen from the node by the ids it gave them.
        snap = read_node(netns_exec(node), "node-x")
        ours = [p for p in snap.pods if p.name.startswith(pre)]
        assert {p.name for p in ours} == {f"{pre}pod-a", f"{pre}pod-b"}
        snap = replace(snap, pods=tuple(ours))
        _check_snapshot_predicts([snap], pre)
    finally:
        for ns in (f"{pre}pod-a", f"{pre}pod-b", node):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _docker_image() -> str:
    image = os.environ.get("NETCONFORMANCE_TEST_NODE_IMAGE", "")
    if not image:
        pytest.skip(
            "set NETCONFORMANCE_TEST_NODE_IMAGE to a local image with iproute2 and iptables (see "
            "backends/kind/README.md) to read a docker container standing for a kind node"
        )
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not on PATH")
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"image {image} is not present (or no docker daemon answers)")
    return image


@pytest.fixture
def node_container(tmp_path: Path) -> Iterator[str]:
    image = _docker_image()
    name = f"nc-kind-test-{secrets.token_hex(3)}"
    # The privileges that work on the project machine (KERNEL-NOTES pitfall 12); no network of docker's.
    subprocess.run(
        [
            "docker", "run", "-d", "--name", name, "--network", "none", "--cap-add", "ALL", "--cap-drop",
            "SYS_RESOURCE", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined", "--security-opt",
            "systempaths=unconfined", image, "sleep", "600",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)


def test_snapshot_of_a_docker_node(node_container: str, tmp_path: Path) -> None:
    run = f"docker exec {node_container}"
    script = NODE_SETUP.format(
        run=run,
        netns_add=f"{run} ip netns add",
        pre="",
        inpod=f"{run} ip netns exec pod-$p",
        rules="/dev/stdin",
    )
    script = script.replace(
        f"{run} iptables-restore < /dev/stdin",
        f"docker exec -i {node_container} iptables-restore < {_node_rules(tmp_path)}",
    )
    # The node's uplink, as kind's: eth0 is a veth whose peer lives in a namespace the node cannot name.
    uplink = textwrap.dedent(
        f"""
        set -e
        {run} ip netns add uplink
        {run} ip link add eth0 type veth peer name up0 netns uplink
        {run} ip addr add 172.19.0.2/16 dev eth0
        {run} ip link set eth0 up
        {run} ip route add default via 172.19.0.1
        docker exec -d {node_container} ip netns exec uplink sleep 600
        sleep 0.2
        {run} ip netns del uplink
        """
    )
    subprocess.run(["sh", "-c", script + uplink], check=True, capture_output=True, text=True)
    snap = read_node(docker_exec(node_container), "kind-worker")
    assert {p.name for p in snap.pods} == {"pod-a", "pod-b"}
    dp_nodes = [snap]
    _check_snapshot_predicts(dp_nodes, "")
    dp = assemble(dp_nodes, {}, {})
    underlay = dp.netns("underlay")
    assert underlay.addresses == (("br0", IPv4Interface("172.19.0.1/16")),)
    assert [(link.peer_netns, link.peer_name) for link in underlay.links if link.kind == "veth"] == [
        ("node-kind-worker", "eth0")
    ]


def test_snapshot_parsers_on_captured_output() -> None:
    """`ip -j route` and `sysctl -a` as captured from a kindnet-like node container (tests/kind/)."""
    addrs = (("eth0", IPv4Interface("172.18.0.3/16")), ("veth1", IPv4Interface("10.244.1.1/32")))
    routes = parse_routes((FIXTURES / "kind-node-routes.json").read_text(), addrs)
    assert [str(r.dst) for r in routes] == ["0.0.0.0/0", "10.244.0.0/24", "10.244.1.2/32", "10.244.2.0/24"]
    assert routes[0].via == IPv4Address("172.18.0.1") and routes[1].via == IPv4Address("172.18.0.4")
    sysctls = parse_sysctls((FIXTURES / "kind-node-sysctl.txt").read_text(), ["eth0", "veth1"])
    keys = [k for k, _ in sysctls]
    assert keys[0] == "net.ipv4.ip_forward" and "net.ipv4.conf.eth0.rp_filter" in keys
    assert "net.ipv4.conf.lo.rp_filter" not in keys  # not a link of interest
    assert keys.index("net.ipv4.conf.all.rp_filter") < keys.index("net.ipv4.conf.eth0.rp_filter")


# -- a live cluster ----------------------------------------------------------------------


def _required() -> bool:
    wanted = os.environ.get("NETCONFORMANCE_REQUIRE_BACKENDS", "")
    return "kind" in {n.strip() for n in wanted.split(",")}


def test_registry_and_preflight_here() -> None:
    backend = get_backend("kind")
    assert isinstance(backend, KindBackend) and backend.name == "kind" and backend.exact is False
    try:
        backend.preflight()
    except BackendUnavailable as e:
        assert str(e).startswith("kind backend: ")
        if _required():
            pytest.fail(f"kind backend required but unavailable: {e}")
        pytest.skip(f"no cluster here: {e}")


def _draw(spec: Spec, count: int) -> list[Case]:
    drawn: list[Case] = []

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(spec.cases())
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


def _live_cases(max_generated: int) -> Iterator[tuple[str, Case]]:
    for name, spec in all_specs().items():
        for case in (*spec.examples, *_draw(spec, max_generated)):
            yield name, case


def test_five_specs_on_a_live_cluster() -> None:
    """The specs end to end: skipped without a cluster, required by NETCONFORMANCE_REQUIRE_BACKENDS=kind."""
    backend = KindBackend()
    try:
        backend.preflight()
    except BackendUnavailable as e:
        if _required():
            pytest.fail(f"kind backend required but unavailable: {e}")
        pytest.skip(str(e))
    examples = int(os.environ.get("NETCONFORMANCE_KIND_EXAMPLES", "3"))
    specs = all_specs()
    ran: dict[str, int] = {}
    try:
        for name, case in _live_cases(examples):
            if backend.supports(case.scenario) is not None:
                continue
            backend.deploy_scenario(case.scenario)
            observations: list[Observation] = backend.observe(case.probes)
            assert specs[name].check(case, observations, False) == [], name
            ran[name] = ran.get(name, 0) + 1
    finally:
        backend.teardown()
    assert set(ran) == set(specs), f"every spec ran at least one case: {ran}"
