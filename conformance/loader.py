"""Scenarios as Kubernetes-shaped YAML: load (strictly) and dump (exactly).

A scenario file holds several YAML documents (``---``), or one ``kind: List``
with ``items``, of these objects:

- ``v1 Namespace``: metadata.name, metadata.labels.
- ``v1 Node``: metadata.name, spec.podCIDR, status.addresses (one InternalIP);
  annotations ``netconformance.io/hairpin-mode: "true"|"false"`` and
  ``netconformance.io/bridge-nf-call-iptables: "1"|"0"``.
- ``v1 Pod``: metadata.namespace (default "default"), name, labels;
  spec.nodeName, spec.containers[].ports[] {containerPort, protocol, hostPort};
  status.podIP; annotation ``netconformance.io/accept-local: "1"|"0"``.
- ``v1 Service``: spec.type (ClusterIP | NodePort), clusterIP, selector,
  ports[] {name, protocol, port, targetPort (integer), nodePort},
  externalTrafficPolicy (NodePort only).
- ``networking.k8s.io/v1 NetworkPolicy``: the full v1 spec, numeric ports only.
- ``netconformance.io/v1 Knobs`` (at most one): metadata.name (the scenario's
  name), spec {masqueradeHairpin, clusterCIDR, serviceCIDR, nodeCIDR}. These
  CIDRs and the podCIDRs must not overlap 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4
  or 240.0.0.0/4, which no cluster can use.

Everything is checked, and unknown fields are errors: a typo must never turn
into a silently different scenario. Errors are `ScenarioError`, whose message
names the file, the object, the field path and what was expected.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import date, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

import yaml

from conformance.model import (
    PROTOCOLS,
    ContainerPort,
    IPBlock,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Protocol,
    Requirement,
    Scenario,
    Service,
    ServicePort,
    labels,
)

__all__ = [
    "Ctx",
    "ScenarioError",
    "dump_scenario",
    "load_scenario",
    "parse_documents",
    "parse_scenario",
    "read_documents",
    "read_text",
    "unusable_range",
]

_T = TypeVar("_T")

KNOBS_API = "netconformance.io/v1"
ANN_HAIRPIN = "netconformance.io/hairpin-mode"
ANN_BRIDGE_NF = "netconformance.io/bridge-nf-call-iptables"
ANN_ACCEPT_LOCAL = "netconformance.io/accept-local"
NS_NAME_LABEL = "kubernetes.io/metadata.name"

# (apiVersion, kind) of every object a scenario file may contain.
_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "Namespace"),
    ("v1", "Node"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    (KNOBS_API, "Knobs"),
)

_SERVICE_TYPES: tuple[Literal["ClusterIP", "NodePort"], ...] = ("ClusterIP", "NodePort")
_TRAFFIC_POLICIES: tuple[Literal["Cluster", "Local"], ...] = ("Cluster", "Local")
_OPERATORS: tuple[Literal["In", "NotIn", "Exists", "DoesNotExist"], ...] = (
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
)
_POLICY_TYPES: tuple[Literal["Ingress", "Egress"], ...] = ("Ingress", "Egress")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class ScenarioError(ValueError):
    """Invalid scenario input. The message is complete and meant for people."""


# Addresses no cluster can give a node, a pod or a Service, nor a probe reach:
# kernels refuse or reroute them (a loopback serviceCIDR answered with ICMP
# errors, a multicast clusterCIDR failed with EINVAL).
_UNUSABLE_RANGES: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network'"),
    (IPv4Network("127.0.0.0/8"), "loopback"),
    (IPv4Network("224.0.0.0/4"), "multicast"),
    (IPv4Network("240.0.0.0/4"), "reserved, incl. broadcast"),
)


def unusable_range(net: IPv4Network) -> str | None:
    """ "127.0.0.0/8 (loopback)" if `net` overlaps an address no cluster can use, else None."""
    for r, what in _UNUSABLE_RANGES:
        if net.overlaps(r):
            return f"{r} ({what})"
    return None


# -- reading YAML ----------------------------------------------------------------


# libyaml's parser and emitter when PyYAML has them (several times faster);
# the strict mapping constructor below works on either.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


def _key_id(key_node: yaml.Node) -> object:
    """Which key a key node is, for merging: a scalar by its text, anything else by identity."""
    return (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else id(key_node)


class _StrictLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """A SafeLoader that rejects duplicate keys (plain YAML keeps the last one).

    Merge keys (``<<: *base``, ``<<: [*a, *b]``) follow the YAML merge type: a
    key written in the mapping overrides a merged one, and of the merged
    mappings the earlier one wins. Only keys written in one mapping are duplicates.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # Mappings flattened (a merged one is flattened in place, maybe before it
        # is constructed itself) and being flattened (to catch a mapping merging
        # itself). Nodes, not ids: a node kept here is never freed, its id never reused.
        self._flat: set[yaml.MappingNode] = set()
        self._flattening: set[yaml.MappingNode] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Replaces PyYAML's, whose precedence changed in 6.0.4 (yaml/pyyaml#953).
        if node in self._flat:
            return
        if node in self._flattening:
            raise yaml.constructor.ConstructorError(
                "while merging mappings", node.start_mark, "a mapping cannot merge itself", node.start_mark
            )
        self._flattening.add(node)
        self._check_duplicates(node)  # before merging: merged keys are not duplicates
        merged: list[tuple[yaml.Node, yaml.Node]] = []  # lowest precedence first, as dict() keeps the last
        written: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                if key_node.tag == _VALUE_TAG:
                    key_node.tag = "tag:yaml.org,2002:str"  # as PyYAML's own flatten_mapping does
                written.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for sub in reversed(sources):  # the earlier mapping wins, so it goes later
                if not isinstance(sub, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping or list of mappings for merging, but found {sub.id}",
                        sub.start_mark,
                    )
                self.flatten_mapping(sub)
                merged.extend(sub.value)
        self._flattening.discard(node)
        self._flat.add(node)
        if merged:
            # Only the winning pair of each key: merges of merges cannot grow
            # exponentially (yaml/pyyaml#897).
            pairs = merged + written
            last = {_key_id(k): i for i, (k, _) in enumerate(pairs)}
            node.value = [pair for i, pair in enumerate(pairs) if last[_key_id(pair[0])] == i]

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> object:
        # An unquoted 2026-13-45 looks like a date to YAML and fails with a bare
        # ValueError; as a ConstructorError it gets its line and column.
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid date or time ({e}); quote it if it is text", node.start_mark
            ) from None

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: set[object] = set()
        merges = 0
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys: left to the base class to reject
            if key_node.tag == _MERGE_TAG:
                # Not constructible on its own; several mappings merge as `<<: [*a, *b]`.
                merges += 1
                duplicate, shown = merges > 1, "'<<'"
            else:
                key = self.construct_object(key_node)
                duplicate, shown = key in seen, repr(key)
                seen.add(key)
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {shown}",
                    key_node.start_mark,
                )


