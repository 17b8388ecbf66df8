"""The netns backend: the dataplane on this machine's real kernel.

One network namespace per `NetnsConfig`, named ``nc-<run id>-<name>``,
built over netlink (pyroute2) by a worker thread that setns()es into each
namespace, so no process is forked per step and the root namespace is
never touched. Rules go through ``iptables-legacy-restore`` run inside the
namespace. Probe servers and clients are plain sockets created inside
their namespaces and driven by one selector loop in this process.

Everything created is recorded (``/run/netconformance/<run id>.json``)
before it is created; `cleanup()` undoes recorded runs, even after a
SIGKILL.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from backends import BackendUnavailable, env_seconds
from backends.netns import build, records
from backends.netns import snapshot as netns_snapshot
from backends.netns.build import Netns
from backends.netns.cni import CniRunner, missing_plugins_message, plugin_timeout, plugin_types
from backends.netns.conntrack import ConntrackFlusher
from backends.netns.nsutil import NetnsWorker, delete_netns
from backends.netns.probing import Server, client_socket, open_servers, run_probes
from conformance.dataplane import Dataplane
from conformance.probes import Observation, Probe

__all__ = ["NetnsBackend", "cleanup"]

DEFAULT_PROBE_TIMEOUT = 0.5
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21  # setns, unshare and the bind mounts of /run/netns


def cleanup(run_id: str | None = None) -> list[str]:
    """Delete what the records list (one run, or every run whose process is gone).

    Returns the namespaces and directories deleted. Never guesses from
    names: only what a record lists is deleted, and the record goes too.
    """
    return records.cleanup(run_id)


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _short(logical: str) -> str:
    """A short, readable, filesystem-safe form of a logical namespace name."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", logical)
    if len(clean) <= 24:
        return clean
    return clean[:15] + "-" + hashlib.sha256(logical.encode()).hexdigest()[:8]


def _structure(dataplane: Dataplane) -> tuple[object, ...]:
    """Everything but the rules: equal structures can be reused as they are.

    Rules added on top of a CNI plugin's (--noflush) cannot be swapped for
    others without knowing the plugin's: they count as structure.
    """
    return tuple(
        ns if ns.cni or ns.iptables_noflush else dataclasses.replace(ns, iptables="") for ns in dataplane.namespaces
    )


