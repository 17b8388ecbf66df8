"""Run real CNI plugins as a container runtime does, inside a node namespace.

The CNI specification's protocol: for each plugin of a network configuration
list, in order, execute the binary found in CNI_PATH with CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and CNI_PATH in its
environment and the plugin's configuration on stdin (cniVersion and name
from the list, the previous plugin's result as prevResult, runtimeConfig
for the capabilities it declares); its stdout is the result (or an error
object). DEL runs the plugins in reverse order with the last ADD result.

Plugins take the namespace they run in as the host (KERNEL-NOTES pitfall
11), so each is started by the worker thread while it is inside the node
namespace, never in the root namespace. host-local IPAM keeps its state in
the run's own directory (its ``dataDir`` is always set there), and the
plugins' ``iptables`` is iptables-legacy with a lock file in the run
directory, like the backend's own rules (a shim directory first on PATH).
Each plugin runs in its own session: a plugin that does not answer within
NETCONFORMANCE_CNI_TIMEOUT seconds is killed with everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from backends import env_seconds
from backends.netns.build import BuildError, Netns, lock_file, restore_env
from backends.netns.nsutil import NetnsWorker, netns_path
from conformance.dataplane import CniAttachment

DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"  # upstream's location, then Debian's
LEGACY_MULTI = "xtables-legacy-multi"
SHIMMED = ("iptables", "iptables-save", "iptables-restore")
PLUGIN_TIMEOUT = 30.0
TIMEOUT_VARIABLE = "NETCONFORMANCE_CNI_TIMEOUT"


def plugin_timeout() -> float:
    """Seconds a plugin may take (BackendUnavailable naming the variable when it is not a positive number)."""
    return env_seconds(TIMEOUT_VARIABLE, PLUGIN_TIMEOUT)


def cni_path() -> str:
    return os.environ.get("NETCONFORMANCE_CNI_PATH", DEFAULT_CNI_PATH)


def _candidates(kind: str, path: str | None) -> list[Path]:
    return [Path(d) / kind for d in (path or cni_path()).split(":") if d and (Path(d) / kind).is_file()]


def find_plugin(kind: str, path: str | None = None) -> Path | None:
    """The first executable file named `kind` in CNI_PATH, as a runtime looks it up."""
    return next((c for c in _candidates(kind, path) if os.access(c, os.X_OK)), None)


def not_executable(kind: str, path: str | None = None) -> Path | None:
    """A file named `kind` in CNI_PATH that cannot be run, when no other can: a missing chmod, not a typo."""
    if find_plugin(kind, path) is not None:
        return None
    return next(iter(_candidates(kind, path)), None)


def missing_plugins(kinds: list[str], path: str | None = None) -> list[str]:
    """The plugins with no file of their name in CNI_PATH (see not_executable for those that are there)."""
    return [k for k in kinds if not _candidates(k, path)]


# What Debian's containernetworking-plugins installs (in /usr/lib/cni): worth suggesting only for these names.
DEBIAN_PLUGINS = frozenset(
    [
        "bandwidth",
        "bridge",
        "dhcp",
        "dummy",
        "firewall",
        "host-device",
        "host-local",
        "ipvlan",
        "loopback",
        "macvlan",
        "portmap",
        "ptp",
        "sbr",
        "static",
        "tap",
        "tuning",
        "vlan",
        "vrf",
    ]
)


def missing_plugins_message(kinds: list[str]) -> str | None:
    """None when every plugin is found in CNI_PATH; else which are not (or cannot run), where, and what to do."""
    missing = missing_plugins(kinds)
    unusable = [p for p in (not_executable(k) for k in kinds) if p is not None]
    if not missing and not unusable:
        return None
    said = [f"{p} is not executable (chmod +x it)" for p in unusable]
    where = cni_path()
    if missing and not where.strip(":"):
        said.insert(0, f"CNI plugin(s) {', '.join(missing)}: NETCONFORMANCE_CNI_PATH is set but names no directory")
    elif missing:
        advice = "put them in one of those directories, or point NETCONFORMANCE_CNI_PATH at theirs"
        if set(missing) <= DEBIAN_PLUGINS:
            advice += " (Debian: apt-get install containernetworking-plugins)"
        said.insert(
            0, f"CNI plugin(s) {', '.join(missing)} not found in CNI_PATH {where!r} (NETCONFORMANCE_CNI_PATH): {advice}"
        )
    return "; ".join(said)


def plugin_types(conflist: str) -> list[str]:
    data = json.loads(conflist)
    types = [str(p.get("type")) for p in data.get("plugins", [])]
    for p in data.get("plugins", []):
        ipam = p.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type"):
            types.append(str(ipam["type"]))
    return types


def iptables_shim(run_dir: Path) -> Path:
    """A directory whose iptables, iptables-save, iptables-restore are the legacy ones."""
    shim = run_dir / "cni-bin"
    multi = shutil.which(LEGACY_MULTI) or shutil.which(LEGACY_MULTI, path="/usr/sbin:/sbin")
    if multi is None:
        raise BuildError(f"{LEGACY_MULTI} not found: install the Debian package 'iptables'")
    shim.mkdir(mode=0o700, exist_ok=True)
    for name in SHIMMED:
        link = shim / name
        if not link.is_symlink():
            link.symlink_to(multi)  # xtables-legacy-multi acts as argv[0] says
    return shim


@dataclass
class Attached:
    """One ADD that succeeded: what DEL needs."""

    node: str  # logical node namespace
    attachment: CniAttachment
    result: dict[str, Any]


def _plugin_config(
    conflist: Mapping[str, Any],
    plugin: Mapping[str, Any],
    prev: dict[str, Any] | None,
    capabilities: Mapping[str, Any],
    data_dir: Path,
) -> dict[str, Any]:
    conf = dict(plugin)
    conf["cniVersion"] = conflist.get("cniVersion", "1.0.0")
    conf["name"] = conflist["name"]
    if prev is not None:
        conf["prevResult"] = prev
    declared = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capabilities.items() if declared.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and ipam.get("type") == "host-local":
        conf["ipam"] = {**ipam, "dataDir": str(data_dir)}  # never the host's /var/lib/cni
    return conf


class CniRunner:
    """Executes attachments for one backend run (worker thread only)."""

    def __init__(self, worker: NetnsWorker, run_dir: Path, *, timeout: float = PLUGIN_TIMEOUT) -> None:
        self.worker = worker
        self.run_dir = run_dir
        self.timeout = timeout
        self.attached: list[Attached] = []
        self._running: subprocess.Popen[bytes] | None = None  # the plugin being waited for, if any
        worker.on_interrupt.append(self.abort)

    def abort(self) -> None:
        """On Ctrl-C or SIGTERM (from the main thread): kill the plugin that runs now, with what it started, so
        teardown need not wait out its timeout. A plugin in its own session gets no terminal signal itself."""
        proc = self._running
        if proc is not None and proc.returncode is None:  # not yet reaped: its process group id is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def ipam_dir(self, node: Netns) -> Path:
        return self.run_dir / "cni-ipam" / node.kname

    def reset_ipam(self, node: Netns) -> None:
        """A new build starts from empty IPAM state (the old namespaces, and their pods, are gone)."""
        shutil.rmtree(self.ipam_dir(node), ignore_errors=True)

    def add(self, node: Netns, namespaces: Mapping[str, Netns]) -> None:
        for att in node.config.cni:
            conflist = json.loads(att.conflist)
            capabilities = json.loads(att.capability_args or "{}")
            prev: dict[str, Any] | None = None
            for plugin in conflist.get("plugins", []):
                conf = _plugin_config(conflist, plugin, prev, capabilities, self.ipam_dir(node))
                out = self._exec("ADD", node, namespaces, att, conf)
                if out:
                    prev = out
            if prev is None:
                raise BuildError(f"{node.config.name}: CNI ADD for {att.netns}: no plugin returned a result")
            # Attached first: an ADD the plugin made but the scenario cannot use is still DEL'd at teardown.
            self.attached.append(Attached(node.config.name, att, prev))
            _check_addresses(f"{node.config.name}: CNI ADD for {att.netns}", att, prev)

    def delete(self, node: Netns, namespaces: Mapping[str, Netns]) -> list[str]:
        """DEL every attachment made in `node`, plugins in reverse order; returns the errors."""
        errors: list[str] = []
        mine = [a for a in self.attached if a.node == node.config.name]
        for done in reversed(mine):
            conflist = json.loads(done.attachment.conflist)
            capabilities = json.loads(done.attachment.capability_args or "{}")
            for plugin in reversed(conflist.get("plugins", [])):
                conf = _plugin_config(conflist, plugin, done.result, capabilities, self.ipam_dir(node))
                try:
                    self._exec("DEL", node, namespaces, done.attachment, conf)
                except BuildError as e:
                    errors.append(str(e))
            self.attached.remove(done)
        return errors

    def forget(self) -> None:
        self.attached = []

    def _exec(
        self,
        command: str,
        node: Netns,
        namespaces: Mapping[str, Netns],
        att: CniAttachment,
        conf: dict[str, Any],
    ) -> dict[str, Any] | None:
        kind = str(conf.get("type"))
        where = f"{node.config.name}: CNI {kind} {command} for {att.netns}"
        binary = find_plugin(kind)
        if binary is None:
            unusable = not_executable(kind)
            if unusable is not None:
                raise BuildError(f"{where}: {unusable} is not executable")
            raise BuildError(
                f"{where}: no plugin {kind!r} in CNI_PATH {cni_path()} (Debian: containernetworking-plugins)"
            )
        pod = namespaces.get(att.netns)
        if pod is None:
            raise BuildError(f"{where}: no namespace {att.netns!r} in this dataplane")
        env = restore_env(lock_file(self.run_dir, node))  # the node's own rules' lock: never the host's
        env |= {
            "PATH": f"{iptables_shim(self.run_dir)}:{env['PATH']}",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": str(netns_path(pod.kname)),
            "CNI_IFNAME": att.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in att.args),
            "CNI_PATH": cni_path(),
        }
        # The child inherits the worker thread's namespace: started inside the node. Its own session, so that
        # a plugin that hangs goes with whatever it started (which would otherwise keep the node alive).
        with self.worker.inside(node.fd):
            proc = subprocess.Popen(
                [str(binary)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        self._running = proc
        try:
            out, err = proc.communicate(json.dumps(conf).encode(), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            # The group outlives its leader only through its members: killed before the leader is reaped, so
            # the group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            raise BuildError(
                f"{where}: no answer within {self.timeout:g}s (killed with what it started; "
                f"{TIMEOUT_VARIABLE} sets the limit)"
            ) from None
        finally:
            self._running = None
        if proc.returncode != 0:
            raise BuildError(f"{where}: exit {proc.returncode}: {_error_text(out, err)}")
        if not out.strip():
            return None
        try:
            result = json.loads(out)
        except ValueError as e:  # not JSON, or not UTF-8
            raise BuildError(f"{where}: result is not JSON ({e}): {_text(out, 200)}") from None
        if not isinstance(result, dict):
            raise BuildError(f"{where}: result is not a JSON object: {_text(out, 200)}")
        return result


def _text(data: bytes, limit: int) -> str:
    """A plugin's output as a person reads it: decoded whatever its bytes, trimmed."""
    text = data.decode(errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _error_text(out: bytes, err: bytes) -> str:
    # A plugin reports failure as {"code": n, "msg": ..., "details": ...} on stdout; the code says which failure
    # (CNI's well-known ones, 1-99, or the plugin's own).
    try:
        data = json.loads(out)
        text = str(data.get("msg", "")) + (f" ({data['details']})" if data.get("details") else "")
        if data.get("code") is not None:
            text = f"CNI error {data['code']}: {text}" if text else f"CNI error {data['code']}"
    except (ValueError, AttributeError):  # not JSON, not UTF-8, not an object
        text = _text(out, 300)
    extra = _text(err, 300)
    return "; ".join(t for t in (text, extra) if t) or "no error message"


def _result_addresses(result: Mapping[str, Any]) -> list[str]:
    """The addresses of a CNI result: "ips", each with an "address" in CIDR form (0.3.0 and later), or "ip4" and
    "ip6", each with an "ip" (0.1.0, 0.2.0)."""
    ips = result.get("ips")
    if isinstance(ips, list):
        return [str(entry["address"]) for entry in ips if isinstance(entry, dict) and entry.get("address")]
    old = [result.get(key) for key in ("ip4", "ip6")]
    return [str(entry["ip"]) for entry in old if isinstance(entry, dict) and entry.get("ip")]


def _check_addresses(where: str, att: CniAttachment, result: Mapping[str, Any]) -> None:
    """The pod must have the addresses the scenario asked for (CNI_ARGS IP=): the probes are aimed at them.

    Many IPAMs ignore IP=; without this check every probe would time out and read as a dataplane failure.
    """
    wanted = [w for k, v in att.args if k == "IP" for w in v.split(",") if w]
    if not wanted:
        return
    gave = _result_addresses(result)
    got = {_address(a) for a in gave}
    missing = [w for w in wanted if _address(w) not in got]
    if not missing:
        return
    given = f"gave {', '.join(gave)}" if gave else "gave no address"
    raise BuildError(
        f"{where}: the plugin {given}, the scenario needs {', '.join(missing)}: "
        "the IPAM must honour CNI_ARGS IP= (host-local does)"
    )


def _address(text: str) -> str:
    """The address of "10.244.1.10/24" or "10.244.1.10", normalised; anything else as it is."""
    try:
        return str(ip_interface(text).ip)
    except ValueError:
        return text
