"""The node image: Debian with the dataplane tools, plus the part of this project that runs inside.

Two layers, so that editing the project never means rebuilding Debian:

* the base, ``netconformance-node-base:<recipe hash>``: Debian bookworm with
  iproute2, iptables (legacy selected, as the netns backend uses), nftables,
  conntrack, procps, the CNI plugins and python3. Built from Debian packages
  with debootstrap where there is no registry (needs root and a Debian
  mirror), or from `Dockerfile` beside this file where a registry is reachable;
* the node image, ``netconformance-node:<content hash>``: the base plus the
  agent's code (and the pyroute2 this project runs with) in /opt/netconformance.
  Made by copying files into a created container and committing it: about a
  second, no registry, no builder. The backend makes it by itself when only
  this layer is missing.

Both carry the project label; the tag is a hash of exactly what went in, so
an image with the right tag is the right image.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends import BackendUnavailable
from backends.docker.common import (
    BASE_REPOSITORY,
    CODE_DIR,
    IMAGE_HASH_LABEL,
    IMAGE_REPOSITORY,
    OWNER_LABEL,
    PROJECT,
    PROJECT_LABEL,
    ROLE_LABEL,
    RUN_LABEL,
    env,
    owner_label,
)

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = Path(__file__).resolve().with_name("Dockerfile")
SUITE = "bookworm"
PACKAGES = (
    "python3",
    "python3-yaml",  # conformance.snapshot, which reads and writes dataplanes
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "procps",  # sysctl, for node snapshots
    "containernetworking-plugins",
)
# The steps after the packages are in, shared by both methods (the Dockerfile runs the same).
FINISH = (
    "update-alternatives --set iptables /usr/sbin/iptables-legacy",
    "update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy",
)
# What runs inside a container: the agent imports the netns backend, which imports more of
# the project as it grows; the whole Python source of both packages is small (under 1 MB).
AGENT_SOURCES = ("conformance/**/*.py", "backends/**/*.py")


def base_hash() -> str:
    """The recipe, not the method: a Dockerfile base and a debootstrap base are interchangeable."""
    recipe = {"suite": SUITE, "packages": sorted(PACKAGES), "finish": FINISH, "dockerfile": DOCKERFILE.read_text()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_name() -> str:
    return f"{BASE_REPOSITORY}:{base_hash()}"


def _pyroute2_dir() -> Path:
    import pyroute2

    return Path(pyroute2.__file__).resolve().parent


def code_files() -> list[tuple[str, Path]]:
    """(path in /opt/netconformance, file on this machine), sorted."""
    files: dict[str, Path] = {}
    for pattern in AGENT_SOURCES:
        matched = sorted(REPO.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"node image: {pattern} matches no file under {REPO}")
        for path in matched:
            if "__pycache__" not in path.parts:
                files[str(path.relative_to(REPO))] = path
    pyroute2 = _pyroute2_dir()
    for path in sorted(pyroute2.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[str(Path("pyroute2") / path.relative_to(pyroute2))] = path
    return sorted(files.items())


def image_hash() -> str:
    digest = hashlib.sha256(base_hash().encode())
    for name, path in code_files():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_name() -> str:
    """The node image for the code as it is now (NETCONFORMANCE_DOCKER_IMAGE overrides)."""
    return env("IMAGE") or f"{IMAGE_REPOSITORY}:{image_hash()}"


def _exists(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


@dataclass
class BuildReport:
    image: str
    base: str
    method: str  # "debootstrap", "dockerfile", or "cached" (the base existed)
    base_seconds: float
    code_seconds: float
    size_bytes: int

    def render(self) -> str:
        return (
            f"node image {self.image} ({self.size_bytes / 1e6:.0f} MB): base {self.base} "
            f"{self.method} in {self.base_seconds:.1f}s, code layer in {self.code_seconds:.1f}s"
        )


def choose_method(method: str) -> str:
    """auto: debootstrap when it can run here (root, debootstrap installed), else the Dockerfile."""
    if method != "auto":
        return method
    return "debootstrap" if os.geteuid() == 0 and shutil.which("debootstrap") else "dockerfile"


def build(client: Any, *, method: str = "auto", rebuild: bool = False, mirror: str | None = None) -> BuildReport:
    """Build what is missing (everything with `rebuild`) and return the node image's name and figures."""
    base = base_name()
    start = time.perf_counter()
    used = "cached"
    if rebuild or not _exists(client, base):
        used = choose_method(method)
        if used == "debootstrap":
            build_base_debootstrap(client, base, mirror or env("MIRROR", "http://deb.debian.org/debian"))
        elif used == "dockerfile":
            build_base_dockerfile(client, base)
        else:
            raise ValueError(f"unknown image build method {method!r} (auto, debootstrap, dockerfile)")
    base_seconds = time.perf_counter() - start
    start = time.perf_counter()
    name = f"{IMAGE_REPOSITORY}:{image_hash()}"
    if rebuild or not _exists(client, name):
        build_code_layer(client, base, name)
    size = int(client.images.get(name).attrs.get("Size", 0))
    return BuildReport(name, base, used, base_seconds, time.perf_counter() - start, size)


def _labels(kind: str, digest: str) -> dict[str, str]:
    return {PROJECT_LABEL: PROJECT, ROLE_LABEL: kind, IMAGE_HASH_LABEL: digest}