# Constructors are looked up in a table, not as methods: register the override.
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _StrictLoader.construct_yaml_timestamp)


def read_documents(text: str, source: str) -> list[object]:
    """Every YAML document of `text`, duplicate keys rejected; errors give line and column."""
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "unreadable YAML"
        raise ScenarioError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{source}: invalid YAML: {e}") from None


# -- field access with precise errors ----------------------------------------------


def _show(value: object) -> str:
    """A value as the user wrote it, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date | datetime):
        return f"the date {value.isoformat()}"  # YAML reads an unquoted 2026-11-23 as one
    return repr(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Ctx:
    """Where we are: the file and the object, for error messages.

    Also used by `conformance.cases` for the documents a case file adds.
    """

    def __init__(self, source: str, obj: str) -> None:
        self.source = source
        self.obj = obj

    def fail(self, path: str, message: str) -> NoReturn:
        at = f"{path}: " if path else ""
        raise ScenarioError(f"{self.source}: {self.obj}: {at}{message}")

    def mapping(self, value: object, path: str, allowed: Sequence[str]) -> dict[str, object]:
        """A mapping with only `allowed` keys; null and absent mean empty."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {_show(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"expected string keys, got {_show(key)}")
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f"did you mean '{hint[0]}'? " if hint else ""
                self.fail(
                    _join(path, key),
                    f"unknown field '{key}' ({did}expected one of: {', '.join(allowed)})",
                )
        return {str(k): v for k, v in value.items() if v is not None}

    def list(self, value: object, path: str) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"expected a list, got {_show(value)}")
        return value

    def string(self, value: object, path: str, what: str = "a string") -> str:
        if not isinstance(value, str):
            hint = " (quote it)" if isinstance(value, (bool, int, float, date, datetime)) else ""
            self.fail(path, f"expected {what}, got {_show(value)}{hint}")
        return value

    def required(self, m: dict[str, object], key: str, path: str, what: str) -> object:
        if key not in m:
            self.fail(_join(path, key), f"required: expected {what}")
        return m[key]

    def integer(self, value: object, path: str, lo: int, hi: int) -> int:
        # bool is an int in Python; in YAML it is not a number.
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.fail(path, f"expected an integer {lo}-{hi}, got {_show(value)}")
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"expected true or false, got {_show(value)}")
        return value

    def choice(self, value: object, path: str, choices: Sequence[_T]) -> _T:
        for c in choices:
            if value == c and type(value) is type(c):
                return c
        self.fail(path, f"expected one of {', '.join(map(str, choices))}, got {_show(value)}")

    def name(self, value: object, path: str, *, label: bool) -> str:
        text = self.string(value, path, "a name")
        pattern, what, limit = (
            (_DNS_LABEL, "a DNS label (lowercase letters, digits, '-')", 63)
            if label
            else (_DNS_SUBDOMAIN, "a DNS subdomain (lowercase letters, digits, '-', '.')", 253)
        )
        if len(text) > limit or not pattern.fullmatch(text):
            self.fail(path, f"expected {what}, got {_show(text)}")
        return text

    def ip(self, value: object, path: str) -> IPv4Address:
        text = self.string(value, path, "an IPv4 address")
        try:
            return IPv4Address(text)
        except ValueError:
            self.fail(path, f"expected an IPv4 address, got {_show(text)}")

    def cidr(self, value: object, path: str) -> IPv4Network:
        text = self.string(value, path, "an IPv4 CIDR")
        if "/" not in text:
            self.fail(path, f"expected an IPv4 CIDR like 10.0.0.0/24, got {_show(text)}")
        try:
            return IPv4Network(text)
        except ValueError as e:
            if "host bits" in str(e):
                net = IPv4Network(text, strict=False)
                self.fail(path, f"{text} has host bits set (did you mean {net}?)")
            self.fail(path, f"expected an IPv4 CIDR like 10.0.0.0/24, got {_show(text)}")

    def labels(self, value: object, path: str) -> Labels:
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping of label keys to values, got {_show(value)}")
        out: dict[str, str] = {}
        for key, val in value.items():
            k = self.label_key(key, path)
            v = self.string(val, _join(path, k), "a label value (a string)")
            if v and (len(v) > 63 or not _LABEL_NAME.fullmatch(v)):
                self.fail(
                    _join(path, k),
                    f"expected a label value (up to 63 of A-Z a-z 0-9 - _ .), got {_show(v)}",
                )
            out[k] = v
        return labels(out)

    def label_key(self, key: object, path: str) -> str:
        k = self.string(key, path, "a label key (a string)")
        prefix, _, name = k.rpartition("/")
        if len(name) > 63 or not _LABEL_NAME.fullmatch(name) or (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)):
            self.fail(_join(path, k), f"expected a label key like 'app' or 'x.io/app', got {k!r}")
        return k


