"""The program that runs inside the cluster's pods: probe server and probe client.

It is shipped as source text (`python -c SOURCE ...`) so any image with a
Python 3.8+ interpreter works (python:3.12-alpine by default) and nothing
has to be built or pushed. Standard library only; it must stay importable
by the test suite, which runs both modes on this machine for real.

    serve IDENTITY [PORT/PROTO ...]    answer "<identity> <port> <peer ip>\\n" on every
                                       TCP connection and UDP datagram (as the netns
                                       backend's servers do), then touch READY_FILE
    probe TIMEOUT DST:PORT/PROTO ...   run every probe at once, print one result line each

A result line is ``NCPROBE {json}`` with keys i (the probe's index),
verdict, errno (a name or null), answer (the server's line or null),
reply_from (the address the answer came from, or null) and reason. The
verdicts follow backends/netns/probing.py:

- TCP: connected and an answer line read -> delivered; an immediate error
  (RST: ECONNREFUSED; ICMP: EHOSTUNREACH, ENETUNREACH, ...) -> refused; EPERM
  from connect (a local netfilter drop: TCP retransmits) -> dropped; nothing
  by the deadline -> dropped.
- UDP: an unconnected socket with IP_RECVERR; a datagram carrying an answer
  -> delivered; an ICMP error on the error queue or a failing sendto ->
  refused; nothing -> dropped.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import struct
import sys
import time
from typing import TextIO

RESULT_PREFIX = "NCPROBE "
READY_FILE = "/tmp/netconformance-ready"
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
ANSWER_MAX = 512


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


def _ports(specs: list[str]) -> list[tuple[int, str]]:
    out = []
    for spec in specs:
        port, _, proto = spec.partition("/")
        out.append((int(port), proto.upper()))
    return out


def serve(identity: str, specs: list[str], ready_file: str = READY_FILE, host: str = "0.0.0.0") -> None:
    """Answer forever. Unknown protocols (SCTP) are skipped: no probe speaks them."""
    sel = selectors.DefaultSelector()
    for port, proto in _ports(specs):
        if proto not in ("TCP", "UDP"):
            continue
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if proto == "TCP":
            sock.listen(128)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, (proto, port))
    # Readiness (the pod's readinessProbe) means every listener is bound.
    with open(ready_file, "w") as f:
        f.write("ready\n")
    print(f"NCSERVER ready {identity} {' '.join(specs)}", flush=True)
    while True:
        if not sel.get_map():
            time.sleep(3600)  # a pure probe source: nothing to serve
            continue
        for key, _ in sel.select():
            proto, port = key.data
            listener = key.fileobj
            assert isinstance(listener, socket.socket)  # registered above
            try:
                if proto == "TCP":
                    conn, addr = listener.accept()
                    with conn:
                        conn.settimeout(1.0)
                        conn.sendall(f"{identity} {port} {addr[0]}\n".encode())
                else:
                    _, addr = listener.recvfrom(ANSWER_MAX)
                    listener.sendto(f"{identity} {port} {addr[0]}\n".encode(), addr)
            except OSError:
                continue  # a reply that cannot be sent is the dataplane's business


class _Client:
    def __init__(self, index: int, spec: str) -> None:
        target, _, proto = spec.rpartition("/")
        host, _, port = target.rpartition(":")
        self.index = index
        self.proto = proto.upper()
        self.addr = (host, int(port))
        self.connected = False
        self.buf = b""
        self.result: dict[str, object] | None = None
        if self.proto == "TCP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        elif self.proto == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
            self.sock.bind(("0.0.0.0", 0))
        else:
            raise ValueError(f"unsupported protocol {proto!r}")
        self.sock.setblocking(False)

    def done(
        self, verdict: str, reason: str, code: str | None = None, answer: str | None = None, src: str | None = None
    ) -> dict[str, object]:
        self.result = {
            "i": self.index,
            "verdict": verdict,
            "errno": code,
            "answer": answer,
            "reply_from": src,
            "reason": reason,
        }
        return self.result

    def start(self) -> dict[str, object] | None:
        if self.proto == "TCP":
            code = self.sock.connect_ex(self.addr)
            if code in (0, errno.EINPROGRESS):
                return None
            if code == errno.EPERM:
                return self.done("dropped", "connect: EPERM (SYN retransmitted)", "EPERM")
            return self.done("refused", "connect: " + _errno_name(code), _errno_name(code))
        try:
            self.sock.sendto(b"probe\n", self.addr)
        except OSError as e:
            name = _errno_name(e.errno or 0)
            return self.done("refused", "sendto: " + name, name)
        return None

    def event(self) -> dict[str, object] | None:
        if self.proto == "TCP":
            return self._tcp()
        return self._udp()

    def _tcp(self) -> dict[str, object] | None:
        if not self.connected:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == errno.EINPROGRESS:
                return None
            if code != 0:
                return self.done("refused", _errno_name(code), _errno_name(code))
            self.connected = True
            return None
        try:
            data = self.sock.recv(ANSWER_MAX)
        except BlockingIOError:
            return None
        except OSError as e:
            name = _errno_name(e.errno or 0)
            return self.done("dropped", name + " after connect, no answer", name)
        self.buf += data
        if b"\n" not in self.buf and data:
            return None
        line = self.buf.split(b"\n", 1)[0].decode("utf-8", "replace")
        if not data and not line:
            return self.done("dropped", "connected, but closed without an answer line")
        return self.done("delivered", "", None, line, self.sock.getpeername()[0])

    def _udp(self) -> dict[str, object] | None:
        try:
            _, ancdata, _, _ = self.sock.recvmsg(ANSWER_MAX, 512, MSG_ERRQUEUE)
        except BlockingIOError:
            pass
        else:
            for level, kind, data in ancdata:
                if level == socket.SOL_IP and kind == IP_RECVERR and len(data) >= SOCK_EXTENDED_ERR.size:
                    ee_errno, _, icmp_type, icmp_code, _, _, _ = SOCK_EXTENDED_ERR.unpack_from(data)
                    name = _errno_name(ee_errno)
                    return self.done("refused", f"{name} (ICMP {icmp_type}/{icmp_code})", name)
            return None
        try:
            data, addr = self.sock.recvfrom(ANSWER_MAX)
        except BlockingIOError:
            return None
        except OSError as e:
            name = _errno_name(e.errno or 0)
            return self.done("refused", name, name)
        return self.done("delivered", "", None, data.decode("utf-8", "replace").strip(), addr[0])


def probe(timeout: float, specs: list[str], out: TextIO | None = None) -> list[dict[str, object]]:
    """Run the probes concurrently; print (to `out`, default stdout) and return one result each."""
    clients = [_Client(i, spec) for i, spec in enumerate(specs)]
    sel = selectors.DefaultSelector()
    pending = 0
    try:
        for c in clients:
            if c.start() is None:
                sel.register(c.sock, selectors.EVENT_WRITE if c.proto == "TCP" else selectors.EVENT_READ, c)
                pending += 1
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                c = key.data
                if c.result is not None:
                    continue
                was_connected = c.connected
                if c.event() is not None:
                    sel.unregister(c.sock)
                    pending -= 1
                elif c.connected and not was_connected:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
    finally:
        for c in clients:
            c.sock.close()
        sel.close()
    results = []
    for c in clients:
        if c.result is None:
            c.done("dropped", f"no answer within {timeout:g} s")
        assert c.result is not None
        results.append(c.result)
    stream = out if out is not None else sys.stdout
    for r in results:
        print(RESULT_PREFIX + json.dumps(r, sort_keys=True), file=stream, flush=True)
    return results


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1], argv[2:], os.environ.get("NC_READY_FILE", READY_FILE))
        return 0
    if len(argv) >= 2 and argv[0] == "probe":
        probe(float(argv[1]), argv[2:])
        return 0
    print("usage: serve IDENTITY [PORT/PROTO ...] | probe TIMEOUT DST:PORT/PROTO ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
