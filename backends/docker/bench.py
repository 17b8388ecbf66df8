"""What an example costs on the docker backend against the netns backend, in one run.

`python -m backends.docker.bench` (as root, with a Docker daemon and the node
image): the same workloads as `backends.netns.bench`, on both backends one
after the other, in one process:

* first deploy of a 3-node, 12-pod cluster (docker: containers start);
* an example whose rules change only (swap, conntrack flush, 36 probes);
* an example that needs a rebuild (the topology alternates with a 1-node one).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from backends import Backend
from backends.docker.backend import DockerBackend
from backends.netns import NetnsBackend
from backends.netns.bench import cluster, delivered_probes
from conformance.dataplane import Dataplane
from conformance.implementations import get_implementation
from conformance.probes import Probe


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(backend: Backend, rounds: int) -> dict[str, list[float]]:
    scenario, small_scenario = cluster(), cluster(1, 2)
    reference = get_implementation("reference").render(scenario)
    other = get_implementation("dnat-ip-only").render(scenario)  # same topology, other rules
    small = get_implementation("reference").render(small_scenario)
    probes, small_probes = delivered_probes(scenario), delivered_probes(small_scenario)

    def example(dataplane: Dataplane, probes: list[Probe]) -> None:
        backend.deploy(dataplane)
        backend.reset()
        outcomes = backend.observe(probes)
        if any(o.outcomes[0][0].verdict != "delivered" for o in outcomes):
            raise RuntimeError(f"{backend.name}: a bench probe was not delivered")

    out: dict[str, list[float]] = {"first deploy": [], "rules-only example": [], "rebuild example": []}
    try:
        for _ in range(max(1, rounds // 3)):
            backend.teardown()
            out["first deploy"].append(_timed(lambda: backend.deploy(reference)))
        for i in range(rounds):
            rules = other if i % 2 else reference
            start = time.perf_counter()
            example(rules, probes)
            out["rules-only example"].append(time.perf_counter() - start)
        for i in range(rounds):
            plane, asked = (reference, probes) if i % 2 == 0 else (small, small_probes)
            start = time.perf_counter()
            example(plane, asked)
            out["rebuild example"].append(time.perf_counter() - start)
    finally:
        backend.teardown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    backends: list[Backend] = [NetnsBackend(), DockerBackend()]
    results = {}
    for b in backends:
        b.preflight()
        results[b.name] = measure(b, args.rounds)
    print(f"{'':20}" + "".join(f"{b.name:>16}" for b in backends) + "   (median ms)")
    for what in results["netns"]:
        cells = "".join(f"{statistics.median(results[b.name][what]) * 1000:16.1f}" for b in backends)
        print(f"{what:20}{cells}")


if __name__ == "__main__":
    main()
