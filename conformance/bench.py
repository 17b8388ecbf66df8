"""`netconformance bench`: the figures that decide whether the suite gets used.

Benchmarks print figures and write them as JSON; nothing here passes or
fails on timing (the machines are shared and noisy).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from backends import Backend, BackendUnavailable, get_backend
from backends.sim import SimBackend
from backends.sim.iptables import parse_iptables_save
from backends.sim.kernel import Kernel
from backends.sim.netfilter import compiled_tables
from backends.sim.probing import observe
from conformance.compare import run_compare
from conformance.implementations import get_implementation
from conformance.model import ContainerPort, Node, Pod, Scenario, Service, ServicePort
from conformance.probes import Probe
from conformance.strategies import classic_scenario


def medium_scenario() -> Scenario:
    """3 nodes, 12 pods (4 per node), 10 Services with endpoints spread over the nodes."""
    nodes = tuple(
        Node(f"node-{i}", IPv4Address(f"172.18.0.{i + 1}"), IPv4Network(f"10.244.{i}.0/24")) for i in (1, 2, 3)
    )
    pods = tuple(
        Pod(
            "default",
            f"pod-{n}-{j}",
            f"node-{n}",
            IPv4Address(f"10.244.{n}.{10 + j}"),
            labels=(("app", f"a{(n + j) % 5}"),),
            ports=(ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP")),
        )
        for n in (1, 2, 3)
        for j in range(4)
    )
    services = tuple(
        Service(
            "default",
            f"svc-{k}",
            IPv4Address(f"10.96.0.{10 + k}"),
            (ServicePort(80, 8080, "TCP", "tcp"), ServicePort(80, 8080, "UDP", "udp")),
            selector=(("app", f"a{k % 5}"),),
        )
        for k in range(10)
    )
    return Scenario(nodes=nodes, pods=pods, services=services, name="bench-3x12")


def large_scenario(services: int = 1000) -> Scenario:
    """One node, 3 endpoint pods, `services` Services selecting all three (kube-proxy-sized rulesets)."""
    base = classic_scenario()
    node = base.nodes[0]
    pods = tuple(
        Pod(
            "default",
            f"ep-{j}",
            node.name,
            IPv4Address(f"10.244.1.{20 + j}"),
            (("app", "big"),),
            (ContainerPort(8080),),
        )
        for j in range(3)
    )
    client = replace(base.pod("default/pod-a"), ports=())
    svcs = tuple(
        Service(
            "default",
            f"svc-{k}",
            IPv4Address(int(IPv4Address("10.96.16.0")) + k),
            (ServicePort(80, 8080, "TCP", "http"),),
            selector=(("app", "big"),),
        )
        for k in range(services)
    )
    return Scenario(nodes=(node,), pods=(client, *pods), services=svcs, name=f"bench-{services}-services")


def _rate(fn: Callable[[], int], *, seconds: float = 2.0) -> float:
    """Units per second of `fn` (which returns how many units it did), run for about `seconds`."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def _probes_of(s: Scenario, n: int) -> list[Probe]:
    clients = [f"pod:{p.ref}" for p in s.pods]
    out = []
    for i in range(n):
        svc = s.services[i % len(s.services)]
        sp = svc.ports[i % len(svc.ports)]
        out.append(Probe(clients[i % len(clients)], svc.cluster_ip, sp.port, sp.protocol))
    return out


def service_probes(s: Scenario, *, limit: int | None = None) -> list[Probe]:
    """Every pod to every Service port (the first `limit` Services), each probe once."""
    services = s.services[:limit]
    return [
        Probe(f"pod:{p.ref}", svc.cluster_ip, sp.port, sp.protocol)
        for svc in services
        for sp in svc.ports
        for p in s.pods
    ]


def _sim_window(kernel: Kernel, probes: Sequence[Probe], seconds: float) -> float:
    """Probes per second over cold rounds for about `seconds` of observe() time.

    A round observes each probe once, as a spec example does after its
    deployment; the kernel forgets what it learned (memoised lookups, ARP,
    FDB) between rounds, so repetition does not turn into cache hits.
    Only observe() is timed.
    """
    done, spent = 0, 0.0
    while spent < seconds:
        kernel.forget_learned()
        start = time.perf_counter()
        for probe in probes:
            observe(kernel, probe, tracing=False)
        spent += time.perf_counter() - start
        done += len(probes)
    return done / spent


def sim_rates(
    workloads: Mapping[str, tuple[Kernel, Sequence[Probe]]], *, windows: int = 15, seconds: float = 0.3
) -> dict[str, float]:
    """The best window's probes/s of each workload, windows taken in turn.

    This shared machine's speed drifts by half within seconds to minutes:
    taking the workloads' windows in rotation spreads each over the whole
    run and lets all see the same phases, and the best window is the one
    least slowed by the neighbours. The first rotation warms up and does not
    count. "calibration" is a fixed pure-Python loop (thousand units/s, see
    `calibration_round`) taken in the same rotation, to read the others by.
    """
    best = {name: 0.0 for name in workloads}
    best["calibration"] = 0.0
    for window in range(windows + 1):
        rates = {name: _sim_window(kernel, probes, seconds) for name, (kernel, probes) in workloads.items()}
        rates["calibration"] = _rate(calibration_round, seconds=seconds) / 1000
        if window:
            best = {name: max(best[name], rates[name]) for name in best}
    return best


