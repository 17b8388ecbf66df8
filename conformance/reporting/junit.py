"""JUnit XML, one file per backend: the format CI systems (GitLab, Jenkins, GitHub actions) read.

One testcase per spec x implementation (classname netconformance.<backend>.<implementation>,
name the spec); a backend comparison is one more testcase in the compared backend's file.
"""

from __future__ import annotations

import platform
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from conformance.reporting.document import Json

# XML 1.0 cannot carry most control characters, even escaped.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(s: str) -> str:
    return _INVALID_XML.sub("?", s)


def _message(lines: Sequence[str]) -> str:
    if not lines:
        return ""
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return _text(lines[0] + more)


def _testcase(suite: ET.Element, *, classname: str, name: str, seconds: float) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")


def _add_result(suite: ET.Element, r: Json) -> None:
    tc = _testcase(
        suite, classname=f"netconformance.{r['backend']}.{r['implementation']}", name=r["spec"], seconds=r["seconds"]
    )
    out = [f"examples: {r['examples']}, seed: {r['seed']}"]
    if r["status"] == "FAIL":
        violations = [str(v) for v in r["violations"]]
        el = ET.SubElement(tc, "failure", message=_message(violations), type="SpecViolation")
        el.text = _text("\n".join(f"- {v}" for v in violations))
        failure = r["failure"] or {}
        if failure.get("reproduce"):
            out.append(f"reproduce: {failure['reproduce']}")
    elif r["status"] == "ERROR":
        el = ET.SubElement(tc, "error", message=_message([str(r["error"])]), type="BackendError")
        el.text = _text(str(r["error"]))
    out.append(f"rerun: {r['rerun']}")
    ET.SubElement(tc, "system-out").text = _text("\n".join(out))


def _add_comparison(suite: ET.Element, c: Json) -> None:
    predictor, backend = c["backends"]
    tc = _testcase(
        suite,
        classname=f"netconformance.{backend}.{c['implementation']}",
        name=f"agrees with {predictor}",
        seconds=c["seconds"],
    )
    out = [f"examples: {c['examples']}, seed: {c['seed']}"]
    d = c["disagreement"]
    if d is not None:
        seen = ", ".join(o["key"] for o in d["observed"]["outcomes"]) or "nothing"
        predicted = [f"p={o['p']:.3f}: {o['key']}" for o in d["predicted"]["outcomes"]]
        msg = f"{d['text']}: {backend} observed {seen}; {predictor} predicted only other outcomes"
        el = ET.SubElement(tc, "failure", message=_text(msg), type="BackendDisagreement")
        el.text = _text("\n".join([msg, f"{predictor} predicted:", *(f"  {p}" for p in predicted)]))
        out += [f"reproduce: {cmd}" for cmd in d["reproduce"]]
    elif c["error"]:
        el = ET.SubElement(tc, "error", message=_message([str(c["error"])]), type="BackendError")
        el.text = _text(str(c["error"]))
    ET.SubElement(tc, "system-out").text = _text("\n".join(out))


def junit_xml(backend: str, results: Sequence[Json], comparisons: Sequence[Json], run: Json) -> bytes:
    """The JUnit document for one backend, from results.json's entries."""
    mine = [r for r in results if r["backend"] == backend]
    compared = [c for c in comparisons if c["backends"][1] == backend]
    statuses = [r["status"] for r in mine] + [c["status"] for c in compared]
    stop = run.get("interrupted")
    if stop:
        statuses.append("ERROR")  # the interruption is one more error: a partial run must not read as all passed
    counts: dict[str, Any] = {
        "tests": str(len(statuses)),
        "failures": str(statuses.count("FAIL")),
        "errors": str(statuses.count("ERROR")),
        "skipped": "0",
        "time": f"{sum(r['seconds'] for r in mine) + sum(c['seconds'] for c in compared):.3f}",
    }
    root = ET.Element("testsuites", name="netconformance", **counts)
    # JUnit's schema wants a timestamp without a zone: UTC.
    started = datetime.fromisoformat(run["started"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    suite = ET.SubElement(
        root, "testsuite", name=f"netconformance.{backend}", timestamp=started, hostname=platform.node(), **counts
    )
    props = ET.SubElement(suite, "properties")
    for name, value in [
        ("run_id", run["id"]),
        ("command", " ".join(run["command"])),
        ("seeds", ",".join(str(s) for s in run["seeds"])),
        *((f"version.{k}", v) for k, v in run["versions"].items() if v is not None),
    ]:
        ET.SubElement(props, "property", name=name, value=_text(str(value)))
    for r in mine:
        _add_result(suite, r)
    for c in compared:
        _add_comparison(suite, c)
    if stop:
        said = f"interrupted by {stop['signal']} after {stop['cells_run']} of {stop['cells_planned']} cells"
        tc = _testcase(suite, classname=f"netconformance.{backend}", name="the whole run", seconds=0.0)
        ET.SubElement(tc, "error", message=said, type="Interrupted").text = _text(
            said + ": the other cells did not run"
        )
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def junit_backends(results: Sequence[Json], comparisons: Sequence[Json]) -> list[str]:
    names = {str(r["backend"]) for r in results} | {str(c["backends"][1]) for c in comparisons}
    return sorted(names)