def _annotations(ctx: Ctx, meta: dict[str, object], known: dict[str, tuple[str, str]]) -> dict[str, bool]:
    """Knob annotations: {key: (true text, false text)} -> {key: value}."""
    raw = ctx.mapping(meta.get("annotations"), "metadata.annotations", sorted(known))
    out: dict[str, bool] = {}
    for key, value in raw.items():
        yes, no = known[key]
        path = f"metadata.annotations.{key}"
        if not isinstance(value, str) or value not in (yes, no):
            ctx.fail(path, f'expected the string "{yes}" or "{no}" (quoted), got {_show(value)}')
        out[key] = value == yes
    return out


# -- objects ------------------------------------------------------------------------


class _Collected:
    """Objects in file order, before cross-object checks."""

    def __init__(self) -> None:
        self.namespaces: list[Namespace] = []
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.services: list[Service] = []
        self.policies: list[NetworkPolicy] = []
        # From the Knobs object; defaults are the model's.
        self.knobs_seen = False
        self.name: str | None = None
        self.masquerade_hairpin = Scenario.masquerade_hairpin
        self.cluster_cidr = Scenario.cluster_cidr
        self.service_cidr = Scenario.service_cidr
        self.node_cidr = Scenario.node_cidr


def _parse_object(
    source: str, where: str, doc: object, out: _Collected, handled: Sequence[tuple[str, str]] = ()
) -> None:
    ctx = Ctx(source, where)
    if not isinstance(doc, dict):
        ctx.fail(
            "",
            f"expected a Kubernetes object (a mapping with apiVersion and kind), got {_show(doc)}",
        )
    api = ctx.string(ctx.required(doc, "apiVersion", "", "an apiVersion such as v1"), "apiVersion")
    kind = ctx.string(ctx.required(doc, "kind", "", "a kind such as Pod"), "kind")
    if kind == "List":
        ctx.fail("kind", "a List may only appear as a whole document, not inside another List")
    if (api, kind) not in _KINDS:
        same_kind = [a for a, k in _KINDS if k == kind]
        if same_kind:
            ctx.fail("apiVersion", f"{kind} needs apiVersion {same_kind[0]}, got {api!r}")
        # `handled`: kinds the caller reads itself (a case file's ProbeList), named so a typo finds them.
        kinds = (*_KINDS, *handled)
        hint = difflib.get_close_matches(kind, [k for _, k in kinds], n=1)
        did = f"did you mean '{hint[0]}'? " if hint else ""
        known = ", ".join(f"{a} {k}" for a, k in kinds)
        ctx.fail("kind", f"unknown kind {kind!r} ({did}expected one of: {known})")

    # Name the object as soon as we can, so later errors say which one it is.
    meta_fields = {
        "Namespace": ("name", "labels"),
        "Node": ("name", "annotations"),
        "Pod": ("name", "namespace", "labels", "annotations"),
        "Service": ("name", "namespace"),
        "NetworkPolicy": ("name", "namespace"),
        "Knobs": ("name",),
    }[kind]
    ctx.obj = _object_label(where, kind, doc.get("metadata"))
    top = {
        "Namespace": ("apiVersion", "kind", "metadata"),
        "Node": ("apiVersion", "kind", "metadata", "spec", "status"),
        "Pod": ("apiVersion", "kind", "metadata", "spec", "status"),
        "Service": ("apiVersion", "kind", "metadata", "spec"),
        "NetworkPolicy": ("apiVersion", "kind", "metadata", "spec"),
        "Knobs": ("apiVersion", "kind", "metadata", "spec"),
    }[kind]
    obj = ctx.mapping(doc, "", top)
    meta = ctx.mapping(obj.get("metadata"), "metadata", meta_fields)

    if kind == "Knobs":
        if out.knobs_seen:
            ctx.fail("", "only one Knobs object is allowed per scenario")
        out.knobs_seen = True
        if "name" in meta:
            out.name = ctx.string(meta["name"], "metadata.name")
            ctx.obj = f"Knobs {out.name}"
        spec = ctx.mapping(
            obj.get("spec"),
            "spec",
            ("masqueradeHairpin", "clusterCIDR", "serviceCIDR", "nodeCIDR"),
        )
        if "masqueradeHairpin" in spec:
            out.masquerade_hairpin = ctx.boolean(spec["masqueradeHairpin"], "spec.masqueradeHairpin")
        # Every node, pod and Service address is checked to be inside one of these.
        if "clusterCIDR" in spec:
            out.cluster_cidr = _usable_cidr(ctx, spec["clusterCIDR"], "spec.clusterCIDR")
        if "serviceCIDR" in spec:
            out.service_cidr = _usable_cidr(ctx, spec["serviceCIDR"], "spec.serviceCIDR")
        if "nodeCIDR" in spec:
            out.node_cidr = _usable_cidr(ctx, spec["nodeCIDR"], "spec.nodeCIDR")
        return

    name = ctx.name(
        ctx.required(meta, "name", "metadata", "a name"),
        "metadata.name",
        label=kind in ("Namespace", "Service"),
    )
    namespaced = kind in ("Pod", "Service", "NetworkPolicy")
    namespace = ctx.name(meta.get("namespace", "default"), "metadata.namespace", label=True) if namespaced else ""
    ctx.obj = f"{kind} {namespace}/{name}" if namespaced else f"{kind} {name}"

    if kind == "Namespace":
        ns_labels = ctx.labels(meta.get("labels"), "metadata.labels")
        own = dict(ns_labels).get(NS_NAME_LABEL, name)
        if own != name:
            ctx.fail(
                f"metadata.labels.{NS_NAME_LABEL}",
                f"must equal the namespace name {name!r}, got {own!r}",
            )
        out.namespaces.append(Namespace(name, ns_labels))
    elif kind == "Node":
        out.nodes.append(_parse_node(ctx, name, meta, obj))
    elif kind == "Pod":
        out.pods.append(_parse_pod(ctx, namespace, name, meta, obj))
    elif kind == "Service":
        out.services.append(_parse_service(ctx, namespace, name, obj))
    else:
        out.policies.append(_parse_policy(ctx, namespace, name, obj))