class NetnsBackend:
    """Real namespaces, veths, bridges and iptables; samples, not distributions."""

    name = "netns"
    exact = False

    def __init__(self, *, probe_timeout: float | None = None, reuse: bool = True) -> None:
        if probe_timeout is None:
            probe_timeout = env_seconds("NETCONFORMANCE_PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT)
        self.probe_timeout = probe_timeout
        self.cni_timeout = plugin_timeout()  # read now: a bad value is said before anything runs
        # Between examples, keep the namespaces when only rules changed.
        self.reuse = reuse
        self.run_id = secrets.token_hex(4)
        self.builds = 0  # full builds so far
        self.swaps = 0  # deploys that only swapped rules
        self._state_dir = records.STATE_DIR
        self._record: records.RunRecord | None = None
        self._worker: NetnsWorker | None = None
        self._dataplane: Dataplane | None = None
        self._namespaces: dict[str, Netns] = {}
        self._servers: list[Server] = []
        self._flushers: list[ConntrackFlusher] = []
        self._preflight_ok = False
        self._atexit = False
        self._cni: CniRunner | None = None
        self._rebuild = False
        self.cni_errors: list[str] = []  # what CNI DEL reported at teardown
        self._cni_errors_told = 0  # how many of them take_warnings() returned

    # -- the Backend protocol ------------------------------------------------

    def preflight(self) -> None:
        if self._preflight_ok:
            return
        if os.geteuid() != 0:
            raise BackendUnavailable(
                f"netns backend: needs root (uid 0 with CAP_NET_ADMIN and CAP_SYS_ADMIN); running as uid {os.geteuid()}"
            )
        caps = _effective_caps()
        for bit, cap in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")):
            if not caps >> bit & 1:
                raise BackendUnavailable(f"netns backend: the process lacks {cap} (effective capabilities {caps:#x})")
        if not Path("/proc/self/ns/net").exists():
            raise BackendUnavailable("netns backend: this kernel has no network namespaces (CONFIG_NET_NS)")
        if shutil.which(build.RESTORE) is None:
            raise BackendUnavailable(
                f"netns backend: {build.RESTORE} not found on PATH; install the Debian package "
                f"'iptables' (apt-get install iptables)"
            )
        if not Path("/proc/sys/net/bridge").is_dir():
            raise BackendUnavailable(
                "netns backend: /proc/sys/net/bridge is missing (br_netfilter is not loaded); run "
                "'modprobe br_netfilter' (Debian package 'kmod'; the module ships with "
                "linux-image-$(uname -r))"
            )
        self._preflight_ok = True

    def deploy(self, dataplane: Dataplane) -> None:
        self.preflight()
        self._check_plugins(dataplane)
        self._start()
        reusable = self._dataplane is not None and self.reuse and not self._rebuild
        if reusable and self._dataplane is not None and _structure(self._dataplane) == _structure(dataplane):
            self._swap_rules(dataplane)
            return
        self._rebuild = False
        retired = self._destroy(keep_alive=True)
        try:
            self._build(dataplane)
        except BaseException:
            self._destroy()
            raise
        finally:
            # The kernel dismantles a namespace when its last reference goes,
            # holding RTNL for tens of ms; letting the old ones go only now
            # keeps that work out of the build (it overlaps the probes).
            for fd in retired:
                os.close(fd)

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        dataplane, worker = self._dataplane, self._worker
        if dataplane is None or worker is None:
            raise RuntimeError("netns backend: observe() before deploy()")
        for p in probes:
            if p.protocol not in ("TCP", "UDP"):
                raise NotImplementedError(f"{p.protocol} probes are not supported by the netns backend")
        sources = [self._namespaces[dataplane.source_netns(p.source)] for p in probes]

        def make_sockets() -> list[socket.socket]:
            made: dict[int, socket.socket] = {}
            try:
                # Grouped by namespace: one switch per source namespace.
                for ns in {id(ns): ns for ns in sources}.values():
                    with worker.inside(ns.fd):
                        for i, p in enumerate(probes):
                            if sources[i] is ns:
                                made[i] = client_socket(p.protocol)
            except BaseException:
                for s in made.values():
                    s.close()
                raise
            return [made[i] for i in range(len(probes))]

        sockets = worker.run(make_sockets)
        outcomes = run_probes(probes, sockets, self._servers, self.probe_timeout)
        return [Observation(p, ((o, 1.0),), exact=False) for p, o in zip(probes, outcomes, strict=True)]

    def snapshot(self) -> Dataplane:
        """The deployed namespaces as they are now, read back into a plain Dataplane (no CNI attachments)."""
        dataplane, worker = self._dataplane, self._worker
        if dataplane is None or worker is None:
            raise RuntimeError("netns backend: snapshot() before deploy()")
        return netns_snapshot.snapshot(worker, self._namespaces, dataplane)

    def reset(self) -> None:
        for flusher in self._flushers:
            flusher.flush()
        if self._worker is not None:
            build.forget_recent_lists_of(self._worker, self._namespaces.values())
        for server in self._servers:
            server.drain()

    def teardown(self) -> None:
        try:
            try:
                self.cni_delete()
            except RuntimeError as e:
                # Run from atexit after an interrupt, the worker's executor is already shut down ("cannot schedule
                # new futures after shutdown"): DEL cannot run, but the namespaces must still go.
                self.cni_errors.append(f"CNI DEL not run: {e}")
            self._destroy()
        finally:
            # The record names everything this run made: undoing it removes what _destroy could not.
            if self._record is not None:
                records.undo(self._record, self._state_dir)
                self._record = None
            if self._worker is not None:
                self._worker.close()
                self._worker = None
        # The runner is bound to that worker and run directory: a reused
        # backend starts a new one.
        self._cni = None

    # -- internals -------------------------------------------------------------

    def _check_plugins(self, dataplane: Dataplane) -> None:
        kinds = sorted({k for ns in dataplane.namespaces for att in ns.cni for k in plugin_types(att.conflist)})
        missing = missing_plugins_message(kinds)
        if missing:
            raise BackendUnavailable(f"netns backend: {missing}")

    def cni_delete(self) -> list[str]:
        """CNI DEL for every attachment, as a runtime does when a pod goes; returns (and keeps) the errors.

        Teardown calls it; the namespaces stay until `teardown()`.
        """
        cni, worker = self._cni, self._worker
        if cni is None or worker is None or not cni.attached:
            return []
        namespaces = self._namespaces

        def job() -> list[str]:
            errors: list[str] = []
            for ns in namespaces.values():
                if ns.config.cni and ns.fd >= 0:
                    errors += cni.delete(ns, namespaces)
            return errors

        errors = worker.run(job)
        self.cni_errors += errors
        cni.forget()
        self._rebuild = True  # the pods are detached: the next deploy starts afresh
        return errors

    def take_warnings(self) -> list[str]:
        """What teardown reported since the last call (CNI DEL errors), each once: the run's verdict stands,
        but a plugin whose DEL fails leaks on a real node, and its author must hear of it."""
        new = self.cni_errors[self._cni_errors_told :]
        self._cni_errors_told = len(self.cni_errors)
        return list(dict.fromkeys(new))  # each names the node, plugin, DEL and pod already

    def kernel_name(self, logical: str) -> str:
        return f"nc-{self.run_id}-{_short(logical)}"

    def _start(self) -> None:
        if self._worker is None:
            self._worker = NetnsWorker()
        if self._record is None:
            self._record = records.RunRecord.new(self.run_id, self._state_dir)
            self._record.save(self._state_dir)
            Path(self._record.run_dir).mkdir(mode=0o700, exist_ok=True)
        if not self._atexit:
            atexit.register(self.teardown)
            self._atexit = True

    def _build(self, dataplane: Dataplane) -> None:
        worker, record = self._worker, self._record
        assert worker is not None and record is not None
        namespaces: dict[str, Netns] = {}
        for cfg in dataplane.namespaces:
            kname = self.kernel_name(cfg.name)
            if any(ns.kname == kname for ns in namespaces.values()):
                kname += "-" + hashlib.sha256(cfg.name.encode()).hexdigest()[:6]
            namespaces[cfg.name] = Netns(cfg, kname)
        # Recorded before anything exists, so a crash at any point is undoable.
        record.netns += [ns.kname for ns in namespaces.values() if ns.kname not in record.netns]
        record.save(self._state_dir)
        self._namespaces = namespaces
        run_dir = Path(record.run_dir)
        if self._cni is None:
            self._cni = CniRunner(worker, run_dir, timeout=self.cni_timeout)
        cni = self._cni
        cni.forget()  # the namespaces those attachments lived in are gone

        def job() -> None:
            for ns in namespaces.values():
                build.create(worker, ns)
            for ns in namespaces.values():
                build.create_links(worker, ns, namespaces)
            # The plugins attach the (empty) pod namespaces before anything is
            # configured: per-device sysctls may name the devices they create.
            for ns in namespaces.values():
                if ns.config.cni:
                    cni.reset_ipam(ns)
                    cni.add(ns, namespaces)
            for ns in namespaces.values():
                build.configure(worker, ns)
            build.restore_rules(worker, [(ns, ns.config.iptables) for ns in namespaces.values()], run_dir)
            for ns in namespaces.values():
                with worker.inside(ns.fd):
                    self._flushers.append(ConntrackFlusher())
                    self._servers += open_servers(ns.config.name, ns.config.listeners)

        worker.run(job)
        self._dataplane = dataplane
        self.builds += 1

    def _swap_rules(self, dataplane: Dataplane) -> None:
        worker, record = self._worker, self._record
        assert worker is not None and record is not None
        jobs: list[tuple[Netns, str]] = []
        for cfg in dataplane.namespaces:
            ns = self._namespaces[cfg.name]
            if cfg.iptables != ns.config.iptables:
                jobs.append((ns, build.restore_text(ns.config.iptables, cfg.iptables)))
            ns.config = cfg
        run_dir = Path(record.run_dir)

        def job() -> None:
            build.restore_rules(worker, jobs, run_dir)
            # What a fresh namespace would not know either: learned routes.
            for ns in self._namespaces.values():
                build.flush_route_cache(worker, ns)

        self._dataplane = None  # a failed swap leaves no half-known state for reuse
        worker.run(job)
        self.reset()
        self._dataplane = dataplane
        self.swaps += 1

    def _destroy(self, *, keep_alive: bool = False) -> list[int]:
        """Close every socket first (they keep a namespace alive), then delete.

        With `keep_alive`, the namespaces lose their names (so the names can
        be reused at once) but stay alive through the returned fds, which
        the caller closes; a crash closes them too.
        """
        for server in self._servers:
            server.close()
        for flusher in self._flushers:
            flusher.close()
        self._servers, self._flushers = [], []
        kept: list[int] = []
        for ns in self._namespaces.values():
            if ns.fd >= 0:
                if keep_alive:
                    kept.append(ns.fd)
                else:
                    os.close(ns.fd)
                ns.fd = -1
        deleted = [ns.kname for ns in self._namespaces.values()]
        for kname in deleted:
            delete_netns(kname)
        if self._record is not None and deleted:
            self._record.netns = [n for n in self._record.netns if n not in deleted]
            self._record.save(self._state_dir)
        self._namespaces = {}
        self._dataplane = None
        return kept
