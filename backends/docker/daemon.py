"""The Docker side: connecting, privileges, node containers, and the agents' channels.

Everything goes through the docker SDK (the low-level API where the
high-level one lacks a knob: MaskedPaths, ReadonlyPaths, StdinOnce).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from backends import BackendError, BackendUnavailable
from backends.docker.common import (
    AGENT_COMMAND,
    OWNER_LABEL,
    PRIVILEGE_LABEL,
    PROJECT,
    PROJECT_LABEL,
    ROLE_LABEL,
    RUN_LABEL,
    env,
    owner_alive,
    owner_label,
)
from backends.docker.wire import Json
from conformance.termination import deferred

DEFAULT_HOST = "unix:///var/run/docker.sock"
PING_TIMEOUT = 5.0
READY_TIMEOUT = 60.0

# "privileged": --privileged. "caps": what works where --privileged does not
# (KERNEL-NOTES pitfall 12): every capability the daemon can grant, no
# seccomp or AppArmor profile, nothing masked or read-only in /proc.
PRIVILEGE_MODES = ("privileged", "caps")
CAPS_DROPPED = ("SYS_RESOURCE",)
# The host side of the network's bridge gets no address: the host routes nothing to or from it.
INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST", DEFAULT_HOST)


def _explain(e: BaseException) -> str:
    """The daemon's connection error in words, with what to do."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(x) for x in chain)
    host = docker_host()
    if any(isinstance(x, PermissionError) for x in chain) or "Permission denied" in text:
        return (
            f"permission denied on the Docker socket ({host}): add your user to the 'docker' group "
            f"(sudo usermod -aG docker $USER, then log in again), or run rootful Docker's socket as root, "
            f"or point DOCKER_HOST at a daemon you may use"
        )
    if any(isinstance(x, FileNotFoundError | ConnectionRefusedError) for x in chain) or (
        "No such file" in text or "Connection refused" in text
    ):
        return (
            f"no Docker daemon answers at {host}: install Docker (Debian: apt-get install docker.io) and start "
            f"it (systemctl start docker, or as root: dockerd &), or point DOCKER_HOST at a running daemon"
        )
    return f"the Docker daemon at {host} does not answer: {e}"


def connect(timeout: float = PING_TIMEOUT) -> Any:
    """A docker SDK client for a daemon that answers, or BackendUnavailable saying what is missing."""
    try:
        import docker
    except ImportError:
        raise BackendUnavailable("docker backend: the docker SDK is missing: pip install 'docker>=7'") from None
    try:
        client = docker.from_env(timeout=max(timeout, 1.0))
        client.ping()
    except Exception as e:
        raise BackendUnavailable(f"docker backend: {_explain(e)}") from None
    # Builds, starts and removals take longer than a ping.
    client.api.timeout = 120
    return client


def base_labels(run_id: str, role: str) -> dict[str, str]:
    return {PROJECT_LABEL: PROJECT, RUN_LABEL: run_id, OWNER_LABEL: owner_label(), ROLE_LABEL: role}


def host_config(client: Any, mode: str, *, network: str, auto_remove: bool) -> Any:
    api = client.api
    if mode == "privileged":
        hc = api.create_host_config(network_mode=network, auto_remove=auto_remove, privileged=True)
    elif mode == "caps":
        hc = api.create_host_config(
            network_mode=network,
            auto_remove=auto_remove,
            cap_add=["ALL"],
            cap_drop=list(CAPS_DROPPED),
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        )
        # The CLI's --security-opt systempaths=unconfined: /proc/sys must be
        # writable (sysctls per namespace) and nothing in /proc hidden.
        hc["MaskedPaths"] = []
        hc["ReadonlyPaths"] = []
    else:
        raise ValueError(f"unknown privilege mode {mode!r} (known: {', '.join(PRIVILEGE_MODES)})")
    return hc


