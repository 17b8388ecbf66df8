"""Names, labels and settings shared by the host side and the in-container agent.

Nothing here imports the docker SDK: the agent imports this package inside
the node image, which has no SDK.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

PROJECT = "netconformance"
# Every container, network and image this backend makes carries the project
# label; containers and networks also carry their run and the process that
# owns the run, so `cleanup()` can tell a dead run's objects from a live one's.
PROJECT_LABEL = "io.netconformance.project"
RUN_LABEL = "io.netconformance.run"
OWNER_LABEL = "io.netconformance.owner"  # "<hostname>:<pid>:<process start time>"
ROLE_LABEL = "io.netconformance.role"  # node, underlay, image-build, preflight
PRIVILEGE_LABEL = "io.netconformance.privilege"
IMAGE_HASH_LABEL = "io.netconformance.image-hash"

IMAGE_REPOSITORY = "netconformance-node"  # the node image, tagged with its content hash
BASE_REPOSITORY = "netconformance-node-base"  # Debian and its packages, tagged with the recipe hash

# Where the agent's code lives in the image (PYTHONPATH).
CODE_DIR = "/opt/netconformance"
AGENT_COMMAND = ("python3", "-u", "-m", "backends.docker.agent")


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"NETCONFORMANCE_DOCKER_{name}", default)


def process_start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot): with the pid, unique on this host."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name


def owner_label() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def owner_alive(label: str) -> bool:
    """True unless the owner is certainly gone: same host, and that pid is not that process any more.

    An owner on another host (a shared daemon) cannot be checked from here
    and counts as alive: `cleanup(run_id)` removes such a run by name.
    """
    host, _, rest = label.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return host != socket.gethostname()
    return str(process_start_time(int(pid))) == start


def kernel_name(logical: str) -> str:
    """A namespace's name under /run/netns inside its container: readable, safe, unique per logical name."""
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in logical)
    return clean if clean == logical else f"{clean}-{hashlib.sha256(logical.encode()).hexdigest()[:6]}"
