"""Case files (`netconformance replay CASE`): read as strictly as scenario files.

Every bad case file is an error naming the file, the document (numbered as in
the file), the field, what was expected and what was found; never a traceback,
and never a case that "holds" because nothing was judged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.cases import Case, dump_case, load_case, parse_case
from conformance.cli import main
from conformance.loader import ScenarioError
from conformance.probes import Probe
from conformance.strategies import classic_scenario

CORPUS = Path(__file__).resolve().parent.parent / "reports" / "corpus"

CORPUS_ENTRY = """\
apiVersion: netconformance.io/v1
kind: CorpusEntry
spec: hairpin
implementation: reference
expect: pass
found: 2026-01-31
source: spec failure
note: ''
"""

NODE = """\
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses: [{type: InternalIP, address: 172.18.0.2}]
"""


def pod(name: str, ip: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: a}}}}
spec:
  nodeName: node-1
  containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]
status:
  podIP: {ip}
"""


PROBE = """\
- source: pod:default/pod-a
  destination: 10.244.1.11
  port: 8080
  protocol: TCP
"""


def probe_list(probes: str = PROBE, *, header: str = "") -> str:
    return f"apiVersion: netconformance.io/v1\nkind: ProbeList\n{header}probes:\n{probes}"


def case_text(*, probes: str = PROBE, corpus: bool = False) -> str:
    """Documents: [CorpusEntry,] Node, Pod pod-a, Pod pod-b, ProbeList."""
    docs = [NODE, pod("pod-a", "10.244.1.10"), pod("pod-b", "10.244.1.11"), probe_list(probes)]
    return "---\n".join([CORPUS_ENTRY, *docs] if corpus else docs)


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_case(text, source="case.yaml")
    return str(info.value)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """The 1-based line of the n-th line of `text` that starts with `needle`."""
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if line.startswith(needle)]
    return lines[occurrence - 1]


def test_a_valid_case_loads_and_dump_case_round_trips() -> None:
    case = parse_case(case_text(), source="case.yaml")
    assert [str(p) for p in case.probes] == ["pod:default/pod-a -> 10.244.1.11:8080/TCP"]
    assert parse_case(dump_case(case), source="dump") == case
    # A corpus file's CorpusEntry document is about the case, not part of it.
    assert parse_case(case_text(corpus=True), source="case.yaml") == case


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_corpus_file_loads_as_a_case(path: Path) -> None:
    case = load_case(path)
    assert case.probes and parse_case(dump_case(case), source="dump") == case


# -- 1. unreadable files ------------------------------------------------------------------


