"""The YAML loader: exact round trips, and errors people can act on."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.loader import ScenarioError, dump_scenario, load_scenario, parse_scenario, read_documents
from conformance.model import LabelSelector, NetworkPolicy, Scenario, labels
from conformance.strategies import classic_scenario, hairpin_scenarios, scenarios

SCENARIOS = Path(__file__).parent / "scenarios"

NODE = """\
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 172.18.0.2}]
"""


def pod(
    name: str = "pod-a",
    *,
    node: str = "node-1",
    ip: str = "10.244.1.10",
    extra_meta: str = "",
    extra_spec: str = "",
) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: a}}{extra_meta}
spec:
  nodeName: {node}
  containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]{extra_spec}
status: {{podIP: {ip}}}
"""


def service(ports: str, *, spec: str = "", name: str = "svc-b") -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  clusterIP: 10.96.0.100
  selector: {{app: a}}
  ports: {ports}{spec}
"""


def policy(spec: str) -> str:
    return f"""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: pol}}
spec:
{spec}
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def error_of(text: str, source: str = "x.yaml") -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source=source)
    return str(info.value)


# -- good input ---------------------------------------------------------------------


def test_classic_yaml_is_the_classic_scenario() -> None:
    loaded = load_scenario(SCENARIOS / "classic.yaml")
    assert loaded == classic_scenario()
    assert loaded.name == "classic"


def test_every_example_file_loads_and_round_trips() -> None:
    files = sorted(SCENARIOS.glob("*.yaml"))
    assert files
    for path in files:
        s = load_scenario(path)
        assert parse_scenario(dump_scenario(s), source="dump.yaml") == s


def test_policies_example() -> None:
    s = load_scenario(SCENARIOS / "policies.yaml")
    assert s.name == "policies"  # from Knobs metadata.name
    assert s.node("node-2").hairpin_mode is False
    assert s.node("node-2").bridge_nf_call_iptables is False
    assert s.pod("default/db").accept_local is True
    assert s.namespace_labels("other") == labels({"team": "blue", "kubernetes.io/metadata.name": "other"})
    svc = s.services[0]
    assert (svc.type, svc.external_traffic_policy, svc.ports[0].node_port) == (
        "NodePort",
        "Local",
        30080,
    )
    web = s.policies[1]
    # policyTypes omitted: Kubernetes adds Egress because egress rules exist.
    assert web.policy_types == ("Ingress", "Egress")
    assert web.ingress[0].peers[0].ip_block is not None
    assert web.ingress[0].peers[0].ip_block.except_ == (IPv4Network("10.244.2.0/24"),)
    assert web.ingress[0].ports[0].end_port == 8999
    assert web.egress[0].ports[0].protocol == "TCP"


def test_list_and_documents_load_the_same() -> None:
    as_docs = docs(NODE, pod())
    items = [yaml.safe_load(NODE), yaml.safe_load(pod())]
    as_list = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
    assert parse_scenario(as_docs, source="a.yaml") == parse_scenario(as_list, source="b.yaml")


def test_defaults() -> None:
    s = parse_scenario(docs(NODE, pod(), service("[{port: 80}]")), source="d.yaml")
    assert s.name == "d"
    assert s.pods[0].namespace == "default"
    assert s.pods[0].ports[0].protocol == "TCP"
    sp = s.services[0].ports[0]
    assert (sp.target_port, sp.protocol, sp.name, sp.node_port) == (80, "TCP", "", None)
    assert s.services[0].type == "ClusterIP"
    assert s == Scenario(nodes=s.nodes, pods=s.pods, services=s.services)  # default knobs


def test_policy_types_default_like_kubernetes() -> None:
    ingress_only = parse_scenario(docs(NODE, policy("  podSelector: {}")), source="p.yaml")
    assert ingress_only.policies[0] == NetworkPolicy("default", "pol", LabelSelector(), ("Ingress",))
    with_egress = parse_scenario(
        docs(NODE, policy("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]")), source="p.yaml"
    )
    assert with_egress.policies[0].policy_types == ("Ingress", "Egress")
    explicit = parse_scenario(docs(NODE, policy("  policyTypes: [Egress]")), source="p.yaml")
    assert explicit.policies[0].policy_types == ("Egress",)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(scenarios(knobs=True), hairpin_scenarios(knobs=True, max_policies=4)))