def _object_label(where: str, kind: str, metadata: object) -> str:
    """ "Pod default/pod-a" if the metadata says so plainly, else "document 2 (Pod)"."""
    if isinstance(metadata, dict):
        name, namespace = metadata.get("name"), metadata.get("namespace", "default")
        if isinstance(name, str) and name and isinstance(namespace, str):
            if kind in ("Pod", "Service", "NetworkPolicy"):
                return f"{kind} {namespace}/{name}"
            return f"{kind} {name}"
    return f"{where} ({kind})"


def _usable_cidr(ctx: Ctx, value: object, path: str) -> IPv4Network:
    net = ctx.cidr(value, path)
    unusable = unusable_range(net)
    if unusable:
        ctx.fail(path, f"{net} overlaps {unusable}, which no cluster can use")
    return net


def _parse_node(ctx: Ctx, name: str, meta: dict[str, object], obj: dict[str, object]) -> Node:
    knobs = _annotations(ctx, meta, {ANN_HAIRPIN: ("true", "false"), ANN_BRIDGE_NF: ("1", "0")})
    spec = ctx.mapping(obj.get("spec"), "spec", ("podCIDR",))
    # Also inside clusterCIDR (checked later); this error names the podCIDR itself.
    pod_cidr = _usable_cidr(ctx, ctx.required(spec, "podCIDR", "spec", "an IPv4 CIDR"), "spec.podCIDR")
    if pod_cidr.prefixlen > 30:
        ctx.fail("spec.podCIDR", f"expected a CIDR of /30 or larger (room for pods), got {pod_cidr}")
    status = ctx.mapping(obj.get("status"), "status", ("addresses",))
    addresses = ctx.list(
        ctx.required(status, "addresses", "status", "a list with one InternalIP address"),
        "status.addresses",
    )
    internal: list[IPv4Address] = []
    for i, item in enumerate(addresses):
        path = f"status.addresses[{i}]"
        entry = ctx.mapping(item, path, ("type", "address"))
        ctx.choice(ctx.required(entry, "type", path, "InternalIP"), f"{path}.type", ("InternalIP",))
        internal.append(ctx.ip(ctx.required(entry, "address", path, "an IPv4 address"), f"{path}.address"))
    if len(internal) != 1:
        ctx.fail("status.addresses", f"expected exactly one InternalIP address, got {len(internal)}")
    return Node(
        name=name,
        ip=internal[0],
        pod_cidr=pod_cidr,
        hairpin_mode=knobs.get(ANN_HAIRPIN, True),
        bridge_nf_call_iptables=knobs.get(ANN_BRIDGE_NF, True),
    )


def _parse_pod(ctx: Ctx, namespace: str, name: str, meta: dict[str, object], obj: dict[str, object]) -> Pod:
    pod_labels = ctx.labels(meta.get("labels"), "metadata.labels")
    knobs = _annotations(ctx, meta, {ANN_ACCEPT_LOCAL: ("1", "0")})
    spec = ctx.mapping(obj.get("spec"), "spec", ("nodeName", "containers"))
    node = ctx.name(ctx.required(spec, "nodeName", "spec", "a node name"), "spec.nodeName", label=False)
    ports: list[ContainerPort] = []
    for i, item in enumerate(ctx.list(spec.get("containers"), "spec.containers")):
        cpath = f"spec.containers[{i}]"
        # name and image are accepted so real manifests load; they mean nothing here.
        container = ctx.mapping(item, cpath, ("name", "image", "ports"))
        for j, raw in enumerate(ctx.list(container.get("ports"), f"{cpath}.ports")):
            path = f"{cpath}.ports[{j}]"
            entry = ctx.mapping(raw, path, ("containerPort", "protocol", "hostPort"))
            port = ctx.integer(
                ctx.required(entry, "containerPort", path, "an integer 1-65535"),
                f"{path}.containerPort",
                1,
                65535,
            )
            protocol = _protocol(ctx, entry, path)
            host_port = (
                ctx.integer(entry["hostPort"], f"{path}.hostPort", 1, 65535)
                if entry.get("hostPort") is not None
                else None
            )
            cp = ContainerPort(port, protocol, host_port)
            if any((c.port, c.protocol) == (port, protocol) for c in ports):
                ctx.fail(path, f"duplicate container port {port}/{protocol}")
            ports.append(cp)
    status = ctx.mapping(obj.get("status"), "status", ("podIP",))
    ip = ctx.ip(ctx.required(status, "podIP", "status", "an IPv4 address"), "status.podIP")
    return Pod(
        namespace=namespace,
        name=name,
        node=node,
        ip=ip,
        labels=pod_labels,
        ports=tuple(ports),
        accept_local=knobs.get(ANN_ACCEPT_LOCAL, False),
    )


def _protocol(ctx: Ctx, entry: dict[str, object], path: str) -> Protocol:
    return ctx.choice(entry.get("protocol", "TCP"), f"{path}.protocol", PROTOCOLS)


