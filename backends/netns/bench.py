"""How fast is the netns backend here? `python -m backends.netns.bench` (as root).

Prints the build time of a 3-node, 12-pod cluster, the cost of one
example when only rules change (swap + conntrack flush + probes), the
cost of one example that needs a rebuild, and probe throughput.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from backends.netns import NetnsBackend
from conformance.dataplane import Dataplane
from conformance.implementations import get_implementation
from conformance.model import ContainerPort, Node, Pod, Scenario, Service, ServicePort, labels
from conformance.probes import Probe


def cluster(nodes: int = 3, pods_per_node: int = 4) -> Scenario:
    """`nodes` nodes with `pods_per_node` pods each; svc-0 selects every pod (with a NodePort)."""
    both = (ContainerPort(8080, "TCP"), ContainerPort(8080, "UDP"))
    node_list = tuple(
        Node(f"node-{i + 1}", IPv4Address(f"172.18.0.{i + 2}"), IPv4Network(f"10.244.{i + 1}.0/24"))
        for i in range(nodes)
    )
    pods = tuple(
        Pod("default", f"pod-{n.name[5:]}-{j}", n.name, n.pod_cidr.network_address + 10 + j, labels({"app": "a"}), both)
        for n in node_list
        for j in range(pods_per_node)
    )
    svc = Service(
        "default",
        "svc-0",
        IPv4Address("10.96.0.100"),
        ports=(ServicePort(80, 8080, "TCP", "tcp", node_port=30080), ServicePort(80, 8080, "UDP", "udp")),
        selector=labels({"app": "a"}),
        type="NodePort",
    )
    return Scenario(nodes=node_list, pods=pods, services=(svc,), name=f"bench-{nodes}x{pods_per_node}")


def delivered_probes(scenario: Scenario) -> list[Probe]:
    """Probes that are answered (so none costs a timeout): pod->pod and pod->Service."""
    out: list[Probe] = []
    pods = scenario.pods
    for i, src in enumerate(pods):
        dst = pods[(i + 1) % len(pods)]
        out.append(Probe(f"pod:{src.ref}", dst.ip, 8080, "TCP"))
        out.append(Probe(f"pod:{src.ref}", dst.ip, 8080, "UDP"))
        out.append(Probe(f"pod:{src.ref}", scenario.services[0].cluster_ip, 80, "TCP"))
    return out


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ms(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:.1f} ms (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    scenario = cluster()
    reference = get_implementation("reference").render(scenario)
    other = get_implementation("dnat-ip-only").render(scenario)  # same topology, other rules
    small = get_implementation("reference").render(cluster(1, 2))
    probes = delivered_probes(scenario)
    backend = NetnsBackend()
    backend.preflight()

    def example(dataplane: Dataplane, probes: list[Probe]) -> None:
        backend.deploy(dataplane)
        backend.reset()
        backend.observe(probes)

    try:
        quiet = []
        for _ in range(args.rounds):
            time.sleep(0.5)  # let the kernel finish dismantling the previous namespaces
            quiet.append(_timed(lambda: backend.deploy(reference)))
            backend.teardown()
        print(f"build 3 nodes / 12 pods ({len(reference.namespaces)} namespaces), quiet kernel: {_ms(quiet)}")

        busy = []
        for i in range(args.rounds):
            # A different topology each time: a rebuild while the last one is still being dismantled.
            busy.append(_timed(lambda i=i: example(reference if i % 2 else small, probes[:3])))  # type: ignore[misc]
        print(f"per example, topology changed (1x2 <-> 3x4 rebuild + 3 probes): {_ms(busy)}")
        backend.teardown()

        small_examples = []
        for i in range(args.rounds):
            variant = get_implementation("dnat-ip-only" if i % 2 else "reference").render(cluster(1, 2))
            small_examples.append(_timed(lambda v=variant: example(v, probes[:3])))  # type: ignore[misc]
        print(f"per example, 1 node / 2 pods, rules swapped + 3 probes: {_ms(small_examples)}")
        backend.teardown()

        backend.deploy(reference)
        backend.reset()
        backend.observe(probes)  # warm ARP caches as any run would
        swaps, resets, observes = [], [], []
        for i in range(args.rounds):
            swaps.append(_timed(lambda i=i: backend.deploy(other if i % 2 == 0 else reference)))  # type: ignore[misc]
            resets.append(_timed(backend.reset))
            observes.append(_timed(lambda: backend.observe(probes[:8])))
        per_example = statistics.median(swaps) + statistics.median(resets) + statistics.median(observes)
        print(
            f"per example, 3x4 rules swapped + conntrack flush + 8 probes: {per_example * 1000:.1f} ms "
            f"(swap {statistics.median(swaps) * 1000:.1f} + flush {statistics.median(resets) * 1000:.2f} "
            f"+ probes {statistics.median(observes) * 1000:.1f}) = {1 / per_example:.0f} examples/s"
        )

        many = probes * 4
        times = [_timed(lambda: backend.observe(many)) for _ in range(args.rounds)]
        rate = len(many) / statistics.median(times)
        print(
            f"probes: {len(many)} concurrent delivered probes in {statistics.median(times) * 1000:.1f} ms = {rate:.0f}/s"
        )
    finally:
        backend.teardown()


if __name__ == "__main__":
    main()