def test_round_trip_is_exact(s: Scenario) -> None:
    text = dump_scenario(s)
    back = parse_scenario(text, source="roundtrip.yaml")
    assert back == s
    assert back.name == s.name
    assert dump_scenario(back) == text


def test_dump_refuses_what_yaml_cannot_say() -> None:
    s = classic_scenario()
    unsorted = s.pods[0].__class__(**{**s.pods[0].__dict__, "labels": (("z", "1"), ("a", "2"))})
    with pytest.raises(ScenarioError, match=r"round trip: pods\[0\]"):
        dump_scenario(Scenario(nodes=s.nodes, pods=(unsorted,)))
    with pytest.raises(ScenarioError, match=r"cannot be written as YAML.*spec\.nodeName"):
        bad = s.pods[0].__class__(**{**s.pods[0].__dict__, "node": "node-9"})
        dump_scenario(Scenario(nodes=s.nodes, pods=(bad,)))


# -- bad input: every message names file, object, field and expectation --------------

CASES: list[tuple[str, str, str]] = [
    (
        "undefined node",
        docs(NODE, pod(node="node-9")),
        "x.yaml: Pod default/pod-a: spec.nodeName: node 'node-9' is not defined (nodes: node-1)",
    ),
    (
        "port not an integer",
        docs(NODE, service("[{port: http}]")),
        "x.yaml: Service default/svc-b: spec.ports[0].port: expected an integer 1-65535, got 'http'",
    ),
    (
        "port out of range",
        docs(NODE, service("[{port: 70000}]")),
        "x.yaml: Service default/svc-b: spec.ports[0].port: expected an integer 1-65535, got 70000",
    ),
    (
        "boolean is not a port",
        docs(NODE, service("[{port: true}]")),
        "spec.ports[0].port: expected an integer 1-65535, got true",
    ),
    (
        "named targetPort",
        docs(NODE, service("[{port: 80, targetPort: http}]")),
        "x.yaml: Service default/svc-b: spec.ports[0].targetPort: named target ports are not "
        "supported: expected an integer 1-65535, got 'http'",
    ),
    (
        "typo in a field",
        docs(NODE, pod().replace("nodeName", "nodeNmae")),
        "x.yaml: Pod default/pod-a: spec.nodeNmae: unknown field 'nodeNmae' "
        "(did you mean 'nodeName'? expected one of: nodeName, containers)",
    ),
    (
        "unknown top-level field",
        docs(NODE, service("[{port: 80}]") + "status: {}\n"),
        "x.yaml: Service default/svc-b: status: unknown field 'status'",
    ),
    (
        "unknown kind",
        docs(NODE, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"),
        "x.yaml: document 2: kind: unknown kind 'Deployment' (expected one of: v1 Namespace,",
    ),
    (
        "wrong apiVersion",
        docs(NODE, policy("  podSelector: {}").replace("networking.k8s.io/v1", "v1")),
        "x.yaml: document 2: apiVersion: NetworkPolicy needs apiVersion networking.k8s.io/v1, got 'v1'",
    ),
    (
        "missing kind",
        "apiVersion: v1\nmetadata: {name: x}\n",
        "x.yaml: document 1: kind: required: expected a kind such as Pod",
    ),
    (
        "document is not a mapping",
        docs(NODE, "- a\n- b\n"),
        "x.yaml: document 2: expected a Kubernetes object (a mapping with apiVersion and kind), got a list",
    ),
    (
        "missing name",
        docs(NODE, pod().replace("name: pod-a", "labels2: {}")),
        "x.yaml: document 2 (Pod): metadata.labels2: unknown field 'labels2'",
    ),
    (
        "missing podIP",
        docs(NODE, pod().replace("status: {podIP: 10.244.1.10}", "")),
        "x.yaml: Pod default/pod-a: status.podIP: required: expected an IPv4 address",
    ),
    (
        "pod IP outside podCIDR",
        docs(NODE, pod(ip="10.244.2.10")),
        "x.yaml: Pod default/pod-a: status.podIP: 10.244.2.10 is not inside the podCIDR 10.244.1.0/24 of Node node-1",
    ),
    (
        "pod IP is the bridge",
        docs(NODE, pod(ip="10.244.1.1")),
        "Pod default/pod-a: status.podIP: 10.244.1.1 is reserved in 10.244.1.0/24",
    ),
    (
        "invalid IP",
        docs(NODE, pod(ip="10.244.1.300")),
        "x.yaml: Pod default/pod-a: status.podIP: expected an IPv4 address, got '10.244.1.300'",
    ),
    (
        "IPv6",
        docs(NODE, pod(ip="'fd00::1'")),
        "status.podIP: expected an IPv4 address, got 'fd00::1'",
    ),
    (
        "duplicate pod IP",
        docs(NODE, pod(), pod("pod-b")),
        "x.yaml: Pod default/pod-b: status.podIP: 10.244.1.10 is already used by Pod default/pod-a",
    ),
    (
        "duplicate pod name",
        docs(NODE, pod(), pod(ip="10.244.1.11")),
        "x.yaml: Pod default/pod-a: metadata.name: duplicate Pod",
    ),
    (
        "invalid name",
        docs(NODE, pod("Pod_A")),
        "x.yaml: Pod default/Pod_A: metadata.name: expected a DNS subdomain",
    ),
    (
        "undeclared namespace",
        docs(NODE, pod(extra_meta="\n  namespace: othr")),
        "x.yaml: Pod othr/pod-a: metadata.namespace: namespace 'othr' is not defined (namespaces: default)",
    ),
    (
        "host bits in a CIDR",
        NODE.replace("10.244.1.0/24", "10.244.1.5/24"),
        "x.yaml: Node node-1: spec.podCIDR: 10.244.1.5/24 has host bits set (did you mean 10.244.1.0/24?)",
    ),
    (
        "CIDR without prefix",
        NODE.replace("10.244.1.0/24", "10.244.1.0"),
        "x.yaml: Node node-1: spec.podCIDR: expected an IPv4 CIDR like 10.0.0.0/24, got '10.244.1.0'",
    ),
    (
        "podCIDR outside clusterCIDR",
        NODE.replace("10.244.1.0/24", "10.245.1.0/24"),
        "x.yaml: Node node-1: spec.podCIDR: 10.245.1.0/24 is not inside clusterCIDR 10.244.0.0/16",
    ),
    (
        "node IP outside nodeCIDR",
        NODE.replace("172.18.0.2", "172.19.0.2"),
        "x.yaml: Node node-1: status.addresses[0].address: 172.19.0.2 is not a host address in nodeCIDR 172.18.0.0/24",
    ),
    (
        "two nodes share an IP",
        docs(NODE, NODE.replace("node-1", "node-2").replace("10.244.1.", "10.244.2.")),
        "x.yaml: Node node-2: status.addresses[0].address: 172.18.0.2 is already used by Node node-1",
    ),
    (
        "no nodes",
        pod(),
        "x.yaml: no Node objects: a scenario needs at least one node",
    ),
    (
        "ClusterIP outside serviceCIDR",
        docs(NODE, service("[{port: 80}]").replace("10.96.0.100", "10.200.0.1")),
        "x.yaml: Service default/svc-b: spec.clusterIP: 10.200.0.1 is not inside serviceCIDR 10.96.0.0/12",
    ),
    (
        "duplicate ClusterIP",
        docs(NODE, service("[{port: 80}]"), service("[{port: 80}]", name="svc-c")),
        "x.yaml: Service default/svc-c: spec.clusterIP: 10.96.0.100 is already used by Service default/svc-b",
    ),
    (
        "nodePort out of range",
        docs(NODE, service("[{port: 80, nodePort: 29999}]", spec="\n  type: NodePort")),
        "x.yaml: Service default/svc-b: spec.ports[0].nodePort: expected an integer 30000-32767, got 29999",
    ),
    (
        "nodePort on a ClusterIP Service",
        docs(NODE, service("[{port: 80, nodePort: 30000}]")),
        "x.yaml: Service default/svc-b: spec.ports[0].nodePort: only allowed for type NodePort",
    ),
    (
        "nodePort missing",
        docs(NODE, service("[{port: 80}]", spec="\n  type: NodePort")),
        "Service default/svc-b: spec.ports[0].nodePort: required for type NodePort",
    ),
    (
        "nodePort used twice",
        docs(
            NODE,
            service("[{port: 80, nodePort: 30000}]", spec="\n  type: NodePort"),
            service("[{port: 80, nodePort: 30000}]", spec="\n  type: NodePort", name="svc-c").replace(
                "10.96.0.100", "10.96.0.101"
            ),
        ),
        "x.yaml: Service default/svc-c: spec.ports[0].nodePort: 30000 is already used by Service default/svc-b",
    ),
    (
        "duplicate service port",
        docs(NODE, service("[{port: 80}, {port: 80, protocol: TCP}]")),
        "x.yaml: Service default/svc-b: spec.ports[1]: duplicate port 80/TCP (also spec.ports[0])",
    ),
    (
        "bad protocol",
        docs(NODE, service("[{port: 80, protocol: tcp}]")),
        "x.yaml: Service default/svc-b: spec.ports[0].protocol: expected one of TCP, UDP, SCTP, got 'tcp'",
    ),
    (
        "externalTrafficPolicy on ClusterIP",
        docs(NODE, service("[{port: 80}]", spec="\n  externalTrafficPolicy: Local")),
        "Service default/svc-b: spec.externalTrafficPolicy: only allowed for type NodePort",
    ),
    (
        "label value not a string",
        docs(NODE, pod().replace("{app: a}", "{version: 1.0}")),
        "x.yaml: Pod default/pod-a: metadata.labels.version: expected a label value (a string), got 1.0 (quote it)",
    ),
    (
        "knob annotation not quoted",
        docs(NODE, pod(extra_meta="\n  annotations: {netconformance.io/accept-local: 1}")),
        "x.yaml: Pod default/pod-a: metadata.annotations.netconformance.io/accept-local: "
        'expected the string "1" or "0" (quoted), got 1',
    ),
    (
        "unknown annotation",
        NODE.replace(
            "metadata: {name: node-1}",
            "metadata: {name: node-1, annotations: {netconformance.io/hairpin: 'true'}}",
        ),
        "x.yaml: Node node-1: metadata.annotations.netconformance.io/hairpin: unknown field",
    ),
    (
        "YAML syntax error",
        NODE + "spec: [unclosed\n",
        "x.yaml: line 8, column 1: invalid YAML:",
    ),
    (
        "duplicate YAML key",
        NODE + "kind: Pod\n",
        "x.yaml: line 7, column 1: invalid YAML: duplicate key 'kind'",
    ),
    (
        "ipBlock except outside cidr",
        docs(NODE, policy("  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]")),
        "x.yaml: NetworkPolicy default/pol: spec.ingress[0].from[0].ipBlock.except[0]: "
        "11.0.0.0/8 must be a strict subset of cidr 10.0.0.0/8",
    ),
    (
        "ipBlock with a selector",
        docs(NODE, policy("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]")),
        "x.yaml: NetworkPolicy default/pol: spec.egress[0].to[0]: ipBlock cannot be combined with "
        "podSelector or namespaceSelector",
    ),
    (
        "empty peer",
        docs(NODE, policy("  ingress: [{from: [{}]}]")),
        "spec.ingress[0].from[0]: expected podSelector, namespaceSelector or ipBlock",
    ),
    (
        "named policy port",
        docs(NODE, policy("  ingress: [{ports: [{port: http}]}]")),
        "x.yaml: NetworkPolicy default/pol: spec.ingress[0].ports[0].port: named ports are not "
        "supported: expected an integer 1-65535, got 'http'",
    ),
    (
        "endPort below port",
        docs(NODE, policy("  ingress: [{ports: [{port: 9000, endPort: 8000}]}]")),
        "x.yaml: NetworkPolicy default/pol: spec.ingress[0].ports[0].endPort: expected an integer 9000-65535, got 8000",
    ),
    (
        "endPort without port",
        docs(NODE, policy("  ingress: [{ports: [{endPort: 8000}]}]")),
        "spec.ingress[0].ports[0].endPort: needs port to be set",
    ),
    (
        "bad operator",
        docs(NODE, policy("  podSelector: {matchExpressions: [{key: app, operator: in}]}")),
        "x.yaml: NetworkPolicy default/pol: spec.podSelector.matchExpressions[0].operator: "
        "expected one of In, NotIn, Exists, DoesNotExist, got 'in'",
    ),
    (
        "In without values",
        docs(NODE, policy("  podSelector: {matchExpressions: [{key: app, operator: In}]}")),
        "spec.podSelector.matchExpressions[0].values: operator In needs at least one value",
    ),
    (
        "ingress from/to mix-up",
        docs(NODE, policy("  ingress: [{to: []}]")),
        "spec.ingress[0].to: unknown field 'to'",
    ),
    (
        "duplicate policy type",
        docs(NODE, policy("  policyTypes: [Ingress, Ingress]")),
        "spec.policyTypes[1]: duplicate policy type Ingress",
    ),
    (
        "two Knobs",
        docs(
            NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\n", "apiVersion: netconformance.io/v1\nkind: Knobs\n"
        ),
        "x.yaml: document 3 (Knobs): only one Knobs object is allowed per scenario",
    ),
    (
        "overlapping knob CIDRs",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {serviceCIDR: 10.244.0.0/20}\n"),
        "x.yaml: Knobs: spec.serviceCIDR: 10.244.0.0/20 overlaps clusterCIDR 10.244.0.0/16",
    ),
    (
        "serviceCIDR in loopback",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {serviceCIDR: 127.0.0.0/8}\n"),
        "x.yaml: document 2 (Knobs): spec.serviceCIDR: 127.0.0.0/8 overlaps 127.0.0.0/8 (loopback), "
        "which no cluster can use",
    ),
    (
        "clusterCIDR multicast",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {clusterCIDR: 224.0.0.0/4}\n"),
        "x.yaml: document 2 (Knobs): spec.clusterCIDR: 224.0.0.0/4 overlaps 224.0.0.0/4 (multicast), "
        "which no cluster can use",
    ),
    (
        "clusterCIDR everything",
        docs(
            NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nmetadata: {name: k}\nspec: {clusterCIDR: 0.0.0.0/0}\n"
        ),
        "x.yaml: Knobs k: spec.clusterCIDR: 0.0.0.0/0 overlaps 0.0.0.0/8 ('this network'), which no cluster can use",
    ),
    (
        "nodeCIDR in loopback",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {nodeCIDR: 127.0.0.0/24}\n"),
        "x.yaml: document 2 (Knobs): spec.nodeCIDR: 127.0.0.0/24 overlaps 127.0.0.0/8 (loopback), "
        "which no cluster can use",
    ),
    (
        "nodeCIDR multicast",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {nodeCIDR: 224.0.0.0/24}\n"),
        "spec.nodeCIDR: 224.0.0.0/24 overlaps 224.0.0.0/4 (multicast), which no cluster can use",
    ),
    (
        "serviceCIDR reserved",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {serviceCIDR: 255.255.255.0/24}\n"),
        "spec.serviceCIDR: 255.255.255.0/24 overlaps 240.0.0.0/4 (reserved, incl. broadcast), which no cluster can use",
    ),
    (
        "podCIDR in loopback",
        NODE.replace("10.244.1.0/24", "127.0.1.0/24"),
        "x.yaml: Node node-1: spec.podCIDR: 127.0.1.0/24 overlaps 127.0.0.0/8 (loopback), which no cluster can use",
    ),
    (
        "ClusterIP is the serviceCIDR's network address",
        docs(NODE, service("[{port: 80}]").replace("10.96.0.100", "10.96.0.0")),
        "x.yaml: Service default/svc-b: spec.clusterIP: 10.96.0.0 is the network address of serviceCIDR "
        "10.96.0.0/12, not a host address",
    ),
    (
        "ClusterIP is the serviceCIDR's broadcast address",
        docs(NODE, service("[{port: 80}]").replace("10.96.0.100", "10.111.255.255")),
        "x.yaml: Service default/svc-b: spec.clusterIP: 10.111.255.255 is the broadcast address of serviceCIDR "
        "10.96.0.0/12, not a host address",
    ),
    (
        "knob not a boolean",
        docs(NODE, "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {masqueradeHairpin: 'yes'}\n"),
        "x.yaml: document 2 (Knobs): spec.masqueradeHairpin: expected true or false, got 'yes'",
    ),
    (
        "error inside a List names the item",
        yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(NODE), {"kind": "Pod"}]}),
        "x.yaml: document 1 items[1]: apiVersion: required: expected an apiVersion such as v1",
    ),
    (
        "namespace name label mismatch",
        docs(
            NODE,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n  labels: {kubernetes.io/metadata.name: x}\n",
        ),
        "x.yaml: Namespace other: metadata.labels.kubernetes.io/metadata.name: must equal the "
        "namespace name 'other', got 'x'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=[c[0] for c in CASES])
def test_error_messages(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message
    assert message.startswith("x.yaml: ")
    assert "\n" not in message


def test_scenario_error_is_a_value_error() -> None:
    assert issubclass(ScenarioError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError, match=r"nope\.yaml: cannot read: No such file"):
        load_scenario(missing)


def test_load_names_the_file_as_given(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(docs(NODE, pod(node="node-9")))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: Pod default/pod-a: spec.nodeName:")


def test_empty_documents_are_skipped() -> None:
    s = parse_scenario("---\n" + NODE + "---\n", source="x.yaml")
    assert s.nodes[0].ip == IPv4Address("172.18.0.2")


def test_usable_cidrs_next_to_unusable_ones_load() -> None:
    # Just outside each refused range: nothing but the ranges themselves is refused.
    knobs = "apiVersion: netconformance.io/v1\nkind: Knobs\nspec: {clusterCIDR: 1.0.0.0/16, serviceCIDR: 126.0.0.0/8, nodeCIDR: 223.255.255.0/24}\n"
    node = NODE.replace("10.244.1.0/24", "1.0.1.0/24").replace("172.18.0.2", "223.255.255.254")
    svc = service("[{port: 80}]").replace("10.96.0.100", "126.255.255.254")
    s = parse_scenario(docs(knobs, node, svc), source="x.yaml")
    assert (s.nodes[0].ip, s.services[0].cluster_ip) == (IPv4Address("223.255.255.254"), IPv4Address("126.255.255.254"))


# -- YAML merge keys ------------------------------------------------------------------


def test_merge_key_merges_and_a_written_key_overrides() -> None:
    # Before: "could not determine a constructor for the tag 'tag:yaml.org,2002:merge'".
    # Anchors do not cross documents, so the pods share a List.
    pod_a = pod().replace("metadata:\n  name: pod-a\n", "metadata: &meta\n  name: pod-a\n")
    pod_b = "apiVersion: v1\nkind: Pod\nmetadata:\n  <<: *meta\n  name: pod-b\nspec: {nodeName: node-1}\n"
    pod_b += "status: {podIP: 10.244.1.11}\n"
    items = "".join("- " + doc.replace("\n", "\n  ").rstrip() + "\n" for doc in (NODE, pod_a, pod_b))
    s = parse_scenario("apiVersion: v1\nkind: List\nitems:\n" + items, source="x.yaml")
    assert [(p.name, p.labels, p.ip) for p in s.pods] == [
        ("pod-a", labels({"app": "a"}), IPv4Address("10.244.1.10")),
        ("pod-b", labels({"app": "a"}), IPv4Address("10.244.1.11")),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A merged mapping reused after one of its own keys overrode a merged one: not a duplicate.
        (
            "first:\n  <<: &defaults\n    <<: &base {source: staging}\n    source: production\nsecond: *defaults\n"
            "third: {<<: *defaults}\n",
            {
                "first": {"source": "production"},
                "second": {"source": "production"},
                "third": {"source": "production"},
            },
        ),
        # The written key wins wherever it is written.
        ("a: &a {x: 1, yy: 2}\nb: {yy: 3, <<: *a}\n", {"a": {"x": 1, "yy": 2}, "b": {"x": 1, "yy": 3}}),
        # Of several merged mappings the earlier wins (PyYAML 6.0.4's own merge lets the last win).
        (
            "a: &a {kk: 1}\nb: &b {kk: 2, zz: 3}\nc: {<<: [*a, *b]}\n",
            {"a": {"kk": 1}, "b": {"kk": 2, "zz": 3}, "c": {"kk": 1, "zz": 3}},
        ),
        # ... also for a key merged into the merged mapping (PyYAML 6.0.4 keeps the merged 1).
        ("q: &q {a: 1}\nl: [&p {<<: *q, a: 2}]\nr: {<<: *p}\n", {"q": {"a": 1}, "l": [{"a": 2}], "r": {"a": 2}}),
    ],
)
def test_merge_key_precedence(text: str, expected: dict[str, object]) -> None:
    assert read_documents(text, "x.yaml") == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a {x: 1}\nb:\n  <<: *a\n  y: 1\n  y: 2\n", "x.yaml: line 5, column 3: invalid YAML: duplicate key 'y'"),
        ("a: &a {x: 1, x: 2}\nb: {<<: *a}\n", "x.yaml: line 1, column 14: invalid YAML: duplicate key 'x'"),
        ("a: &a {x: 1}\nb:\n  <<: *a\n  <<: *a\n", "x.yaml: line 4, column 3: invalid YAML: duplicate key '<<'"),
        (
            "b: {<<: [{x: 1}, 5]}\n",
            "x.yaml: line 1, column 18: invalid YAML: expected a mapping or list of mappings for merging, but found scalar",
        ),
        ("a: &a {x: 1, <<: *a}\n", "x.yaml: line 1, column 4: invalid YAML: a mapping cannot merge itself"),
    ],
)
def test_merge_key_errors(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        read_documents(text, "x.yaml")
    assert str(info.value) == expected


def test_merges_of_merges_do_not_grow_exponentially() -> None:
    # Each level merges the one below twice: 2**40 pairs if duplicates were kept (yaml/pyyaml#897).
    levels = ["l0: &l0 {k0: 0}"] + [f"l{i}: &l{i} {{<<: [*l{i - 1}, *l{i - 1}], k{i}: {i}}}" for i in range(1, 41)]
    (doc,) = read_documents("\n".join(levels) + "\n", "x.yaml")
    assert isinstance(doc, dict) and doc["l40"] == {f"k{i}": i for i in range(41)}


# -- no input, however broken, gives anything but a ScenarioError ---------------------

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.sampled_from(["", "x", "TCP", "10.244.1.10", "10.244.1.0/24", "node-1", "http", "-1"]),
    st.text(max_size=5),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=8), inner, max_size=2)),
    max_leaves=4,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(knobs=True), st.data())
