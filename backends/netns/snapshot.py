"""Snapshots of the netns backend's namespaces (`conformance.snapshot` through the worker).

The reader's command runs in a child started by the worker thread while it
is inside the namespace (as iptables-restore is): the root namespace is
never read, and no `ip netns exec` remount is needed (the reader uses
netlink and /proc/sys, which follow the namespace). All namespaces are
read at once.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from backends.netns import records
from backends.netns.build import Netns
from backends.netns.nsutil import NetnsWorker, netns_path
from conformance.dataplane import Dataplane, NetnsConfig, Role
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
    return carry_over(plain, intent) if intent.namespaces else plain


def snapshot_run(run_id: str, *, state_dir: Path | None = None) -> Dataplane:
    """Read the namespaces a live (or crashed) run recorded, without its intent.

    Logical names come from the kernel names (``nc-<run>-<name>``) and roles
    from their form (node-*, pod-*, underlay, external); listeners and probe
    sources are not kernel state, so this Dataplane has none (prefer
    `NetnsBackend.snapshot()`, which carries them over from the intent).
    """
    path = (state_dir or records.STATE_DIR) / f"{run_id}.json"
    if not path.exists():
        raise SnapshotError(f"no record of run {run_id} in {path.parent}")
    record = records.load(path)
    prefix = f"nc-{run_id}-"
    worker = NetnsWorker()
    fds: list[int] = []
    try:
        namespaces: dict[str, Netns] = {}
        for kname in record.netns:
            logical = kname[len(prefix) :]
            fd = os.open(netns_path(kname), os.O_RDONLY | os.O_CLOEXEC)
            fds.append(fd)
            config = NetnsConfig(name=logical, role=_role(logical))
            namespaces[logical] = Netns(config, kname, fd)
        return snapshot(worker, namespaces, Dataplane(namespaces=(), implementation=f"run {run_id}"))
    finally:
        for fd in fds:
            os.close(fd)
        worker.close()


def _role(logical: str) -> Role:
    if logical.startswith("node-"):
        return "node"
    if logical.startswith("pod-"):
        return "pod"
    if logical == "underlay":
        return "underlay"
    return "client" if logical == "external" else "sink"


def snapshot_deployment(dataplane: Dataplane) -> Dataplane:
    """Deploy on a fresh netns backend, read it back, tear it down (`netconformance snapshot`)."""
    from backends.netns import NetnsBackend  # late: the backend imports this module

    backend = NetnsBackend()
    try:
        backend.deploy(dataplane)
        return backend.snapshot()
    finally:
        backend.teardown()