def _parse_service(ctx: Ctx, namespace: str, name: str, obj: dict[str, object]) -> Service:
    spec = ctx.mapping(
        obj.get("spec"),
        "spec",
        ("type", "clusterIP", "selector", "ports", "externalTrafficPolicy"),
    )
    svc_type = ctx.choice(spec.get("type", "ClusterIP"), "spec.type", _SERVICE_TYPES)
    if spec.get("clusterIP") == "None":
        ctx.fail("spec.clusterIP", "headless Services are not supported: expected an IPv4 address")
    cluster_ip = ctx.ip(ctx.required(spec, "clusterIP", "spec", "an IPv4 address"), "spec.clusterIP")
    selector = ctx.labels(spec.get("selector"), "spec.selector")
    etp = ctx.choice(
        spec.get("externalTrafficPolicy", "Cluster"),
        "spec.externalTrafficPolicy",
        _TRAFFIC_POLICIES,
    )
    if "externalTrafficPolicy" in spec and svc_type != "NodePort":
        ctx.fail("spec.externalTrafficPolicy", "only allowed for type NodePort")
    raw_ports = ctx.list(ctx.required(spec, "ports", "spec", "a list of ports"), "spec.ports")
    if not raw_ports:
        ctx.fail("spec.ports", "expected at least one port")
    ports: list[ServicePort] = []
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        entry = ctx.mapping(raw, path, ("name", "protocol", "port", "targetPort", "nodePort"))
        port_name = ""
        if "name" in entry:
            port_name = ctx.name(entry["name"], f"{path}.name", label=True)
        protocol = _protocol(ctx, entry, path)
        port = ctx.integer(ctx.required(entry, "port", path, "an integer 1-65535"), f"{path}.port", 1, 65535)
        target = entry.get("targetPort", port)  # Kubernetes defaults targetPort to port
        if isinstance(target, str):
            ctx.fail(
                f"{path}.targetPort",
                f"named target ports are not supported: expected an integer 1-65535, got {target!r}",
            )
        target_port = ctx.integer(target, f"{path}.targetPort", 1, 65535)
        node_port: int | None = None
        if "nodePort" in entry:
            if svc_type != "NodePort":
                ctx.fail(f"{path}.nodePort", "only allowed for type NodePort")
            node_port = ctx.integer(entry["nodePort"], f"{path}.nodePort", 30000, 32767)
        elif svc_type == "NodePort":
            # Nothing allocates ports here: a scenario must say which it means.
            ctx.fail(f"{path}.nodePort", "required for type NodePort: expected an integer 30000-32767")
        for j, other in enumerate(ports):
            if (other.port, other.protocol) == (port, protocol):
                ctx.fail(path, f"duplicate port {port}/{protocol} (also spec.ports[{j}])")
            if port_name and other.name == port_name:
                ctx.fail(f"{path}.name", f"duplicate port name {port_name!r} (also spec.ports[{j}])")
            if node_port is not None and (other.node_port, other.protocol) == (node_port, protocol):
                ctx.fail(
                    f"{path}.nodePort",
                    f"duplicate nodePort {node_port}/{protocol} (also spec.ports[{j}])",
                )
        ports.append(ServicePort(port, target_port, protocol, port_name, node_port))
    return Service(
        namespace=namespace,
        name=name,
        cluster_ip=cluster_ip,
        ports=tuple(ports),
        selector=selector,
        type=svc_type,
        external_traffic_policy=etp,
    )


