"""Probes on the simulated kernel: real exchanges, every random branch.

A TCP probe is SYN, SYN-ACK, ACK and the server's answer, each walked
through the same machinery, so a reply that takes another path than the
request (and so misses the conntrack entry that would un-NAT it) fails as
it does on a real kernel. A UDP probe is a datagram and its answer, read by
an unconnected client socket with IP_RECVERR (it sees a reply from any
source, and ICMP errors).

Rules with `-m statistic --mode random` make a probe's outcome random: the
probe is re-run for every combination of draws (depth-first over the
choices), and each outcome is weighted by the product of its draws. An
`--mode nth` counter is a draw too, once per path: where the counter stands
when the probe reaches it depends on traffic the probe does not see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.sim.conntrack import ConntrackTable
from backends.sim.freeports import EPHEMERAL
from backends.sim.kernel import Arrived, Kernel, Lost, NetNS, SendError, SimError, Walk
from backends.sim.netfilter import NetfilterState
from backends.sim.packet import ANY, Addr, Packet
from conformance.probes import Observation, Outcome, Probe

CLIENT_PORT = 41000  # how the client's ephemeral port shows (its label), unless a server uses it
# The segments' flags, built once (a set display is rebuilt on every call).
SYN, SYN_ACK, ACK = frozenset({"SYN"}), frozenset({"SYN", "ACK"}), frozenset({"ACK"})
RST_ACK, PSH_ACK = frozenset({"RST", "ACK"}), frozenset({"PSH", "ACK"})
MAX_PATHS = 4096

ERRNO_BY_UNREACH_CODE = {
    0: "ENETUNREACH",
    1: "EHOSTUNREACH",
    2: "ENOPROTOOPT",
    3: "ECONNREFUSED",
    9: "ENETUNREACH",
    10: "EHOSTUNREACH",
    13: "EHOSTUNREACH",
}


@dataclass(slots=True)
class ScriptedChooser:
    """Replays a prefix of decisions, then takes the first branch."""

    script: list[bool]
    draws: list[tuple[bool, float]] = field(default_factory=list)

    def choose(self, probability: float, where: str) -> bool:
        if probability >= 1.0:
            return True
        if probability <= 0.0:
            return False
        i = len(self.draws)
        decision = self.script[i] if i < len(self.script) else True
        self.draws.append((decision, probability))
        return decision

    def weight(self) -> float:
        w = 1.0
        for decision, p in self.draws:
            w *= p if decision else 1.0 - p
        return w

    def next_script(self) -> list[bool] | None:
        path = [d for d, _ in self.draws]
        while path and not path[-1]:
            path.pop()
        if not path:
            return None
        path[-1] = False
        return path


def observe(kernel: Kernel, probe: Probe, *, tracing: bool = True) -> Observation:
    """Every outcome of one new connection, each path from clean state.

    Each path starts with empty conntrack tables and recent lists, as a real
    backend's namespaces do after its reset (its probes of one example share
    them after that), and places each nth counter anew.
    """
    found: dict[Outcome, float] = {}
    script: list[bool] | None = []
    paths = 0
    namespaces = kernel.stateful_namespaces
    while script is not None:
        _clean(namespaces)
        chooser = ScriptedChooser(script)
        outcome = run_probe(kernel, probe, Walk(chooser, [], tracing=tracing))
        paths += 1
        script = chooser.next_script()
        if script is None and paths == 1:
            # No random draw on the way: the one outcome is certain.
            _clean(namespaces)
            return Observation(probe, ((outcome, 1.0),), exact=True)
        found[outcome] = found.get(outcome, 0.0) + chooser.weight()
        if paths > MAX_PATHS:
            raise SimError(
                f"{probe}: more than {MAX_PATHS} combinations of -m statistic draws"
                " (random draws and nth counter places); the simulator walks each one"
            )
    _clean(namespaces)
    # Outcomes compare without reason and trace, so each key is the first
    # path that produced it, with that path's trace.
    return Observation(probe, tuple((o, p) for o, p in found.items()), exact=True)


def _clean(namespaces: tuple[NetNS, ...]) -> None:
    """Empty conntrack tables and fresh match state; only what the last path touched needs it."""
    for ns in namespaces:
        if ns.conntrack.by_tuple:
            ns.conntrack = ConntrackTable()
        if ns.nf_state.nth or ns.nf_state.recent:
            ns.nf_state = NetfilterState()


def run_probe(kernel: Kernel, probe: Probe, walk: Walk) -> Outcome:
    ns = kernel.source_namespace(probe.source)
    dst = Addr.of(probe.dst)
    route = kernel.route_output(ns, dst)
    if route.kind == "error":
        return Outcome("refused", reason=f"connect: {route.error}", trace=tuple(walk.trace))
    client_ip = route.src if route.src is not None else dst
    # The client's port is any of the ephemeral range, fixed only as far as some rule asks (freeports).
    client = Client(client_ip, walk.free.new((EPHEMERAL,), prefer=CLIENT_PORT, taken=kernel.ports_in_use(probe.port)))
    if probe.protocol == "TCP":
        return _tcp(kernel, probe, dst, walk, ns, client)
    if probe.protocol == "UDP":
        return _udp(kernel, probe, dst, walk, ns, client)
    raise SimError(f"{probe}: {probe.protocol} probes are not modelled by the simulator")


@dataclass(slots=True)
class Client:
    """The probe's socket: its address, and its port's label (see backends.sim.freeports)."""

    ip: Addr
    port: int


def _fail(verdict: str, reason: str, walk: Walk) -> Outcome:
    assert verdict in ("refused", "dropped")
    return Outcome(verdict, reason=reason, trace=tuple(walk.trace))  # type: ignore[arg-type]


def _lost(landing: Lost | SendError, walk: Walk, what: str, *, client: bool = False) -> Outcome:
    """`client`: the probe's own socket sent it, so a send error is its answer. A server's failed send
    only leaves the client waiting."""
    if isinstance(landing, SendError):
        if client:
            return _fail("refused", f"{what}: {landing.reason}", walk)
        return _fail("dropped", f"{what} not sent: {landing.reason}", walk)
    return _fail("dropped", f"{what} lost: {landing.reason}", walk)


def _client_error(pkt: Packet, at: NetNS, client_ns: NetNS, probe: Probe, client: Client, walk: Walk) -> Outcome:
    """An ICMP error reached a namespace: does it abort our client socket?"""
    inner = pkt.inner
    matches = (
        at is client_ns
        and pkt.icmp_type == 3
        and inner is not None
        and inner.proto == probe.protocol.lower()
        and inner.sport == client.port
        and (inner.src == client.ip or probe.protocol == "UDP")
        and (probe.protocol == "UDP" or (inner.dst == Addr.of(probe.dst) and inner.dport == probe.port))
    )
    if matches:
        errno = ERRNO_BY_UNREACH_CODE.get(pkt.icmp_code, f"ICMP 3/{pkt.icmp_code}")
        return _fail("refused", f"{errno} (ICMP from {pkt.src})", walk)
    return _fail("dropped", f"ICMP error {pkt.describe()} reached {at.name} but matches no socket", walk)


def _tcp(kernel: Kernel, probe: Probe, dst: Addr, walk: Walk, ns: NetNS, client: Client) -> Outcome:
    syn = Packet(client.ip, dst, "tcp", client.port, probe.port, SYN)
    landing = kernel.send(walk, ns, syn)
    if isinstance(landing, SendError) and landing.reason.startswith("EPERM"):
        # tcp_connect ignores a local send error and retransmits: a timeout.
        return _fail("dropped", f"SYN: {landing.reason}", walk)
    if not isinstance(landing, Arrived):
        return _lost(landing, walk, "SYN", client=True)
    at, p = landing.netns, landing.pkt
    if p.proto == "icmp":
        return _client_error(p, at, ns, probe, client, walk)
    if p.proto == "tcp" and "RST" in p.tcp_flags and _is_ours(landing, ns, client, dst, probe.port):
        # A reset answering our SYN (e.g. REJECT --reject-with tcp-reset on the way).
        return _fail("refused", f"ECONNREFUSED (RST from {p.src})", walk)
    if p.proto != "tcp" or "SYN" not in p.tcp_flags:
        return _fail("dropped", f"SYN arrived as {p.describe()} in {at.name}", walk)
    identity = at.listeners.get(("tcp", p.dport))
    server_ip, server_port, peer_ip, peer_port = p.dst, p.dport, p.src, p.sport
    if identity is None:
        if walk.tracing:
            walk.note(at, f"no listener on tcp port {p.dport}: RST")
        rst = Packet(server_ip, peer_ip, "tcp", server_port, peer_port, RST_ACK)
        back = kernel.send(walk, at, rst)
        if isinstance(back, Arrived) and _is_ours(back, ns, client, dst, probe.port):
            return _fail("refused", f"ECONNREFUSED (RST from {back.pkt.src})", walk)
        if isinstance(back, Arrived) and back.pkt.proto == "icmp":
            return _client_error(back.pkt, back.netns, ns, probe, client, walk)
        return _fail("dropped", f"RST from {at.name} did not reach the client as its own", walk)
    if walk.tracing:
        walk.note(at, f"listener {identity} accepts SYN from {peer_ip}:{peer_port}")
    synack = Packet(server_ip, peer_ip, "tcp", server_port, peer_port, SYN_ACK)
    back = kernel.send(walk, at, synack)
    if not isinstance(back, Arrived):
        return _lost(back, walk, "SYN-ACK")
    if back.pkt.proto == "icmp":
        return _fail("dropped", f"SYN-ACK answered by {back.pkt.describe()}", walk)
    if not _is_ours(back, ns, client, dst, probe.port):
        q = back.pkt
        if walk.tracing:
            walk.note(back.netns, f"{q.describe()} matches no connection: answered with RST")
        return _fail(
            "dropped",
            f"SYN-ACK reached {back.netns.name} as {q.describe()}, not as a reply from {probe.dst}:{probe.port}",
            walk,
        )
    ack = Packet(client.ip, dst, "tcp", client.port, probe.port, ACK)
    fwd = kernel.send(walk, ns, ack)
    if isinstance(fwd, SendError):
        # connect() returned when the SYN-ACK came; the failed ACK is retransmitted, no answer ever comes.
        return _fail("dropped", f"ACK: {fwd.reason}; the client waits for an answer that never comes", walk)
    if not isinstance(fwd, Arrived):
        return _lost(fwd, walk, "ACK")
    a = fwd.pkt
    if fwd.netns is not at or (a.src, a.sport, a.dst, a.dport) != (peer_ip, peer_port, server_ip, server_port):
        return _fail("dropped", f"ACK reached {fwd.netns.name} as {a.describe()}", walk)
    answer = Packet(server_ip, peer_ip, "tcp", server_port, peer_port, PSH_ACK, payload=identity)
    back = kernel.send(walk, at, answer)
    if not isinstance(back, Arrived):
        return _lost(back, walk, "answer")
    if not _is_ours(back, ns, client, dst, probe.port):
        return _fail("dropped", f"answer reached {back.netns.name} as {back.pkt.describe()}", walk)
    return Outcome(
        "delivered",
        served_by=identity,
        served_port=server_port,
        server_saw=peer_ip.ipv4(),
        client_saw=back.pkt.src.ipv4(),
        trace=tuple(walk.trace),
    )


def _is_ours(landing: Arrived, ns: NetNS, client: Client, dst: Addr, port: int) -> bool:
    q = landing.pkt
    return (
        landing.netns is ns
        and q.proto == "tcp"
        and (q.src, q.sport, q.dst, q.dport) == (dst, port, client.ip, client.port)
    )


def _udp(kernel: Kernel, probe: Probe, dst: Addr, walk: Walk, ns: NetNS, client: Client) -> Outcome:
    dgram = Packet(client.ip, dst, "udp", client.port, probe.port)
    landing = kernel.send(walk, ns, dgram)
    if not isinstance(landing, Arrived):
        return _lost(landing, walk, "datagram", client=True)
    at, p = landing.netns, landing.pkt
    if p.proto == "icmp":
        return _client_error(p, at, ns, probe, client, walk)
    identity = at.listeners.get(("udp", p.dport))
    if identity is None:
        if walk.tracing:
            walk.note(at, f"no listener on udp port {p.dport}: ICMP port unreachable")
        back = kernel.icmp_send(walk, at, p, 3, 3, in_dev=None)
        if isinstance(back, Arrived) and back.pkt.proto == "icmp":
            return _client_error(back.pkt, back.netns, ns, probe, client, walk)
        return _fail("dropped", f"no listener on udp {p.dport} in {at.name}; the ICMP error was lost", walk)
    if walk.tracing:
        walk.note(at, f"listener {identity} got a datagram from {p.src}:{p.sport}")
    # The server's socket is bound to 0.0.0.0, so routing picks the source.
    answer = Packet(ANY, p.src, "udp", p.dport, p.sport, payload=identity)
    back = kernel.send(walk, at, answer)
    if not isinstance(back, Arrived):
        return _lost(back, walk, "answer")
    q = back.pkt
    if q.proto == "icmp":
        return _fail("dropped", f"answer turned into {q.describe()}", walk)
    if back.netns is not ns or q.proto != "udp" or q.dport != client.port:
        return _fail("dropped", f"answer reached {back.netns.name} as {q.describe()}", walk)
    return Outcome(
        "delivered",
        served_by=identity,
        served_port=p.dport,
        server_saw=p.src.ipv4(),
        client_saw=q.src.ipv4(),
        trace=tuple(walk.trace),
    )