def test_binary_case_file_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "case.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ScenarioError, match=f"^{path}: not UTF-8 text: invalid start byte at byte 0$"):
        load_case(path)
    assert main(["replay", str(path), "--spec", "hairpin"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not UTF-8 text" in err and "Traceback" not in err


# -- 2. probe sources the scenario lacks --------------------------------------------------


@pytest.mark.parametrize(
    ("source", "hint"),
    [
        ("pod:default/nosuch", "did you mean 'pod:default/pod-b'? "),
        ("pod:nosuch", ""),
        ("node:nosuch", "did you mean 'node:node-1'? "),
    ],
)
def test_probe_source_must_be_in_the_scenario(source: str, hint: str) -> None:
    probes = PROBE + PROBE.replace("pod:default/pod-a", source)
    message = error_of(case_text(probes=probes, corpus=True))
    # Document 5 of the file (the CorpusEntry is document 1); the second probe.
    assert message == (
        f"case.yaml: document 5 (ProbeList): probes[1].source: {source!r} is not a pod or node of the scenario "
        f"({hint}known sources: external, node:node-1, pod:default/pod-a, pod:default/pod-b)"
    )


def test_unknown_source_lists_at_most_ten_known_sources() -> None:
    pods = [pod(f"pod-{i:02}", f"10.244.1.{10 + i}") for i in range(20)]
    probes = PROBE.replace("pod:default/pod-a", "pod:other/x")
    message = error_of("---\n".join([NODE, *pods, probe_list(probes)]))
    # external, node:node-1, then the first 8 of 20 pods.
    assert "known sources: external, node:node-1, pod:default/pod-00," in message
    assert "pod:default/pod-07, ... (12 more))" in message
    assert "pod-08" not in message


def test_external_is_always_a_source() -> None:
    case = parse_case(case_text(probes=PROBE.replace("pod:default/pod-a", "external")), source="case.yaml")
    assert case.probes[0].source == "external"


def test_known_sources_are_the_dataplane_sources() -> None:
    from conformance.cases import probe_sources
    from conformance.implementations.wiring import sources

    s = classic_scenario()
    assert probe_sources(s) == tuple(name for name, _ in sources(s))


def test_unknown_source_is_an_error_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(case_text(probes=PROBE.replace("pod:default/pod-a", "node:nosuch")), encoding="utf-8")
    assert main(["replay", str(path), "--spec", "hairpin"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: document 4 (ProbeList): probes[0].source: 'node:nosuch'" in err
    assert "Traceback" not in err and "KeyError" not in err


# -- 3. protocols no backend can probe --------------------------------------------------------


def test_sctp_probe_is_rejected_with_the_allowed_protocols() -> None:
    message = error_of(case_text(probes=PROBE.replace("protocol: TCP", "protocol: SCTP")))
    assert message == (
        "case.yaml: document 4 (ProbeList): probes[0].protocol: "
        "SCTP probes are not supported by any backend: expected one of TCP, UDP"
    )


def test_protocol_is_case_sensitive() -> None:
    message = error_of(case_text(probes=PROBE.replace("protocol: TCP", "protocol: tcp")))
    assert message == "case.yaml: document 4 (ProbeList): probes[0].protocol: expected one of TCP, UDP, got 'tcp'"


# -- 4. booleans are not ports ------------------------------------------------------------------


@pytest.mark.parametrize(("port", "shown"), [("true", "true"), ("0", "0"), ("'80'", "'80'"), ("65536", "65536")])
def test_port_must_be_an_integer_in_range(port: str, shown: str) -> None:
    message = error_of(case_text(probes=PROBE.replace("port: 8080", f"port: {port}")))
    assert message == f"case.yaml: document 4 (ProbeList): probes[0].port: expected an integer 1-65535, got {shown}"


# -- 5. duplicate keys ----------------------------------------------------------------------------


def test_duplicate_key_in_a_probe_is_an_error_with_line_and_column() -> None:
    text = case_text(probes=PROBE + "  port: 81\n")
    line = line_of(text, "  port: 81")
    assert error_of(text) == f"case.yaml: line {line}, column 3: invalid YAML: duplicate key 'port'"


def test_duplicate_key_in_the_scenario_part_is_an_error_with_line_and_column() -> None:
    text = case_text().replace("  podIP: 10.244.1.11\n", "  podIP: 10.244.1.11\n  podIP: 10.244.1.12\n")
    line = line_of(text, "  podIP: 10.244.1.12")
    assert error_of(text) == f"case.yaml: line {line}, column 3: invalid YAML: duplicate key 'podIP'"


# -- 6. a case must judge something ----------------------------------------------------------------


def test_case_without_a_probe_list_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "---\n".join([NODE, pod("pod-a", "10.244.1.10")])
    assert error_of(text) == (
        "case.yaml: no ProbeList document: a case needs one "
        "(apiVersion: netconformance.io/v1, kind: ProbeList) with at least one probe"
    )
    path = tmp_path / "case.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["replay", str(path), "--spec", "hairpin"]) == 2  # not 0: nothing was judged
    assert "no ProbeList document" in capsys.readouterr().err


@pytest.mark.parametrize("probes", ["probes: []\n", "probes:\n", ""])
def test_probe_list_needs_at_least_one_probe(probes: str) -> None:
    text = "---\n".join([NODE, "apiVersion: netconformance.io/v1\nkind: ProbeList\n" + probes])
    message = error_of(text)
    if probes == "probes: []\n":
        assert message == (
            "case.yaml: document 2 (ProbeList): probes: expected at least one probe (a case without probes judges nothing)"
        )
    else:  # absent or null
        assert message == "case.yaml: document 2 (ProbeList): probes: required: expected a list of probes"


def test_only_one_probe_list() -> None:
    text = case_text() + "---\n" + probe_list()
    assert (
        error_of(text)
        == "case.yaml: document 5 (ProbeList): only one ProbeList is allowed per case (document 4 is one)"
    )


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        ("probes: {source: external}\n", "probes: expected a list, got a mapping"),
        ("probes: ['pod:default/pod-a -> 10.244.1.11:8080/TCP']\n", "probes[0]: expected a mapping, got 'pod:default"),
        (
            "probes: [null]\n",
            "probes[0]: expected a probe (a mapping with source, destination, port, protocol), got null",
        ),
    ],
)
def test_probes_must_be_a_list_of_mappings(probes: str, message: str) -> None:
    text = "---\n".join([NODE, "apiVersion: netconformance.io/v1\nkind: ProbeList\n" + probes])
    assert error_of(text).startswith(f"case.yaml: document 2 (ProbeList): {message}")


# -- 7. ProbeList and CorpusEntry documents are checked like scenario objects --------------------


def test_probe_list_api_version_is_checked() -> None:
    text = case_text().replace(
        "apiVersion: netconformance.io/v1\nkind: ProbeList", "apiVersion: bogus/v9\nkind: ProbeList"
    )
    assert error_of(text) == (
        "case.yaml: document 4 (ProbeList): apiVersion: ProbeList needs apiVersion netconformance.io/v1, got 'bogus/v9'"
    )


def test_probe_list_unknown_field_is_an_error() -> None:
    text = "---\n".join([NODE, probe_list(header="extra: 1\n")])
    assert error_of(text) == (
        "case.yaml: document 2 (ProbeList): extra: unknown field 'extra' (expected one of: apiVersion, kind, probes)"
    )
    typo = "---\n".join([NODE, probe_list().replace("probes:", "probe:")])
    assert "probe: unknown field 'probe' (did you mean 'probes'?" in error_of(typo)


def test_probe_unknown_field_is_an_error() -> None:
    message = error_of(case_text(probes=PROBE + "  dport: 80\n"))
    assert message == (
        "case.yaml: document 4 (ProbeList): probes[0].dport: unknown field 'dport' "
        "(did you mean 'port'? expected one of: source, destination, port, protocol)"
    )


def test_probe_list_kind_typo_suggests_probe_list() -> None:
    message = error_of(case_text().replace("kind: ProbeList", "kind: Probelist"))
    assert message.startswith("case.yaml: document 4: kind: unknown kind 'Probelist' (did you mean 'ProbeList'?")
    assert "netconformance.io/v1 ProbeList" in message


def test_corpus_entry_unknown_field_and_api_version_are_checked() -> None:
    text = case_text(corpus=True).replace("spec: hairpin\n", "spec: hairpin\nnonsense: [1, 2]\n")
    assert error_of(text).startswith(
        "case.yaml: document 1 (CorpusEntry): nonsense: unknown field 'nonsense' (expected one of: apiVersion, kind,"
    )
    text = case_text(corpus=True).replace(
        "apiVersion: netconformance.io/v1\nkind: CorpusEntry", "apiVersion: v1\nkind: CorpusEntry"
    )
    assert error_of(text) == (
        "case.yaml: document 1 (CorpusEntry): apiVersion: CorpusEntry needs apiVersion netconformance.io/v1, got 'v1'"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("expect: pass", "expect: banana", "expect: expected one of pass, fail, got 'banana'"),
        ("found: 2026-01-31", "found: yesterday", "found: expected a date (YYYY-MM-DD, not quoted), got 'yesterday'"),
        (
            "found: 2026-01-31",
            "found: '2026-01-31'",
            "found: expected a date (YYYY-MM-DD, not quoted), got '2026-01-31'",
        ),
        ("found: 2026-01-31\n", "", "found: required: expected a date (YYYY-MM-DD)"),
        (
            "source: spec failure",
            "source: yes",
            "source: expected 'spec failure' or 'backend disagreement', got True",
        ),
        ("spec: hairpin", "spec: ''", "spec: expected a spec name, got ''"),
        ("spec: hairpin", "spec: 3", "spec: expected a spec name, got 3 (quote it)"),
        ("implementation: reference\n", "", "implementation: required: expected an implementation name"),
    ],
)
def test_corpus_entry_values_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    from conformance.reporting.corpus import read_entry

    text = case_text(corpus=True).replace(old, new, 1)
    assert error_of(text) == f"case.yaml: document 1 (CorpusEntry): {message}"
    # replay refuses what the corpus refuses, with the same words.
    path = tmp_path / "case.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["replay", str(path), "--spec", "hairpin"]) == 2
    assert f"{path}: document 1 (CorpusEntry): {message}" in capsys.readouterr().err
    with pytest.raises(ScenarioError) as info:
        read_entry(path)
    assert str(info.value) == f"{path}: document 1 (CorpusEntry): {message}"


def test_corpus_entry_values_are_read() -> None:
    from datetime import date

    from conformance.cases import CorpusMeta, parse_case_file

    case, meta = parse_case_file(case_text(corpus=True), source="case.yaml")
    assert meta == CorpusMeta("hairpin", "reference", "pass", date(2026, 1, 31), "spec failure", "")
    assert parse_case_file(case_text(), source="case.yaml") == (case, None)


def test_corpus_file_needs_a_corpus_entry(tmp_path: Path) -> None:
    from conformance.reporting.corpus import read_entry

    path = tmp_path / "case.yaml"
    path.write_text(case_text(), encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        read_entry(path)
    assert str(info.value) == (
        f"{path}: no CorpusEntry document: a corpus file needs one (apiVersion: netconformance.io/v1, kind: CorpusEntry)"
    )


# -- 8. destinations no cluster address can be ------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "range_"),
    [
        ("255.255.255.255", "240.0.0.0/4 (reserved, incl. broadcast)"),
        ("0.0.0.0", "0.0.0.0/8 ('this network')"),
        ("127.0.0.1", "127.0.0.0/8 (loopback)"),
        ("224.0.0.1", "224.0.0.0/4 (multicast)"),
    ],
)
def test_probe_destination_cannot_be_unusable(destination: str, range_: str) -> None:
    message = error_of(case_text(probes=PROBE.replace("destination: 10.244.1.11", f"destination: {destination}")))
    assert message == (
        f"case.yaml: document 4 (ProbeList): probes[0].destination: {destination} is in {range_}, "
        "which no probe can reach: expected a unicast address such as a pod's"
    )


def test_probe_to_a_node_address_and_unknown_unicast_addresses_is_fine() -> None:
    probes = PROBE.replace("destination: 10.244.1.11", "destination: 172.18.0.2").replace("8080", "30080")
    probes += PROBE.replace("10.244.1.11", "8.8.8.8") + PROBE.replace("10.244.1.11", "223.255.255.255")
    case = parse_case(case_text(probes=probes), source="case.yaml")
    assert [str(p.dst) for p in case.probes] == ["172.18.0.2", "8.8.8.8", "223.255.255.255"]


# -- 9. YAML merge keys -------------------------------------------------------------------------------


def test_probes_may_share_fields_through_a_merge_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: "could not determine a constructor for the tag 'tag:yaml.org,2002:merge'".
    probes = "- &p\n  " + PROBE[2:] + "- <<: *p\n  protocol: UDP\n"
    text = case_text(probes=probes)
    case = parse_case(text, source="case.yaml")
    assert [str(p) for p in case.probes] == [
        "pod:default/pod-a -> 10.244.1.11:8080/TCP",
        "pod:default/pod-a -> 10.244.1.11:8080/UDP",
    ]
    path = tmp_path / "case.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["replay", str(path), "--spec", "connectivity"]) == 0
    assert "holds for this case" in capsys.readouterr().out


def test_a_key_written_twice_next_to_a_merge_key_is_still_a_duplicate() -> None:
    probes = "- &p\n  " + PROBE[2:] + "- <<: *p\n  protocol: UDP\n  protocol: TCP\n"
    text = case_text(probes=probes)
    line = line_of(text, "  protocol: TCP", 2)
    assert error_of(text) == f"case.yaml: line {line}, column 3: invalid YAML: duplicate key 'protocol'"


# -- 10. the case file argument ------------------------------------------------------------------------


def test_empty_case_path_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: ": cannot read: Is a directory" (Path("") is ".").
    with pytest.raises(ScenarioError) as info:
        load_case("")
    assert str(info.value) == "case file: expected the path of a case file, got an empty string"
    assert main(["replay", "", "--spec", "hairpin"]) == 2
    assert "case file: expected the path of a case file, got an empty string" in capsys.readouterr().err


# -- 11. documents are numbered as in the file ---------------------------------------------------------


def test_scenario_errors_number_documents_as_in_the_file() -> None:
    # The unnamed Pod is the file's 3rd document after the CorpusEntry's 1st.
    text = case_text(corpus=True).replace("metadata: {name: pod-a, labels: {app: a}}", "metadata: {labels: {app: a}}")
    assert error_of(text) == "case.yaml: document 3 (Pod): metadata.name: required: expected a name"


def test_probe_list_errors_number_documents_as_in_the_file() -> None:
    text = case_text(corpus=True, probes=PROBE.replace("destination: 10.244.1.11", "destination: 10.244.1.300"))
    assert error_of(text) == (
        "case.yaml: document 5 (ProbeList): probes[0].destination: expected an IPv4 address, got '10.244.1.300'"
    )


def test_case_is_the_same_whatever_the_document_order() -> None:
    s = classic_scenario()
    case = Case(s, (Probe("pod:default/pod-b", s.services[0].cluster_ip, 80, "TCP"),))
    docs = dump_case(case).split("---\n")[1:]  # the text starts with "---"
    assert docs[-1].startswith("apiVersion: netconformance.io/v1\nkind: ProbeList\n")
    assert parse_case("---\n".join([docs[-1], *docs[:-1]]), source="x") == case


def test_only_one_corpus_entry() -> None:
    text = CORPUS_ENTRY + "---\n" + case_text(corpus=True)
    assert (
        error_of(text)
        == "case.yaml: document 2 (CorpusEntry): only one CorpusEntry is allowed per file (document 1 is one)"
    )
