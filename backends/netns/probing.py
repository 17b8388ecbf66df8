"""Probe servers and clients on real sockets, with no process per namespace.

A socket belongs to the namespace it was created in, whatever thread uses
it later: the worker creates listening sockets in pod namespaces and
client sockets in source namespaces, and one selector loop on the calling
thread runs every probe of an example concurrently and answers them.
Servers are only served during `run_probes`; nothing talks to them at any
other time (stale input is drained by `Server.drain` between examples).

Verdicts mirror `backends.sim.probing`:
- TCP: connected and the answer line read -> delivered; an immediate error
  (RST: ECONNREFUSED, ICMP: EHOSTUNREACH, ENETUNREACH, ...) -> refused; a
  local send error (EPERM) makes TCP retransmit -> dropped; nothing by the
  deadline -> dropped.
- UDP: an unconnected socket with IP_RECVERR; a datagram back -> delivered
  (client_saw = its sender, whatever it is); an ICMP error on the error
  queue or a failing sendto -> refused; nothing -> dropped.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from conformance.dataplane import Listener
from conformance.probes import Outcome, Probe

IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err, offender follows
ANSWER_MAX = 512


def answer_line(identity: str, port: int, peer: str) -> bytes:
    return f"{identity} {port} {peer}\n".encode()


def parse_answer(data: bytes) -> tuple[str, int, IPv4Address] | None:
    try:
        identity, port, peer = data.decode().strip().rsplit(" ", 2)
        return identity, int(port), IPv4Address(peer)
    except ValueError:
        return None


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


class Server:
    """One listening socket in a pod namespace, answering with its identity."""

    def __init__(self, netns: str, listener: Listener) -> None:
        self.netns = netns
        self.listener = listener
        kind = socket.SOCK_STREAM if listener.protocol == "TCP" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(("0.0.0.0", listener.port))
            if listener.protocol == "TCP":
                self.sock.listen(128)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def serve(self) -> None:
        """Answer everything waiting: one line per connection or datagram."""
        identity, port = self.listener.identity, self.listener.port
        while True:
            try:
                if self.listener.protocol == "TCP":
                    conn, (peer, _) = self.sock.accept()
                else:
                    _, addr = self.sock.recvfrom(ANSWER_MAX)
            except OSError:  # BlockingIOError: nothing more waiting
                return
            try:
                if self.listener.protocol == "TCP":
                    with conn:
                        conn.setblocking(False)
                        conn.send(answer_line(identity, port, peer))
                else:
                    self.sock.sendto(answer_line(identity, port, addr[0]), addr)
            except OSError:
                pass  # an answer that cannot be sent is the dataplane's business: the probe sees it

    def drain(self) -> None:
        """Drop what arrived outside a probe run (late retransmissions)."""
        while True:
            try:
                if self.listener.protocol == "TCP":
                    self.sock.accept()[0].close()
                else:
                    self.sock.recvfrom(ANSWER_MAX)
            except OSError:  # BlockingIOError: empty
                return

    def close(self) -> None:
        self.sock.close()


def open_servers(netns: str, listeners: Sequence[Listener]) -> list[Server]:
    """Call inside the pod's namespace (on the worker)."""
    out: list[Server] = []
    try:
        for listener in listeners:
            if listener.protocol not in ("TCP", "UDP"):
                continue  # no probe speaks anything else
            out.append(Server(netns, listener))
    except BaseException:
        for server in out:
            server.close()
        raise
    return out


def client_socket(protocol: str) -> socket.socket:
    """Call inside the source namespace (on the worker)."""
    if protocol == "TCP":
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    if protocol == "UDP":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        sock.bind(("0.0.0.0", 0))
        return sock
    raise NotImplementedError(f"{protocol} probes are not supported by the netns backend")


@dataclass
class _Client:
    probe: Probe
    sock: socket.socket
    connected: bool = False
    buf: bytes = b""
    outcome: Outcome | None = None


def _start(c: _Client) -> Outcome | None:
    p = c.probe
    addr = (str(p.dst), p.port)
    if p.protocol == "TCP":
        code = c.sock.connect_ex(addr)
        if code in (0, errno.EINPROGRESS):
            return None
        if code == errno.EPERM:
            # tcp_connect ignores a local send error and retransmits: a timeout.
            return Outcome("dropped", reason="connect: EPERM (SYN retransmitted)")
        return Outcome("refused", reason=f"connect: {errno_name(code)}")
    try:
        c.sock.sendto(b"probe\n", addr)
    except OSError as e:
        return Outcome("refused", reason=f"sendto: {errno_name(e.errno or 0)}")
    return None


