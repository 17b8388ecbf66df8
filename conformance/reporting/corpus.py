"""The regression corpus: every counterexample ever found, kept as a replayable case file.

Each file is a case file (scenario documents and a ProbeList) preceded by one
metadata document:

    apiVersion: netconformance.io/v1
    kind: CorpusEntry
    spec: hairpin
    implementation: hairpin-mode-off
    expect: fail            # what `spec` says about this case with `implementation`
    found: 2026-01-31
    source: spec failure    # or: backend disagreement
    note: free text

The file name is a hash of spec, implementation and case, so adding the same
counterexample twice is a no-op.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

from backends import Backend
from conformance.cases import (
    CORPUS_ENTRY,
    CORPUS_EXPECTS,
    CORPUS_SOURCES,
    PROBES_API,
    Case,
    CorpusExpect,
    CorpusSource,
    dump_case,
    parse_case_file,
)
from conformance.implementations import REFERENCE, Implementation, get_implementation
from conformance.loader import ScenarioError, read_text
from conformance.probes import Observation
from conformance.reporting.reproduce import file_stem
from conformance.runner import replay, run_spec
from conformance.specs import Spec

API = PROBES_API
KIND = CORPUS_ENTRY
# Checked in conformance.cases, so `replay` refuses what the corpus would.
Expect = CorpusExpect
Source = CorpusSource
EXPECTS = CORPUS_EXPECTS
SOURCES = CORPUS_SOURCES


@dataclass(frozen=True)
class CorpusEntry:
    path: Path
    case: Case
    spec: str
    implementation: str
    expect: Expect
    found: date
    source: Source
    note: str


def entry_name(case: Case, *, spec: str, implementation: str) -> str:
    digest = hashlib.sha256(f"{spec}\n{implementation}\n{dump_case(case)}".encode()).hexdigest()[:12]
    return f"{file_stem(spec, implementation)}-{digest}.yaml"


def add_to_corpus(
    directory: Path,
    case: Case,
    *,
    spec: str,
    implementation: str,
    expect: Expect,
    source: Source,
    note: str = "",
    found: date | None = None,
) -> Path:
    """Write the entry (or find it already there) and return its path."""
    if expect not in EXPECTS:
        raise ValueError(f"expect: {expect!r}, expected one of {EXPECTS}")
    if source not in SOURCES:
        raise ValueError(f"source: {source!r}, expected one of {SOURCES}")
    path = directory / entry_name(case, spec=spec, implementation=implementation)
    if path.exists():
        existing = read_entry(path)
        if existing.expect != expect:
            # Same case, opposite expectation: someone has to decide which one is right.
            raise ValueError(f"{path}: already in the corpus expecting {existing.expect}, not {expect}")
        return path
    meta = {
        "apiVersion": API,
        "kind": KIND,
        "spec": spec,
        "implementation": implementation,
        "expect": expect,
        "found": found or date.today(),
        "source": source,
        "note": note,
    }
    directory.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(meta, explicit_start=True, sort_keys=False, width=120) + dump_case(case)
    path.write_text(text, encoding="utf-8")
    return path


def read_entry(path: Path) -> CorpusEntry:
    where = str(path)
    text = read_text(path)
    # Strict, as any case file: duplicate keys, unknown fields and bad values are errors.
    case, meta = parse_case_file(text, source=where)
    if meta is None:
        raise ScenarioError(f"{where}: no {KIND} document: a corpus file needs one (apiVersion: {API}, kind: {KIND})")
    return CorpusEntry(
        path=path,
        case=case,
        spec=meta.spec,
        implementation=meta.implementation,
        expect=meta.expect,
        found=meta.found,
        source=meta.source,
        note=meta.note,
    )


def load_corpus(directory: Path) -> list[CorpusEntry]:
    """Every entry, in file name order; a malformed file is an error naming it."""
    return [read_entry(p) for p in sorted(directory.glob("*.yaml"))]


# Harvesting ---------------------------------------------------------------------------------------------------------

MAX_SAMPLINGS = 512


def holds_on_every_sample(spec: Spec, case: Case, observations: Sequence[Observation], *, expect: Expect) -> bool:
    """Whether a real backend, which sees one outcome per probe, would give the same verdict whatever it
    sampled: every combination of possible outcomes is judged as a sample. Corpus entries must be
    deterministic on every backend, not only on the simulator."""
    choices = [[(o, p) for o, p in obs.outcomes if p > 0] for obs in observations]
    count = 1
    for c in choices:
        count *= len(c)
    if count > MAX_SAMPLINGS:
        return False
    for combo in itertools.product(*choices):
        samples = [
            Observation(obs.probe, ((o, 1.0),), exact=False) for obs, (o, _) in zip(observations, combo, strict=True)
        ]
        failed = bool(spec.check(case, samples, False))
        if failed != (expect == "fail"):
            return False
    return True


@dataclass(frozen=True)
class Harvested:
    spec: str
    implementation: str
    path: Path | None  # None: not added, see why
    why: str = ""


def harvest_failures(
    directory: Path,
    backend: Backend,
    specs: Sequence[Spec],
    implementations: Sequence[Implementation],
    *,
    examples: int = 30,
    seed: int = 1,
) -> list[Harvested]:
    """Run each spec on each implementation; add each minimal failing case that also holds on the
    reference and fails for every outcome a real backend could sample."""
    reference = get_implementation(REFERENCE)
    out: list[Harvested] = []
    for impl in implementations:
        for spec in specs:
            r = run_spec(spec, backend, impl, examples=examples, seed=seed)
            if r.failure is None:
                out.append(Harvested(spec.name, impl.name, None, r.error or "passed"))
                continue
            case = r.failure.case
            ref_obs, ref_violations = replay(spec, case, backend, reference)
            if ref_violations:
                out.append(Harvested(spec.name, impl.name, None, f"the reference fails too: {ref_violations[0]}"))
                continue
            if not holds_on_every_sample(spec, case, r.failure.observations, expect="fail") or not (
                holds_on_every_sample(spec, case, ref_obs, expect="pass")
            ):
                out.append(Harvested(spec.name, impl.name, None, "verdict depends on which outcome is sampled"))
                continue
            note = (
                f"minimal case of `netconformance run --implementation {impl.name} --spec {spec.name} "
                f"--seed {seed} --examples {examples}` on {backend.name}; holds on the reference. "
                f"First violation: {r.failure.violations[0]}"
            )
            path = add_to_corpus(
                directory,
                case,
                spec=spec.name,
                implementation=impl.name,
                expect="fail",
                source="spec failure",
                note=note,
            )
            out.append(Harvested(spec.name, impl.name, path))
    return out