def _build_container_labels(digest: str) -> dict[str, str]:
    # A crash between create and remove leaves it to `cleanup()`, like a run's containers.
    return {**_labels("image-build", digest), RUN_LABEL: f"image-{digest}", OWNER_LABEL: owner_label()}


def build_base_debootstrap(client: Any, name: str, mirror: str) -> None:
    if os.geteuid() != 0:
        raise BackendUnavailable("node image: debootstrap needs root; run `netconformance image build` as root")
    if shutil.which("debootstrap") is None:
        raise BackendUnavailable("node image: debootstrap not found; apt-get install debootstrap")
    with tempfile.TemporaryDirectory(prefix="nc-node-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror]
        _check(cmd)
        for step in FINISH:
            _check(["chroot", str(root), "sh", "-c", step])
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = Path(tmp) / "rootfs.tar"
        _check(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), "."])
        repository, tag = name.split(":")
        changes = [f"LABEL {k}={v}" for k, v in _labels("base", tag).items()]
        client.api.import_image_from_file(str(tar), repository=repository, tag=tag, changes=changes)


def build_base_dockerfile(client: Any, name: str) -> None:
    repository, tag = name.split(":")
    client.images.build(
        path=str(DOCKERFILE.parent),
        dockerfile=DOCKERFILE.name,
        tag=name,
        labels=_labels("base", tag),
        buildargs={"PACKAGES": " ".join(PACKAGES), "FINISH": " && ".join(FINISH)},
        rm=True,
        forcerm=True,
    )
    del repository


def code_archive() -> bytes:
    """/opt/netconformance as a tar archive (rooted at /opt), files owned by root and read-only."""
    buf = io.BytesIO()
    top = Path(CODE_DIR).name
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for name, path in code_files():
            parts = Path(top, name).parts
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    dirs.add(d)
            data = path.read_bytes()
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_code_layer(client: Any, base: str, name: str) -> None:
    repository, tag = name.split(":")
    container = client.containers.create(base, command=["true"], labels=_build_container_labels(tag))
    try:
        if not container.put_archive(str(Path(CODE_DIR).parent), code_archive()):
            raise RuntimeError(f"node image: copying the code into {container.name} failed")
        # The committed image keeps the container's labels: the owner and run are overwritten.
        changes = [f"LABEL {k}={v}" for k, v in _labels("node", tag).items()]
        changes += [f"LABEL {OWNER_LABEL}=-", f"LABEL {RUN_LABEL}=-"]
        changes += [f"ENV PYTHONPATH={CODE_DIR}", "ENV PYTHONDONTWRITEBYTECODE=1", f"WORKDIR {CODE_DIR}"]
        container.commit(repository=repository, tag=tag, changes=changes)
    finally:
        container.remove(force=True)


def ensure_image(client: Any) -> str:
    """The node image for this code; the code layer is made here if only it is missing."""
    name = image_name()
    if _exists(client, name):
        return name
    if env("IMAGE"):
        raise BackendUnavailable(f"docker backend: NETCONFORMANCE_DOCKER_IMAGE={name} is not an image on the daemon")
    base = base_name()
    if not _exists(client, base):
        raise BackendUnavailable(
            f"docker backend: no node image {base} on the Docker daemon; build it with "
            f"`netconformance image build` (python -m backends.docker.image build): about a minute, from "
            f"Debian packages with debootstrap as root, or from backends/docker/Dockerfile where a registry is reachable"
        )
    build_code_layer(client, base, name)
    return name


def remove_images(client: Any, *, keep: Sequence[str] = ()) -> list[str]:
    """Remove node images (not bases) this project made, except those named in `keep`."""
    removed: list[str] = []
    for img in client.images.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"}):
        tags = [t for t in img.tags if t.startswith(f"{IMAGE_REPOSITORY}:")]
        if tags and not set(tags) & set(keep):
            client.images.remove(img.id, force=False)
            removed += tags
    return removed


def _check(cmd: Sequence[str]) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ...: exit {done.returncode}: {tail}")


def main(argv: Sequence[str] | None = None) -> int:
    from backends.docker.daemon import connect

    p = argparse.ArgumentParser(prog="netconformance image", description="the docker backend's node image")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the node image (reuses a base with the same recipe unless --rebuild)")
    b.add_argument("--method", choices=("auto", "debootstrap", "dockerfile"), default="auto")
    b.add_argument("--rebuild", action="store_true", help="build the base and the node image again")
    b.add_argument("--mirror", default=None, help="Debian mirror for debootstrap (default: deb.debian.org)")
    sub.add_parser("name", help="print the node image's name for this code")
    pr = sub.add_parser("prune", help="remove node images of other code versions (bases stay)")
    pr.add_argument("--all", action="store_true", help="also the current one")
    args = p.parse_args(argv)
    if args.command == "name":
        print(image_name())
        return 0
    try:
        client = connect()
        if args.command == "build":
            print(build(client, method=args.method, rebuild=args.rebuild, mirror=args.mirror).render())
        else:
            for tag in remove_images(client, keep=() if args.all else (image_name(),)):
                print(f"removed {tag}")
    except (BackendUnavailable, RuntimeError) as e:
        print(f"netconformance image: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
