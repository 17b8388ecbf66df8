"""The docker backend: the netns backend's real-kernel dataplane, one container per node.

Each node is a container on a Docker network (the underlay's wire), the
underlay's bridge with its gateway and the external client live in one
more container, and every pod is a network namespace inside its node's
container. An agent in each container (agent.py) builds its part of the
`Dataplane` with the netns backend's code and runs the probes that start
there. See README.md beside this file.

The docker SDK is imported only on the host side (backend.py, daemon.py):
the agent imports this package inside the node image, which has no SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.docker.backend import DockerBackend, cleanup

__all__ = ["DockerBackend", "cleanup"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from backends.docker import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