def _calibration_step(i: int) -> int:
    return i ^ (i >> 3)


def calibration_round() -> int:
    """A fixed pure-Python workload of 10,000 units (calls, tuples, dict lookups),
    independent of the project's code: the machine's speed, to read the other figures by."""
    table: dict[tuple[int, int], int] = {}
    for i in range(10_000):
        key = (i & 255, i >> 8)
        table[key] = table.get(key, 0) + _calibration_step(i)
    return 10_000


def bench_sim(figures: dict[str, object]) -> None:
    reference = get_implementation("reference")
    big = large_scenario()
    dataplane = reference.render(big)
    rules = sum(ns.iptables.count("\n-A ") for ns in dataplane.namespaces)
    text = max((ns.iptables for ns in dataplane.namespaces), key=len)
    parse_times = []
    for _ in range(3):
        start = time.perf_counter()
        compiled_tables(parse_iptables_save(text, source="bench"))  # parse, check, compile
        parse_times.append(time.perf_counter() - start)
    figures["sim_parse_1000_services_s"] = round(min(parse_times), 3)
    figures["sim_rules_1000_services"] = rules
    # 64 Services spread over the ruleset (chains near its end cost the most to reach linearly).
    spread = Scenario(nodes=big.nodes, pods=big.pods, services=big.services[::16], name=big.name)
    workloads = {
        label: (Kernel(reference.render(scenario)), service_probes(scenario))
        for label, scenario in (("classic", classic_scenario()), ("3x12x10", medium_scenario()))
    }
    workloads["1000_services"] = (Kernel(dataplane), service_probes(spread))
    rates = sim_rates(workloads)
    figures["machine_python_kunits_per_s"] = round(rates.pop("calibration"))
    for label, rate in rates.items():
        figures[f"sim_probes_per_s_{label}"] = round(rate)


def bench_netns(figures: dict[str, object], backend: Backend, compare_examples: int) -> None:
    scenario = medium_scenario()
    dataplane = get_implementation("reference").render(scenario)
    builds = []
    for _ in range(3):
        backend.teardown()
        start = time.perf_counter()
        backend.deploy(dataplane)
        builds.append(time.perf_counter() - start)
    figures["netns_build_3x12_s"] = round(sorted(builds)[1], 3)
    probes = _probes_of(scenario, 8)
    other = get_implementation("no-hairpin-masquerade").render(scenario)
    costs = []
    for i in range(10):
        start = time.perf_counter()
        backend.deploy(other if i % 2 else dataplane)  # a rules swap, as between examples
        backend.reset()
        backend.observe(probes)
        costs.append(time.perf_counter() - start)
    figures["netns_example_cost_s"] = round(sorted(costs)[len(costs) // 2], 4)
    delivered = _probes_of(scenario, 64)
    backend.deploy(dataplane)
    figures["netns_probes_per_s"] = round(_rate(lambda: len(backend.observe(delivered)), seconds=2.0))
    sim_rate = figures.get("sim_probes_per_s_3x12x10")
    if isinstance(sim_rate, int | float) and sim_rate:
        figures["sim_vs_kernel_time_per_probe"] = round(figures["netns_probes_per_s"] / sim_rate, 3)  # type: ignore[operator]
    backend.teardown()
    r = run_compare(SimBackend(), backend, get_implementation("reference"), examples=compare_examples, seed=1)
    backend.teardown()
    figures["compare_examples_per_s"] = round(r.examples / r.seconds, 1) if r.seconds else 0.0
    figures["compare_agreed"] = r.passed


def bench_tox(figures: dict[str, object], envs: Sequence[str]) -> None:
    for env in envs:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tox", "-e", env, "-q"], check=False, capture_output=True)
        figures[f"tox_{env}_wall_s"] = round(time.perf_counter() - start, 1)
        figures[f"tox_{env}_exit"] = done.returncode


def run_bench(
    *, backends: Sequence[str], tox_envs: Sequence[str], compare_examples: int, out_dir: Path
) -> dict[str, object]:
    figures: dict[str, object] = {
        "machine": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    bench_sim(figures)
    for name in backends:
        if name == "sim":
            continue
        try:
            backend = get_backend(name)
            backend.preflight()
        except (BackendUnavailable, KeyError) as e:
            figures[f"{name}_skipped"] = str(e)
            continue
        try:
            bench_netns(figures, backend, compare_examples)
        finally:
            backend.teardown()
    bench_tox(figures, tox_envs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


TARGETS = {
    "sim_probes_per_s_classic": ">= 20000",
    "sim_probes_per_s_3x12x10": ">= 20000",
    "sim_probes_per_s_1000_services": ">= 2000",
    "netns_build_3x12_s": "< 0.3",
    "compare_examples_per_s": ">= 10",
    "tox_sim_wall_s": "< 60",
    "tox_netns_wall_s": "< 300",
}


def render(figures: dict[str, object]) -> str:
    width = max(len(k) for k in figures)
    lines = []
    for k, v in figures.items():
        target = TARGETS.get(k)
        lines.append(f"{k:<{width}}  {v}" + (f"   (target {target})" if target else ""))
    return "\n".join(lines)
