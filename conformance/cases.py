"""A case: one scenario plus the probes run against it, as data and as a file.

A case file is a scenario file (see `conformance.loader`) with one extra
document, ``kind: ProbeList``, so every failure can be saved and replayed on
any backend with one command. Corpus files (`conformance.reporting.corpus`)
add a ``kind: CorpusEntry`` document about the case, which is not part of it.

Case files are read as strictly as scenario files: duplicate keys, unknown
fields, probes from sources the scenario lacks, probes no backend can send and
CorpusEntry values `conformance.reporting.corpus` would refuse are errors
naming the file, the document (numbered as in the file), the field and what
was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

import yaml

from conformance.loader import (
    Ctx,
    ScenarioError,
    dump_scenario,
    parse_documents,
    read_documents,
    read_text,
    unusable_range,
)
from conformance.model import Protocol, Scenario
from conformance.probes import Probe

PROBES_API = "netconformance.io/v1"
PROBE_LIST = "ProbeList"
CORPUS_ENTRY = "CorpusEntry"
# A CorpusEntry, read here for `replay` and for `reporting.corpus` (which
# imports this module, so the rules live here).
CORPUS_FIELDS = ("apiVersion", "kind", "spec", "implementation", "expect", "found", "source", "note")
CorpusExpect = Literal["pass", "fail"]
CorpusSource = Literal["spec failure", "backend disagreement"]
CORPUS_EXPECTS: tuple[CorpusExpect, ...] = ("pass", "fail")
CORPUS_SOURCES: tuple[CorpusSource, ...] = ("spec failure", "backend disagreement")
_PROBE_LIST_FIELDS = ("apiVersion", "kind", "probes")
_PROBE_FIELDS = ("source", "destination", "port", "protocol")
# SCTP is a valid Service/Pod protocol, but no backend can send an SCTP probe
# (the simulator, netns, docker and kind all probe TCP and UDP only).
PROBE_PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP")
# Known sources shown in an error; a big scenario's full list would bury the message.
_MAX_SHOWN = 10


@dataclass(frozen=True)
class Case:
    scenario: Scenario
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class CorpusMeta:
    """A CorpusEntry document: what is known about the case, not part of it."""

    spec: str
    implementation: str
    expect: CorpusExpect  # what `spec` says about the case with `implementation`
    found: date
    source: CorpusSource
    note: str


@lru_cache(maxsize=4096)
def dump_case(case: Case) -> str:
    """The case as a file; cached, since reports write the same case several times."""
    probes = [
        {"source": p.source, "destination": str(p.dst), "port": p.port, "protocol": p.protocol} for p in case.probes
    ]
    doc = {"apiVersion": PROBES_API, "kind": PROBE_LIST, "probes": probes}
    return dump_scenario(case.scenario) + yaml.safe_dump(doc, explicit_start=True, sort_keys=False)


def probe_sources(scenario: Scenario) -> tuple[str, ...]:
    """Every probe source a dataplane of `scenario` has (as `implementations.wiring.sources`)."""
    return (
        "external",
        *(f"node:{n.name}" for n in scenario.nodes),
        *(f"pod:{p.ref}" for p in scenario.pods),
    )


def parse_case(text: str, *, source: str) -> Case:
    """Parse a case file's text; `source` names the input in error messages."""
    return parse_case_file(text, source=source)[0]


def parse_case_file(text: str, *, source: str) -> tuple[Case, CorpusMeta | None]:
    """The case in a case file's text, and its CorpusEntry if it has one (corpus files do)."""
    docs = read_documents(text, source)
    probe_lists: list[tuple[int, object]] = []
    corpus_entry: int | None = None
    meta: CorpusMeta | None = None
    # The scenario gets every other document; None keeps the numbering of the file.
    scenario_docs: list[object] = list(docs)
    for d, doc in enumerate(docs, start=1):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind == PROBE_LIST:
            probe_lists.append((d, doc))
            scenario_docs[d - 1] = None
        elif kind == CORPUS_ENTRY:
            ctx = Ctx(source, f"document {d} ({CORPUS_ENTRY})")
            if corpus_entry is not None:
                ctx.fail("", f"only one {CORPUS_ENTRY} is allowed per file (document {corpus_entry} is one)")
            corpus_entry = d
            meta = _corpus_meta(ctx, doc)
            scenario_docs[d - 1] = None
    handled = ((PROBES_API, PROBE_LIST), (PROBES_API, CORPUS_ENTRY))
    scenario = parse_documents(scenario_docs, source=source, handled=handled)

    # A case without probes would "hold" for every spec without judging anything.
    if not probe_lists:
        raise ScenarioError(
            f"{source}: no {PROBE_LIST} document: a case needs one "
            f"(apiVersion: {PROBES_API}, kind: {PROBE_LIST}) with at least one probe"
        )
    (d, doc), *more = probe_lists
    if more:
        raise ScenarioError(
            f"{source}: document {more[0][0]} ({PROBE_LIST}): only one {PROBE_LIST} is allowed per case "
            f"(document {d} is one)"
        )
    ctx = Ctx(source, f"document {d} ({PROBE_LIST})")
    obj = _check_header(ctx, doc, PROBE_LIST, _PROBE_LIST_FIELDS)
    items = ctx.list(ctx.required(obj, "probes", "", "a list of probes"), "probes")
    if not items:
        ctx.fail("probes", "expected at least one probe (a case without probes judges nothing)")
    sources = probe_sources(scenario)
    probes = tuple(_probe(ctx, item, f"probes[{i}]", sources) for i, item in enumerate(items))
    return Case(scenario, probes), meta


