"""A proxy's own rules under test: a user-supplied iptables-save ruleset and the cluster it was made for.

Take the rules a real proxy wrote (``iptables-save`` on a kube-proxy node,
say) together with the Services, endpoints and nodes they were made for (a
scenario file), and the specs judge that proxy's output on every backend:
the reference topology carries the pods, and each node whose rules were
supplied gets exactly those rules (restored as they are, comment lines
dropped); other nodes get the reference renderer's.

Such rules only mean something for their own cluster, so this
implementation renders that one scenario and refuses any other: drive the
specs with `fixed_cases(spec, scenario)` (the spec's kinds of probe, drawn
within the fixed scenario) rather than the specs' own scenario strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import strategies as st

from conformance import strategies
from conformance.cases import Case
from conformance.dataplane import Dataplane
from conformance.implementations import wiring
from conformance.implementations.reference import REFERENCE_OPTIONS, render
from conformance.loader import ScenarioError, load_scenario, read_text
from conformance.model import Scenario
from conformance.probes import Probe
from conformance.snapshot import clean_rules
from conformance.specs import Spec
from conformance.specs.common import cases_of


class ForeignScenarioError(ScenarioError):
    """The ruleset was made for another cluster than the one asked for, or its files cannot be used."""


@dataclass(frozen=True)
class ForeignRuleset:
    name: str
    description: str
    scenario: Scenario
    rules: Mapping[str, str] = field(default_factory=dict)  # node name -> iptables-save text
    broken: bool = False
    files: Mapping[str, Path] = field(default_factory=dict)  # node name -> the file its rules came from

    def render(self, scenario: Scenario) -> Dataplane:
        if scenario != self.scenario:
            raise ForeignScenarioError(
                f"{self.name}: the ruleset was made for scenario {self.scenario.name!r}; "
                "it cannot render another cluster (in Python, drive the specs with fixed_cases)"
            )
        base = render(scenario, REFERENCE_OPTIONS, self.name)
        nodes = {wiring.node_netns(n): n.name for n in scenario.nodes}
        namespaces = tuple(
            replace(ns, iptables=clean_rules(self.rules[nodes[ns.name]]))
            if ns.name in nodes and nodes[ns.name] in self.rules
            else ns
            for ns in base.namespaces
        )
        return replace(base, namespaces=namespaces)


def load(rules: Mapping[str, Path], scenario: Path, *, name: str | None = None) -> ForeignRuleset:
    """From files: node name -> iptables-save file, and the scenario (YAML) they were made for."""
    s = load_scenario(scenario)
    unknown = sorted(set(rules) - {n.name for n in s.nodes})
    if unknown:
        nodes = ", ".join(n.name for n in s.nodes)
        raise ForeignScenarioError(
            f"{scenario}: no node(s) {', '.join(unknown)} for the supplied rules (its nodes: {nodes})"
        )
    shown = ", ".join(f"{node}={path.name}" for node, path in sorted(rules.items()))
    return ForeignRuleset(
        name=name or f"rules:{shown}",
        description=f"iptables rules {shown} for {scenario.name}; other nodes: reference rules",
        scenario=s,
        rules={node: _rules_text(path) for node, path in rules.items()},
        files=dict(rules),
    )


def _rules_text(path: Path) -> str:
    """An iptables-save file's text (read_text refuses what is not a regular file) with at least one table in it."""
    text = read_text(path)
    if not any(line.startswith("*") for line in text.splitlines()):
        raise ForeignScenarioError(f"{path}: no table (*nat, *filter, ...): not iptables-save output")
    return text


# A proxy's rules from the command line: `rules:SCENARIO:NODE=FILE[+NODE=FILE...]` names the implementation and is
# also the word that rebuilds it (reports' rerun and replay commands).
RULES = "rules:"
RULES_FORM = f"{RULES}SCENARIO.yaml:NODE=RULES[+NODE=RULES...], e.g. {RULES}cluster.yaml:node-1=node-1.rules"


def _scenario_and_rest(name: str, prefix: str, form: str) -> tuple[str, str]:
    """PREFIX SCENARIO : REST, both parts present (names split at the first colon after the prefix)."""
    scenario, sep, rest = name[len(prefix) :].partition(":")
    if not name.startswith(prefix) or not sep or not scenario or not rest:
        raise ForeignScenarioError(f"expected {form}")
    return scenario, rest


def from_name(name: str) -> ForeignRuleset:
    """The implementation a `rules:...` name describes; errors are ForeignScenarioError (a ScenarioError)."""
    scenario, pairs = _scenario_and_rest(name, RULES, RULES_FORM)
    rules: dict[str, Path] = {}
    for item in pairs.split("+"):
        node, eq, path = item.partition("=")
        if not eq or not node or not path:
            raise ForeignScenarioError(f"{item!r}: expected NODE=RULES (a node of the scenario and its rules file)")
        if node in rules:
            raise ForeignScenarioError(f"node {node} is given twice")
        rules[node] = Path(path)
    return load(rules, Path(scenario), name=name)


def can_run(spec: str) -> bool:
    """Whether `spec` can draw its cases within a fixed scenario (see FIXED_PROBES)."""
    return spec in FIXED_PROBES