# Run in a throwaway container: what a node needs, as a list of problems (empty: fine).
CHECK = r"""
import ctypes, json, os, subprocess
problems = []
try:
    open("/proc/sys/net/ipv4/ip_forward", "w").write(open("/proc/sys/net/ipv4/ip_forward").read())
except OSError as e:
    problems.append(f"/proc/sys is not writable ({e.strerror})")
if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:
    problems.append(f"unshare(CLONE_NEWNET) fails ({os.strerror(ctypes.get_errno())})")
if not os.path.isdir("/proc/sys/net/bridge"):
    problems.append("br_netfilter is not loaded on the Docker host (/proc/sys/net/bridge is missing): "
                    "run `modprobe br_netfilter` on the host")
r = subprocess.run(["iptables-legacy-save"], capture_output=True, text=True)
if r.returncode != 0:
    problems.append(f"iptables-legacy-save fails: {r.stderr.strip()}")
print(json.dumps(problems))
"""

_privilege_cache: dict[tuple[str, str], tuple[str, str]] = {}


@dataclass(frozen=True)
class Privilege:
    mode: str  # one of PRIVILEGE_MODES
    note: str  # what was tried and why this mode, for people


def detect_privilege(client: Any, image: str, run_id: str) -> Privilege:
    """Try --privileged once, fall back to explicit capabilities; cached per daemon and image.

    NETCONFORMANCE_DOCKER_PRIVILEGE=privileged|caps skips the trial.
    """
    daemon = str(client.info().get("ID", docker_host()))
    cached = _privilege_cache.get((daemon, image))
    if cached is not None:
        return Privilege(*cached)
    forced = env("PRIVILEGE")
    modes = (forced,) if forced else PRIVILEGE_MODES
    failures: list[str] = []
    for mode in modes:
        try:
            problems = _check_container(client, image, mode, run_id)
        except Exception as e:
            failures.append(f"{mode}: {_api_error(e)}")
            continue
        if problems:
            raise BackendUnavailable(
                f"docker backend: a node container ({mode}) lacks what it needs: {'; '.join(problems)}"
            )
        if mode == "privileged":
            note = "containers run --privileged"
        else:
            note = (
                "containers run with explicit capabilities (all but "
                f"{', '.join(CAPS_DROPPED)}), seccomp and AppArmor unconfined, no masked or read-only paths"
            )
        if failures:
            note += f" ({'; '.join(failures)})"
        _privilege_cache[(daemon, image)] = (mode, note)
        return Privilege(mode, note)
    raise BackendUnavailable(f"docker backend: no privilege mode works for node containers: {'; '.join(failures)}")


def _api_error(e: BaseException) -> str:
    explanation = getattr(e, "explanation", None)
    return str(explanation or e).strip().splitlines()[0][:300]


def _check_container(client: Any, image: str, mode: str, run_id: str) -> list[str]:
    # An interrupt waits until the trial container is gone again (see conformance.termination.deferred).
    with deferred():
        return _run_check_container(client, image, mode, run_id)


def _run_check_container(client: Any, image: str, mode: str, run_id: str) -> list[str]:
    api = client.api
    labels = {**base_labels(run_id, "preflight"), PRIVILEGE_LABEL: mode}
    hc = host_config(client, mode, network="none", auto_remove=False)
    cid = api.create_container(image, command=["python3", "-c", CHECK], labels=labels, host_config=hc)["Id"]
    try:
        api.start(cid)
        status = api.wait(cid, timeout=60)
        out = api.logs(cid, stdout=True, stderr=True).decode(errors="replace")
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"the check exited {status.get('StatusCode')}: {out.strip()[-500:]}")
        problems: list[str] = json.loads(out.strip().splitlines()[-1])
        return problems
    finally:
        api.remove_container(cid, force=True)


class AgentError(BackendError):
    """An agent failed a request, or went away; the message carries what it said."""