def _parse_selector(ctx: Ctx, value: object, path: str) -> LabelSelector:
    m = ctx.mapping(value, path, ("matchLabels", "matchExpressions"))
    match_labels = ctx.labels(m.get("matchLabels"), f"{path}.matchLabels")
    exprs: list[Requirement] = []
    for i, raw in enumerate(ctx.list(m.get("matchExpressions"), f"{path}.matchExpressions")):
        epath = f"{path}.matchExpressions[{i}]"
        e = ctx.mapping(raw, epath, ("key", "operator", "values"))
        key = ctx.label_key(ctx.required(e, "key", epath, "a label key"), f"{epath}.key")
        op = ctx.choice(
            ctx.required(e, "operator", epath, "In, NotIn, Exists or DoesNotExist"),
            f"{epath}.operator",
            _OPERATORS,
        )
        values = tuple(
            ctx.string(v, f"{epath}.values[{j}]", "a label value (a string)")
            for j, v in enumerate(ctx.list(e.get("values"), f"{epath}.values"))
        )
        if op in ("In", "NotIn") and not values:
            ctx.fail(f"{epath}.values", f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            ctx.fail(f"{epath}.values", f"operator {op} takes no values")
        exprs.append(Requirement(key, op, values))
    return LabelSelector(match_labels, tuple(exprs))


def _parse_policy(ctx: Ctx, namespace: str, name: str, obj: dict[str, object]) -> NetworkPolicy:
    spec = ctx.mapping(obj.get("spec"), "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    pod_selector = _parse_selector(ctx, spec.get("podSelector"), "spec.podSelector")
    ingress = tuple(
        _parse_rule(ctx, raw, f"spec.ingress[{i}]", "from")
        for i, raw in enumerate(ctx.list(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _parse_rule(ctx, raw, f"spec.egress[{i}]", "to")
        for i, raw in enumerate(ctx.list(spec.get("egress"), "spec.egress"))
    )
    types: list[Literal["Ingress", "Egress"]] = []
    for i, raw in enumerate(ctx.list(spec.get("policyTypes"), "spec.policyTypes")):
        t = ctx.choice(raw, f"spec.policyTypes[{i}]", _POLICY_TYPES)
        if t in types:
            ctx.fail(f"spec.policyTypes[{i}]", f"duplicate policy type {t}")
        types.append(t)
    if not types:
        # Kubernetes' defaulting: Ingress always, Egress when egress rules exist.
        types = ["Ingress", "Egress"] if egress else ["Ingress"]
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        policy_types=tuple(types),
        ingress=ingress,
        egress=egress,
    )


def _parse_rule(ctx: Ctx, value: object, path: str, peers_key: str) -> PolicyRule:
    m = ctx.mapping(value, path, (peers_key, "ports"))
    peers = tuple(
        _parse_peer(ctx, raw, f"{path}.{peers_key}[{i}]")
        for i, raw in enumerate(ctx.list(m.get(peers_key), f"{path}.{peers_key}"))
    )
    ports: list[PolicyPort] = []
    for i, raw in enumerate(ctx.list(m.get("ports"), f"{path}.ports")):
        ppath = f"{path}.ports[{i}]"
        p = ctx.mapping(raw, ppath, ("protocol", "port", "endPort"))
        protocol = _protocol(ctx, p, ppath)
        port: int | None = None
        end_port: int | None = None
        if "port" in p:
            if isinstance(p["port"], str):
                ctx.fail(
                    f"{ppath}.port",
                    f"named ports are not supported: expected an integer 1-65535, got {p['port']!r}",
                )
            port = ctx.integer(p["port"], f"{ppath}.port", 1, 65535)
        if "endPort" in p:
            if port is None:
                ctx.fail(f"{ppath}.endPort", "needs port to be set")
            end_port = ctx.integer(p["endPort"], f"{ppath}.endPort", port, 65535)
        ports.append(PolicyPort(protocol, port, end_port))
    return PolicyRule(peers, tuple(ports))


def _parse_peer(ctx: Ctx, value: object, path: str) -> PolicyPeer:
    m = ctx.mapping(value, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if not m:
        ctx.fail(path, "expected podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in m:
        if len(m) > 1:
            ctx.fail(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        bpath = f"{path}.ipBlock"
        b = ctx.mapping(m["ipBlock"], bpath, ("cidr", "except"))
        cidr = ctx.cidr(ctx.required(b, "cidr", bpath, "an IPv4 CIDR"), f"{bpath}.cidr")
        excepts: list[IPv4Network] = []
        for i, raw in enumerate(ctx.list(b.get("except"), f"{bpath}.except")):
            e = ctx.cidr(raw, f"{bpath}.except[{i}]")
            if not (e.subnet_of(cidr) and e.prefixlen > cidr.prefixlen):
                ctx.fail(f"{bpath}.except[{i}]", f"{e} must be a strict subset of cidr {cidr}")
            excepts.append(e)
        return PolicyPeer(ip_block=IPBlock(cidr, tuple(excepts)))
    return PolicyPeer(
        pod_selector=_parse_selector(ctx, m["podSelector"], f"{path}.podSelector") if "podSelector" in m else None,
        namespace_selector=_parse_selector(ctx, m["namespaceSelector"], f"{path}.namespaceSelector")
        if "namespaceSelector" in m
        else None,
    )


# -- the scenario as a whole ------------------------------------------------------------


def _check(s: Scenario, source: str) -> None:
    """Checks that need more than one object. Paths mirror the YAML fields."""

    def fail(obj: str, path: str, message: str) -> NoReturn:
        raise ScenarioError(f"{source}: {obj}: {path}: {message}")

    knobs = "Knobs"
    cidrs = (
        ("clusterCIDR", s.cluster_cidr),
        ("serviceCIDR", s.service_cidr),
        ("nodeCIDR", s.node_cidr),
    )
    for i, (name_a, a) in enumerate(cidrs):
        for name_b, b in cidrs[i + 1 :]:
            if a.overlaps(b):
                fail(knobs, f"spec.{name_b}", f"{b} overlaps {name_a} {a}")

    if not s.nodes:
        raise ScenarioError(f"{source}: no Node objects: a scenario needs at least one node")
    # "default" always exists; other namespaces must be declared.
    namespaces = ["default"]
    for i, ns in enumerate(s.namespaces):
        if any(o.name == ns.name for o in s.namespaces[:i]):
            fail(f"Namespace {ns.name}", "metadata.name", "duplicate Namespace")
        if ns.name != "default":
            namespaces.append(ns.name)

    def check_namespace(obj: str, namespace: str) -> None:
        if namespace not in namespaces:
            fail(
                obj,
                "metadata.namespace",
                f"namespace {namespace!r} is not defined (namespaces: {', '.join(namespaces)})",
            )

    seen_ips: dict[IPv4Address, str] = {}
    for i, node in enumerate(s.nodes):
        obj = f"Node {node.name}"
        if any(n.name == node.name for n in s.nodes[:i]):
            fail(obj, "metadata.name", "duplicate Node")
        if node.ip not in s.node_cidr or node.ip in (
            s.node_cidr.network_address,
            s.node_cidr.broadcast_address,
        ):
            fail(
                obj,
                "status.addresses[0].address",
                f"{node.ip} is not a host address in nodeCIDR {s.node_cidr}",
            )
        if node.ip in seen_ips:
            fail(
                obj,
                "status.addresses[0].address",
                f"{node.ip} is already used by {seen_ips[node.ip]}",
            )
        seen_ips[node.ip] = obj
        if not node.pod_cidr.subnet_of(s.cluster_cidr):
            fail(obj, "spec.podCIDR", f"{node.pod_cidr} is not inside clusterCIDR {s.cluster_cidr}")
        for other in s.nodes[:i]:
            if node.pod_cidr.overlaps(other.pod_cidr):
                fail(
                    obj,
                    "spec.podCIDR",
                    f"{node.pod_cidr} overlaps the podCIDR of Node {other.name}",
                )

    node_names = ", ".join(n.name for n in s.nodes)
    for i, pod in enumerate(s.pods):
        obj = f"Pod {pod.ref}"
        check_namespace(obj, pod.namespace)
        if any(p.ref == pod.ref for p in s.pods[:i]):
            fail(obj, "metadata.name", "duplicate Pod")
        host = next((n for n in s.nodes if n.name == pod.node), None)
        if host is None:
            fail(obj, "spec.nodeName", f"node {pod.node!r} is not defined (nodes: {node_names})")
        cidr = host.pod_cidr
        if pod.ip not in cidr:
            fail(
                obj,
                "status.podIP",
                f"{pod.ip} is not inside the podCIDR {cidr} of Node {host.name}",
            )
        # The first host address is the node's bridge (the pods' gateway).
        reserved = (cidr.network_address, cidr.network_address + 1, cidr.broadcast_address)
        if pod.ip in reserved:
            fail(
                obj,
                "status.podIP",
                f"{pod.ip} is reserved in {cidr} (network, bridge gateway or broadcast)",
            )
        if pod.ip in seen_ips:
            fail(obj, "status.podIP", f"{pod.ip} is already used by {seen_ips[pod.ip]}")
        seen_ips[pod.ip] = obj

    node_ports: dict[int, str] = {}
    for i, svc in enumerate(s.services):
        obj = f"Service {svc.ref}"
        check_namespace(obj, svc.namespace)
        if any(o.ref == svc.ref for o in s.services[:i]):
            fail(obj, "metadata.name", "duplicate Service")
        if svc.cluster_ip not in s.service_cidr:
            fail(
                obj,
                "spec.clusterIP",
                f"{svc.cluster_ip} is not inside serviceCIDR {s.service_cidr}",
            )
        # As for nodes and pods: these two are never an address of one host.
        for what, edge in (
            ("network", s.service_cidr.network_address),
            ("broadcast", s.service_cidr.broadcast_address),
        ):
            if svc.cluster_ip == edge:
                fail(
                    obj,
                    "spec.clusterIP",
                    f"{svc.cluster_ip} is the {what} address of serviceCIDR {s.service_cidr}, not a host address",
                )
        if svc.cluster_ip in seen_ips:
            fail(
                obj,
                "spec.clusterIP",
                f"{svc.cluster_ip} is already used by {seen_ips[svc.cluster_ip]}",
            )
        seen_ips[svc.cluster_ip] = obj
        # Within a Service a nodePort may serve TCP and UDP; across Services not.
        mine: set[int] = set()
        for j, sp in enumerate(svc.ports):
            if sp.node_port is None:
                continue
            if sp.node_port in node_ports:
                fail(
                    obj,
                    f"spec.ports[{j}].nodePort",
                    f"{sp.node_port} is already used by {node_ports[sp.node_port]}",
                )
            mine.add(sp.node_port)
        node_ports.update((p, obj) for p in mine)

    for i, pol in enumerate(s.policies):
        obj = f"NetworkPolicy {pol.ref}"
        check_namespace(obj, pol.namespace)
        if any(o.ref == pol.ref for o in s.policies[:i]):
            fail(obj, "metadata.name", "duplicate NetworkPolicy")


def parse_scenario(text: str, *, source: str) -> Scenario:
    """Parse scenario YAML; `source` names the input in error messages."""
    return parse_documents(read_documents(text, source), source=source)


def parse_documents(documents: Sequence[object], *, source: str, handled: Sequence[tuple[str, str]] = ()) -> Scenario:
    """The scenario in documents from `read_documents`.

    A caller that reads some documents itself (a case file's ProbeList) passes
    None in their place, so errors still give each document's number in the
    file, and names their (apiVersion, kind) in `handled` for unknown-kind errors.
    """
    out = _Collected()
    for d, doc in enumerate(documents, start=1):
        if doc is None:
            continue  # an empty document, e.g. after a trailing '---'
        if isinstance(doc, dict) and doc.get("kind") == "List":
            ctx = Ctx(source, f"document {d} (List)")
            lst = ctx.mapping(doc, "", ("apiVersion", "kind", "metadata", "items"))
            ctx.choice(lst.get("apiVersion"), "apiVersion", ("v1",))
            for i, item in enumerate(ctx.list(lst.get("items"), "items")):
                _parse_object(source, f"document {d} items[{i}]", item, out)
        else:
            _parse_object(source, f"document {d}", doc, out, handled)

    scenario = Scenario(
        nodes=tuple(out.nodes),
        pods=tuple(out.pods),
        services=tuple(out.services),
        policies=tuple(out.policies),
        namespaces=tuple(out.namespaces),
        cluster_cidr=out.cluster_cidr,
        service_cidr=out.service_cidr,
        node_cidr=out.node_cidr,
        masquerade_hairpin=out.masquerade_hairpin,
        name=out.name if out.name is not None else (Path(source).stem or "scenario"),
    )
    _check(scenario, source)
    return scenario


def read_text(path: str | Path) -> str:
    """A YAML input file's text (scenario, case, corpus entry); errors are `ScenarioError` naming the file."""
    if Path(path).exists() and not Path(path).is_file():  # a FIFO would block, /dev/zero never end
        raise ScenarioError(f"{path}: not a regular file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file; errors are `ScenarioError` naming the file."""
    return parse_scenario(read_text(path), source=str(path))


# -- writing ---------------------------------------------------------------------------


def _dump_selector(sel: LabelSelector) -> dict[str, object]:
    out: dict[str, object] = {}
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        exprs: list[dict[str, object]] = []
        for r in sel.match_expressions:
            e: dict[str, object] = {"key": r.key, "operator": r.operator}
            if r.values:
                e["values"] = list(r.values)
            exprs.append(e)
        out["matchExpressions"] = exprs
    return out


def _dump_rule(rule: PolicyRule, peers_key: str) -> dict[str, object]:
    out: dict[str, object] = {}
    if rule.peers:
        peers: list[dict[str, object]] = []
        for peer in rule.peers:
            p: dict[str, object] = {}
            if peer.pod_selector is not None:
                p["podSelector"] = _dump_selector(peer.pod_selector)
            if peer.namespace_selector is not None:
                p["namespaceSelector"] = _dump_selector(peer.namespace_selector)
            if peer.ip_block is not None:
                block: dict[str, object] = {"cidr": str(peer.ip_block.cidr)}
                if peer.ip_block.except_:
                    block["except"] = [str(e) for e in peer.ip_block.except_]
                p["ipBlock"] = block
            peers.append(p)
        out[peers_key] = peers
    if rule.ports:
        ports: list[dict[str, object]] = []
        for pp in rule.ports:
            d: dict[str, object] = {"protocol": pp.protocol}
            if pp.port is not None:
                d["port"] = pp.port
            if pp.end_port is not None:
                d["endPort"] = pp.end_port
            ports.append(d)
        out["ports"] = ports
    return out


def _documents(s: Scenario) -> Iterable[dict[str, object]]:
    yield {
        "apiVersion": KNOBS_API,
        "kind": "Knobs",
        "metadata": {"name": s.name},
        "spec": {
            "masqueradeHairpin": s.masquerade_hairpin,
            "clusterCIDR": str(s.cluster_cidr),
            "serviceCIDR": str(s.service_cidr),
            "nodeCIDR": str(s.node_cidr),
        },
    }
    for ns in s.namespaces:
        meta: dict[str, object] = {"name": ns.name}
        if ns.labels:
            meta["labels"] = dict(ns.labels)
        yield {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
    for node in s.nodes:
        meta = {"name": node.name}
        # Only knobs that differ from what Kubernetes needs are written.
        ann: dict[str, str] = {}
        if not node.hairpin_mode:
            ann[ANN_HAIRPIN] = "false"
        if not node.bridge_nf_call_iptables:
            ann[ANN_BRIDGE_NF] = "0"
        if ann:
            meta["annotations"] = ann
        yield {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": meta,
            "spec": {"podCIDR": str(node.pod_cidr)},
            "status": {"addresses": [{"type": "InternalIP", "address": str(node.ip)}]},
        }
    for pod in s.pods:
        meta = {"name": pod.name, "namespace": pod.namespace}
        if pod.labels:
            meta["labels"] = dict(pod.labels)
        if pod.accept_local:
            meta["annotations"] = {ANN_ACCEPT_LOCAL: "1"}
        container: dict[str, object] = {"name": "app"}
        if pod.ports:
            container["ports"] = [
                {"containerPort": p.port, "protocol": p.protocol, **({"hostPort": p.host_port} if p.host_port else {})}
                for p in pod.ports
            ]
        yield {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"nodeName": pod.node, "containers": [container]},
            "status": {"podIP": str(pod.ip)},
        }
    for svc in s.services:
        ports: list[dict[str, object]] = []
        for sp in svc.ports:
            d: dict[str, object] = {}
            if sp.name:
                d["name"] = sp.name
            d.update(protocol=sp.protocol, port=sp.port, targetPort=sp.target_port)
            if sp.node_port is not None:
                d["nodePort"] = sp.node_port
            ports.append(d)
        spec: dict[str, object] = {"type": svc.type, "clusterIP": str(svc.cluster_ip)}
        if svc.selector:
            spec["selector"] = dict(svc.selector)
        spec["ports"] = ports
        if svc.type == "NodePort":
            spec["externalTrafficPolicy"] = svc.external_traffic_policy
        yield {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": svc.name, "namespace": svc.namespace},
            "spec": spec,
        }
    for pol in s.policies:
        pspec: dict[str, object] = {
            "podSelector": _dump_selector(pol.pod_selector),
            "policyTypes": list(pol.policy_types),
        }
        if pol.ingress:
            pspec["ingress"] = [_dump_rule(r, "from") for r in pol.ingress]
        if pol.egress:
            pspec["egress"] = [_dump_rule(r, "to") for r in pol.egress]
        yield {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": pol.name, "namespace": pol.namespace},
            "spec": pspec,
        }


def _first_difference(a: Scenario, b: Scenario) -> str:
    for f in fields(Scenario):
        if not f.compare:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x == y:
            continue
        if isinstance(x, tuple) and isinstance(y, tuple):
            for i, (u, v) in enumerate(zip(x, y, strict=False)):
                if u != v:
                    return f"{f.name}[{i}]: {u!r} reads back as {v!r}"
            return f"{f.name}: {len(x)} items read back as {len(y)}"
        return f"{f.name}: {x!r} reads back as {y!r}"
    return "no difference"


def dump_scenario(s: Scenario) -> str:
    """The scenario as YAML that `parse_scenario` reads back to an equal Scenario.

    The round trip is checked, so a reproducer is never silently different
    from what failed: a scenario YAML cannot express (an invalid one, or one
    not in canonical form, such as unsorted labels) raises `ScenarioError`.
    """
    text = yaml.dump_all(
        list(_documents(s)), Dumper=_SafeDumper, sort_keys=False, explicit_start=True, default_flow_style=False
    )
    try:
        back = parse_scenario(text, source=f"<dump of {s.name}>")
    except ScenarioError as e:
        raise ScenarioError(f"scenario {s.name!r} cannot be written as YAML: {e}") from None
    if back != s:
        raise ScenarioError(f"scenario {s.name!r} does not survive a YAML round trip: {_first_difference(s, back)}")
    return text
