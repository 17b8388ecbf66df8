"""Snapshots of the netns backend's namespaces (`conformance.snapshot` through the worker).

The reader's command runs in a child started by the worker thread while it
is inside the namespace (as iptables-restore is): the root namespace is
never read, and no `ip netns exec` remount is needed (the reader uses
netlink and /proc/sys, which follow the namespace). All namespaces are
read at once.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from backends.netns.build import Netns
from backends.netns.nsutil import NetnsWorker
from conformance.dataplane import Dataplane
from conformance.snapshot import SnapshotError, assemble, carry_over, from_output, read_argv

SAVE = "iptables-legacy-save"  # the variant the backend restores with
TIMEOUT = 30.0


class NetnsAccess:
    """`NodeAccess` for one of the backend's namespaces."""

    def __init__(self, worker: NetnsWorker, ns: Netns) -> None:
        self.worker = worker
        self.ns = ns

    def run(self, argv: Sequence[str]) -> str:
        def job() -> subprocess.Popen[str]:
            return _start(self.worker, self.ns, argv)

        return _finish(self.worker.run(job), self.ns, argv)


def _start(worker: NetnsWorker, ns: Netns, argv: Sequence[str]) -> subprocess.Popen[str]:
    # The child inherits the worker thread's namespace.
    with worker.inside(ns.fd):
        return subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], ns: Netns, argv: Sequence[str]) -> str:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SnapshotError(f"{ns.config.name}: {argv[0]} took longer than {TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        raise SnapshotError(f"{ns.config.name}: {' '.join(argv[:2])}: exit {proc.returncode}: {err[:300]}")
    return out


def snapshot(worker: NetnsWorker, namespaces: Mapping[str, Netns], intent: Dataplane) -> Dataplane:
    """Read every namespace of a deployment into a plain Dataplane (listeners and sources from `intent`)."""
    # Every tool here (the backend, the plugins through the shim) uses iptables-legacy.
    argv = read_argv(SAVE, check_nft=False)

    def job() -> list[subprocess.Popen[str]]:
        started: list[subprocess.Popen[str]] = []
        try:
            for ns in namespaces.values():
                started.append(_start(worker, ns, argv))
        except BaseException:
            for proc in started:
                proc.kill()
                proc.wait()
            raise
        return started

    procs = worker.run(job)
    outputs = [_finish(proc, ns, argv) for proc, ns in zip(procs, namespaces.values(), strict=True)]
    reads = [
        from_output(out, ns.config.name, ns.config.role) for out, ns in zip(outputs, namespaces.values(), strict=True)
    ]
    names = {ns.kname: logical for logical, ns in namespaces.items()}
    plain = assemble(reads, names, implementation=f"snapshot of {intent.implementation or 'a deployment'}")
    return carry_over(plain, intent)