class AgentChannel:
    """JSON lines to and from an agent over the container's attached stdin and stdout.

    Docker multiplexes stdout and stderr on the attach stream: each frame is
    an 8-byte header (stream, 0, 0, 0, length big-endian) and its bytes.
    stderr is kept (its tail) for error messages.
    """

    def __init__(self, raw: Any, name: str) -> None:
        self.name = name
        self._raw = raw  # keeps the HTTP response (and so the connection) alive
        self.sock: socket.socket = getattr(raw, "_sock", raw)
        self._buf = b""
        self._out = b""
        self.stderr = b""
        self._next_id = 0

    def send(self, message: Json) -> int:
        self._next_id += 1
        self.sock.sendall((json.dumps({**message, "id": self._next_id}) + "\n").encode())
        return self._next_id

    def receive(self, timeout: float) -> Json:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentError(f"agent in {self.name}: no answer within {timeout:g}s{self._stderr_tail()}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AgentError(f"agent in {self.name} exited{self._stderr_tail()}")
            self._buf += data
            self._demux()
        line, self._out = self._out.split(b"\n", 1)
        message: Json = json.loads(line)
        return message

    def _demux(self) -> None:
        while len(self._buf) >= 8:
            stream, size = self._buf[0], struct.unpack(">I", self._buf[4:8])[0]
            if len(self._buf) < 8 + size:
                return
            payload, self._buf = self._buf[8 : 8 + size], self._buf[8 + size :]
            if stream == 2:
                self.stderr = (self.stderr + payload)[-8192:]
            else:
                self._out += payload

    def _stderr_tail(self) -> str:
        tail = self.stderr.decode(errors="replace").strip()
        return f"; its stderr ends: {tail[-1500:]}" if tail else ""

    def answer(self, request_id: int, timeout: float) -> Json:
        message = self.receive(timeout)
        if message.get("id") != request_id:
            raise AgentError(f"agent in {self.name}: answer {message.get('id')} to request {request_id}")
        if not message.get("ok"):
            raise AgentError(f"agent in {self.name}: {message.get('error')}")
        return message

    def request(self, message: Json, timeout: float) -> Json:
        return self.answer(self.send(message), timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            close = getattr(self._raw, "close", None)
            if close is not None:
                close()


@dataclass
class NodeContainer:
    logical: str  # "node-node-1", "underlay"
    name: str  # the container's name: nc-<run>-<logical>
    id: str
    channel: AgentChannel


def start_container(
    client: Any, *, image: str, name: str, logical: str, network: str, privilege: Privilege, run_id: str, role: str
) -> NodeContainer:
    """Create, attach to and start one node container; return once its agent is ready.

    The agent is the container's main process with StdinOnce: when this
    process's attach connection goes (a crash, SIGKILL), the agent reads
    EOF, tears its dataplane down and exits, so a dead run's containers
    stop by themselves; `cleanup()` removes them. No auto-remove: racing it
    with our own removal leaves Docker 20.10 a stale endpoint that blocks
    the network's removal until the daemon restarts.
    """
    api = client.api
    labels = {**base_labels(run_id, role), PRIVILEGE_LABEL: privilege.mode}
    hc = host_config(client, privilege.mode, network=network, auto_remove=False)
    cid = api.create_container(
        image,
        command=list(AGENT_COMMAND),
        name=name,
        hostname=logical[:63],
        labels=labels,
        host_config=hc,
        stdin_open=True,
        detach=False,  # with stdin_open: StdinOnce
        tty=False,
    )["Id"]
    channel: AgentChannel | None = None
    try:
        raw = api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        channel = AgentChannel(raw, name)
        api.start(cid)
        hello = channel.receive(READY_TIMEOUT)
        if not hello.get("ready"):
            raise AgentError(f"agent in {name} could not start: {hello.get('error')}{channel._stderr_tail()}")
        if hello.get("problems"):
            raise BackendUnavailable(f"docker backend: node container {name}: {'; '.join(hello['problems'])}")
    except BaseException:
        if channel is not None:
            channel.close()
        remove_container(client, cid)
        raise
    return NodeContainer(logical, name, cid, channel)


def remove_container(client: Any, ref: str, *, timeout: float = 30.0) -> bool:
    """Remove a container (running or not) and wait until it is gone; False if it was gone already.

    Another removal may be under way (a concurrent cleanup): Docker answers
    409 and the container is still attached to its network for a moment, so
    this waits for it to disappear either way.
    """
    import docker.errors

    removed = True
    try:
        client.api.remove_container(ref, force=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as e:
        if e.status_code != 409:  # 409: a removal is already in progress
            raise
        removed = False
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.api.inspect_container(ref)
        except docker.errors.NotFound:
            return removed
        if time.monotonic() > deadline:
            raise TimeoutError(f"container {ref} is still there {timeout:g}s after its removal")
        time.sleep(0.05)


def remove_network(client: Any, ref: str, *, timeout: float = 30.0) -> bool:
    """Remove a network; False if it was gone already. Waits out endpoints that are just leaving."""
    import docker.errors

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.api.remove_network(ref)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            if e.status_code != 403 or "active endpoints" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        return True


def create_network(client: Any, name: str, run_id: str) -> str:
    """The underlay's wire: a bridge network, used only as layer 2.

    The agents take Docker's addresses off the containers' interfaces, so
    no address of this network takes part in a dataplane; the host side
    gets none (inhibit_ipv4), so the host routes nothing to or from it, and
    without masquerading nothing is translated on the way out. Internal
    networks are not usable: their isolation rules drop every bridged
    packet whose addresses are not the network's own, i.e. all of ours.
    """
    net = client.networks.create(
        name,
        driver="bridge",
        labels=base_labels(run_id, "underlay"),
        options={
            INHIBIT_IPV4: "true",
            "com.docker.network.bridge.enable_ip_masquerade": "false",
            "com.docker.network.bridge.enable_icc": "true",
        },
        check_duplicate=True,
    )
    # A daemon that ignored the option would have put the gateway on the host's bridge.
    bridge = f"br-{net.id[:12]}"
    if _local_addresses(bridge):
        remove_network(client, net.id)
        raise BackendUnavailable(
            f"docker backend: this Docker daemon gave the network's bridge {bridge} an address despite "
            f"{INHIBIT_IPV4}=true (Docker 20.10 or later is needed): refusing to route the dataplane through the host"
        )
    return str(net.id)


def host_addresses(client: Any) -> set[str]:
    """IPv4 addresses the Docker host itself answers to, as far as this process can know them.

    Gateways of the daemon's networks always (but not of networks whose
    bridge gets no address, as ours); this machine's own addresses when the
    daemon is local. A scenario address among them would be answered by the
    host (it replies to ARP on every interface), and a packet sent to it
    could leave through the host's routing.
    """
    found: set[str] = set()
    for net in client.networks.list():
        if (net.attrs.get("Options") or {}).get(INHIBIT_IPV4) == "true":
            continue
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Gateway"):
                found.add(str(cfg["Gateway"]))
    found.update(_local_addresses())
    found.discard("None")
    return found


def _local_addresses(device: str | None = None) -> set[str]:
    """IPv4 addresses on this machine (of one device), when the daemon is local; empty otherwise."""
    if not docker_host().startswith("unix://"):
        return set()
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            kw: dict[str, Any] = {"family": socket.AF_INET}
            if device is not None:
                found = ipr.link_lookup(ifname=device)
                if not found:
                    return set()
                kw["index"] = found[0]
            return {str(a.get_attr("IFA_LOCAL")) for a in ipr.get_addr(**kw)}
    except Exception:  # unreadable here: the daemon's gateways are still checked
        return set()


def labelled(client: Any, kind: str) -> list[Any]:
    """Every container (running or not) or network with the project label."""
    flt = {"label": f"{PROJECT_LABEL}={PROJECT}"}
    if kind == "containers":
        return list(client.containers.list(all=True, filters=flt, ignore_removed=True))
    return list(client.networks.list(filters=flt))


def cleanup(client: Any, run_id: str | None = None) -> list[str]:
    """Remove the labelled containers and networks of one run, or of every run whose process is gone."""

    def doomed(labels: dict[str, str]) -> bool:
        run = labels.get(RUN_LABEL)
        if run_id is not None:
            return run == run_id
        return not owner_alive(labels.get(OWNER_LABEL, ""))

    removed: list[str] = []
    for c in labelled(client, "containers"):
        if doomed(c.labels) and remove_container(client, c.id):
            removed.append(f"container {c.name}")
    for n in labelled(client, "networks"):
        if doomed(n.attrs.get("Labels") or {}) and remove_network(client, n.id):
            removed.append(f"network {n.name}")
    return removed
