"""Node snapshots: reading live namespaces back into a Dataplane, and the file format.

The tests against live namespaces need root (skipped otherwise, failing when
NETCONFORMANCE_REQUIRE_BACKENDS names "netns"); the parsing, assembly and
file round trip tests need nothing.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings

from backends.netns import NetnsBackend
from backends.netns.build import BUILTIN_CHAINS
from backends.netns.snapshot import snapshot_run
from backends.sim import SimBackend
from backends.sim_snapshot import SimSnapshotBackend
from conformance.cases import Case
from conformance.cli import main
from conformance.dataplane import Dataplane, Route
from conformance.implementations import get_implementation
from conformance.implementations.foreign import ForeignScenarioError, fixed_cases, from_snapshot, load
from conformance.loader import dump_scenario, load_scenario
from conformance.probes import Probe
from conformance.snapshot import (
    DataplaneFormatError,
    NamespaceRead,
    RawLink,
    RawNetns,
    SnapshotError,
    assemble,
    clean_rules,
    dump_dataplane,
    load_dataplane,
    parse_links,
    parse_netns,
    parse_routes,
    parse_sysctls,
    split_sections,
)
from conformance.specs import all_specs
from conformance.strategies import classic_scenario

from live import POLICIES, REPO, live_or_skip

RULES = REPO / "tests" / "rulesets" / "kube-proxy-node.txt"
RULES_SCENARIO = REPO / "tests" / "rulesets" / "kube-proxy-node.yaml"


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest) -> Iterator[NetnsBackend]:
    live_or_skip(request, "netns", NetnsBackend().preflight)
    b = NetnsBackend()
    yield b
    b.teardown()


def _probes_for(dataplane: Dataplane) -> list[Probe]:
    """Every source to every listener, every ClusterIP port and NodePort seen in the rules."""
    targets: list[tuple[IPv4Address, int, str]] = []
    for ns in dataplane.namespaces:
        for addr in (a.ip for dev, a in ns.addresses if ns.role == "pod"):
            targets += [(addr, li.port, li.protocol) for li in ns.listeners]
    out = []
    for source, _ in dataplane.sources:
        for ip, port, proto in targets:
            if proto in ("TCP", "UDP"):
                out.append(Probe(source, ip, port, proto))  # type: ignore[arg-type]
    return out


def _service_probes(scenario_sources: Sequence[str], scenario_name: str = "") -> list[Probe]:
    s = load_scenario(POLICIES) if scenario_name == "policies" else classic_scenario()
    out = []
    for src in scenario_sources:
        for svc in s.services:
            for sp in svc.ports:
                if sp.protocol in ("TCP", "UDP"):
                    out.append(Probe(src, svc.cluster_ip, sp.port, sp.protocol))
    return out


@pytest.mark.parametrize("implementation", ["reference", "hairpin-mode-off", "policy-before-dnat"])
def test_snapshot_predicts_what_the_original_predicts(live: NetnsBackend, implementation: str) -> None:
    """deploy -> snapshot -> sim observes exactly what the sim observes on the rendered Dataplane."""
    scenario = load_scenario(POLICIES)
    original = get_implementation(implementation).render(scenario)
    live.deploy(original)
    snap = live.snapshot()
    probes = _probes_for(original) + _service_probes([s for s, _ in original.sources], "policies")
    a, b = SimBackend(), SimBackend()
    a.deploy(original)
    b.deploy(snap)
    differ = [
        f"{x.probe}: original {x.describe()} / snapshot {y.describe()}"
        for x, y in zip(a.observe(probes), b.observe(probes), strict=True)
        if x.outcomes != y.outcomes
    ]
    assert len(probes) >= 15
    assert not differ, "\n".join(differ[:5])


def test_snapshot_round_trips_through_the_kernel_and_the_file(live: NetnsBackend) -> None:
    live.deploy(get_implementation("cni-ptp").render(classic_scenario()))
    first = live.snapshot()
    assert load_dataplane(dump_dataplane(first)) == first
    live.reset()
    live.observe([Probe("pod:default/pod-b", IPv4Address("10.96.0.100"), 80, "TCP")])  # counters move
    live.deploy(first)  # a snapshot is a plain Dataplane a real kernel takes too
    second = live.snapshot()
    assert second == first


def test_foreign_ruleset_on_both_backends(live: NetnsBackend) -> None:
    impl = load({"node-1": RULES}, RULES_SCENARIO)
    dataplane = impl.render(impl.scenario)
    assert dataplane.netns("node-node-1").iptables == clean_rules(RULES.read_text())
    predictor = SimSnapshotBackend(live=live)
    sim = SimBackend()
    sim.deploy(dataplane)
    web, empty, node1 = IPv4Address("10.96.0.10"), IPv4Address("10.96.0.20"), IPv4Address("172.18.0.2")
    probes = [
        Probe("pod:default/web-1", web, 80, "TCP"),  # hairpin on the supplied node, or another endpoint
        Probe("pod:default/web-3", web, 80, "TCP"),  # from the reference-ruled node
        Probe("external", node1, 30080, "TCP"),
        Probe("external", node1, 30090, "TCP"),  # NodePort of a Service without endpoints
        Probe("pod:default/web-2", empty, 80, "TCP"),
    ]
    predictor.deploy(dataplane)
    live.reset()
    for _ in range(3):  # samples of the random branches
        for p, sim_obs, sample in zip(probes, sim.observe(probes), live.observe(probes), strict=True):
            assert sample.outcomes[0][0] in sim_obs.possible, f"{p}: {sample.describe()} not in {sim_obs.describe()}"
    on_snapshot = predictor.observe(probes)
    assert [o.outcomes for o in on_snapshot] == [o.outcomes for o in sim.observe(probes)]


def test_foreign_ruleset_compare_from_the_command_line(live: NetnsBackend, tmp_path: Path) -> None:
    # `live` only gates on the netns backend being usable; the command builds its own namespaces.
    name = f"rules:{RULES_SCENARIO}:node-1={RULES}"
    argv = ["compare", "--backends", "sim,netns", "--implementation", name, "--examples", "10", "--seed", "1"]
    assert main([*argv, "--report-dir", str(tmp_path)]) == 0
    # snapshot deploys the rules' own cluster unless told otherwise.
    assert main(["snapshot", "--implementation", name, "--out", str(tmp_path / "node.json")]) == 0
    snapshot = load_dataplane((tmp_path / "node.json").read_text(), "node.json")
    # The kernel saves rules in its own spelling (--or-mark as --set-xmark): judge by the file's own chain names.
    assert "-A KUBE-SEP-A " in snapshot.netns("node-node-1").iptables
    assert "-A KUBE-SEP-A " not in snapshot.netns("node-node-2").iptables  # other nodes: the reference's rules


# Minimal node-1 rules on which the simulator once disagreed with the kernel (found by `compare` on rules like a
# user's): table -> rules. With the rest of node-1's rules gone its Services are unreachable; both must say so alike.
ONCE_DISAGREED = {
    "physdev-in-forward": {"filter": "-A FORWARD -m physdev --physdev-in veth+ -j DROP\n"},
    "physdev-is-in-input": {"filter": "-A INPUT -m physdev --physdev-is-in -j DROP\n"},
    "assured": {"filter": "-A FORWARD -m conntrack --ctstatus ASSURED -j DROP\n"},
    "limit-iface-in": {"filter": "-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in -j DROP\n"},
    "random-fully-port": {
        "nat": "-A POSTROUTING -o eth0 -j MASQUERADE --random-fully\n",
        "filter": "-A INPUT -m conntrack --ctstate SNAT -j DROP\n",
    },
    "client-port": {"filter": "-A FORWARD -p tcp --sport 41000 -j DROP\n"},
    "client-port-half": {"filter": "-A FORWARD -p tcp --sport 32768:46383 -j DROP\n"},
}


@pytest.mark.parametrize("name", list(ONCE_DISAGREED))
def test_rules_the_simulator_once_got_wrong_agree_with_the_kernel(
    live: NetnsBackend, tmp_path: Path, name: str
) -> None:
    text = ""
    for table, rules in ONCE_DISAGREED[name].items():
        chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in BUILTIN_CHAINS[table])
        text += f"*{table}\n{chains}{rules}COMMIT\n"
    path = tmp_path / f"{name}.rules"
    path.write_text(text)
    argv = ["compare", "--backends", "sim,netns", "--implementation", f"rules:{RULES_SCENARIO}:node-1={path}"]
    assert main([*argv, "--examples", "25", "--seed", "1", "--report-dir", str(tmp_path)]) == 0


# -- no privileges needed ------------------------------------------------------------


def test_a_snapshot_file_is_an_implementation_of_its_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `snapshot --out` writes, named with the cluster it was taken of, runs the specs that fit a fixed cluster.
    scenario = tmp_path / "classic.yaml"
    scenario.write_text((Path(__file__).parent / "scenarios" / "classic.yaml").read_text())
    for name in ("reference", "hairpin-mode-off"):
        (tmp_path / f"{name}.json").write_text(dump_dataplane(get_implementation(name).render(classic_scenario())))
    argv = ["run", "--examples", "20", "--seed", "3", "--report-dir", str(tmp_path / "runs")]
    assert main([*argv, "--implementation", f"dataplane:{scenario}:{tmp_path / 'reference.json'}"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if "dataplane:" in line and " pass " in line] == [
        "connectivity",
        "dnat",
        "hairpin",
    ]
    assert (
        main(
            [
                *argv,
                "--spec",
                "hairpin",
                "--implementation",
                f"dataplane:{scenario}:{tmp_path / 'hairpin-mode-off.json'}",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    replay = shlex.split(
        next(line for line in out.splitlines() if line.startswith("reproduce: "))[len("reproduce: ") :]
    )
    assert main(replay[1:]) == 1  # the printed command rebuilds the implementation from its name


def test_foreign_ruleset_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A proxy author's flow: `run --implementation rules:SCENARIO:NODE=FILE`, then the printed replay."""
    name = f"rules:{RULES_SCENARIO}:node-1={RULES}"
    assert main(["run", "--implementation", name, "--examples", "10", "--report-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{name}: not judged by policy, accept-local" in out  # they draw their own clusters
    rows = [line.split() for line in out.splitlines() if line.split()[1:3] == ["sim", name]]
    assert [(row[0], row[3]) for row in rows] == [("connectivity", "pass"), ("dnat", "pass"), ("hairpin", "pass")]
    unmasqueraded = tmp_path / "node-1 no masq.rules"  # kube-proxy's rules without the hairpin masquerade
    kept = [line for line in RULES.read_text().splitlines() if "-j KUBE-MARK-MASQ" not in line]
    unmasqueraded.write_text("\n".join(kept) + "\n")
    broken = f"rules:{RULES_SCENARIO}:node-1={unmasqueraded}"
    argv = ["run", "--implementation", broken, "--spec", "hairpin", "--examples", "10", "--seed", "1"]
    assert main([*argv, "--report-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    replay = shlex.split(
        next(line for line in out.splitlines() if line.startswith("reproduce: "))[len("reproduce: ") :]
    )
    assert replay[replay.index("--implementation") + 1] == broken
    assert main(replay[1:]) == 1
    assert "martian source 10.244.1.11" in capsys.readouterr().out


def test_foreign_ruleset_passes_the_specs_it_can_on_the_simulator() -> None:
    impl = load({"node-1": RULES}, RULES_SCENARIO)
    sim = SimBackend()
    sim.deploy(impl.render(impl.scenario))
    for name in ("connectivity", "dnat", "hairpin"):
        spec = all_specs()[name]

        @settings(max_examples=30, database=None, deadline=None)
        @given(fixed_cases(name, impl.scenario))
        def run(case: Case) -> None:
            assert spec.check(case, sim.observe(case.probes), True) == []  # noqa: B023 (run at once)

        run()
    with pytest.raises(ForeignScenarioError):
        impl.render(classic_scenario())
    with pytest.raises(KeyError, match="fixed scenario"):
        fixed_cases("accept-local", impl.scenario)


def test_foreign_ruleset_without_hairpin_masquerade_fails_hairpin() -> None:
    text = "".join(line + "\n" for line in RULES.read_text().splitlines() if "-j KUBE-MARK-MASQ" not in line)
    impl = dataclasses.replace(load({"node-1": RULES}, RULES_SCENARIO), rules={"node-1": text})
    sim = SimBackend()
    sim.deploy(impl.render(impl.scenario))
    probe = Probe("pod:default/web-1", IPv4Address("10.96.0.10"), 80, "TCP")
    case = Case(impl.scenario, (probe,))
    assert all_specs()["hairpin"].check(case, sim.observe([probe]), True)


LINKS = json.dumps(
    [
        {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP"], "link_type": "loopback"},
        {"ifindex": 2, "ifname": "cni0", "flags": ["UP"], "linkinfo": {"info_kind": "bridge", "info_data": {}}},
        {
            "ifindex": 3,
            "ifname": "veth1",
            "flags": ["UP"],
            "master": "cni0",
            "link_netnsid": 0,
            "link_index": 2,
            "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge", "info_slave_data": {"hairpin": True}},
        },
        {"ifindex": 4, "ifname": "tunl0", "flags": [], "linkinfo": {"info_kind": "ipip"}},
    ]
)


RULES_JSON = json.dumps(
    [
        {"priority": 0, "src": "all", "table": "local"},
        {"priority": 32766, "src": "all", "table": "main"},
        {"priority": 32767, "src": "all", "table": "default"},
    ]
)


def _sections(qdiscs: str) -> dict[str, str]:
    empty = {name: "[]" for name in ("links", "addresses", "routes", "nsids")}
    return {**empty, "rules": RULES_JSON, "qdiscs": qdiscs, "sysctls": "", "iptables": ""}


def test_queueing_disciplines_that_shape_or_filter_are_refused() -> None:
    # What the bandwidth CNI plugin leaves (measured in a namespace here): tbf on the host veth, an ingress qdisc.
    plain = [{"kind": "noqueue", "dev": "veth1", "root": True}, {"kind": "fq_codel", "dev": "eth0", "root": True}]
    parse_netns(_sections(json.dumps(plain)), "node-1")  # queueing only: nothing a probe would notice
    shaped = [*plain, {"kind": "tbf", "dev": "veth1", "root": True}, {"kind": "ingress", "dev": "veth1"}]
    with pytest.raises(
        SnapshotError, match=r"node-1: queueing discipline\(s\) ingress on veth1, tbf on veth1: traffic"
    ):
        parse_netns(_sections(json.dumps(shaped)), "node-1")
    with pytest.raises(SnapshotError, match="node-1: tc is not installed"):
        parse_netns(_sections("null"), "node-1")


def test_parse_links_reads_ports_and_peers() -> None:
    links = {link.name: link for link in parse_links(LINKS, "node")}
    assert links["veth1"] == RawLink("veth1", 3, "veth", True, "cni0", True, 0, 2)
    assert links["lo"].kind == "loopback" and links["tunl0"].kind == "ipip"


def test_parse_routes_keeps_routes_the_addresses_do_not_make() -> None:
    addresses = (("eth0", IPv4Interface("10.244.1.5/24")), ("cni0", IPv4Interface("10.244.2.1/24")))
    text = json.dumps(
        [
            {"type": "unicast", "dst": "default", "gateway": "10.244.1.1", "dev": "eth0", "protocol": "boot"},
            {"type": "unicast", "dst": "10.244.2.0/24", "dev": "cni0", "protocol": "kernel", "prefsrc": "10.244.2.1"},
            {"type": "unicast", "dst": "10.244.1.1", "dev": "eth0", "protocol": "boot", "prefsrc": "10.244.1.5"},
        ]
    )
    routes, no_prefix = parse_routes(text, addresses, "pod")
    assert routes == (  # on-link routes first: the gateway must be reachable when the default is added
        Route(IPv4Network("10.244.1.1/32"), "eth0", src=IPv4Address("10.244.1.5")),
        Route(IPv4Network("0.0.0.0/0"), "eth0", via=IPv4Address("10.244.1.1")),
    )
    assert no_prefix == (("eth0", IPv4Interface("10.244.1.5/24")),)  # its connected route is gone (ptp)
    with pytest.raises(SnapshotError, match="blackhole"):
        parse_routes(json.dumps([{"type": "blackhole", "dst": "10.0.0.0/8"}]), (), "node")


def test_parse_sysctls_reads_the_modelled_ones_and_refuses_proxy_arp() -> None:
    text = "\n".join(
        [
            "/proc/sys/net/ipv4/ip_forward 1",
            "/proc/sys/net/ipv4/conf/all/rp_filter 0",
            "/proc/sys/net/ipv4/conf/eth0/accept_local 1",
            "/proc/sys/net/ipv4/conf/eth0/forwarding 1",
            "/proc/sys/net/ipv4/conf/all/forwarding 1",
            "/proc/sys/net/ipv4/conf/eth0/proxy_arp 0",
        ]
    )
    assert parse_sysctls(text, ["eth0"], "ns") == (
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.eth0.accept_local", "1"),
        ("net.ipv4.conf.eth0.forwarding", "1"),
    )
    with pytest.raises(SnapshotError, match="proxy_arp"):
        parse_sysctls("/proc/sys/net/ipv4/conf/eth0/proxy_arp 1", ["eth0"], "ns")


def _raw(links: tuple[RawLink, ...], nsids: dict[int, str] | None = None) -> RawNetns:
    return RawNetns(links, (), (), (), (), "", nsids or {})


def test_assemble_pairs_veths_by_namespace_id_and_ifindex() -> None:
    lo = RawLink("lo", 1, "loopback", True)
    # Two nodes whose veths have the same ifindexes: only the netnsid tells them apart.
    reads = [
        NamespaceRead(
            "node-1",
            "node",
            _raw(
                (lo, RawLink("cni0", 2, "bridge", True), RawLink("v1", 3, "veth", True, "cni0", True, 0, 2)),
                {0: "k-pod-1"},
            ),
        ),
        NamespaceRead("node-2", "node", _raw((lo, RawLink("v2", 3, "veth", True, None, False, 5, 2)), {5: "k-pod-2"})),
        NamespaceRead("pod-1", "pod", _raw((lo, RawLink("eth0", 2, "veth", True, None, False, 0, 3)), {0: "k-node-1"})),
        NamespaceRead("pod-2", "pod", _raw((lo, RawLink("eth0", 2, "veth", True, None, False, 1, 3)), {1: "k-node-2"})),
    ]
    names = {"k-node-1": "node-1", "k-node-2": "node-2", "k-pod-1": "pod-1", "k-pod-2": "pod-2"}
    dp = assemble(reads, names)
    n1, n2 = dp.netns("node-1"), dp.netns("node-2")
    assert [(lk.name, lk.peer_netns, lk.peer_name, lk.master, lk.hairpin) for lk in n1.links] == [
        ("cni0", None, None, None, False),
        ("v1", "pod-1", "eth0", "cni0", True),
    ]
    assert [(lk.name, lk.peer_netns) for lk in n2.links] == [("v2", "pod-2")]
    assert dp.netns("pod-1").links == () and dp.netns("pod-2").links == ()
    with pytest.raises(SnapshotError, match="no namespace read"):
        assemble(reads[:2], names)
    down = NamespaceRead("x", "pod", _raw((RawLink("lo", 1, "loopback", False),)))
    with pytest.raises(SnapshotError, match="down"):
        assemble([down], {})


def test_sections_and_clean_rules() -> None:
    out = split_sections("junk\n@@links\n[]\n@@iptables\n# Generated\n*nat\n:PREROUTING ACCEPT [12:720]\nCOMMIT\n")
    assert out["links"] == "[]\n"
    assert clean_rules(out["iptables"]) == "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"


@pytest.mark.parametrize("implementation", ["reference", "cni-bridge", "cni-ptp"])
def test_dataplane_file_round_trip_is_exact(implementation: str) -> None:
    dp = get_implementation(implementation).render(load_scenario(POLICIES))
    text = dump_dataplane(dp)
    back = load_dataplane(text)
    assert back == dp and back.implementation == dp.implementation
    assert load_dataplane(dump_dataplane(back)) == back


def test_dataplane_file_is_read_strictly() -> None:
    doc = json.loads(dump_dataplane(get_implementation("reference").render(classic_scenario())))
    doc["namespaces"][0]["colour"] = "blue"
    with pytest.raises(DataplaneFormatError, match="colour"):
        load_dataplane(json.dumps(doc))
    with pytest.raises(DataplaneFormatError, match="apiVersion"):
        load_dataplane(json.dumps({"kind": "Dataplane"}))


def test_snapshot_of_a_run_by_id_is_the_state_without_the_intent(live: NetnsBackend) -> None:
    live.deploy(get_implementation("reference").render(classic_scenario()))
    full = live.snapshot()
    by_id = snapshot_run(live.run_id)
    assert [ns.name for ns in by_id.namespaces] == [ns.name for ns in full.namespaces]
    assert [dataclasses.replace(ns, listeners=()) for ns in full.namespaces] == list(by_id.namespaces)
    assert by_id.sources == ()


def test_fixed_dataplane_from_a_snapshot_file(tmp_path: Path) -> None:
    dp = get_implementation("reference").render(classic_scenario())
    (tmp_path / "dp.json").write_text(dump_dataplane(dp))
    (tmp_path / "s.yaml").write_text(dump_scenario(classic_scenario()))
    impl = from_snapshot(tmp_path / "dp.json", tmp_path / "s.yaml")
    assert impl.render(classic_scenario()) == dp
    with pytest.raises(ForeignScenarioError):
        impl.render(load_scenario(POLICIES))
