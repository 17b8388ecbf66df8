"""Network namespaces from Python: per-thread setns/unshare through ctypes.

Python 3.11 has no `os.setns`; the syscalls through ctypes switch only the
calling thread (KERNEL-NOTES pitfall 3), so every switch happens on one
dedicated worker thread and the main thread never leaves the root namespace.
Sockets and netlink sockets created while the worker is inside a namespace
belong to it for good and can then be used from any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns` keeps its names

CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def thread_netns_inode() -> int:
    # /proc/self is the main thread; thread-self is the caller.
    return os.stat("/proc/thread-self/ns/net").st_ino


def process_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def netns_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    return NETNS_RUN_DIR / name


def _ensure_run_dir() -> None:
    """Prepare /run/netns the way `ip netns add` does (a shared mount)."""
    NETNS_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    if os.path.ismount(NETNS_RUN_DIR):
        return
    d = str(NETNS_RUN_DIR).encode()
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), f"bind {NETNS_RUN_DIR}")
    _check(_libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None), f"make {NETNS_RUN_DIR} shared")


def delete_netns(name: str) -> bool:
    """Unmount and remove /run/netns/NAME (as `ip netns delete`); False if absent.

    The namespace itself dies when nothing else refers to it (pitfall 5).
    """
    path = netns_path(name)
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted / no file
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class NetnsWorker:
    """One long-lived thread that enters namespaces on behalf of the caller.

    Every job starts and ends in the root namespace; `inside()` switches
    and always switches back, and checks the switch really happened before
    the caller writes anything (a failed setns must never leave a sysctl
    write or an iptables-restore pointed at the root namespace).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns-worker")
        self._root_inode = process_netns_inode()
        self._root_fd: int | None = None
        self._thread: threading.Thread | None = None
        # Called (from the waiting thread) when a signal ends the wait for a job that still runs: each hurries
        # the job along, e.g. by killing a CNI plugin that hangs, which would otherwise hold teardown back.
        self.on_interrupt: list[Callable[[], None]] = []

    def run(self, job: Callable[[], T]) -> T:
        future = self._pool.submit(self._wrap, job)
        try:
            return future.result()
        except BaseException:
            # A signal can end the wait (Ctrl-C, SIGTERM's Terminated) while the job still runs: let it finish,
            # so the teardown that follows sees every namespace it made and none is made after (seen once in CI:
            # a node namespace created after the teardown had deleted the others).
            if not future.done():
                for hurry in self.on_interrupt:
                    with contextlib.suppress(Exception):
                        hurry()
            with contextlib.suppress(BaseException):
                futures.wait([future])
            raise

    def _wrap(self, job: Callable[[], T]) -> T:
        if self._root_fd is None:
            self._root_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._thread = threading.current_thread()
        if thread_netns_inode() != self._root_inode:
            raise RuntimeError("netns worker is not in the root namespace; refusing to continue")
        try:
            return job()
        finally:
            self._back_to_root()

    def _back_to_root(self) -> None:
        assert self._root_fd is not None
        _check(_libc.setns(self._root_fd, CLONE_NEWNET), "setns back to root")
        if thread_netns_inode() != self._root_inode:
            raise RuntimeError("netns worker could not return to the root namespace")

    def _require_worker(self) -> None:
        if threading.current_thread() is not self._thread:
            raise RuntimeError("namespace switches only happen on the netns worker thread")

    @contextmanager
    def inside(self, fd: int) -> Iterator[None]:
        """Run the block in the namespace `fd` refers to (worker thread only)."""
        self._require_worker()
        _check(_libc.setns(fd, CLONE_NEWNET), "setns")
        here = thread_netns_inode()
        if here != os.fstat(fd).st_ino or here == self._root_inode:
            self._back_to_root()
            raise RuntimeError("setns did not move the worker into the target namespace")
        try:
            yield
        finally:
            self._back_to_root()

    def create(self, name: str) -> int:
        """Create namespace NAME, bind it at /run/netns/NAME, return an open fd.

        Worker thread only. unshare() moves just this thread into a brand-new
        namespace, which the bind mount keeps alive, like `ip netns add`.
        """
        self._require_worker()
        _ensure_run_dir()
        path = netns_path(name)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                _check(
                    _libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None),
                    f"bind mount {path}",
                )
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            finally:
                self._back_to_root()
        except BaseException:
            delete_netns(name)
            raise

    def close(self) -> None:
        # fds are per process: no need (and, at interpreter exit, no way) to
        # hand this to the worker thread.
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        self._pool.shutdown(wait=True)
