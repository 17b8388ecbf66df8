"""The regression corpus: every counterexample ever found, replayed on every backend given by --backend.

Each entry records what its spec says about the case with its implementation
(expect: pass | fail); a counterexample must also hold on the reference, or it
would say nothing about the implementation.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from backends import Backend
from conformance.cases import Case
from conformance.implementations import IMPLEMENTATIONS, REFERENCE, broken_implementations, get_implementation
from conformance.loader import ScenarioError
from conformance.probes import Probe
from conformance.reporting.corpus import CorpusEntry, add_to_corpus, entry_name, load_corpus, read_entry
from conformance.runner import replay
from conformance.specs import all_specs, get_spec
from conformance.strategies import classic_scenario

CORPUS = Path(__file__).resolve().parent.parent / "reports" / "corpus"
ENTRIES = load_corpus(CORPUS)
COUNTEREXAMPLES = [e for e in ENTRIES if e.expect == "fail"]


def _id(path: Path) -> str:
    return path.stem


@pytest.mark.parametrize("entry", ENTRIES, ids=[_id(e.path) for e in ENTRIES])
def test_corpus_entry_holds(entry: CorpusEntry, nc_backend: Backend) -> None:
    _, violations = replay(get_spec(entry.spec), entry.case, nc_backend, get_implementation(entry.implementation))
    if entry.expect == "fail":
        assert violations, f"{entry.path}: {entry.spec} no longer fails for {entry.implementation} on {nc_backend.name}"
    else:
        assert not violations, "\n".join([f"{entry.path}:", *violations])


@pytest.mark.parametrize("entry", COUNTEREXAMPLES, ids=[_id(e.path) for e in COUNTEREXAMPLES])
def test_counterexample_passes_on_the_reference(entry: CorpusEntry, nc_backend: Backend) -> None:
    _, violations = replay(get_spec(entry.spec), entry.case, nc_backend, get_implementation(REFERENCE))
    assert not violations, "\n".join([f"{entry.path}: the reference fails too:", *violations])


def test_corpus_is_well_formed() -> None:
    assert ENTRIES, f"no corpus entries under {CORPUS}"
    for e in ENTRIES:
        assert e.spec in all_specs() and e.implementation in IMPLEMENTATIONS, e.path
        assert e.path.name == entry_name(e.case, spec=e.spec, implementation=e.implementation), (
            f"{e.path}: the name is not the content hash (edited by hand?)"
        )
    # Seeded from the broken implementations: every one has at least one counterexample.
    assert {i.name for i in broken_implementations()} <= {e.implementation for e in COUNTEREXAMPLES}


def _case() -> Case:
    s = classic_scenario()
    return Case(s, (Probe("pod:default/pod-b", s.services[0].cluster_ip, 80, "TCP"),))


def test_add_to_corpus_is_idempotent_and_round_trips(tmp_path: Path) -> None:
    kwargs = {"spec": "hairpin", "implementation": "hairpin-mode-off"}
    first = add_to_corpus(
        tmp_path, _case(), **kwargs, expect="fail", source="spec failure", note="n", found=date(2026, 1, 2)
    )
    text = first.read_text(encoding="utf-8")
    again = add_to_corpus(tmp_path, _case(), **kwargs, expect="fail", source="spec failure", note="other")
    assert again == first and first.read_text(encoding="utf-8") == text  # the first record stands
    other = add_to_corpus(
        tmp_path, _case(), spec="hairpin", implementation="reference", expect="pass", source="backend disagreement"
    )
    assert other != first
    (a, b) = load_corpus(tmp_path)
    entry = a if a.path == first else b
    assert (entry.spec, entry.implementation, entry.expect, entry.found, entry.source, entry.note) == (
        "hairpin",
        "hairpin-mode-off",
        "fail",
        date(2026, 1, 2),
        "spec failure",
        "n",
    )
    assert entry.case == _case()
    assert text.startswith("---\napiVersion: netconformance.io/v1\nkind: CorpusEntry\n")
    with pytest.raises(ValueError, match="already in the corpus expecting fail"):
        add_to_corpus(tmp_path, _case(), **kwargs, expect="pass", source="spec failure")


def test_corpus_entry_errors_name_the_file(tmp_path: Path) -> None:
    path = add_to_corpus(
        tmp_path, _case(), spec="hairpin", implementation="reference", expect="pass", source="spec failure"
    )
    path.write_text(path.read_text(encoding="utf-8").replace("expect: pass", "expect: maybe"), encoding="utf-8")
    with pytest.raises(ScenarioError, match=f"{path}.*expect"):
        read_entry(path)
