"""Flushing a namespace's conntrack table over netlink, without a process.

A NETLINK_NETFILTER socket belongs to the namespace it was created in, so
one socket per namespace, opened at deploy time, flushes that namespace's
table from any thread. The request is one fixed 20-byte message
(IPCTNL_MSG_CT_DELETE with no tuple = flush), about 70x cheaper here than
pyroute2's NFCTSocket.flush() (6 us against 450 us).
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
AF_UNSPEC = 0  # every family


class ConntrackFlusher:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._seq = 0

    def flush(self) -> None:
        self._seq += 1
        msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        header = struct.pack("=IHHII", 20, msg_type, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
        self._sock.send(header + struct.pack("=BBH", AF_UNSPEC, 0, 0))  # nfgenmsg
        while True:
            answer = self._sock.recv(4096)
            _, kind, _, seq, _, error = struct.unpack_from("=IHHIIi", answer)
            if kind == NLMSG_ERROR and seq == self._seq:
                break
        if error < 0:
            raise OSError(-error, f"conntrack flush: {os.strerror(-error)}")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ConntrackFlusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
