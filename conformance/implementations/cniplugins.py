"""Real CNI plugins as the wiring: pods attached by plugin binaries, kube-proxy's rules on top.

The topology around the pods is the reference's (underlay, nodes' eth0 and
routes, the external client); each pod's namespace starts empty and is
attached by running the plugins of a network configuration list in its
node's namespace (`CniAttachment`, executed by the netns backend). Pod IPs
are the scenario's: host-local IPAM gets a range equal to the node's podCIDR
and each pod asks for its address with CNI_ARGS ``IP=``. hostPorts go to the
portmap plugin as the ``portMappings`` capability.

kube-proxy's and the policy engine's rules (the reference renderer's) are
then restored with ``--noflush`` so the plugins' chains survive (CNI-xxx, the
portmap CNI-HOSTPORT-* chains). Where kube-proxy's jumps go in the built-in
chains is an option: at the top, as kube-proxy inserts them, or after the
plugins' (``proxy_first=False``), where the bridge plugin's ipMasq ACCEPT for
same-subnet traffic ends nat POSTROUTING before KUBE-POSTROUTING can
masquerade hairpin traffic.

The simulator cannot run plugins: it predicts these dataplanes from a
snapshot of the deployed nodes (`conformance.snapshot`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conformance.dataplane import CniAttachment, Dataplane, NetnsConfig
from conformance.implementations import wiring
from conformance.implementations.options import Options
from conformance.implementations.reference import node_iptables
from conformance.implementations.rules import BUILTIN_CHAINS
from conformance.model import Node, Pod, Scenario

CNI_VERSION = "1.0.0"
NETWORK = "cbr0"  # the network name kind's and containerd's examples use
IPAM_SUBNET = "{podCIDR}"  # placeholder in user conflists: the node's podCIDR
IPAM_GATEWAY = "{gateway}"  # placeholder: the first address of the podCIDR


def bridge_conflist(*, hairpin: bool, ip_masq: bool = False, portmap: bool = True) -> dict[str, Any]:
    """The bridge plugin (cni0, the pods' gateway) with host-local IPAM, then portmap."""
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": ip_masq,
            "hairpinMode": hairpin,
            "ipam": _ipam(),
        }
    ]
    if portmap:
        plugins.append(_portmap())
    return {"cniVersion": CNI_VERSION, "name": NETWORK, "plugins": plugins}


def ptp_conflist(*, portmap: bool = True) -> dict[str, Any]:
    """ptp as kind's kindnet uses it: a veth per pod, a /32 route per pod, the gateway on every host end."""
    plugins: list[dict[str, Any]] = [{"type": "ptp", "ipMasq": False, "ipam": _ipam()}]
    if portmap:
        plugins.append(_portmap())
    return {"cniVersion": CNI_VERSION, "name": "kindnet", "plugins": plugins}