def _check_header(ctx: Ctx, doc: object, kind: str, allowed: Sequence[str]) -> dict[str, object]:
    """A case document's apiVersion and fields, checked as the loader checks scenario objects."""
    if not isinstance(doc, dict):  # for mypy: callers only pass mappings
        ctx.fail("", f"expected a mapping with apiVersion and kind {kind}")
    api = ctx.string(ctx.required(doc, "apiVersion", "", f"apiVersion {PROBES_API}"), "apiVersion")
    if api != PROBES_API:
        ctx.fail("apiVersion", f"{kind} needs apiVersion {PROBES_API}, got {api!r}")
    return ctx.mapping(doc, "", allowed)


def _corpus_meta(ctx: Ctx, doc: object) -> CorpusMeta:
    m = _check_header(ctx, doc, CORPUS_ENTRY, CORPUS_FIELDS)

    def name(key: str, what: str) -> str:
        text = ctx.string(ctx.required(m, key, "", what), key, what)
        if not text:
            ctx.fail(key, f"expected {what}, got ''")
        return text

    spec = name("spec", "a spec name")
    implementation = name("implementation", "an implementation name")
    expect = ctx.choice(ctx.required(m, "expect", "", "pass or fail"), "expect", CORPUS_EXPECTS)
    found = ctx.required(m, "found", "", "a date (YYYY-MM-DD)")
    if not isinstance(found, date):  # a quoted date is a string to YAML
        ctx.fail("found", f"expected a date (YYYY-MM-DD, not quoted), got {found!r}")
    sources = " or ".join(repr(s) for s in CORPUS_SOURCES)
    origin = ctx.required(m, "source", "", sources)
    if origin not in CORPUS_SOURCES:
        ctx.fail("source", f"expected {sources}, got {origin!r}")
    note = str(m.get("note") or "")
    return CorpusMeta(spec, implementation, expect, found, ctx.choice(origin, "source", CORPUS_SOURCES), note)


def _probe(ctx: Ctx, item: object, path: str, sources: Sequence[str]) -> Probe:
    if item is None:  # ctx.mapping would take null for an empty mapping
        ctx.fail(path, f"expected a probe (a mapping with {', '.join(_PROBE_FIELDS)}), got null")
    m = ctx.mapping(item, path, _PROBE_FIELDS)
    what = "a probe source (external, node:<name> or pod:<namespace>/<name>)"
    source = ctx.string(ctx.required(m, "source", path, what), f"{path}.source", what)
    if source not in sources:
        hint = difflib.get_close_matches(source, sources, n=1)
        did = f"did you mean '{hint[0]}'? " if hint else ""
        shown = ", ".join(sources[:_MAX_SHOWN])
        if len(sources) > _MAX_SHOWN:
            shown += f", ... ({len(sources) - _MAX_SHOWN} more)"
        ctx.fail(f"{path}.source", f"{source!r} is not a pod or node of the scenario ({did}known sources: {shown})")
    dst = ctx.ip(ctx.required(m, "destination", path, "an IPv4 address"), f"{path}.destination")
    unusable = unusable_range(IPv4Network(dst))
    if unusable:
        # Nothing a scenario has can be there: the loader refuses these addresses too.
        ctx.fail(
            f"{path}.destination",
            f"{dst} is in {unusable}, which no probe can reach: expected a unicast address such as a pod's",
        )
    port = ctx.integer(ctx.required(m, "port", path, "an integer 1-65535"), f"{path}.port", 1, 65535)
    protocol = m.get("protocol", "TCP")
    if protocol == "SCTP":
        ctx.fail(
            f"{path}.protocol",
            f"SCTP probes are not supported by any backend: expected one of {', '.join(PROBE_PROTOCOLS)}",
        )
    return Probe(source, dst, port, ctx.choice(protocol, f"{path}.protocol", PROBE_PROTOCOLS))


def load_case(path: str | Path) -> Case:
    """Load a case file; errors are `ScenarioError` naming the file."""
    if path == "":  # Path("") is ".", a directory: say what is wrong instead
        raise ScenarioError("case file: expected the path of a case file, got an empty string")
    return parse_case(read_text(path), source=str(path))
