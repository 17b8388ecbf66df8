"""The agent in every container: applies the container's part of a dataplane and runs its probes.

Started as the container's main process (``python3 -m backends.docker.agent``,
see image.py), it reads one JSON request per line on stdin and answers one
JSON line on stdout. When stdin closes (the backend is gone, even killed)
it exits and the container stops; `cleanup()` removes it.

It reuses the netns backend as it is: `backends.netns.build` for links,
addresses, routes, sysctls and iptables-restore, `probing` for servers and
clients, `ConntrackFlusher`. The container's own network namespace is the
node (or the underlay): that is what `docker exec`, testinfra and node
snapshots see. So that this namespace can be a target of
`NetnsWorker.inside()` like any other, the worker thread lives in a private
empty namespace (`ScratchWorker`); the main thread never leaves the
container's namespace.

The container's namespace outlives examples, so whatever the agent changes
in it is undone before the next build: links it made are deleted, the Docker
interface loses addresses, routes and master, rules go back to empty, and
every sysctl it wrote gets its value from before the first write.

Requests: {"op": "deploy", "part": ...} (a full build, or only the rules
when nothing else changed), {"op": "probe", "probes": [...], "timeout": s},
{"op": "reset"} (conntrack flush, recent lists emptied), {"op": "clear"}, {"op": "exit"}.
Answers: {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from backends.docker.common import kernel_name
from backends.docker.wire import Json, Part, decode_part, decode_probe, encode_outcome
from backends.netns import build
from backends.netns.build import Netns
from backends.netns.cni import CniRunner
from backends.netns.conntrack import ConntrackFlusher
from backends.netns.nsutil import CLONE_NEWNET, NetnsWorker, delete_netns, thread_netns_inode
from backends.netns.probing import Server, client_socket, open_servers, run_probes
from conformance.dataplane import NetnsConfig

STATE_DIR = Path("/run/netconformance-agent")  # xtables lock files
_libc = ctypes.CDLL(None, use_errno=True)


class ScratchWorker(NetnsWorker):
    """A NetnsWorker whose home is a private, empty namespace instead of the process's.

    `NetnsWorker.inside()` refuses the namespace it returns to; here that is
    the scratch one, so the container's own namespace is an ordinary target.
    """

    def __init__(self) -> None:
        super().__init__()
        self._root_inode = self._pool.submit(_enter_scratch).result()


def _enter_scratch() -> int:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    return thread_netns_inode()


def _structure(part: Part) -> Part:
    """The part without its rules: equal structures are rebuilt by swapping rules only.

    As in the netns backend, rules on top of a CNI plugin's (--noflush)
    count as structure: they cannot be swapped without knowing the plugin's.
    """

    def bare(ns: NetnsConfig) -> NetnsConfig:
        return ns if ns.cni or ns.iptables_noflush else dataclasses.replace(ns, iptables="")

    return dataclasses.replace(part, own=bare(part.own), inner=tuple(bare(ns) for ns in part.inner))


class ServerLoop:
    """Answers every probe server of the container, all the time, on its own thread.

    Probes can come from other containers at any moment; the main thread is
    busy with requests (and its own clients) meanwhile.
    """

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._loop, name="servers", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            for server in self.servers:
                sel.register(server.sock, selectors.EVENT_READ, server)
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    key.data.serve()

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for server in self.servers:
            server.close()


class Agent:
    def __init__(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The container's namespace, opened before the worker leaves it for the scratch one.
        self.own_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.worker = ScratchWorker()
        self.uplink_index = self._docker_interface()
        self.part: Part | None = None
        self.own: Netns | None = None
        self.inner: dict[str, Netns] = {}
        self.flushers: list[ConntrackFlusher] = []
        self.servers: ServerLoop | None = None
        self.cni: CniRunner | None = None
        self.saved: dict[str, str] = {}  # sysctl key -> its value before this agent first wrote it
        self.saved_order: list[str] = []
        self.worker.run(self._forget_docker)

    # -- the container's own namespace -------------------------------------------------

    def _docker_interface(self) -> int:
        def find() -> int:
            with self.worker.inside(self.own_fd), IPRoute() as ipr:
                found = [int(m["index"]) for m in ipr.get_links() if m.get("IFLA_IFNAME") != "lo"]
            if len(found) != 1:
                raise RuntimeError(f"expected exactly one Docker interface in the container, found {len(found)}")
            return found[0]

        return self.worker.run(find)

    def _forget_docker(self) -> None:
        """Nothing of Docker's configuration may take part in the dataplane (worker thread).

        The Docker address and default route go, and the rules Docker's
        embedded DNS put in the container's netfilter tables (127.0.0.11):
        the node starts as empty as a fresh namespace.
        """
        with self.worker.inside(self.own_fd):
            with IPRoute() as ipr:
                ipr.flush_addr(index=self.uplink_index)
                ipr.flush_routes(table=254)
                ipr.link("set", index=self.uplink_index, state="down")
            subprocess.run(["nft", "flush", "ruleset"], capture_output=True, check=True, timeout=30)
            _restore(build.restore_text(_save(), ""), self._lock())

    def _lock(self) -> str:
        return str(STATE_DIR / "own.xtables.lock")

    def _write_own(self, key: str, value: str, *, optional: bool = False) -> None:
        """A sysctl of the container's namespace, remembering what it was (worker, inside own)."""
        path = Path("/proc/sys", *key.split("."))
        if key not in self.saved:
            try:
                self.saved[key] = path.read_text().strip()
                self.saved_order.append(key)
            except FileNotFoundError:
                if optional:
                    return
        assert self.own is not None
        build.write_sysctl(self.own, key, value, optional=optional)

    def _restore_own(self) -> None:
        for key in reversed(self.saved_order):
            path = Path("/proc/sys", *key.split("."))
            with contextlib.suppress(FileNotFoundError):  # a device that is gone now
                path.write_text(self.saved[key])
        self.saved.clear()
        self.saved_order.clear()

    # -- requests ------------------------------------------------------------------------

    def deploy(self, part: Part) -> str:
        if self.part == part:
            return "same"
        if self.part is not None and _structure(self.part) == _structure(part):
            self._swap_rules(part)
            return "swap"
        self.clear()
        try:
            self.worker.run(lambda: self._build(part))
        except BaseException:
            self.clear()
            raise
        self.part = part
        return "build"

    def _build(self, part: Part) -> None:
        # kname only names files here (xtables locks, IPAM data): the namespace is the container's.
        own = Netns(part.own, kname=kernel_name(part.own.name), fd=self.own_fd)
        self.own = own
        with self.worker.inside(self.own_fd), IPRoute() as ipr:
            # Namespace-wide sysctls before any link is made, as in a fresh namespace.
            for key, value in build.QUIET_SYSCTLS:
                self._write_own(key, value, optional=True)
            for key, value in part.own.sysctls:
                if not build.is_device_sysctl(key):
                    self._write_own(key, value)
            if part.uplink is not None:
                # The Docker interface existed before those `default` values: it gets
                # them now, as a device created after them would have.
                up_name = part.uplink.name
                ipr.link("set", index=self.uplink_index, state="down")
                ipr.link("set", index=self.uplink_index, ifname=up_name)
                self._write_own(f"net.ipv6.conf.{up_name}.disable_ipv6", "1", optional=True)
                for key, value in part.own.sysctls:
                    if key.startswith(("net.ipv4.conf.default.", "net.ipv4.neigh.default.")):
                        self._write_own(key.replace(".default.", f".{up_name}.", 1), value)
        inner = {ns.name: Netns(ns, kernel_name(ns.name)) for ns in part.inner}
        self.inner = inner
        for ns in inner.values():
            build.create(self.worker, ns)
        everyone = {own.config.name: own, **inner}
        for ns in everyone.values():
            for link in ns.config.links:
                if link.kind == "veth" and link.peer_netns not in everyone:
                    raise build.BuildError(f"{ns.config.name}: veth {link.name}: peer {link.peer_netns} is elsewhere")
            build.create_links(self.worker, ns, everyone)
        # CNI plugins attach the (empty) pod namespaces before anything is configured,
        # in the namespace that plays their host, as in the netns backend.
        for ns in everyone.values():
            if ns.config.cni:
                if self.cni is None:
                    self.cni = CniRunner(self.worker, STATE_DIR)
                self.cni.reset_ipam(ns)
                self.cni.add(ns, everyone)
        with self.worker.inside(self.own_fd):
            # Device sysctls are written by build.configure; remember their values first.
            for key, _ in part.own.sysctls:
                if build.is_device_sysctl(key):
                    path = Path("/proc/sys", *key.split("."))
                    if key not in self.saved and path.exists():
                        self.saved[key] = path.read_text().strip()
                        self.saved_order.append(key)
            if part.uplink is not None and part.uplink.master is not None:
                with IPRoute() as ipr:
                    (master,) = ipr.link_lookup(ifname=part.uplink.master) or [None]
                    if master is None:
                        raise build.BuildError(f"{part.own.name}: no bridge {part.uplink.master} for the uplink")
                    ipr.link("set", index=self.uplink_index, master=master)
        for ns in everyone.values():
            build.configure(self.worker, ns)
        if part.uplink is None:
            with self.worker.inside(self.own_fd), IPRoute() as ipr:
                ipr.link("set", index=self.uplink_index, state="down")
        build.restore_rules(self.worker, [(ns, ns.config.iptables) for ns in everyone.values()], STATE_DIR)
        servers: list[Server] = []
        try:
            for ns in everyone.values():
                with self.worker.inside(ns.fd):
                    self.flushers.append(ConntrackFlusher())
                    servers += open_servers(ns.config.name, ns.config.listeners)
        except BaseException:
            for server in servers:
                server.close()
            raise
        self.servers = ServerLoop(servers)

    def _swap_rules(self, part: Part) -> None:
        everyone = self._everyone()
        jobs = []
        for cfg in (part.own, *part.inner):
            ns = everyone[cfg.name]
            if cfg.iptables != ns.config.iptables:
                jobs.append((ns, build.restore_text(ns.config.iptables, cfg.iptables)))
            ns.config = cfg
        self.part = None  # a failed swap leaves nothing half-known to reuse

        def job() -> None:
            build.restore_rules(self.worker, jobs, STATE_DIR)
            for ns in everyone.values():
                build.flush_route_cache(self.worker, ns)

        self.worker.run(job)
        self.reset()
        self.part = part

    def _everyone(self) -> dict[str, Netns]:
        assert self.own is not None
        return {self.own.config.name: self.own, **self.inner}

    def probe(self, requests: list[Json], timeout: float) -> list[Json]:
        decoded = [decode_probe(r) for r in requests]
        everyone = self._everyone()
        for _, netns in decoded:
            if netns not in everyone:
                raise KeyError(f"no namespace {netns!r} in this container")

        def make_sockets() -> list[socket.socket]:
            made: list[socket.socket] = []
            try:
                for p, netns in decoded:
                    with self.worker.inside(everyone[netns].fd):
                        made.append(client_socket(p.protocol))
            except BaseException:
                for s in made:
                    s.close()
                raise
            return made

        sockets = self.worker.run(make_sockets)
        # The servers are answered by the ServerLoop meanwhile, whoever the client is.
        outcomes = run_probes([p for p, _ in decoded], sockets, [], timeout)
        return [encode_outcome(o) for o in outcomes]

    def reset(self) -> None:
        for flusher in self.flushers:
            flusher.flush()
        if self.own is not None:
            build.forget_recent_lists_of(self.worker, self._everyone().values())

    def clear(self) -> None:
        """Back to the container as it started: no inner namespaces, the own one emptied."""
        if self.servers is not None:
            self.servers.stop()
            self.servers = None
        for flusher in self.flushers:
            flusher.close()
        self.flushers = []
        if self.cni is not None and self.own is not None:
            cni, everyone = self.cni, self._everyone()

            def delete() -> None:
                for ns in everyone.values():
                    if ns.config.cni and ns.fd >= 0:
                        for error in cni.delete(ns, everyone):
                            print(f"CNI DEL: {error}", file=sys.stderr)

            self.worker.run(delete)
            cni.forget()
        # The container's links first: deleting a veth takes its pod end at once,
        # while a deleted namespace lets go of its devices only later (pitfall 5),
        # and the next build reuses the same device names.
        if self.own is not None:
            self.worker.run(self._clear_own)
        for ns in self.inner.values():
            if ns.fd >= 0:
                os.close(ns.fd)
                ns.fd = -1
            delete_netns(ns.kname)
        self.inner = {}
        self.own = None
        self.part = None

    def _clear_own(self) -> None:
        assert self.own is not None
        old_rules = self.own.config.iptables
        with self.worker.inside(self.own_fd):
            with IPRoute() as ipr:
                for msg in ipr.get_links():
                    index = int(msg["index"])
                    if index != self.uplink_index and msg.get("IFLA_IFNAME") != "lo":
                        try:
                            ipr.link("del", index=index)
                        except NetlinkError as e:
                            if e.code != errno.ENODEV:  # went with its peer already
                                raise
                ipr.link("set", index=self.uplink_index, state="down", master=0)
                ipr.flush_addr(index=self.uplink_index)
                ipr.flush_routes(table=254)  # (a link going down forgets its neighbours)
            _restore(build.restore_text(old_rules, ""), self._lock())
            with ConntrackFlusher() as flusher:
                flusher.flush()
            self._restore_own()
            Path("/proc/sys/net/ipv4/route/flush").write_text("1")