def _on_event(c: _Client) -> Outcome | None:
    if c.probe.protocol == "TCP":
        return _tcp_event(c)
    return _udp_event(c)


def _tcp_event(c: _Client) -> Outcome | None:
    if not c.connected:
        code = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == errno.EINPROGRESS:
            return None
        if code != 0:
            return Outcome("refused", reason=errno_name(code))
        c.connected = True
        return None
    try:
        data = c.sock.recv(ANSWER_MAX)
    except BlockingIOError:
        return None
    except OSError as e:
        return Outcome("dropped", reason=f"{errno_name(e.errno or 0)} after connect, no answer")
    c.buf += data
    if b"\n" not in c.buf and data:
        return None
    answer = parse_answer(c.buf.split(b"\n", 1)[0])
    if answer is None:
        return Outcome("dropped", reason=f"connected, but no answer line (got {c.buf!r})")
    identity, port, peer = answer
    client_saw = IPv4Address(c.sock.getpeername()[0])
    return Outcome("delivered", served_by=identity, served_port=port, server_saw=peer, client_saw=client_saw)


def _udp_event(c: _Client) -> Outcome | None:
    try:
        _, ancdata, _, _ = c.sock.recvmsg(ANSWER_MAX, 512, MSG_ERRQUEUE)
    except BlockingIOError:
        pass
    else:
        for level, kind, data in ancdata:
            if level == socket.SOL_IP and kind == IP_RECVERR and len(data) >= SOCK_EXTENDED_ERR.size:
                ee_errno, _, icmp_type, icmp_code, _, _, _ = SOCK_EXTENDED_ERR.unpack_from(data)
                return Outcome("refused", reason=f"{errno_name(ee_errno)} (ICMP {icmp_type}/{icmp_code})")
        return None
    try:
        data, addr = c.sock.recvfrom(ANSWER_MAX)
    except BlockingIOError:
        return None
    except OSError as e:  # an error reported without an error-queue entry
        return Outcome("refused", reason=errno_name(e.errno or 0))
    answer = parse_answer(data)
    if answer is None:
        return None  # not our servers' answer: keep waiting
    identity, port, peer = answer
    return Outcome("delivered", served_by=identity, served_port=port, server_saw=peer, client_saw=IPv4Address(addr[0]))


def run_probes(
    probes: Sequence[Probe],
    sockets: Sequence[socket.socket],
    servers: Sequence[Server],
    timeout: float,
) -> list[Outcome]:
    """Run every probe at once; each gets at most `timeout` seconds.

    The sockets (one per probe, made by `client_socket` in the probe's
    source namespace) are closed on return.
    """
    clients = [_Client(p, s) for p, s in zip(probes, sockets, strict=True)]
    with selectors.DefaultSelector() as sel:
        try:
            for server in servers:
                sel.register(server.sock, selectors.EVENT_READ, server)
            pending = 0
            for c in clients:
                c.outcome = _start(c)
                if c.outcome is None:
                    events = selectors.EVENT_WRITE if c.probe.protocol == "TCP" else selectors.EVENT_READ
                    sel.register(c.sock, events, c)
                    pending += 1
            deadline = time.monotonic() + timeout
            while pending:
                # Past the deadline, keep going only while answers are already
                # waiting: a stalled process must not turn an answer that
                # arrived in time into a drop.
                remaining = max(0.0, deadline - time.monotonic())
                ready = sel.select(remaining)
                if not ready and remaining == 0.0:
                    break
                for key, _ in ready:
                    if isinstance(key.data, Server):
                        key.data.serve()
                        continue
                    c = key.data
                    assert isinstance(c, _Client)
                    if c.outcome is not None:
                        continue
                    was_connected = c.connected
                    c.outcome = _on_event(c)
                    if c.outcome is not None:
                        sel.unregister(c.sock)
                        pending -= 1
                    elif c.connected and not was_connected:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
        finally:
            for c in clients:
                c.sock.close()
    return [c.outcome or Outcome("dropped", reason=f"no answer within {timeout:g} s") for c in clients]