# What each spec's probes need from the cluster, said when the cluster lacks it.
NEEDS = {
    "connectivity": "a pod to connect to",
    "dnat": "a Service with a TCP or UDP port",
    "hairpin": "a Service that selects one of its pods, at a TCP or UDP port",
}


def nothing_to_probe(spec: str, scenario: Scenario) -> str | None:
    """Why `spec` can draw no probe within `scenario` (its cluster lacks what the probes need), or None."""
    if not FIXED_PROBES[spec](scenario).is_empty:
        return None
    return f"{spec} needs {NEEDS[spec]}, and scenario {scenario.name!r} has none"


def on_fixed_scenario(spec: Spec, scenario: Scenario) -> Spec:
    """`spec` with its cases drawn within `scenario`; its pinned examples (other clusters) are left out."""
    return replace(spec, cases=lambda: fixed_cases(spec.name, scenario), examples=())


# The probes each spec judges, drawn within a fixed scenario: the same kinds the
# spec's own cases draw. policy and accept-local build their scenarios around
# their probes (policies, knobs), so a fixed cluster cannot serve them.
FIXED_PROBES: dict[str, Callable[[Scenario], st.SearchStrategy[Probe]]] = {
    "connectivity": lambda s: strategies.probes(s, kinds=("pod",)),
    "dnat": lambda s: strategies.probes(s, kinds=("service", "nodeport", "wrong-port")),
    "hairpin": strategies.hairpin_probes,
}


def fixed_cases(spec: str, scenario: Scenario, *, max_probes: int = 4) -> st.SearchStrategy[Case]:
    """Cases for `spec` within one fixed scenario (the cluster a foreign ruleset was made for)."""
    if spec not in FIXED_PROBES:
        raise KeyError(f"spec {spec!r} cannot run on a fixed scenario (those that can: {', '.join(FIXED_PROBES)})")
    return cases_of(st.just(scenario), FIXED_PROBES[spec], max_probes=max_probes)


@dataclass(frozen=True)
class FixedDataplane:
    """A Dataplane from a file (a node snapshot, say) as an implementation of the one scenario it realises."""

    name: str
    description: str
    dataplane: Dataplane
    scenario: Scenario
    broken: bool = False

    def render(self, scenario: Scenario) -> Dataplane:
        if scenario != self.scenario:
            raise ForeignScenarioError(f"{self.name}: this dataplane realises {self.scenario.name!r} only")
        return self.dataplane


def from_snapshot(dataplane_file: Path, scenario: Path, *, name: str | None = None) -> FixedDataplane:
    """`netconformance snapshot` output and the scenario it was taken for (ForeignScenarioError when the file
    cannot be read as a Dataplane, or was taken for another cluster)."""
    from conformance.snapshot import DataplaneFormatError, load_dataplane

    text = read_text(dataplane_file)
    try:
        dataplane = load_dataplane(text, str(dataplane_file))
    except DataplaneFormatError as e:
        raise ForeignScenarioError(str(e)) from None
    s = load_scenario(scenario)
    sources = dict(dataplane.sources)
    missing = [f"pod {p.ref}" for p in s.pods if f"pod:{p.ref}" not in sources]
    missing += [f"node {n.name}" for n in s.nodes if f"node:{n.name}" not in sources]
    if missing:
        raise ForeignScenarioError(
            f"{dataplane_file}: has no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} of scenario "
            f"{s.name!r} ({scenario}): was it taken for another scenario? (snapshot --scenario names it)"
        )
    return FixedDataplane(
        name=name or f"{DATAPLANE}{scenario}:{dataplane_file}",
        description=f"the Dataplane in {dataplane_file} ({dataplane.implementation or 'no implementation named'})",
        dataplane=dataplane,
        scenario=s,
    )


# A snapshot file from the command line: `dataplane:SCENARIO:FILE` names it, as `rules:` names a proxy's rules.
DATAPLANE = "dataplane:"
DATAPLANE_FORM = f"{DATAPLANE}SCENARIO.yaml:SNAPSHOT.json, e.g. {DATAPLANE}cluster.yaml:node.json"


def dataplane_from_name(name: str) -> FixedDataplane:
    """The implementation a `dataplane:...` name describes; errors are ForeignScenarioError (a ScenarioError)."""
    scenario, path = _scenario_and_rest(name, DATAPLANE, DATAPLANE_FORM)
    return from_snapshot(Path(path), Path(scenario), name=name)


def fixed_scenario(implementation: object) -> Scenario | None:
    """The one scenario an implementation realises (a foreign ruleset, a dataplane file); None: it renders any."""
    if isinstance(implementation, ForeignRuleset | FixedDataplane):
        return implementation.scenario
    return None


def fixed_comparison_cases(scenario: Scenario) -> st.SearchStrategy[Case]:
    """What `compare` draws within a fixed scenario: probes of every kind, as its own cases have."""
    return cases_of(st.just(scenario), lambda s: strategies.probes(s), max_probes=6)


def nothing_to_compare(scenario: Scenario) -> bool:
    """Whether `scenario` offers `compare` no probe of any kind (no pod, Service or NodePort)."""
    return bool(strategies.probes(scenario).is_empty)
