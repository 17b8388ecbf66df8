"""Getting at a cluster: settings, the kind CLI, and the Kubernetes API.

Two ways to a cluster:

- kind (the default): the cluster named NETCONFORMANCE_KIND_CLUSTER
  ("netconformance") is reused; when it does not exist and
  NETCONFORMANCE_KIND_CONFIG names a profile (iptables, nftables, byo-cni)
  or a kind config file, it is created (and deleted at teardown when
  NETCONFORMANCE_KIND_DELETE=1). The kubeconfig comes from `kind get
  kubeconfig`, so the user's ~/.kube/config is never touched.
- any cluster: NETCONFORMANCE_KUBECONFIG (and NETCONFORMANCE_KUBE_CONTEXT).
  Node snapshots then need nodes that are docker containers on this machine.

The API is reached through `Kube`, a small surface over the official
client, so the backend's logic can be tested against a fake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Protocol

import yaml

from backends import BackendUnavailable, env_seconds

Manifest = dict[str, Any]

PROFILES = Path(__file__).parent / "profiles"
DEFAULT_CLUSTER = "netconformance"
KIND_NETWORK = "kind"  # the docker network kind puts its nodes on
API_TIMEOUT = 10.0  # one API call, seconds


@dataclass(frozen=True)
class Settings:
    cluster: str = DEFAULT_CLUSTER
    config: str | None = None  # a profile name or a kind config path: create when missing
    kubeconfig: str | None = None  # set: any cluster, no kind
    context: str | None = None
    image: str = "python:3.12-alpine"
    probe_timeout: float = 1.0
    ready_timeout: float = 180.0  # deadline for pods, endpoints and the proxy to be programmed
    delete_cluster: bool = False
    cluster_cidr: IPv4Network = IPv4Network("10.244.0.0/16")
    service_cidr: IPv4Network = IPv4Network("10.96.0.0/12")
    node_cidr: IPv4Network | None = None  # kind: read from docker's network

    @property
    def uses_kind(self) -> bool:
        return self.kubeconfig is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env

        def net(key: str, default: IPv4Network | None) -> IPv4Network | None:
            value = e.get(key)
            if not value:
                return default
            try:
                return IPv4Network(value)
            except ValueError as err:
                raise BackendUnavailable(f"{key}={value!r}: expected an IPv4 network ({err})") from None

        return cls(
            cluster=e.get("NETCONFORMANCE_KIND_CLUSTER", DEFAULT_CLUSTER),
            config=e.get("NETCONFORMANCE_KIND_CONFIG") or None,
            kubeconfig=e.get("NETCONFORMANCE_KUBECONFIG") or None,
            context=e.get("NETCONFORMANCE_KUBE_CONTEXT") or None,
            image=e.get("NETCONFORMANCE_KIND_IMAGE", cls.image),
            probe_timeout=env_seconds("NETCONFORMANCE_PROBE_TIMEOUT", cls.probe_timeout, e),
            ready_timeout=env_seconds("NETCONFORMANCE_KIND_READY_TIMEOUT", cls.ready_timeout, e),
            delete_cluster=e.get("NETCONFORMANCE_KIND_DELETE", "") == "1",
            cluster_cidr=net("NETCONFORMANCE_CLUSTER_CIDR", cls.cluster_cidr) or cls.cluster_cidr,
            service_cidr=net("NETCONFORMANCE_SERVICE_CIDR", cls.service_cidr) or cls.service_cidr,
            node_cidr=net("NETCONFORMANCE_NODE_CIDR", None),
        )


def profile_path(config: str) -> Path:
    """A profile name (iptables, nftables, byo-cni) or a path to a kind config."""
    named = PROFILES / f"{config}.yaml"
    if named.is_file():
        return named
    path = Path(config)
    if path.is_file():
        return path
    names = ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml")))
    raise BackendUnavailable(
        f"kind backend: NETCONFORMANCE_KIND_CONFIG={config!r} is neither a profile ({names}) nor a file"
    )


# -- the kind and docker CLIs ----------------------------------------------------------


def _cli(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


class KindCli:
    def __init__(self, binary: str = "kind") -> None:
        self.binary = binary

    def clusters(self) -> list[str]:
        done = _cli([self.binary, "get", "clusters"], 30)
        if done.returncode != 0:
            raise BackendUnavailable(f"kind backend: `kind get clusters` failed: {done.stderr.strip()}")
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def create(self, name: str, config: Path, wait: float) -> None:
        cmd = [self.binary, "create", "cluster", "--name", name, "--config", str(config), f"--wait={int(wait)}s"]
        done = _cli(cmd, wait + 300)
        if done.returncode != 0:
            raise RuntimeError(f"kind backend: {' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")

    def delete(self, name: str) -> None:
        _cli([self.binary, "delete", "cluster", "--name", name], 300)

    def kubeconfig(self, name: str) -> dict[str, Any]:
        done = _cli([self.binary, "get", "kubeconfig", "--name", name], 30)
        if done.returncode != 0:
            raise BackendUnavailable(f"kind backend: `kind get kubeconfig --name {name}` failed: {done.stderr.strip()}")
        loaded = yaml.safe_load(done.stdout)
        if not isinstance(loaded, dict):
            raise BackendUnavailable(f"kind backend: `kind get kubeconfig --name {name}` printed no kubeconfig")
        return loaded


def docker_network_cidr(network: str = KIND_NETWORK) -> IPv4Network | None:
    """The IPv4 subnet of a docker network (kind's nodes live on "kind"), or None."""
    done = _cli(["docker", "network", "inspect", network, "--format", "{{json .IPAM.Config}}"], 30)
    if done.returncode != 0:
        return None
    for entry in json.loads(done.stdout or "[]") or []:
        try:
            return IPv4Network(entry.get("Subnet", ""))
        except ValueError:
            continue  # the IPv6 subnet
    return None


def check_tools(settings: Settings) -> None:
    """Everything but the API: binaries, the docker daemon, the cluster or the means to create it."""
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise BackendUnavailable(
            "kind backend: the Python package 'kubernetes' is not installed (pip install 'netconformance[kind]' "
            "or pip install 'kubernetes>=37')"
        ) from None
    if not settings.uses_kind:
        if not Path(settings.kubeconfig or "").is_file():
            raise BackendUnavailable(f"kind backend: NETCONFORMANCE_KUBECONFIG={settings.kubeconfig!r} is not a file")
        return
    if shutil.which("kind") is None:
        raise BackendUnavailable(
            "kind backend: the kind binary is not on PATH; install it "
            "(https://kind.sigs.k8s.io/docs/user/quick-start/#installation, e.g. "
            "`go install sigs.k8s.io/kind@v0.27.0`), or set NETCONFORMANCE_KUBECONFIG to use another cluster"
        )
    if shutil.which("docker") is None:
        raise BackendUnavailable(
            "kind backend: the docker CLI is not on PATH (kind runs its nodes as docker containers)"
        )
    done = _cli(["docker", "version", "--format", "{{.Server.Version}}"], 20)
    if done.returncode != 0:
        raise BackendUnavailable(f"kind backend: the docker daemon is not reachable: {done.stderr.strip()[:300]}")
    if settings.cluster not in KindCli().clusters():
        if settings.config is None:
            raise BackendUnavailable(
                f"kind backend: no kind cluster named {settings.cluster!r}; create one "
                f"(kind create cluster --name {settings.cluster} --config backends/kind/profiles/iptables.yaml), "
                f"or set NETCONFORMANCE_KIND_CONFIG=iptables to let the backend create it"
            )
        profile_path(settings.config)  # a bad profile is reported now, not at deploy


# -- the Kubernetes API ----------------------------------------------------------------


@dataclass(frozen=True)
class ExecResult:
    returncode: int | None
    stdout: str
    stderr: str


class Kube(Protocol):
    """What the backend needs from the API; manifests in and out are plain dicts."""

    def version(self) -> str: ...

    def create(self, manifest: Manifest) -> Manifest: ...

    def list(self, kind: str, namespace: str | None = None, label_selector: str = "") -> list[Manifest]: ...

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None: ...

    def exec(self, namespace: str, pod: str, command: Sequence[str], timeout: float) -> ExecResult: ...


class KubeClient:
    """`Kube` over the official client (kubernetes>=37: pydantic models, websocket exec)."""

    def __init__(
        self, config: dict[str, Any] | None = None, *, kubeconfig: str | None = None, context: str | None = None
    ):
        from kubernetes import client
        from kubernetes import config as kconfig

        if config is not None:
            api = kconfig.new_client_from_config_dict(config, context=context)  # type: ignore[no-untyped-call]
        else:
            api = kconfig.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        self._api = api
        self._core = client.CoreV1Api(api)
        self._net = client.NetworkingV1Api(api)
        self._disc = client.DiscoveryV1Api(api)
        self._version = client.VersionApi(api)
        self._lock = threading.Lock()  # the websocket exec swaps a shared configuration

    def _dict(self, obj: object) -> Manifest:
        out = self._api.sanitize_for_serialization(obj)
        assert isinstance(out, dict)
        return out

    def version(self) -> str:
        info = self._version.get_code(_request_timeout=API_TIMEOUT)
        return str(info.git_version)

    def create(self, manifest: Manifest) -> Manifest:
        from kubernetes import client

        kind, ns = manifest["kind"], manifest["metadata"].get("namespace")
        # Strict: the API server rejects unknown fields instead of dropping them.
        kw: dict[str, Any] = {"_request_timeout": API_TIMEOUT, "field_validation": "Strict"}
        obj: object
        if kind == "Namespace":
            obj = self._core.create_namespace(client.V1Namespace.model_validate(manifest), **kw)
        elif kind == "Pod":
            obj = self._core.create_namespaced_pod(ns, client.V1Pod.model_validate(manifest), **kw)
        elif kind == "Service":
            obj = self._core.create_namespaced_service(ns, client.V1Service.model_validate(manifest), **kw)
        elif kind == "NetworkPolicy":
            obj = self._net.create_namespaced_network_policy(ns, client.V1NetworkPolicy.model_validate(manifest), **kw)
        else:
            raise ValueError(f"kind backend: cannot create a {kind}")
        return self._dict(obj)

    def list(self, kind: str, namespace: str | None = None, label_selector: str = "") -> list[Manifest]:
        t, sel = API_TIMEOUT, label_selector or None
        got: Any
        if kind == "Namespace":
            got = self._core.list_namespace(label_selector=sel, _request_timeout=t)
        elif kind == "Node":
            got = self._core.list_node(label_selector=sel, _request_timeout=t)
        elif kind == "Pod" and namespace is not None:
            got = self._core.list_namespaced_pod(namespace, label_selector=sel, _request_timeout=t)
        elif kind == "Service" and namespace is not None:
            got = self._core.list_namespaced_service(namespace, label_selector=sel, _request_timeout=t)
        elif kind == "EndpointSlice" and namespace is not None:
            got = self._disc.list_namespaced_endpoint_slice(namespace, label_selector=sel, _request_timeout=t)
        else:
            raise ValueError(f"kind backend: cannot list {kind} (namespace {namespace!r})")
        return [self._dict(item) for item in got.items]

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        from kubernetes.client.exceptions import ApiException

        t = API_TIMEOUT
        try:
            if kind == "Namespace":
                self._core.delete_namespace(name, _request_timeout=t)
            elif kind == "Service" and namespace is not None:
                self._core.delete_namespaced_service(name, namespace, _request_timeout=t)
            elif kind == "Pod" and namespace is not None:
                self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0, _request_timeout=t)
            else:
                raise ValueError(f"kind backend: cannot delete {kind}")
        except ApiException as e:
            if e.status != 404:  # already gone is what we wanted
                raise

    def exec(self, namespace: str, pod: str, command: Sequence[str], timeout: float) -> ExecResult:
        from kubernetes.stream import stream

        with self._lock:
            ws = stream(
                self._core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=list(command),
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
            )
        out: list[str] = []
        err: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while ws.is_open() and time.monotonic() < deadline:
                ws.update(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
            if ws.is_open():
                raise TimeoutError(f"exec in {namespace}/{pod} did not finish within {timeout:g} s")
            # What arrived with the last frames is buffered, not yet read.
            out.append(ws.read_stdout(timeout=0))
            err.append(ws.read_stderr(timeout=0))
            code = ws.returncode
        finally:
            ws.close()
        return ExecResult(code if isinstance(code, int) else None, "".join(out), "".join(err))


def connect(settings: Settings) -> KubeClient:
    """A client for the configured cluster; BackendUnavailable when the API does not answer."""
    try:
        if settings.uses_kind:
            client = KubeClient(KindCli().kubeconfig(settings.cluster), context=f"kind-{settings.cluster}")
        else:
            client = KubeClient(kubeconfig=settings.kubeconfig, context=settings.context)
        client.version()
    except BackendUnavailable:
        raise
    except Exception as e:
        where = f"kind cluster {settings.cluster!r}" if settings.uses_kind else f"kubeconfig {settings.kubeconfig}"
        raise BackendUnavailable(
            f"kind backend: the API server of {where} does not answer: {type(e).__name__}: {e}"
        ) from None
    return client


def wait_until(what: str, deadline: float, check: Any, interval: float = 0.25) -> Any:
    """Poll `check()` until it returns something truthy; TimeoutError naming `what` at the deadline."""
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"kind backend: timed out waiting for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
