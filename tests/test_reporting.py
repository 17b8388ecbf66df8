"""Run reports: results.json, JUnit XML, index.html (checked in a real headless browser), baseline diffs."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from backends.sim import SimBackend
from conformance import cli
from conformance.cases import Case, load_case, parse_case
from conformance.compare import CompareResult, Disagreement, Distribution
from conformance.implementations import get_implementation
from conformance.probes import Observation, Outcome
from conformance.reporting import (
    Interruption,
    RunMeta,
    RunReport,
    compare_with_baseline,
    register,
    render_diff,
    write_run,
)
from conformance.reporting.document import FORMAT
from conformance.reporting.reproduce import case_id
from conformance.runner import SpecResult, replay, run_spec
from conformance.specs import get_spec

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = "NETCONFORMANCE_REQUIRE_BROWSER"
BASELINE = Path(__file__).resolve().parent.parent / "reports" / "baselines" / "sim-reference.json"
SEED = 1
EXAMPLES = 20


@dataclass
class KnownRun:
    report: RunReport
    results: list[SpecResult]
    comparison: CompareResult

    @property
    def broken(self) -> SpecResult:
        return self.results[1]

    def doc(self) -> Any:
        return json.loads(self.report.results_json.read_text(encoding="utf-8"))


def _hairpin(impl: str) -> SpecResult:
    return run_spec(get_spec("hairpin"), SimBackend(), get_implementation(impl), examples=EXAMPLES, seed=SEED)


def _comparison(case: Case) -> CompareResult:
    """A disagreement as a real backend would report one: a sample the simulator did not predict."""
    sim = SimBackend(tracing=True)
    sim.deploy(get_implementation("reference").render(case.scenario))
    predicted = sim.observe(case.probes[:1])[0]
    sample = Outcome("refused", reason="RST from 10.244.1.11")
    observed = Observation(predicted.probe, ((sample, 1.0),), exact=False)
    d = Disagreement(case, predicted.probe, "sim", "netns", predicted, observed, "reference")
    spread = Distribution(
        predicted.probe,
        predicted={"default/pod-b": 0.5, "default/pod-c": 0.5},
        observed={"default/pod-b": 30, "default/pod-c": 26, "dropped": 4},
        backend="netns",
    )
    return CompareResult(("sim", "netns"), "reference", 12, 1.5, SEED, disagreement=d, distributions=[spread])


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> KnownRun:
    meta = RunMeta.begin(["run", "--spec", "hairpin", "--seed", str(SEED)], seed=SEED, examples=EXAMPLES)
    results = [_hairpin("reference"), _hairpin("hairpin-mode-off")]
    assert results[0].passed and results[1].failure is not None  # the premise of every test here
    comparison = _comparison(results[1].failure.case)
    run_dir = tmp_path_factory.mktemp("runs") / "20260101-000000-abcdef"
    report = write_run(run_dir, results=results, comparisons=[comparison], meta=meta)
    return KnownRun(report, results, comparison)


# results.json ---------------------------------------------------------------------------------------------------------


def test_results_json_records_every_example(known: KnownRun) -> None:
    doc = known.doc()
    assert doc["format"] == FORMAT
    run = doc["run"]
    assert run["id"] == "20260101-000000-abcdef"
    assert run["command"] == ["netconformance", "run", "--spec", "hairpin", "--seed", str(SEED)]
    assert run["seeds"] == [SEED] and run["seed_requested"] == SEED
    assert set(run["versions"]) == {"python", "netconformance", "hypothesis", "kernel", "iptables"}
    assert run["versions"]["kernel"] == os.uname().release
    assert datetime.fromisoformat(run["finished"]) >= datetime.fromisoformat(run["started"])

    ref, broken = doc["results"]
    assert (ref["spec"], ref["backend"], ref["implementation"], ref["status"]) == (
        "hairpin",
        "sim",
        "reference",
        "pass",
    )
    assert ref["failure"] is None and ref["violations"] == []
    assert ref["broken"] is False and broken["broken"] is True  # how `report` knows a FAIL is a catch
    assert len(ref["records"]) == ref["examples"] == known.results[0].examples
    for rec, original in zip(ref["records"], known.results[0].records, strict=True):
        assert rec["verdict"] == "pass" and rec["violations"] == []
        case = parse_case(rec["scenario"], source="results.json")  # the scenario is the case file's text
        assert case == original.case and rec["case_id"] == case_id(case)
        assert [p["destination"] for p in rec["probes"]] == [str(p.dst) for p in case.probes]
        for obs in rec["observations"]:
            assert sum(o["p"] for o in obs["outcomes"]) == pytest.approx(1.0)
            assert all("trace" not in o for o in obs["outcomes"])  # traces only where someone reads them

    assert (broken["implementation"], broken["status"]) == ("hairpin-mode-off", "FAIL")
    assert known.broken.failure is not None
    assert broken["violations"] == known.broken.failure.violations
    assert broken["records"][-1]["verdict"] == "fail"  # Hypothesis ends on the minimal case
    failure = broken["failure"]
    assert failure["case_id"] == case_id(known.broken.failure.case)
    assert Path(failure["case_file"]).is_file()
    assert failure["reproduce"] == known.report.reproducer(known.broken)
    dropped = [o for obs in failure["observations"] for o in obs["outcomes"] if o["verdict"] == "dropped"]
    assert dropped and all(o["trace"] for o in dropped) and "hairpin mode is off" in dropped[0]["reason"]

    (comparison,) = doc["comparisons"]
    assert comparison["status"] == "FAIL" and comparison["backends"] == ["sim", "netns"]
    assert comparison["disagreement"]["observed"]["outcomes"][0]["verdict"] == "refused"
    assert comparison["distributions"][0]["observed"]["dropped"] == 4


def test_reproducer_command_replays_the_failure(known: KnownRun, capsys: pytest.CaptureFixture[str]) -> None:
    command = known.report.reproducer(known.broken)
    assert command is not None and known.report.reproducer(known.results[0]) is None
    argv = shlex.split(command)
    assert argv[:2] == ["netconformance", "replay"]
    assert cli.main(argv[1:]) == 1  # exactly what a person would paste, through the real CLI
    assert "hairpin mode is off" in capsys.readouterr().out
    # The same case holds on the reference: the failure belongs to the implementation.
    _, violations = replay(get_spec("hairpin"), load_case(argv[2]), SimBackend(), get_implementation("reference"))
    assert violations == []


# JUnit ----------------------------------------------------------------------------------------------------------------


def test_junit_xml_counts_and_failures(known: KnownRun) -> None:
    assert set(known.report.junit) == {"sim", "netns"}
    root = ET.parse(known.report.junit["sim"]).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = {(tc.get("classname"), tc.get("name")): tc for tc in suite.findall("testcase")}
    assert set(cases) == {
        ("netconformance.sim.reference", "hairpin"),
        ("netconformance.sim.hairpin-mode-off", "hairpin"),
    }
    ok = cases[("netconformance.sim.reference", "hairpin")]
    assert ok.find("failure") is None and ok.find("error") is None
    bad = cases[("netconformance.sim.hairpin-mode-off", "hairpin")]
    failure = bad.find("failure")
    assert failure is not None and known.broken.failure is not None
    assert failure.get("message", "").startswith(known.broken.failure.violations[0])
    assert all(v in (failure.text or "") for v in known.broken.failure.violations)
    assert f"reproduce: {known.report.reproducer(known.broken)}" in (bad.findtext("system-out") or "")
    assert float(bad.get("time", "-1")) >= 0
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["seeds"] == str(SEED) and props["version.kernel"] == os.uname().release

    netns = ET.parse(known.report.junit["netns"]).getroot().find("testsuite")
    assert netns is not None and (netns.get("tests"), netns.get("failures")) == ("1", "1")
    (tc,) = netns.findall("testcase")
    assert tc.get("name") == "agrees with sim" and tc.find("failure") is not None
    assert "netconformance compare --backends sim,netns --implementation reference --case " in (
        tc.findtext("system-out") or ""
    )


# index.html -----------------------------------------------------------------------------------------------------------


def test_html_is_self_contained(known: KnownRun) -> None:
    html = known.report.html.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<link" not in html and " src=" not in html


def test_html_has_no_plot_without_distributions(tmp_path: Path, known: KnownRun) -> None:
    meta = RunMeta(datetime.now(UTC), ("netconformance", "run"))
    report = write_run(tmp_path / "run", results=known.results[:1], meta=meta)
    html = report.html.read_text(encoding="utf-8")
    assert "<svg" not in html and "every spec held" in html
    assert set(report.junit) == {"sim"}


def test_comparisons_only_run(tmp_path: Path, known: KnownRun) -> None:
    meta = RunMeta(datetime.now(UTC), ("netconformance", "compare"))
    report = write_run(tmp_path / "run", results=[], comparisons=[known.comparison], meta=meta)
    assert set(report.junit) == {"netns"} and set(report.disagreements) == {("sim", "netns", "reference")}
    (saved,) = report.disagreements.values()
    assert known.comparison.disagreement is not None
    assert load_case(saved.path) == known.comparison.disagreement.case
    html = report.html.read_text(encoding="utf-8")
    assert "comparisons only" in html and 'class="distribution"' in html


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.parts + [c.text() for c in self.children])

    def iter(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found = [self] if (tag is None or self.tag == tag) and _has(self, attrs) else []
        for c in self.children:
            found += c.iter(tag, **attrs)
        return found

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


def _has(node: Node, attrs: dict[str, str]) -> bool:
    for name, want in attrs.items():
        key = name.replace("_", "-")
        if key == "class":
            if want not in node.classes():
                return False
        elif node.attrs.get(key) != want:
            return False
    return True


VOID_ELEMENTS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


class DomBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID_ELEMENTS:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].parts.append(data)


def _chromium() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to check index.html"
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{reason}; {REQUIRE_BROWSER}=1 requires the browser check", pytrace=False)
        pytest.skip(reason)
    return CHROMIUM


def _chromium_run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        str(_chromium()),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *extra,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def dom(known: KnownRun, tmp_path_factory: pytest.TempPathFactory) -> Node:
    """index.html as the browser built it (--dump-dom serializes the live DOM after parsing and layout)."""
    done = _chromium_run(known.report.html, tmp_path_factory.mktemp("chromium"), "--dump-dom")
    builder = DomBuilder()
    builder.feed(done.stdout)
    assert builder.root.iter("body"), f"no body in the browser's DOM: {done.stdout[:500]}"
    return builder.root


def _cell(dom: Node, spec: str, backend: str, implementation: str) -> Node:
    (cell,) = dom.iter("td", data_spec=spec, data_backend=backend, data_implementation=implementation)
    return cell


def test_browser_matrix_cells(dom: Node) -> None:
    (matrix,) = dom.iter("table", **{"class": "matrix"})
    broken = _cell(matrix, "hairpin", "sim", "hairpin-mode-off")
    assert broken.iter("span", **{"class": "status"})[0].text() == "FAIL" and "FAIL" in broken.classes()
    (link,) = broken.iter("a")
    assert link.attrs["href"] == "#f-hairpin-sim-hairpin-mode-off"  # the cell leads to its failure
    ref = _cell(matrix, "hairpin", "sim", "reference")
    assert ref.iter("span", **{"class": "status"})[0].text() == "pass" and "pass" in ref.classes()
    shown = re.search(r"(\d+) ex", ref.text())
    assert shown is not None and int(shown.group(1)) >= EXAMPLES + 1  # explicit example plus the generated ones
    assert len(matrix.iter("td", **{"class": "cell"})) == 2
    rows = {row.iter("th")[0].text(): row for row in matrix.iter("tr") if row.iter("th", scope="row")}
    assert set(rows) == {"reference", "hairpin-mode-offbroken on purpose: FAIL = caught"}
    (totals,) = dom.iter("p", **{"class": "totals"})
    assert "1 FAIL" in totals.text() and "1 of them broken implementations caught" in totals.text()


def test_browser_failure_section_has_the_reproducer(dom: Node, known: KnownRun) -> None:
    (article,) = dom.iter("article", id="f-hairpin-sim-hairpin-mode-off")
    (box,) = article.iter("div", **{"class": "reproduce"})
    assert [c.text() for c in box.iter("code")] == [known.report.reproducer(known.broken)]
    (link,) = box.iter("a")
    assert (known.report.run_dir / link.attrs["href"]).is_file()  # relative link to the saved case
    scenario = article.iter("pre")[-1].text()
    assert known.broken.failure is not None
    assert parse_case(scenario, source="index.html") == known.broken.failure.case
    assert any("hairpin mode is off" in li.text() for li in article.iter("li"))
    assert any("DNAT" in pre.text() for pre in article.iter("pre"))  # the trace is shown


def test_browser_disagreement_side_by_side(dom: Node) -> None:
    (article,) = dom.iter("article", **{"class": "disagreement"})
    (predicted,) = article.iter("div", **{"class": "predicted"})
    (observed,) = article.iter("div", **{"class": "observed"})
    assert "delivered by default/pod-b" in predicted.text() and "PREROUTING" in predicted.text()
    assert "refused" in observed.text() and "RST from 10.244.1.11" in observed.text()
    (command,) = article.iter("div", **{"class": "reproduce"})[0].iter("code")  # both backends, one command
    assert command.text().startswith("netconformance compare --backends sim,netns --implementation reference --case ")


def test_browser_distribution_plot(dom: Node) -> None:
    (section,) = dom.iter("section", id="distributions")
    (svg,) = section.iter("svg")
    assert "distribution" in svg.classes()
    assert len(svg.iter("rect", **{"class": "predicted"})) == 3
    assert len(svg.iter("rect", **{"class": "observed"})) == 3
    (unexpected,) = svg.iter("text", **{"class": "unexpected"})
    assert "dropped" in unexpected.text()  # observed, never predicted: flagged


def test_browser_screenshot(known: KnownRun, tmp_path: Path) -> None:
    shot = known.report.run_dir / "screenshot.png"
    _chromium_run(known.report.html, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page with content, not a blank one


# baselines ------------------------------------------------------------------------------------------------------------


def _relabelled(r: SpecResult, implementation: str, *, broken: bool = False) -> SpecResult:
    """The same results under another implementation name: what a regression in that implementation looks like."""
    failure = None if r.failure is None else replace(r.failure, implementation=implementation)
    return replace(r, implementation=implementation, failure=failure, broken=broken)


def test_baseline_diff_new_failure_fix_and_changed_outcome(known: KnownRun, tmp_path: Path) -> None:
    meta = RunMeta(datetime.now(UTC), ("netconformance", "run"))
    good = write_run(tmp_path / "good", results=known.results[:1], meta=meta).results_json
    bad = write_run(tmp_path / "bad", results=[_relabelled(known.broken, "reference")], meta=meta).results_json

    diff = compare_with_baseline(bad, good)
    assert diff.regressed
    (new,) = diff.new_failures
    assert (new.spec, new.backend, new.implementation, new.before, new.after) == (
        "hairpin",
        "sim",
        "reference",
        "pass",
        "FAIL",
    )
    assert diff.fixes == ()
    assert known.broken.failure is not None
    minimal = case_id(known.broken.failure.case)
    changed = [c for c in diff.changed_outcomes if c.case_id == minimal]
    assert changed and diff.cases_compared >= 1
    tcp = next(c for c in changed if c.probe.endswith("/TCP"))
    assert tcp.after == {"dropped"} and all(k.startswith("delivered by default/pod-b") for k in tcp.before)
    assert (tcp.verdict_before, tcp.verdict_after) == ("pass", "fail")
    text = render_diff(diff)
    assert "new failures: 1" in text and "REGRESSED" in text and minimal in text

    back = compare_with_baseline(good.parent, bad.parent)  # run directories work as well as files
    assert not back.regressed and back.new_failures == ()
    (fix,) = back.fixes
    assert (fix.before, fix.after) == ("FAIL", "pass")
    assert {c.case_id for c in back.changed_outcomes} == {c.case_id for c in diff.changed_outcomes}
    assert "no regression" in render_diff(back)

    same = compare_with_baseline(good, good)
    assert not same.regressed and same.changed_outcomes == () and same.cases_compared > 10


def _cell_row(spec: str, implementation: str, status: str) -> dict[str, Any]:
    return {
        "spec": spec,
        "backend": "sim",
        "implementation": implementation,
        "status": status,
        "violations": ["v"] if status == "FAIL" else [],
        "error": "E" if status == "ERROR" else None,
        "records": [],
    }


def _results_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"format": FORMAT, "run": {}, "results": rows, "comparisons": []}), encoding="utf-8")
    return path


def test_baseline_diff_status_rules(tmp_path: Path) -> None:
    baseline = _results_file(
        tmp_path / "base.json",
        [
            _cell_row("hairpin", "hairpin-mode-off", "FAIL"),  # still failing: not new
            _cell_row("dnat", "reference", "pass"),  # now an ERROR: new
            _cell_row("policy", "reference", "pass"),  # not run now: listed, not a regression
        ],
    )
    run = _results_file(
        tmp_path / "run.json",
        [
            _cell_row("hairpin", "hairpin-mode-off", "FAIL"),
            _cell_row("dnat", "reference", "ERROR"),
            _cell_row("connectivity", "reference", "FAIL"),  # unknown to the baseline: new
            _cell_row("accept-local", "reference", "pass"),  # unknown and passing: nothing to say
        ],
    )
    diff = compare_with_baseline(run, baseline)
    assert [(s.spec, s.before, s.after) for s in diff.new_failures] == [
        ("dnat", "pass", "ERROR"),
        ("connectivity", None, "FAIL"),
    ]
    assert diff.regressed and diff.fixes == ()
    assert diff.missing == ("policy / sim / reference",)
    assert "not in baseline" in render_diff(diff)


def test_baseline_judges_broken_implementations_by_detection(tmp_path: Path) -> None:
    def row(spec: str, status: str) -> dict[str, Any]:
        return {**_cell_row(spec, "hairpin-mode-off", status), "broken": True}

    baseline = _results_file(
        tmp_path / "base.json",
        [row("hairpin", "FAIL"), row("dnat", "FAIL"), row("policy", "ERROR"), row("connectivity", "pass")],
    )
    run = _results_file(
        tmp_path / "run.json",
        [
            row("hairpin", "FAIL"),  # still caught
            row("dnat", "pass"),  # the baseline caught it, the run does not: the spec lost its power
            row("policy", "FAIL"),  # an error gone, and caught: a fix
            row("connectivity", "ERROR"),  # an error is a new failure whatever the implementation
            row("accept-local", "FAIL"),  # caught, and unknown to the baseline: as intended, not a failure
        ],
    )
    diff = compare_with_baseline(run, baseline)
    assert [(s.spec, s.before, s.after) for s in diff.no_longer_caught] == [("dnat", "FAIL", "pass")]
    assert [(s.spec, s.before, s.after) for s in diff.new_failures] == [("connectivity", "pass", "ERROR")]
    assert [(s.spec, s.before, s.after) for s in diff.fixes] == [("policy", "ERROR", "FAIL")]
    assert diff.caught == 3 and diff.regressed
    text = render_diff(diff)
    assert "broken implementations no longer caught: 1" in text
    assert "dnat / sim / hairpin-mode-off: pass (the baseline caught it: FAIL)" in text
    assert "broken implementations caught by a spec, as intended: 3 cell(s) FAIL" in text

    only_lost = _results_file(tmp_path / "lost.json", [row("hairpin", "FAIL"), row("dnat", "pass")])
    diff = compare_with_baseline(only_lost, baseline)
    assert diff.regressed and diff.new_failures == ()
    assert "REGRESSED: a spec no longer catches a broken implementation" in render_diff(diff)

    # A file from before the field: the implementation registry says which names are broken on purpose.
    old_rows = [_cell_row("hairpin", "hairpin-mode-off", "FAIL"), _cell_row("dnat", "reference", "pass")]
    old = _results_file(tmp_path / "old.json", old_rows)
    new = _results_file(tmp_path / "new.json", [_cell_row("hairpin", "reference", "pass"), *old_rows])
    diff = compare_with_baseline(new, old)
    assert not diff.regressed and diff.caught == 1


def test_report_after_a_pytest_run_passes_its_caught_mutants(
    known: KnownRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flow the README gives: `pytest` (reference and mutant cells), then `report` against the reference baseline."""
    meta = RunMeta(datetime.now(UTC), ("pytest", "--backend", "sim"))
    reference_only = write_run(tmp_path / "base", results=known.results[:1], meta=meta).results_json
    # The reference passes and the mutant fails, as in a pytest run.
    with_mutant = write_run(tmp_path / "run", results=known.results, meta=meta)
    assert _report(["--baseline", str(reference_only), str(with_mutant.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "new failures: 0" in out and "as intended: 1 cell(s) FAIL" in out and "no regression" in out
    # The mutant passing where the baseline (the known run) caught it is the regression.
    lost = write_run(
        tmp_path / "lost", results=[_relabelled(known.results[0], "hairpin-mode-off", broken=True)], meta=meta
    )
    assert _report(["--baseline", str(with_mutant.results_json), str(lost.run_dir)]) == 1
    assert "hairpin / sim / hairpin-mode-off: pass (the baseline caught it: FAIL)" in capsys.readouterr().out


def test_baseline_diff_names_the_versions_that_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def doc(path: Path, versions: dict[str, Any]) -> Path:
        rows = [_cell_row("hairpin", "reference", "pass")]
        body = {"format": FORMAT, "run": {"versions": versions}, "results": rows, "comparisons": []}
        path.write_text(json.dumps(body), encoding="utf-8")
        return path

    base = doc(tmp_path / "base.json", {"python": "3.11.7", "hypothesis": "6.170.15", "iptables": None})
    run = doc(tmp_path / "run.json", {"python": "3.11.7", "hypothesis": "6.170.27", "iptables": "v1.8.9"})
    diff = compare_with_baseline(run, base)
    assert diff.versions == (("hypothesis", "6.170.15", "6.170.27"), ("iptables", None, "v1.8.9"))
    text = render_diff(diff)
    assert "versions differ from the baseline's: hypothesis 6.170.15 -> 6.170.27, iptables none -> v1.8.9" in text
    assert "another Hypothesis draws other cases from the same seed" in text
    assert compare_with_baseline(run, run).versions == ()
    assert "versions differ" not in render_diff(compare_with_baseline(run, run))

    bad = doc(tmp_path / "bad.json", {"hypothesis": 6})
    err = _report_error(["--baseline", str(base), str(bad)], capsys)
    assert f"{bad}: run.versions.hypothesis: expected a string, found 6" in err


def test_baseline_rejects_a_broken_field_that_is_not_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _results_file(tmp_path / "good.json", [_cell_row("hairpin", "reference", "pass")])
    bad = _results_file(tmp_path / "bad.json", [{**_cell_row("hairpin", "reference", "pass"), "broken": "yes"}])
    err = _report_error(["--baseline", str(good), str(bad)], capsys)
    assert f'{bad}: results[0].broken: expected true or false, found "yes"' in err


def test_baseline_reads_the_older_flat_results(tmp_path: Path) -> None:
    old = tmp_path / "old.json"  # what `netconformance run` wrote before this package
    old.write_text(json.dumps([{**_cell_row("hairpin", "reference", "pass"), "seed": 7}]), encoding="utf-8")
    run = _results_file(tmp_path / "run.json", [_cell_row("hairpin", "reference", "FAIL")])
    diff = compare_with_baseline(run, old)
    assert diff.regressed and diff.cases_compared == 0


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="netconformance")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", *argv])
    code: int = args.func(args)
    return code


def test_report_command_exit_codes(known: KnownRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = RunMeta(datetime.now(UTC), ("netconformance", "run"))
    runs = tmp_path / "runs"
    good = write_run(runs / "20260101-000000-aaaaaa", results=known.results[:1], meta=meta)
    bad = write_run(runs / "20260102-000000-bbbbbb", results=[_relabelled(known.broken, "reference")], meta=meta)

    assert _report(["--baseline", str(good.results_json), str(good.run_dir)]) == 0
    assert "no regression" in capsys.readouterr().out
    # Without a run directory: the newest run under --runs (here the regressed one).
    assert _report(["--baseline", str(good.results_json), "--runs", str(runs)]) == 1
    assert str(bad.results_json) in capsys.readouterr().out
    assert _report(["--baseline", str(tmp_path / "nope.json"), str(good.run_dir)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _report(["--baseline", str(good.results_json), "--runs", str(tmp_path / "empty")]) == 2


def _report_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `report` expecting bad input: exit 2 and one error line, no traceback; the message."""
    assert _report(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("netconformance: error: ") and "Traceback" not in err
    return err.strip()


def test_report_rejects_files_that_are_not_json_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _results_file(tmp_path / "good.json", [_cell_row("hairpin", "reference", "pass")])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    err = _report_error(["--baseline", str(binary), str(good)], capsys)
    assert f"{binary}: not a results file: not UTF-8 text (byte 0xff at offset 0)" in err
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000, encoding="utf-8")
    err = _report_error(["--baseline", str(good), str(nested)], capsys)
    assert f"{nested}: not a results file: JSON nested too deeply to read" in err


def test_report_rejects_a_run_with_nothing_to_compare(
    known: KnownRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _results_file(tmp_path / "good.json", [_cell_row("hairpin", "reference", "pass")])
    flat = tmp_path / "flat.json"
    flat.write_text("[]", encoding="utf-8")
    err = _report_error(["--baseline", str(good), str(flat)], capsys)
    assert f"{flat}: an empty list: no results, so nothing to compare" in err
    empty = _results_file(tmp_path / "empty.json", [])
    err = _report_error(["--baseline", str(good), str(empty)], capsys)
    assert f"{empty}: results and comparisons are both empty: nothing to compare" in err
    err = _report_error(["--baseline", str(empty), str(good)], capsys)  # an empty baseline vouches for nothing either
    assert f"{empty}: results and comparisons are both empty" in err
    as_object = tmp_path / "object.json"
    as_object.write_text(json.dumps({"format": FORMAT, "results": {}}), encoding="utf-8")
    err = _report_error(["--baseline", str(good), str(as_object)], capsys)
    assert f"{as_object}: results: expected a list, found an object" in err

    # A compare run records no results, only comparisons: that is something to compare.
    meta = RunMeta(datetime.now(UTC), ("netconformance", "compare"))
    compared = write_run(tmp_path / "compare", results=[], comparisons=[known.comparison], meta=meta)
    assert _report(["--baseline", str(compared.results_json), str(compared.run_dir)]) == 0
    assert "no regression" in capsys.readouterr().out


def test_newest_run_is_the_newest_directory_named_like_a_run(
    known: KnownRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = RunMeta(datetime.now(UTC), ("netconformance", "run"))
    runs = tmp_path / "runs"
    older = write_run(runs / "20260101-000000-aaaaaa", results=known.results[:1], meta=meta)
    newer = write_run(runs / "20260102-000000-pytest-bbbbbb", results=known.results[:1], meta=meta)
    stray = runs / "zzz-notarun"  # sorts after every run; not one
    stray.mkdir()
    (stray / "results.json").write_text("[]", encoding="utf-8")
    assert _report(["--baseline", str(older.results_json), "--runs", str(runs)]) == 0
    assert f"run {newer.results_json}" in capsys.readouterr().out

    # The newest run is empty: an error, not a quiet fallback to an older run.
    latest = runs / "20260103-000000-cccccc"
    latest.mkdir()
    (latest / "results.json").write_text("[]", encoding="utf-8")
    err = _report_error(["--baseline", str(older.results_json), "--runs", str(runs)], capsys)
    assert f"{latest / 'results.json'}: an empty list" in err

    only_strays = tmp_path / "strays"
    (only_strays / "zzz-notarun").mkdir(parents=True)
    (only_strays / "zzz-notarun" / "results.json").write_text("[]", encoding="utf-8")
    err = _report_error(["--baseline", str(older.results_json), "--runs", str(only_strays)], capsys)
    assert "ignored zzz-notarun (not named like a run)" in err


def _valid_doc() -> dict[str, Any]:
    """A small results.json with every field load_results reads: two results (one with a record), one comparison."""
    record = {
        "case_id": "c1",
        "verdict": "pass",
        "observations": [{"text": "default/pod-a -> 10.96.0.10:80/TCP", "outcomes": [{"p": 1.0, "key": "dropped"}]}],
    }
    comparison = {
        "backends": ["sim", "netns"],
        "implementation": "reference",
        "status": "pass",
        "error": None,
        "disagreement": None,
    }
    return {
        "format": FORMAT,
        "run": {},
        "results": [
            {**_cell_row("hairpin", "reference", "pass"), "records": [record]},
            _cell_row("dnat", "reference", "pass"),
        ],
        "comparisons": [comparison],
    }


def _row(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = doc["results"][i]
    return row


def _outcome(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _row(doc)["records"][0]["observations"][0]["outcomes"][0]
    return out


def _compared(doc: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = doc["comparisons"][0]
    return row


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    # Statuses and verdicts other than the ones the writers produce (STATUSES, VERDICTS) are damage, not failures.
    (
        "status banana",
        lambda d: _row(d).update(status="banana"),
        'results[0].status: expected one of "pass", "FAIL", "ERROR", found "banana"',
    ),
    (
        "status PASS",
        lambda d: _row(d).update(status="PASS"),
        'results[0].status: expected one of "pass", "FAIL", "ERROR", found "PASS"',
    ),
    ("status null", lambda d: _row(d).update(status=None), "results[0].status: expected one of"),
    (
        "comparison status",
        lambda d: _compared(d).update(status="agree"),
        'comparisons[0].status: expected one of "pass", "FAIL", "ERROR", found "agree"',
    ),
    (
        "record verdict",
        lambda d: _row(d)["records"][0].update(verdict="PASS"),
        'results[0].records[0].verdict: expected one of "pass", "fail", found "PASS"',
    ),
    # Field types.
    ("spec null", lambda d: _row(d).update(spec=None), "results[0].spec: expected a non-empty string, found null"),
    (
        "spec list",
        lambda d: _row(d).update(spec=["a"]),
        "results[0].spec: expected a non-empty string, found a list of 1",
    ),
    (
        "spec missing",
        lambda d: _row(d, 1).pop("spec"),
        "results[1].spec: expected a non-empty string, found no such field",
    ),
    (
        "backend empty",
        lambda d: _row(d).update(backend=""),
        'results[0].backend: expected a non-empty string, found ""',
    ),
    (
        "violations string",
        lambda d: _row(d, 1).update(violations="oops"),
        'results[1].violations: expected a list, found "oops"',
    ),
    (
        "violation number",
        lambda d: _row(d, 1).update(violations=[7]),
        "results[1].violations[0]: expected a string, found 7",
    ),
    ("error number", lambda d: _row(d, 1).update(error=3), "results[1].error: expected a string, found 3"),
    ("records null", lambda d: _row(d).update(records=None), "results[0].records: expected a list, found null"),
    ("row list", lambda d: d["results"].append(["a"]), "results[2]: expected an object, found a list of 1"),
    (
        "p null",
        lambda d: _outcome(d).update(p=None),
        "results[0].records[0].observations[0].outcomes[0].p: expected a number, found null",
    ),
    (
        "p bool",
        lambda d: _outcome(d).update(p=True),
        "results[0].records[0].observations[0].outcomes[0].p: expected a number, found true",
    ),
    # A probability is a finite number from 0 to 1; NaN and p <= 0 used to drop the outcome without a word.
    (
        "p NaN",
        lambda d: _outcome(d).update(p=float("nan")),
        "results[0].records[0].observations[0].outcomes[0].p: expected a probability from 0 to 1, found NaN",
    ),
    (
        "p Infinity",
        lambda d: _outcome(d).update(p=float("inf")),
        "results[0].records[0].observations[0].outcomes[0].p: expected a probability from 0 to 1, found Infinity",
    ),
    (
        "p negative",
        lambda d: _outcome(d).update(p=-0.5),
        "results[0].records[0].observations[0].outcomes[0].p: expected a probability from 0 to 1, found -0.5",
    ),
    (
        "p above 1",
        lambda d: _outcome(d).update(p=1.5),
        "results[0].records[0].observations[0].outcomes[0].p: expected a probability from 0 to 1, found 1.5",
    ),
    (
        "p huge integer",  # too large for a float: refused as out of range, not an OverflowError
        lambda d: _outcome(d).update(p=10**400),
        "results[0].records[0].observations[0].outcomes[0].p: expected a probability from 0 to 1, found 1000",
    ),
    (
        "key missing",
        lambda d: _outcome(d).pop("key"),
        "results[0].records[0].observations[0].outcomes[0].key: expected a non-empty string, found no such field",
    ),
    (
        "backends string",
        lambda d: _compared(d).update(backends="ab"),
        'comparisons[0].backends: expected a list, found "ab"',
    ),
    (
        "backends one",
        lambda d: _compared(d).update(backends=["sim"]),
        "comparisons[0].backends: expected [predictor, backend], found a list of 1",
    ),
    (
        "backend null",
        lambda d: _compared(d).update(backends=["sim", None]),
        "comparisons[0].backends[1]: expected a non-empty string, found null",
    ),
    (
        "disagreement list",
        lambda d: _compared(d).update(disagreement=[]),
        "comparisons[0].disagreement: expected an object, found an empty list",
    ),
    ("comparisons null", lambda d: d.update(comparisons=None), "comparisons: expected a list, found null"),
    (
        "format v2",
        lambda d: d.update(format="netconformance.io/results/v2"),
        f'not a netconformance results file (expected an object with format "{FORMAT}" or the older flat list,'
        ' found format "netconformance.io/results/v2")',
    ),
    # The same cell twice: the second would silently replace the first.
    (
        "duplicate cell",
        lambda d: d["results"].append(dict(_row(d, 1))),
        "results[2]: dnat / sim / reference is already at results[1]",
    ),
    (
        "duplicate comparison",
        lambda d: d["comparisons"].append(dict(_compared(d))),
        "comparisons[1]: compare:sim / netns / reference is already at comparisons[0]",
    ),
]


@pytest.mark.parametrize(("change", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_report_names_the_malformed_field(
    change: Callable[[dict[str, Any]], object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_valid_doc()), encoding="utf-8")
    assert _report(["--baseline", str(good), str(good)]) == 0  # the premise: unchanged, it reads
    capsys.readouterr()
    doc = _valid_doc()
    change(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    assert f"{bad}: {message}" in _report_error(["--baseline", str(good), str(bad)], capsys)
    assert f"{bad}: {message}" in _report_error(["--baseline", str(bad), str(good)], capsys)


def test_report_reads_the_probabilities_the_writers_write(tmp_path: Path) -> None:
    # p = 0: an outcome listed but impossible (as Observation.possible), so not seen. A few ulps above 1: the
    # simulator's sum of path weights for an outcome every path reaches (rounding, not damage).
    baseline_doc = _valid_doc()
    _outcome(baseline_doc).update(p=1.0000000000000013)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(baseline_doc), encoding="utf-8")
    run_doc = _valid_doc()
    _row(run_doc)["records"][0]["observations"][0]["outcomes"] = [{"p": 0, "key": "dropped"}, {"p": 1, "key": "R"}]
    run = tmp_path / "run.json"
    run.write_text(json.dumps(run_doc), encoding="utf-8")
    (change,) = compare_with_baseline(run, baseline).changed_outcomes
    assert (change.before, change.after) == ({"dropped"}, {"R"})


def test_report_refuses_a_baseline_with_no_cell_in_common(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing compared proves nothing: it used to pass ("changed outcomes: 0 (in 0 cases run by both)").
    run = _results_file(tmp_path / "run.json", [_cell_row("hairpin", "reference", "pass")])
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"spec": "x", "backend": "y", "implementation": "z", "status": "FAIL"}]))
    err = _report_error(["--baseline", str(other), str(run)], capsys)
    assert (
        f"{run} and the baseline {other} have no spec / backend / implementation cell in common, so there is nothing"
        " to compare: the run has 1 cell (hairpin / sim / reference); the baseline has 1 cell (x / y / z)"
    ) in err
    # A long list is cut short.
    many = _results_file(tmp_path / "many.json", [_cell_row(f"s{i}", "reference", "pass") for i in range(7)])
    err = _report_error(["--baseline", str(many), str(run)], capsys)
    assert (
        "the baseline has 7 cells (s0 / sim / reference, s1 / sim / reference, s2 / sim / reference,"
        " s3 / sim / reference, s4 / sim / reference, ... and 2 more)"
    ) in err

    # One cell in common is a comparison; the others are listed as only on one side, as before.
    one = _results_file(tmp_path / "s0.json", [_cell_row("s0", "reference", "pass")])
    assert _report(["--baseline", str(many), str(one)]) == 0
    out = capsys.readouterr().out
    assert "not in this run (in the baseline): 6" in out and "no regression" in out


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--baseline", "", "run"], "--baseline"),
        (["--baseline", "b.json", ""], "run_dir"),
        (["--baseline", "b.json", "--runs", ""], "--runs"),
    ],
)
def test_report_rejects_empty_paths(argv: list[str], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    # An empty path would mean the current directory: --baseline "" read ./results.json.
    with pytest.raises(SystemExit) as exit_:
        _report(argv)
    assert exit_.value.code == 2
    assert f"argument {option}: expected a path, found an empty string" in capsys.readouterr().err


def test_committed_baseline_is_a_passing_reference_run() -> None:
    doc = json.loads(BASELINE.read_text(encoding="utf-8"))
    assert doc["format"] == FORMAT and doc["run"]["seeds"] == [SEED]
    cells = {(r["spec"], r["backend"], r["implementation"]): r["status"] for r in doc["results"]}
    assert set(cells.values()) == {"pass"}
    assert {s for s, _, _ in cells} == {"connectivity", "dnat", "hairpin", "policy", "accept-local"}
    assert {(b, i) for _, b, i in cells} == {("sim", "reference")}
    assert all(r["records"] for r in doc["results"])


def test_a_partial_run_says_so_in_its_report_and_its_diff(
    known: KnownRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = RunMeta(datetime.now(UTC), ("netconformance", "run"))
    baseline = write_run(tmp_path / "base", results=known.results, meta=full).results_json
    cut = Interruption("SIGTERM", 1, 2)
    meta = replace(full, interrupted=cut, backend_runs={"netns": "1f2e3d4c"})
    partial = write_run(tmp_path / "partial", results=known.results[:1], meta=meta)
    run = json.loads(partial.results_json.read_text(encoding="utf-8"))["run"]
    assert run["interrupted"] == {"signal": "SIGTERM", "cells_run": 1, "cells_planned": 2}
    assert run["backend_runs"] == {"netns": "1f2e3d4c"}
    html = partial.html.read_text(encoding="utf-8")
    assert "interrupted by SIGTERM after 1 of 2 cells: the other cells did not run" in html
    assert "netns 1f2e3d4c" in html
    # `report` tells a partial run from one that lost cells: the missing one was not reached.
    diff = compare_with_baseline(partial.results_json, baseline)
    assert diff.interrupted == "interrupted by SIGTERM after 1 of 2 cells" and not diff.regressed
    assert "  a partial run: interrupted by SIGTERM after 1 of 2 cells" in render_diff(diff)
    assert compare_with_baseline(baseline, baseline).interrupted is None
    assert json.loads(baseline.read_text(encoding="utf-8"))["run"]["interrupted"] is None
    # ... and a CI step that runs `report` after a cancelled run does not go green: no verdict on what did not run.
    assert _report(["--baseline", str(baseline), str(partial.results_json)]) == 2
    assert "netconformance: INCOMPLETE: interrupted by SIGTERM after 1 of 2 cells" in capsys.readouterr().err
    assert _report(["--baseline", str(baseline), str(baseline)]) == 0
    # The JUnit files count the interruption as an error.
    (backend,) = {r.backend for r in known.results[:1]}
    suite = ET.parse(partial.junit[backend]).getroot()
    assert int(suite.get("errors", "0")) >= 1
    stops = [e for e in suite.iter("error") if e.get("type") == "Interrupted"]
    assert [e.get("message") for e in stops] == ["interrupted by SIGTERM after 1 of 2 cells"]

    doc = json.loads(partial.results_json.read_text(encoding="utf-8"))
    doc["run"]["interrupted"]["cells_run"] = "1"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    err = _report_error(["--baseline", str(baseline), str(bad)], capsys)
    assert f'{bad}: run.interrupted.cells_run: expected a count, found "1"' in err