def _ipam() -> dict[str, Any]:
    return {
        "type": "host-local",
        "ranges": [[{"subnet": IPAM_SUBNET, "gateway": IPAM_GATEWAY}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }


def _portmap() -> dict[str, Any]:
    return {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def node_conflist(template: str, node: Node) -> str:
    """The conflist for one node: the placeholders replaced by the node's podCIDR and gateway."""
    text = template.replace(IPAM_SUBNET, str(node.pod_cidr)).replace(IPAM_GATEWAY, str(wiring.cni0_ip(node)))
    json.loads(text)  # a broken template fails here, naming nothing the plugins would misread
    return text


def container_id(pod: Pod) -> str:
    """A stand-in for the runtime's 64-hex container id (deterministic, so renders compare equal)."""
    return hashlib.sha256(f"cni/{pod.ref}".encode()).hexdigest()


def port_mappings(pod: Pod) -> list[dict[str, Any]]:
    return [
        {"hostPort": p.host_port, "containerPort": p.port, "protocol": p.protocol.lower()}
        for p in pod.ports
        if p.host_port is not None
    ]


def noflush_rules(text: str, *, proxy_first: bool) -> str:
    """An iptables-save ruleset rewritten for `iptables-restore --noflush` on top of a CNI's rules.

    User chains stay declared (restore creates them, or flushes ours); the
    built-in chains' policies are left alone and their rules become
    ``-I CHAIN n`` (ahead of what is there, in order) or stay ``-A``
    (behind the plugins' rules).
    """
    out: list[str] = []
    table = ""
    position: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            table, position = line[1:].strip(), {}
        elif line.startswith(":") and line[1:].split()[0] in BUILTIN_CHAINS.get(table, ()):
            continue  # a policy line would reset nothing, but keep the plugins' state untouched
        elif line.startswith("-A ") and proxy_first:
            chain, _, rest = line[3:].partition(" ")
            if chain in BUILTIN_CHAINS.get(table, ()):
                position[chain] = position.get(chain, 0) + 1
                line = f"-I {chain} {position[chain]} {rest}"
        out.append(line)
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class CniPlugins:
    """An implementation: pods wired by the CNI plugins of `conflist`, Services by kube-proxy rules."""

    name: str
    description: str
    conflist: str  # JSON text; "{podCIDR}" and "{gateway}" are replaced per node
    proxy_first: bool = True  # kube-proxy's jumps ahead of the plugins' in the built-in chains
    # The reference's knobs; hostPorts are the portmap plugin's job here.
    options: Options = field(default_factory=lambda: Options(host_ports=False))
    broken: bool = False

    def render(self, scenario: Scenario) -> Dataplane:
        namespaces: list[NetnsConfig] = [wiring.underlay(scenario), wiring.external(scenario)]
        for node in scenario.nodes:
            namespaces.append(self._node(scenario, node))
            namespaces.extend(_pod(scenario, pod, self.options) for pod in scenario.pods_on(node.name))
        return Dataplane(namespaces=tuple(namespaces), sources=wiring.sources(scenario), implementation=self.name)

    def _node(self, scenario: Scenario, node: Node) -> NetnsConfig:
        base = wiring.node(scenario, node, self.options, "")
        conflist = node_conflist(self.conflist, node)
        attachments = tuple(
            CniAttachment(
                conflist=conflist,
                container_id=container_id(pod),
                netns=wiring.pod_netns(pod),
                args=(
                    ("IgnoreUnknown", "1"),
                    ("IP", str(pod.ip)),
                    ("K8S_POD_NAMESPACE", pod.namespace),
                    ("K8S_POD_NAME", pod.name),
                ),
                capability_args=json.dumps({"portMappings": port_mappings(pod)}, sort_keys=True),
            )
            for pod in sorted(scenario.pods_on(node.name), key=lambda p: p.ip)
        )
        rules = noflush_rules(node_iptables(scenario, node, self.options), proxy_first=self.proxy_first)
        # The plugins make cni0 (or the host veths) and give it its address; the node keeps eth0.
        return replace(
            base,
            links=(),
            addresses=tuple((dev, a) for dev, a in base.addresses if dev == "eth0"),
            cni=attachments,
            iptables=rules,
            iptables_noflush=True,
        )


def _pod(scenario: Scenario, pod: Pod, options: Options) -> NetnsConfig:
    # Empty until the plugins attach it: no address, no route; sysctls and servers as the reference's.
    return replace(wiring.pod(scenario, pod, options), addresses=(), routes=())


MAX_CONFLIST_BYTES = 1 << 20


class ConflistError(ValueError):
    """A user's .conflist that cannot be used; the message names the file, the place and what was expected."""


def from_file(path: Path, *, name: str | None = None, proxy_first: bool = True) -> CniPlugins:
    """An implementation from a user's .conflist (placeholders "{podCIDR}" and "{gateway}" allowed).

    Checked as far as it can be without running the plugins: JSON, and a non-empty `plugins` list of objects
    each with a `type`. Whether the plugins exist is the backend's to say (a node container has its own
    CNI_PATH).
    """
    try:
        if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never end
            raise ConflistError(f"{path}: not a regular file")
        if path.exists() and path.stat().st_size > MAX_CONFLIST_BYTES:
            raise ConflistError(f"{path}: {path.stat().st_size} bytes: too large for a conflist")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConflistError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConflistError(
            f"{path}: not a conflist: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from None
    data = _json(text, path)
    if not isinstance(data, dict) or not isinstance(data.get("plugins"), list) or not data["plugins"]:
        raise ConflistError(
            f'{path}: not a CNI network configuration list: expected an object with a non-empty "plugins" list'
            f' (a single plugin\'s .conf has "type" at the top: put it in "plugins": [...])'
        )
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ConflistError(f'{path}: expected a "name" (the network\'s name, a string), as every conflist has')
    for key in ("cniVersion",):
        if key in data and not isinstance(data[key], str):
            raise ConflistError(f'{path}: "{key}": expected a string such as "1.0.0"')
    for i, plugin in enumerate(data["plugins"]):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise ConflistError(f'{path}: plugins[{i}]: expected an object with a "type" (the plugin\'s binary name)')
        if "capabilities" in plugin and not isinstance(plugin["capabilities"], dict):
            raise ConflistError(
                f'{path}: plugins[{i}].capabilities: expected an object such as {{"portMappings": true}}'
            )
        if "/" in plugin["type"]:
            # As libcni's FindInPath: a type names a binary in CNI_PATH, never a path to one elsewhere.
            raise ConflistError(f"{path}: plugins[{i}].type {plugin['type']!r}: a plugin name, not a path (no /)")
    return CniPlugins(
        name=name or f"cni:{path.name}",
        description=f"CNI plugins of {path} ({', '.join(p['type'] for p in data['plugins'])}), kube-proxy",
        conflist=text,
        proxy_first=proxy_first,
    )


def _json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ConflistError(f"{path}: not JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError: its message has the line and column
        raise ConflistError(f"{path}: not JSON: {e}") from None


def _text(conflist: dict[str, Any]) -> str:
    return json.dumps(conflist, indent=1, sort_keys=True)


# ipMasq true masquerades everything from a pod but its own node's subnet, so
# pod-to-pod traffic between nodes is SNATed (measured here): real clusters
# leave it off and masquerade outside the cluster CIDR elsewhere.
CNI_IMPLEMENTATIONS: tuple[CniPlugins, ...] = (
    CniPlugins(
        "cni-bridge",
        "CNI bridge plugin (hairpinMode true) + host-local + portmap (snat), kube-proxy rules first",
        _text(bridge_conflist(hairpin=True)),
    ),
    CniPlugins(
        "cni-bridge-no-hairpin",
        "CNI bridge plugin with hairpinMode false: a pod cannot reach itself via its Service or hostPort",
        _text(bridge_conflist(hairpin=False)),
        broken=True,
    ),
    CniPlugins(
        "cni-ptp",
        "CNI ptp plugin (a /32 route per pod, as kindnet) + host-local + portmap (snat), kube-proxy rules first",
        _text(ptp_conflist()),
    ),
    CniPlugins(
        "cni-bridge-ipmasq",
        "CNI bridge plugin with ipMasq true, kube-proxy first: pod traffic to other nodes' pods is SNATed",
        _text(bridge_conflist(hairpin=True, ip_masq=True)),
        broken=True,
    ),
    CniPlugins(
        "cni-bridge-masq-first",
        "CNI bridge plugin's ipMasq chain ahead of KUBE-POSTROUTING: its same-subnet ACCEPT skips hairpin SNAT",
        _text(bridge_conflist(hairpin=True, ip_masq=True)),
        proxy_first=False,
        broken=True,
    ),
)
