"""What the tests against a live backend (netns, docker) share.

Selection follows the pytest plugin: a live test runs when --backend names
its backend (or, unless `selected_only`, NETCONFORMANCE_REQUIRE_BACKENDS
does), is skipped with the preflight's exact reason when it cannot run, and
fails instead when NETCONFORMANCE_REQUIRE_BACKENDS names the backend.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from backends import Backend, BackendUnavailable
from backends.netns.build import BUILTIN_CHAINS
from backends.sim import SimBackend
from conformance.dataplane import Dataplane
from conformance.implementations import get_implementation
from conformance.model import Scenario
from conformance.probes import Observation, Outcome, Probe
from conformance.pytest_plugin import required_backends, selected_backends
from conformance.strategies import classic_scenario

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "tests" / "scenarios" / "policies.yaml"


def live_or_skip(
    request: pytest.FixtureRequest,
    name: str,
    preflight: Callable[[], None],
    *,
    selected_only: bool = False,
    what: str | None = None,
) -> None:
    """Skip (or fail, when required) unless backend `name` is chosen and `preflight` passes."""
    chosen = selected_backends(request.config)
    required = name in required_backends()
    if name not in chosen and (selected_only or not required):
        pytest.skip(f"the {name} backend is not selected (run with --backend {name})")
    try:
        preflight()
    except BackendUnavailable as e:
        if required:
            pytest.fail(f"{what or f'{name} backend'} required but unavailable: {e}")
        pytest.skip(str(e))


def classic_with_node_port() -> Scenario:
    """The classic scenario, its Service also exposed as NodePort 30080 (TCP and UDP)."""
    scenario = classic_scenario()
    svc = scenario.services[0]
    ports = tuple(dataclasses.replace(p, node_port=30080) for p in svc.ports)
    return dataclasses.replace(scenario, services=(dataclasses.replace(svc, ports=ports, type="NodePort"),))


A, B, SVC, NODE = (IPv4Address(a) for a in ("10.244.1.10", "10.244.1.11", "10.96.0.100", "172.18.0.2"))
POD_A, POD_B = "pod:default/pod-a", "pod:default/pod-b"
CLASSIC_PROBES = [
    Probe(POD_A, B, 8080, "TCP"),  # pod -> pod
    Probe(POD_A, B, 8080, "UDP"),
    Probe(POD_A, SVC, 80, "TCP"),  # pod -> ClusterIP
    Probe(POD_A, SVC, 80, "UDP"),
    Probe(POD_B, SVC, 80, "TCP"),  # hairpin
    Probe(POD_B, SVC, 80, "UDP"),
    Probe(POD_A, B, 9999, "TCP"),  # closed port
    Probe(POD_A, B, 9999, "UDP"),
    Probe("node:node-1", B, 8080, "TCP"),  # node -> pod
    Probe("node:node-1", B, 8080, "UDP"),
    Probe("external", NODE, 30080, "TCP"),  # external -> NodePort (on docker, across the Docker network)
    Probe("external", NODE, 30080, "UDP"),
    Probe(POD_A, SVC, 81, "TCP"),  # a port the Service lacks
]


@dataclasses.dataclass(frozen=True)
class Measured:
    """Rules put first in one table of one namespace of the classic scenario (with NodePort 30080), a probe,
    and the verdict the real kernel gives it."""

    rules: str
    probe: Probe
    verdict: str
    table: str = "filter"
    netns: str = "node-node-1"

    def dataplane(self) -> Dataplane:
        return with_rules(self.rules, netns=self.netns, table=self.table, scenario=classic_with_node_port())


# Found by the sim-vs-kernel hunt of 2026-12-07; the simulator had each verdict wrong.
MEASURED = {
    # The raw table runs before conntrack: conntrack_mt sees no entry and says INVALID, never UNTRACKED.
    "raw-prerouting-sees-invalid": Measured(
        "-A PREROUTING -p udp -m conntrack --ctstate INVALID -j DROP\n", Probe(POD_A, B, 8080, "UDP"), "dropped", "raw"
    ),
    "raw-prerouting-sees-no-untracked": Measured(
        "-A PREROUTING -p udp -m state --state UNTRACKED -j DROP\n", Probe(POD_A, B, 8080, "UDP"), "delivered", "raw"
    ),
    "raw-output-sees-invalid": Measured(
        "-A OUTPUT -p udp -m conntrack --ctstate INVALID -j DROP\n",
        Probe("node:node-1", B, 8080, "UDP"),
        "refused",  # sendto: EPERM
        "raw",
    ),
    # A node's own ICMP error dropped in its OUTPUT: no socket learns of it, the remote client just waits.
    "node-icmp-error-dropped": Measured(
        "-A FORWARD -p udp --dport 8080 -j REJECT\n-A OUTPUT -p icmp -j DROP\n",
        Probe("external", NODE, 30080, "UDP"),
        "dropped",
    ),
    # A server's answer dropped in its own OUTPUT: its send fails, the client waits.
    "server-answer-dropped": Measured(
        "-A OUTPUT -p udp --sport 8080 -j DROP\n", Probe(POD_A, B, 8080, "UDP"), "dropped", netns="pod-default-pod-b"
    ),
    "server-syn-ack-dropped": Measured(
        "-A OUTPUT -p tcp --sport 8080 -j DROP\n", Probe(POD_A, B, 8080, "TCP"), "dropped", netns="pod-default-pod-b"
    ),
    # A bridged frame rejected with an ICMP code: the node sends the error like any of its own packets.
    "bridged-reject-port-unreachable": Measured(
        "-A FORWARD -m physdev --physdev-is-bridged -p udp -j REJECT\n", Probe(POD_A, SVC, 80, "UDP"), "refused"
    ),
    "bridged-reject-admin-prohibited": Measured(
        "-A FORWARD -p tcp -d 10.244.1.11 -j REJECT --reject-with icmp-admin-prohibited\n",
        Probe(POD_B, SVC, 80, "TCP"),  # hairpin
        "refused",  # EHOSTUNREACH
    ),
    # -m connmark (the simulator once refused it as not modelled): the connection's mark, and no match at all
    # without a connection (the raw table), even inverted.
    "connmark-set-then-matched": Measured(
        "-A PREROUTING -p udp -d 10.244.1.11 -j CONNMARK --set-mark 0x1\n-A FORWARD -m connmark --mark 0x1/0x1 -j DROP\n",
        Probe(POD_A, B, 8080, "UDP"),
        "dropped",
        "mangle",
    ),
    "connmark-without-connection": Measured(
        "-A PREROUTING -p udp -m connmark ! --mark 0x1 -j DROP\n", Probe(POD_A, B, 8080, "UDP"), "delivered", "raw"
    ),
    # NOTRACK and CT --notrack (node-local-dns' raw rules): the packet skips conntrack, so NAT too, and is
    # UNTRACKED to later rules; a client's ACK after an untracked SYN-ACK is INVALID (kube-proxy drops it).
    "notrack-then-state": Measured(
        "-A PREROUTING -p udp -j NOTRACK\n-A PREROUTING -p udp -m state --state UNTRACKED -j DROP\n",
        Probe(POD_A, B, 8080, "UDP"),
        "dropped",
        "raw",
    ),
    "ct-notrack-skips-dnat": Measured(
        "-A PREROUTING -p tcp -d 10.96.0.100 -j CT --notrack\n", Probe(POD_A, SVC, 80, "TCP"), "dropped", "raw"
    ),
    "notrack-replies": Measured(
        "-A PREROUTING -p tcp --sport 8080 -j NOTRACK\n", Probe(POD_A, B, 8080, "TCP"), "dropped", "raw"
    ),
    # REJECT's verdict is NF_DROP: the client's sendto fails with EPERM even when its ICMP error is lost.
    "client-reject-in-output-answer-lost": Measured(
        "-A OUTPUT -p udp --dport 8080 -j REJECT\n-A OUTPUT -p icmp -j DROP\n",
        Probe(POD_A, B, 8080, "UDP"),
        "refused",
        netns="pod-default-pod-a",
    ),
}


def with_rules(
    rules: str, *, netns: str = "pod-default-pod-b", table: str = "filter", scenario: Scenario | None = None
) -> Dataplane:
    """The reference dataplane of `scenario` (the classic one), with `rules` in one table of one namespace (by
    default pod-b's filter table): first in their chains when the table is there (as `iptables -I`), else in a
    table of their own."""
    dataplane = get_implementation("reference").render(scenario or classic_scenario())
    chains = "".join(f":{chain} ACCEPT [0:0]\n" for chain in BUILTIN_CHAINS[table])
    namespaces = []
    for ns in dataplane.namespaces:
        if ns.name == netns:
            head = f"*{table}\n"
            if head in ns.iptables:
                start = ns.iptables.index(head)
                end = ns.iptables.index("COMMIT\n", start)
                first = ns.iptables.find("\n-A ", start, end)
                at = end if first < 0 else first + 1  # before the table's first rule
                text = ns.iptables[:at] + rules + ns.iptables[at:]
            else:
                text = ns.iptables + f"{head}{chains}{rules}COMMIT\n"
            ns = dataclasses.replace(ns, iptables=text)
        namespaces.append(ns)
    return dataclasses.replace(dataplane, namespaces=tuple(namespaces))


def assert_reset_empties_recent_lists(backend: Backend, *, who: str) -> None:
    """The second connection from a listed address is reset. Lists outlive conntrack flushes and rules swaps, so
    unless the backend empties them at each reset, one example's probes decide the next example's."""
    dataplane = with_rules(
        "-A INPUT -p tcp --dport 8080 --syn -m recent --name seen --rcheck -j REJECT --reject-with tcp-reset\n"
        "-A INPUT -p tcp --dport 8080 --syn -m recent --name seen --set\n"
    )
    probes = [Probe(POD_A, B, 8080, "TCP")]
    first, second = sampled(backend, dataplane, probes), sampled(backend, dataplane, probes)
    assert first[0].verdict == second[0].verdict == "delivered", (first, second)
    assert_like_sim(dataplane, probes, second, who=who)
    # ... and the list did fill: a second probe in the same example is refused
    assert backend.observe(probes)[0].outcomes[0][0].verdict == "refused"


def simulated(dataplane: Dataplane, probes: Sequence[Probe]) -> list[Observation]:
    """The simulator's prediction for `probes` on `dataplane`."""
    sim = SimBackend()
    sim.deploy(dataplane)
    return sim.observe(probes)


def sampled(backend: Backend, dataplane: Dataplane, probes: Sequence[Probe]) -> list[Outcome]:
    """Deploy, reset, and one sample per probe (a real backend observes one outcome each)."""
    backend.deploy(dataplane)
    backend.reset()
    observations = backend.observe(probes)
    for obs in observations:
        assert not obs.exact and len(obs.outcomes) == 1 and obs.outcomes[0][1] == 1.0
    return [obs.outcomes[0][0] for obs in observations]


def assert_like_sim(dataplane: Dataplane, probes: Sequence[Probe], samples: Sequence[Outcome], *, who: str) -> None:
    """Every sample is an outcome the simulator allows; `who` names the sampler in the message."""
    bad = []
    for expected, sample in zip(simulated(dataplane, probes), samples, strict=True):
        if sample not in expected.possible:
            bad.append(f"{expected.probe}: {who} {sample.summary()} [{sample.reason}]; sim {expected.describe()}")
    assert not bad, f"{dataplane.implementation}:\n" + "\n".join(bad)


@dataclasses.dataclass(frozen=True)
class Terminated:
    run_id: str
    returncode: int
    output: str  # stdout and stderr together


def terminate_once_started(
    args: Sequence[str],
    started: Callable[[int], str | None],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Terminated:
    """Start `python args...`, wait until `started(its pid)` names the run it built, send SIGTERM, and wait for the
    end. (The pid keeps another run on the same machine, started meanwhile, from passing for this one.)"""
    child = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        run_id, deadline = None, time.monotonic() + timeout
        while run_id is None and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            run_id = started(child.pid)
            time.sleep(0.05)
        assert run_id is not None, f"the run built nothing within {timeout:.0f} s"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return Terminated(run_id, child.returncode, out)