def test_mutated_input_only_ever_raises_scenario_error(s: Scenario, data: st.DataObject) -> None:
    # libyaml's C loader and dumper: the pure-Python ones were most of this test's time.
    documents = list(yaml.load_all(dump_scenario(s), Loader=yaml.CSafeLoader))
    paths = _paths(documents)[1:]
    path = data.draw(st.sampled_from(paths))
    parent: Any = documents
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_VALUES)
    try:
        parse_scenario(yaml.dump_all(documents, Dumper=yaml.CSafeDumper), source="fuzz.yaml")
    except ScenarioError as e:
        assert str(e).startswith("fuzz.yaml: ")


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_scenario_error(text: str) -> None:
    try:
        parse_scenario(text, source="t.yaml")
    except ScenarioError as e:
        assert str(e).startswith("t.yaml: ")


def test_an_impossible_unquoted_date_is_an_error_with_its_place() -> None:
    # YAML reads 2024-02-30 as a date and fails with a bare ValueError (was a traceback).
    text = docs(NODE, pod().replace("labels: {app: a}", "labels: {app: 2024-02-30}"))
    message = error_of(text)
    assert "x.yaml: line 12, column 17: invalid YAML: '2024-02-30' is not a valid date or time" in message
    assert "quote it if it is text" in message


def test_a_valid_unquoted_date_as_a_label_value_says_quote_it() -> None:
    message = error_of(docs(NODE, pod().replace("labels: {app: a}", "labels: {app: 2024-02-29}")))
    assert "metadata.labels.app: expected a label value (a string), got the date 2024-02-29 (quote it)" in message