def _save() -> str:
    return subprocess.run(["iptables-legacy-save"], capture_output=True, text=True, check=True, timeout=30).stdout


def _restore(text: str, lock: str) -> None:
    if not text:
        return
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "XTABLES_LOCKFILE": lock}
    done = subprocess.run(
        [build.RESTORE, "-w", "5"], input=text, capture_output=True, text=True, env=env, check=False, timeout=30
    )
    if done.returncode != 0:
        raise build.BuildError(f"{build.RESTORE}: exit {done.returncode}: {done.stderr.strip()}")


def _answer(out: Any, message: Json) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def handle(agent: Agent, request: Json) -> Json:
    op = request.get("op")
    if op == "deploy":
        return {"mode": agent.deploy(decode_part(request["part"]))}
    if op == "probe":
        return {"outcomes": agent.probe(request["probes"], float(request["timeout"]))}
    if op == "reset":
        agent.reset()
        return {}
    if op == "clear":
        agent.clear()
        return {}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    out = sys.stdout
    try:
        agent = Agent()
    except Exception as e:
        traceback.print_exc()
        _answer(out, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    problems = [] if Path("/proc/sys/net/bridge").is_dir() else ["/proc/sys/net/bridge is missing (br_netfilter)"]
    _answer(out, {"ready": True, "pid": os.getpid(), "problems": problems})
    for line in sys.stdin:
        if not line.strip():
            continue
        request: Json = json.loads(line)
        if request.get("op") == "exit":
            break
        try:
            result = handle(agent, request)
            _answer(out, {"id": request.get("id"), "ok": True, **result})
        except Exception as e:
            traceback.print_exc()
            _answer(out, {"id": request.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"})
    agent.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
