"""The `netconformance` command line.

Exit codes CI can trust: 0 everything passed, 1 a spec failed (or a broken
implementation went uncaught), 2 bad input or a backend that cannot run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import importlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import NoReturn

from backends import Backend, BackendError, BackendUnavailable, backend_names, get_backend, teardown_warnings
from backends.sim.iptables import RulesetError, parse_iptables_save
from backends.sim.kernel import SimError
from backends.sim.netfilter import compiled_tables
from backends.sim_snapshot import SimSnapshotBackend
from conformance.arguments import UsageError, backend_list, count, name_list
from conformance.bench import render as render_bench
from conformance.bench import run_bench
from conformance.cases import Case, load_case
from conformance.compare import CompareResult, agrees, replay_comparison, run_compare
from conformance.implementations import (
    CNI_PLUGIN_IMPLEMENTATIONS,
    CONFLIST,
    DATAPLANE,
    IMPLEMENTATIONS,
    REFERENCE,
    RULES,
    ConflistError,
    Implementation,
    broken_implementations,
    get_implementation,
)
from conformance.implementations.cniplugins import CniPlugins
from conformance.implementations.foreign import (
    DATAPLANE_FORM,
    FIXED_PROBES,
    RULES_FORM,
    ForeignRuleset,
    can_run,
    fixed_comparison_cases,
    fixed_scenario,
    nothing_to_compare,
    nothing_to_probe,
    on_fixed_scenario,
)
from conformance.loader import ScenarioError, load_scenario
from conformance.model import Scenario
from conformance.progress import Progress
from conformance.reporting import Interruption, RunMeta, RunReport, new_run_dir, write_run
from conformance.reporting import register as register_report
from conformance.runner import REPLAY_SAMPLES, WARNING, SpecResult, replay_sampled, run_spec, summarize
from conformance.snapshot import SnapshotError, dump_dataplane
from conformance.specs import Spec, all_specs, get_spec
from conformance.strategies import classic_scenario
from conformance.termination import Terminated, unwind_on_termination
from conformance.tracing import Query, TraceError, trace

DEFAULT_REPORT_DIR = Path("reports/runs")


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


def _run_id(value: str) -> str:
    """argparse type: a run id as the backends make them (8 hex digits), never a path."""
    if not re.fullmatch(r"[0-9a-f]{8}", value):
        raise argparse.ArgumentTypeError(f"expected a run id (8 hex digits, e.g. 1f2e3d4c), got {value!r}")
    return value


def _backends(names: str, option: str = "--backend") -> list[Backend]:
    out: list[Backend] = []
    for name in name_list(names, option):
        try:
            backend = get_backend(name)
            backend.preflight()
        except KeyError as e:
            _fail(f"{option} {name}: {e.args[0]}")
        except BackendUnavailable as e:
            _fail(f"backend {name} cannot run here: {e}")
        out.append(backend)
    if not out:
        _fail(f"{option}: give at least one backend name")
    return out


def _one(items: list[str], option: str) -> str:
    if len(items) != 1:
        given = f" {','.join(items)}" if items else ""
        _fail(f"{option}{given}: this command takes exactly one, {len(items)} given")
    return items[0]


def _specs(names: Sequence[str] | None) -> list[str]:
    """--spec values (repeatable, each may be a comma-separated list), checked."""
    specs = all_specs()
    chosen = name_list(",".join(names), "--spec") if names else list(specs)
    for name in chosen:
        if name not in specs:
            _fail(f"--spec {name}: unknown spec (known: {', '.join(specs)})")
    if not chosen:
        _fail(f"--spec: give a spec name (known: {', '.join(specs)})")
    return chosen


def _implementations(names: str) -> list[Implementation]:
    """One or more comma-separated implementations, checked and built once (a conflist:PATH or rules:... name
    reads its files here, so every later check and the run itself share what was read)."""
    known = [*IMPLEMENTATIONS, *CNI_PLUGIN_IMPLEMENTATIONS]
    chosen = name_list(names, "--implementation")
    out: list[Implementation] = []
    for name in chosen:
        if name.startswith(CONFLIST) and not name[len(CONFLIST) :]:
            _fail(f"--implementation {name}: give the path of a .conflist after {CONFLIST}")
        if not name.startswith((CONFLIST, RULES, DATAPLANE)) and name not in known:
            _fail(
                f"--implementation {name}: unknown (known: {', '.join(known)};"
                f" or {CONFLIST}PATH for your own CNI plugins, {RULES_FORM} for your proxy's rules,"
                f" {DATAPLANE_FORM} for a snapshot)"
            )
        try:
            out.append(get_implementation(name))
        except (ConflistError, ScenarioError) as e:  # ScenarioError: the scenario's own, and ForeignScenarioError
            _fail(f"--implementation {name}: {e}")
    if not out:
        _fail("--implementation: give at least one implementation name")
    return out


def _one_implementation(names: str) -> Implementation:
    implementations = _implementations(names)
    _one([i.name for i in implementations], "--implementation")
    return implementations[0]


def _check_pairs(
    backends: Sequence[Backend],
    implementations: Sequence[Implementation],
    *,
    hint: str = "use --backend netns, docker or sim-snapshot",
) -> None:
    """Implementations wired by real CNI plugins cannot run on the plain simulator (it runs no plugin binaries)."""
    for impl in implementations:
        if isinstance(impl, CniPlugins) and any(b.name == "sim" for b in backends):
            _fail(f"--implementation {impl.name} runs real CNI plugin binaries, which backend sim does not: {hint}")


def _check_plugins_present(backends: Sequence[Backend], implementations: Sequence[Implementation]) -> None:
    """A user's conflist on this machine's kernel: its plugins must be in CNI_PATH, said before anything is built.

    (A docker node has its own plugins, in the image: its agent says so at deploy.)"""
    if not any(b.name in ("netns", "sim-snapshot") for b in backends):
        return
    from backends.netns.cni import missing_plugins_message, plugin_types

    for impl in implementations:
        if isinstance(impl, CniPlugins) and impl.name.startswith(CONFLIST):
            missing = missing_plugins_message(plugin_types(impl.conflist))
            if missing:
                _fail(f"--implementation {impl.name}: {missing}")


def _check_rules(backends: Sequence[Backend], implementations: Sequence[Implementation]) -> None:
    """A proxy's rules, checked before anything runs by what will run them: the kernel first (it is the judge),
    then the simulator's parser."""
    _check_rules_on_kernel(backends, implementations)
    _check_rules_on_simulator(backends, implementations)


def _check_rules_on_kernel(backends: Sequence[Backend], implementations: Sequence[Implementation]) -> None:
    """A proxy's rules bound for the netns backend: restored now in a throwaway namespace, so that a file the kernel
    refuses stops the run before it starts, with the file, the line and the kernel's reason."""
    if not any(b.name in ("netns", "sim-snapshot") for b in backends):
        return
    from backends.netns.rulescheck import kernel_refusal

    for impl in implementations:
        if isinstance(impl, ForeignRuleset):
            for node, path in impl.files.items():
                refusal = kernel_refusal(impl.rules[node])
                if refusal is not None:
                    _fail(f"--implementation {impl.name}: {refusal.describe(str(path))}")


def _check_rules_on_simulator(backends: Sequence[Backend], implementations: Sequence[Implementation]) -> None:
    """A proxy's rules bound for the simulator: parsed and checked now, errors naming the file and line (as trace).

    Only then: a real kernel may take what the simulator does not model (an ipset match, say), and says so itself.
    """
    if not any(b.name == "sim" for b in backends):
        return
    for impl in implementations:
        if isinstance(impl, ForeignRuleset):
            for node, path in impl.files.items():
                try:
                    compiled_tables(parse_iptables_save(impl.rules[node], source=str(path)))
                except RulesetError as e:
                    _fail(f"--implementation {impl.name}: {e}")


# This process's report directories: an interrupted run removes those it left empty.
_made_run_dirs: list[Path] = []


def _forget_empty_run_dirs() -> None:
    for run_dir in _made_run_dirs:
        with contextlib.suppress(OSError):  # not empty (a report was written), or already gone
            run_dir.rmdir()
    _made_run_dirs.clear()


def _run_dir(report_dir: str) -> Path:
    """A new directory for one run's reports, made before the run so a bad --report-dir costs nothing."""
    if not report_dir:
        _fail("--report-dir: give a directory")
    try:
        run_dir = new_run_dir(Path(report_dir))
        _made_run_dirs.append(run_dir)
        return run_dir
    except OSError as e:
        _fail(f"--report-dir {report_dir}: cannot create {e.filename or report_dir}: {e.strerror or e}")


def _fixed_scenario_specs(specs: Sequence[str], implementations: Sequence[Implementation], *, chosen: bool) -> None:
    """A proxy's rules realise one cluster: specs that build their own clusters cannot judge them, nor can specs
    whose probes that cluster cannot provide. Named with --spec, such a pair is refused; otherwise it is left out
    (`_judges`) and said here."""
    for impl in implementations:
        scenario, name = fixed_scenario(impl), impl.name
        if scenario is None:
            continue
        cannot = [s for s in specs if not can_run(s)]
        if cannot and chosen:
            _fail(
                f"--spec {','.join(cannot)}: cannot judge {name}: its rules realise one cluster, and these specs"
                f" build their own around their probes (those that can: {', '.join(FIXED_PROBES)})"
            )
        if cannot:
            print(f"{name}: not judged by {', '.join(cannot)} (they build their own clusters around their probes)")
        for spec in specs:
            why = nothing_to_probe(spec, scenario) if can_run(spec) else None
            if why is not None and chosen:
                _fail(f"--spec {spec}: cannot judge {name}: {why}")
            if why is not None:
                print(f"{name}: not judged by {spec}: {why}")


def _judges(spec: str, scenario: Scenario | None) -> bool:
    """Whether `spec` runs on an implementation realising `scenario` (None: any scenario); see above."""
    return scenario is None or (can_run(spec) and nothing_to_probe(spec, scenario) is None)


@dataclass
class Matrix:
    """What _run_matrix ran: the cells that finished, and the interrupt that stopped it early, if one did."""

    results: list[SpecResult]
    planned: int  # cells in the matrix
    interrupt: KeyboardInterrupt | None = None  # Ctrl-C, or Terminated (SIGTERM, SIGHUP)

    def interruption(self) -> Interruption | None:
        if self.interrupt is None:
            return None
        signal = self.interrupt.name if isinstance(self.interrupt, Terminated) else "SIGINT"
        return Interruption(signal, len(self.results), self.planned)


def _run_matrix(
    specs: Sequence[str],
    backends: Sequence[Backend],
    implementations: Sequence[Implementation],
    examples: int,
    seed: int | None,
) -> Matrix:
    cells: list[tuple[Backend, Implementation, str, Spec]] = []
    for backend in backends:
        for impl in implementations:
            scenario = fixed_scenario(impl)
            for spec_name in specs:
                spec = get_spec(spec_name)
                if not _judges(spec_name, scenario):
                    continue  # said up front (_fixed_scenario_specs)
                if scenario is not None:
                    spec = on_fixed_scenario(spec, scenario)
                cells.append((backend, impl, spec_name, spec))
    results: list[SpecResult] = []
    progress: Progress | None = None
    backend = backends[0]  # the backend of the cell running: torn down again after an interrupt
    try:
        for backend, impl, spec_name, spec in cells:
            progress = Progress(f"{spec_name} / {impl.name} / {backend.name}", examples)
            r = run_spec(spec, backend, impl, examples=examples, seed=seed, on_example=progress.step)
            results.append(r)  # first: an interrupt from here on leaves this cell finished
            done, progress = progress, None
            done.finish(r.status)
    except KeyboardInterrupt as e:
        # The cells that finished are kept (the caller reports them); the one cut short is not.
        if progress is not None:
            progress.finish("interrupted")
        matrix = Matrix(results, len(cells), e)
        _say_stopped(e)
        _say_cleanup(backends)  # before teardown: should a second signal or SIGKILL cut it short
        # run_spec tore the cell down on its way out; again, in case a second Ctrl-C cut that short (idempotent).
        # A further interrupt cuts only this short, not the report of what finished.
        with contextlib.suppress(KeyboardInterrupt):
            backend.teardown()
        _say_warnings(backends)  # what that teardown could not undo (run_spec's own collection was skipped)
        return matrix
    except Exception:
        _say_cleanup(backends)  # a crash (a teardown that failed, say) may leave what the run built
        raise
    return Matrix(results, len(cells))


def _say_warnings(backends: Sequence[Backend]) -> None:
    for backend in backends:
        for warning in teardown_warnings(backend):
            print(f"netconformance: {backend.name}: {WARNING}{warning}", file=sys.stderr)


def _backend_run_ids(backends: Sequence[Backend]) -> dict[str, str]:
    """Each real backend's own run id, which names what it builds (sim-snapshot builds on netns, as `live`)."""
    ids: dict[str, str] = {}
    for backend in backends:
        run_id = getattr(backend, "run_id", None) or getattr(getattr(backend, "live", None), "run_id", None)
        if isinstance(run_id, str):
            ids[backend.name] = run_id
    return ids


def _say_cleanup(backends: Sequence[Backend]) -> None:
    """The exact command that removes what a real backend may have left (its run id is not the report's)."""
    for name, run_id in _backend_run_ids(backends).items():
        print(
            f"netconformance: {name} run {run_id}; should it have left anything: netconformance cleanup --run {run_id}",
            file=sys.stderr,
        )


def _say_stopped(e: KeyboardInterrupt) -> int:
    """Say that the command was interrupted; the exit code for it (130 for Ctrl-C, 128 + the signal otherwise)."""
    if isinstance(e, Terminated):
        print(f"netconformance: terminated by {e.name}; tearing down what this run built", file=sys.stderr)
    else:
        print("netconformance: interrupted", file=sys.stderr)
    return _exit_code(e)


def _exit_code(e: KeyboardInterrupt) -> int:
    return e.exit_code if isinstance(e, Terminated) else 130  # 130: the shell's code for Ctrl-C (128 + SIGINT)


def _report_matrix(matrix: Matrix, backends: Sequence[Backend], run_dir: Path, meta: RunMeta) -> RunReport:
    """The report of the cells that finished: all of them, or (interrupted) those before the interrupt."""
    meta = dataclasses.replace(meta, interrupted=matrix.interruption(), backend_runs=_backend_run_ids(backends))
    return write_run(run_dir, results=matrix.results, meta=meta)


def _say_interrupted(matrix: Matrix) -> None:
    stop = matrix.interruption()
    if stop is not None:
        print(f"\n{stop.describe()}: {stop.cells_planned - stop.cells_run} did not run")


def cmd_run(args: argparse.Namespace) -> int:
    backends = _backends(args.backend)
    specs = _specs(args.spec)
    implementations = _implementations(args.implementation)
    _check_pairs(backends, implementations)
    _check_plugins_present(backends, implementations)
    _check_rules(backends, implementations)
    _fixed_scenario_specs(specs, implementations, chosen=bool(args.spec))
    if not any(_judges(s, fixed_scenario(i)) for s in specs for i in implementations):
        _fail(f"--implementation {','.join(i.name for i in implementations)}: no spec can judge it (see above)")
    run_dir = _run_dir(args.report_dir)
    meta = RunMeta.begin(args.argv, seed=args.seed, examples=args.examples)
    matrix = _run_matrix(specs, backends, implementations, args.examples, args.seed)
    if matrix.interrupt is not None and not matrix.results:
        _forget_empty_run_dirs()  # nothing finished, nothing to report
        return _exit_code(matrix.interrupt)
    report = _report_matrix(matrix, backends, run_dir, meta)
    results = matrix.results
    warned: set[str] = set()
    for r in results:
        for note in r.notes:
            if note.startswith(WARNING):  # each spec's teardown may say the same: once is enough
                if note not in warned:
                    print(f"netconformance: {r.backend}: {note}", file=sys.stderr)
                warned.add(note)
            else:
                print(f"{r.spec} on {r.backend}: {note}")
        if r.failure is not None:
            print("\n" + r.failure.render(traces=True))
            print(f"\nreproduce: {report.reproducer(r)}")
        elif r.error is not None:
            print(f"\n{r.spec} on {r.backend}: could not run: {r.error}")
    print("\n" + summarize(results))
    _say_interrupted(matrix)
    failed = [r for r in results if r.failure is not None]
    errored = [r for r in results if r.failure is None and r.error is not None]
    seeds = sorted({r.seed for r in results})
    could_not = f", {len(errored)} could not run" if errored else ""
    print(
        f"\n{len(results) - len(failed) - len(errored)} passed, {len(failed)} failed{could_not}; "
        f"seed {', '.join(map(str, seeds))}; report {report.html}"
    )
    if matrix.interrupt is not None:
        return _exit_code(matrix.interrupt)
    # A broken promise is a finding (1); a spec that could not run at all (a plugin's ADD failed, say) is not (2).
    return 1 if failed else 2 if errored else 0


def cmd_mutants(args: argparse.Namespace) -> int:
    backends = _backends(args.backend)
    specs = _specs(args.spec)
    # CNI-plugin implementations need a backend that can run the plugins.
    cni = any(b.name in ("netns", "sim-snapshot") for b in backends)
    names = [REFERENCE, *(i.name for i in broken_implementations(cni_plugins=cni))]
    run_dir = _run_dir(args.report_dir)
    meta = RunMeta.begin(args.argv, seed=args.seed, examples=args.examples)
    matrix = _run_matrix(specs, backends, [get_implementation(n) for n in names], args.examples, args.seed)
    if matrix.interrupt is not None and not matrix.results:
        _forget_empty_run_dirs()  # nothing finished, nothing to report
        return _exit_code(matrix.interrupt)
    report = _report_matrix(matrix, backends, run_dir, meta)
    results = matrix.results
    by_cell = {(r.spec, r.implementation, r.backend): r for r in results}
    errors = [r for r in results if r.error]
    for r in errors:
        print(f"{r.spec} / {r.implementation} / {r.backend}: could not run: {r.error}")
    bad = 0
    # With --spec, only the specs run are asked: an implementation another spec catches still shows here.
    by = "any spec" if len(specs) == len(all_specs()) else f"the specs run ({', '.join(specs)})"
    for backend in backends:
        not_run = ", - not run" if matrix.interrupt is not None else ""
        print(f"\nbackend {backend.name}: which spec caught which implementation (x caught, E error{not_run})")
        width = max(len(n) for n in names)
        print(" " * width + "  " + "  ".join(specs))
        for name in names:
            row = [by_cell.get((s, name, backend.name)) for s in specs]
            ran = [r for r in row if r is not None]
            # x: the spec caught it; E: the run could not judge (an error is never a catch); -: interrupted before.
            cells = [
                ("-" if r is None else "x" if r.failure is not None else "E" if r.error is not None else ".").center(
                    len(s)
                )
                for s, r in zip(specs, row, strict=True)
            ]
            hit = any(r.failure is not None for r in ran)
            verdict = ""
            if name == REFERENCE and any(not r.passed for r in ran):
                verdict, bad = "  <- the reference must pass every spec", bad + 1
            elif name != REFERENCE and not hit and len(ran) == len(row):  # a spec that did not run may catch it
                verdict, bad = f"  <- NOT CAUGHT by {by}", bad + 1
            print(name.ljust(width) + "  " + "  ".join(cells) + verdict)
        for s in specs:
            column = [by_cell.get((s, name, backend.name)) for name in names[1:]]
            if all(r is not None and r.failure is None for r in column):
                print(f"spec {s} caught no broken implementation: a spec that cannot fail is a bug")
                bad += 1
    caught = sum(
        1
        for name in names[1:]
        for b in backends
        if any(r.failure is not None for r in results if r.implementation == name and r.backend == b.name)
    )
    _say_interrupted(matrix)
    print(
        f"\n{caught} of {len(names) - 1} broken implementations caught per backend x {len(backends)}; problems: {bad}"
    )
    print(f"each cell's rerun command, with its seed, is in {report.results_json}")
    print(f"report {report.html}")
    if matrix.interrupt is not None:
        return _exit_code(matrix.interrupt)
    return 1 if bad else 2 if errors else 0


def _load_case_for(path: str, impl: Implementation) -> Case:
    """A saved case; for a proxy's rules, only a case in the cluster they were made for."""
    case = load_case(path)
    fixed = fixed_scenario(impl)
    if fixed is not None and case.scenario != fixed:
        _fail(
            f"{path}: its cluster (scenario {case.scenario.name!r}) is not the one {impl.name} was made for "
            f"({fixed.name!r}); a case for these rules comes from a run or a compare with them"
        )
    return case


def cmd_replay(args: argparse.Namespace) -> int:
    spec = get_spec(_one(_specs([args.spec]), "--spec"))
    impl = _one_implementation(args.implementation)
    (backend,) = _backends(_one(name_list(args.backend, "--backend"), "--backend"))
    _check_pairs([backend], [impl])
    _check_plugins_present([backend], [impl])
    _check_rules([backend], [impl])
    _fixed_scenario_specs([spec.name], [impl], chosen=True)
    case = _load_case_for(args.case, impl)
    done = replay_sampled(spec, case, backend, impl)
    for obs in done.observations:
        print(obs.describe())
    # A sampling backend takes one load-balancing branch per connection: say how many samples were taken.
    sampled = "" if backend.exact else f" (sample {done.samples} of up to {REPLAY_SAMPLES})"
    if done.violations:
        print(f"\nviolations{sampled}:")
        for v in done.violations:
            print(f"  - {v}")
        return 1
    held = "" if backend.exact else f" in all {done.samples} samples"
    print(f"\nspec {spec.name} holds for this case on {backend.name} with {impl.name}{held}")
    return 0


def _address(option: str, value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError as e:
        _fail(f"{option} {value}: expected an IPv4 address ({e})")


def _network(option: str, value: str) -> IPv4Network:
    try:
        return IPv4Network(value, strict=False)  # host bits allowed: a node's address/prefix names its network
    except ValueError as e:
        _fail(f"{option} {value}: expected an IPv4 network, e.g. 10.244.1.0/24 ({e})")


def cmd_trace(args: argparse.Namespace) -> int:
    if not args.rules:
        _fail("--rules: give an iptables-save file")
    path = Path(args.rules)
    try:
        rules = path.read_text(encoding="utf-8")
    except OSError as e:
        _fail(f"--rules {path}: cannot read: {e.strerror or e}")
    except UnicodeDecodeError as e:
        _fail(f"--rules {path}: not iptables-save text (not UTF-8 at byte {e.start})")
    q = Query(
        rules=rules,
        rules_name=str(path),
        local_ips=tuple(_address("--local-ip", ip) for ip in args.local_ip),
        pod_cidr=_network("--pod-cidr", args.pod_cidr),
        origin=args.origin,
        src=_address("--src", args.src),
        dst=_address("--dst", args.dst),
        dport=args.dport,
        proto=args.proto,
    )
    report = trace(q)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.render())
    return 0


COMPARE_EXAMPLES = 100


def cmd_compare(args: argparse.Namespace) -> int:
    backends = _backends(args.backends, "--backends")
    exact = [b for b in backends if b.exact]
    real = [b for b in backends if not b.exact]
    if len(exact) != 1 or not real:
        _fail("--backends: name one exact backend (sim) and at least one real backend, e.g. sim,netns")
    implementations = _implementations(args.implementation)
    _check_pairs(exact, implementations, hint="predict it from the live nodes with --backends sim-snapshot,netns")
    _check_plugins_present(backends, implementations)
    _check_rules(backends, implementations)
    for impl in implementations:
        scenario = fixed_scenario(impl)
        if scenario is not None and nothing_to_compare(scenario):
            _fail(f"--implementation {impl.name}: scenario {scenario.name!r} has no pod, Service or NodePort to probe")
    predictor = exact[0]
    if predictor.name == "sim-snapshot":
        # Predict from the very namespaces the real backend built.
        predictor = SimSnapshotBackend(live=real[0])  # type: ignore[arg-type]  # a netns backend
    if args.case is not None:
        if args.examples is not None or args.seed is not None:
            _fail("--case replays one saved case: --examples and --seed do not apply")
        if len(implementations) != 1:
            _fail(f"--implementation {args.implementation}: --case replays one case with exactly one implementation")
        return _compare_case(args.case, predictor, real, implementations[0])
    args.examples = args.examples or COMPARE_EXAMPLES
    meta = RunMeta.begin(args.argv, seed=args.seed, examples=args.examples)
    run_dir = _run_dir(args.report_dir)
    comparisons: list[CompareResult] = []
    failed = 0
    for b in real:
        atexit.register(b.teardown)  # also on an interrupt; teardown is idempotent
    for backend, impl in ((b, i) for b in real for i in implementations):
        progress = Progress(f"compare {predictor.name} vs {backend.name} / {impl.name}", args.examples)
        scenario = fixed_scenario(impl)
        cases = fixed_comparison_cases(scenario) if scenario is not None else None
        r = run_compare(
            predictor, backend, impl, examples=args.examples, seed=args.seed, cases=cases, on_example=progress.step
        )
        comparisons.append(r)
        verdict = "agree" if r.passed else ("DISAGREE" if r.disagreement else "ERROR")
        progress.finish(verdict)
        rate = r.examples / r.seconds if r.seconds else 0.0
        print(
            f"{backend.name} against {predictor.name}, {impl.name}: {verdict} "
            f"({r.examples} examples in {r.seconds:.1f}s, {rate:.1f}/s, seed {r.seed})"
        )
        if r.disagreement is not None:
            failed += 1
            print("\n" + r.disagreement.render())
        elif r.error is not None:
            failed += 1
            print(f"could not compare: {r.error}")
    for backend in real:
        backend.teardown()
    report = write_run(run_dir, results=[], comparisons=comparisons, meta=meta)
    for (_, backend_name, impl_name), saved in report.disagreements.items():
        print(f"\n{backend_name} / {impl_name}: minimal case saved as {saved.path}; replay it on both backends:")
        print(f"  {saved.commands[0]}")
    print(f"report {report.html}")
    return 1 if failed else 0


def _compare_case(path: str, predictor: Backend, real: Sequence[Backend], impl: Implementation) -> int:
    """A saved case (a disagreement's minimal case) on the exact and each real backend, probe by probe."""
    case = _load_case_for(path, impl)
    failed = 0
    for backend in real:
        atexit.register(backend.teardown)  # also on an interrupt; teardown is idempotent
        samples = 1 if backend.exact else REPLAY_SAMPLES
        done, taken = replay_comparison(case, predictor, backend, impl, samples=samples)
        backend.teardown()
        print(f"{backend.name} against {predictor.name}, {impl.name}:")
        for predicted, observed in zip(done.predicted, done.observed, strict=True):
            sample = observed.outcomes[0][0].summary() if observed.outcomes else "nothing"
            mark = "agree" if agrees(predicted, observed) else "DISAGREE"
            print(f"  {mark:8}  {predicted.probe}: {backend.name} {sample}")
            for o, p in predicted.outcomes:
                print(f"            {predictor.name} p={p:.3f}: {o.summary()}")
        if done.disagreements:
            failed += 1
            print(f"\n{len(done.disagreements)} probe(s) disagree (sample {taken} of up to {samples}):")
            for d in done.disagreements:
                print("\n" + d.render(case=False))
        else:
            print(f"\nevery probe agrees in all {taken} sample(s)")
    return 1 if failed else 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    removed: list[str] = []
    problems = 0
    of_run = f" of run {args.run}" if args.run else ""
    for name in backend_names():
        module = sys.modules.get(f"backends.{name}") or _import_backend_module(name)
        clean = getattr(module, "cleanup", None) if module is not None else None
        if not callable(clean):
            continue
        try:
            found = [f"{name}: {item}" for item in clean(args.run)]
        except BackendUnavailable as e:
            absent = None
            with contextlib.suppress(BackendUnavailable):  # a bad setting of that backend must not stop the others
                absent = _nothing_there(name)
            # Install hints only where state may exist that could not be checked (a daemon stopped, say).
            print(f"{name}: nothing to check ({absent})" if absent else f"{name}: could not check: {e}")
            continue
        except OSError as e:  # one backend's failure must not stop the others
            problems += 1
            print(f"{name}: cleanup failed: {e}", file=sys.stderr)
            continue
        if not found:
            print(f"{name}: nothing left{of_run} (checked {_cleanup_checks(name)})")
        removed += found
    for line in removed:
        print(f"removed {line}")
    print(f"cleanup: {len(removed)} object(s) removed" + (f" for run {args.run}" if args.run else ""))
    return 1 if problems else 0


def _cleanup_checks(name: str) -> str:
    """What backend `name`'s cleanup looks at, said when it finds nothing."""
    if name == "netns":
        from backends.netns.records import STATE_DIR

        return f"the run records in {STATE_DIR}"
    known = {
        "docker": "containers and networks labelled by netconformance",
        "kind": "namespaces labelled by netconformance in the cluster",
    }
    return known.get(name, "what it records")


def _nothing_there(name: str) -> str | None:
    """Why backend `name` cannot have left anything on this machine (what it runs on is not here at all), or None
    when its state may exist and could not be checked for a reason the user can fix."""
    if name == "docker":
        from backends.docker.daemon import docker_host

        host = docker_host()
        if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
            return f"no Docker daemon on this machine: {host} does not exist"
    if name == "kind":
        from backends.kind.cluster import Settings

        if Settings.from_env().uses_kind and shutil.which("kind") is None:
            return "no kind binary on PATH and no NETCONFORMANCE_KUBECONFIG"
    return None


def _import_backend_module(name: str) -> object | None:
    try:
        return importlib.import_module(f"backends.{name}")
    except ImportError:
        return None


def cmd_bench(args: argparse.Namespace) -> int:
    # Checked before the benchmarks run (they take minutes): names, the output directory.
    backends = backend_list(args.backends, "--backends")
    tox_envs = name_list(args.tox, "--tox") if args.tox else []
    known_envs = _tox_envs() if tox_envs else []
    if tox_envs and not known_envs:
        _fail("--tox: no tox.ini with environments in the working directory (run from the project's root)")
    for env in tox_envs:
        if env not in known_envs:
            _fail(f"--tox {env}: no such tox environment (tox.ini has: {', '.join(known_envs)})")
    if not args.out:
        _fail("--out: give a directory")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"--out {args.out}: cannot create the directory: {e.strerror or e}")
    figures = run_bench(
        backends=backends, tox_envs=tox_envs, compare_examples=args.compare_examples, out_dir=Path(args.out)
    )
    print(render_bench(figures))
    return 0


def _tox_envs() -> list[str]:
    """The environments tox.ini (in the working directory) defines; empty when there is none to read."""
    try:
        text = Path("tox.ini").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return re.findall(r"^\[testenv:([^\]]+)\]", text, flags=re.MULTILINE)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Read live namespaces back as a Dataplane file the simulator loads."""
    from backends.netns.snapshot import snapshot_deployment, snapshot_run

    out = Path(args.out)
    if not args.out or (out.exists() and not out.is_file()) or not out.parent.is_dir():
        _fail(f"--out {args.out}: expected a file path in an existing directory")
    if args.run is not None:
        if args.scenario is not None or args.implementation != REFERENCE:
            _fail("--run reads a recorded run as it is: --scenario and --implementation do not apply")
        dataplane = snapshot_run(args.run)
    else:
        if args.scenario == "":
            _fail("--scenario: give a scenario file (or leave the option out for the classic scenario)")
        impl = _one_implementation(args.implementation)
        # A proxy's rules realise their own cluster: that is the default scenario, and the only one they render.
        fixed = fixed_scenario(impl)
        scenario = load_scenario(args.scenario) if args.scenario is not None else fixed or classic_scenario()
        if fixed is not None and scenario != fixed:
            _fail(f"--scenario {args.scenario}: {impl.name} realises the cluster its rules were made for, not this one")
        netns = _backends("netns")
        _check_plugins_present(netns, [impl])  # privileges, tools and plugins first
        _check_rules(netns, [impl])
        dataplane = snapshot_deployment(impl.render(scenario))
    try:
        out.write_text(dump_dataplane(dataplane), encoding="utf-8")
    except OSError as e:
        _fail(f"--out {out}: cannot write: {e.strerror or e}")
    print(f"snapshot of {len(dataplane.namespaces)} namespaces written to {args.out}")
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    from backends.docker.image import main as image_main  # the docker SDK only when asked for

    code: int = image_main(args.image_args)
    return code


def cmd_list(args: argparse.Namespace) -> int:
    print("specs:")
    for s in all_specs().values():
        print(f"  {s.name:<14} {s.summary}")
    print("implementations:")
    for name, impl in IMPLEMENTATIONS.items():
        print(f"  {name:<24} {impl.description}")
    print("implementations wired by real CNI plugins (netns, docker, sim-snapshot):")
    for name, impl in CNI_PLUGIN_IMPLEMENTATIONS.items():
        print(f"  {name:<24} {impl.description}")
    print(
        f"  {CONFLIST + 'PATH':<24} your own .conflist's plugins ({{podCIDR}} and {{gateway}} filled in per node),"
        " kube-proxy's rules; on netns the plugins come from NETCONFORMANCE_CNI_PATH (default /opt/cni/bin:/usr/lib/cni)"
    )
    print("a proxy's own rules (sim, netns, docker, sim-snapshot):")
    print(
        f"  {RULES + 'SCENARIO.yaml:NODE=RULES[+NODE=RULES...]'}  iptables-save files for the cluster the scenario"
        f" describes; judged by {', '.join(FIXED_PROBES)} (probes drawn within that cluster)"
    )
    print("a snapshot (sim, netns, docker):")
    print(
        f"  {DATAPLANE + 'SCENARIO.yaml:SNAPSHOT.json'}  what `snapshot --out` read back from live namespaces,"
        f" for the cluster it was taken of; judged by {', '.join(FIXED_PROBES)}"
    )
    print("backends:")
    names = backend_names()
    width = max(len(n) for n in names)
    for name in names:
        try:
            get_backend(name).preflight()
            state = "available"
        except (BackendUnavailable, KeyError) as e:
            state = f"unavailable: {e}"
        print(f"  {name:<{width}}  {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netconformance", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, examples: int) -> None:
        sp.add_argument("--backend", default="sim", help="comma-separated backends (default: sim)")
        sp.add_argument("--spec", action="append", help="comma-separated specs (repeatable; default: all)")
        sp.add_argument("--examples", type=count, default=examples, help=f"examples per spec (default: {examples})")
        sp.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random, printed)")

    run = sub.add_parser("run", help="run the specs against an implementation on backends")
    common(run, 100)
    run.add_argument("--implementation", default=REFERENCE, help="implementation under test (default: reference)")
    run.add_argument("--report-dir", default=str(DEFAULT_REPORT_DIR), help="where run reports go")
    run.set_defaults(func=cmd_run)

    mut = sub.add_parser("mutants", help="every broken implementation against every spec")
    common(mut, 30)
    mut.add_argument("--report-dir", default=str(DEFAULT_REPORT_DIR), help="where run reports go")
    mut.set_defaults(func=cmd_mutants)

    rep = sub.add_parser(
        "replay",
        help=f"replay a saved case file (a sampling backend observes it up to {REPLAY_SAMPLES} times, to the first"
        " violation)",
    )
    rep.add_argument("case", help="a case file written by a failing run")
    rep.add_argument("--spec", required=True)
    rep.add_argument("--backend", default="sim")
    rep.add_argument("--implementation", default=REFERENCE)
    rep.set_defaults(func=cmd_replay)

    tr = sub.add_parser("trace", help="walk one connection through a node's iptables-save ruleset")
    tr.add_argument("--rules", required=True, help="iptables-save file")
    tr.add_argument("--local-ip", action="append", required=True, help="an address of the node (repeatable)")
    tr.add_argument("--pod-cidr", required=True, help="the node's pod CIDR (pods sit behind bridge cni0)")
    tr.add_argument("--from", dest="origin", choices=("pod", "node", "external"), required=True)
    tr.add_argument("--src", required=True)
    tr.add_argument("--dst", required=True)
    tr.add_argument("--dport", type=int, required=True)
    tr.add_argument("--proto", choices=("tcp", "udp", "sctp"), default="tcp")
    tr.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    tr.set_defaults(func=cmd_trace)

    cmp = sub.add_parser("compare", help="differential run: a real backend's samples against the simulator")
    cmp.add_argument("--backends", default="sim,netns", help="the exact backend and real ones (default: sim,netns)")
    cmp.add_argument("--examples", type=count, default=None, help=f"how many examples (default: {COMPARE_EXAMPLES})")
    cmp.add_argument("--seed", type=int, default=None)
    cmp.add_argument("--implementation", default=REFERENCE)
    cmp.add_argument("--report-dir", default=str(DEFAULT_REPORT_DIR))
    cmp.add_argument(
        "--case", default=None, help="replay one saved case (a disagreement's minimal case) instead of generating"
    )
    cmp.set_defaults(func=cmd_compare)

    sn = sub.add_parser("snapshot", help="read a node's live state (netns) into a Dataplane file for the simulator")
    sn.add_argument("--out", required=True, help="where the Dataplane (JSON) goes")
    sn.add_argument("--run", type=_run_id, default=None, help="a recorded run of the netns backend to read")
    sn.add_argument("--implementation", default=REFERENCE, help="deploy this implementation and read it back")
    sn.add_argument(
        "--scenario",
        default=None,
        help="scenario file to deploy (default: the classic scenario, or the cluster a rules: implementation is for)",
    )
    sn.set_defaults(func=cmd_snapshot)

    # Listed for --help; main() hands `image ...` to the image command's own parser.
    img = sub.add_parser("image", help="the docker backend's node image: build, name, prune", add_help=False)
    img.add_argument("image_args", nargs=argparse.REMAINDER)
    img.set_defaults(func=cmd_image)

    cl = sub.add_parser("cleanup", help="remove what runs of this tool created (also after a crash)")
    cl.add_argument("--run", type=_run_id, default=None, help="only this run id (default: every recorded run)")
    cl.set_defaults(func=cmd_cleanup)

    register_report(sub)

    bn = sub.add_parser("bench", help="measure the simulator and the real-kernel backend; print figures")
    bn.add_argument("--backends", default="sim,netns", help="backends to measure (unavailable ones are noted)")
    bn.add_argument("--tox", default="", help="also time these tox envs, e.g. sim,netns (slow)")
    bn.add_argument("--compare-examples", type=count, default=100)
    bn.add_argument("--out", default="reports/bench", help="where the JSON figures go")
    bn.set_defaults(func=cmd_bench)

    ls = sub.add_parser("list", help="specs, implementations and backends")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    given = list(argv) if argv is not None else sys.argv[1:]
    if given[:1] == ["image"]:
        # Its own parser, its own --help (argparse's REMAINDER would refuse a leading option).
        return cmd_image(argparse.Namespace(image_args=given[1:]))
    args = build_parser().parse_args(given)
    args.argv = given
    unwind_on_termination()
    try:
        code: int = args.func(args)
        return code
    except (UsageError, ScenarioError, RulesetError, TraceError, SimError, SnapshotError) as e:
        kind = "error" if not isinstance(e, SimError) else "not modelled by the simulator"
        print(f"netconformance: {kind}: {e}", file=sys.stderr)
        return 2
    except BackendUnavailable as e:
        print(f"netconformance: a backend cannot run here: {e}", file=sys.stderr)
        return 2
    except BackendError as e:  # replay and snapshot deploy once, outside run_spec's per-cell errors
        print(f"netconformance: the backend could not build the dataplane: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # also Terminated (SIGTERM, SIGHUP)
        code = _say_stopped(e)
        _forget_empty_run_dirs()
        return code


def _hypothesis_home() -> Path:
    """Where Hypothesis keeps its caches for the command: the user's cache directory, not `.hypothesis/` in
    whatever directory the command runs in (HYPOTHESIS_STORAGE_DIRECTORY, if set, still wins)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path(cache) / "netconformance" / "hypothesis")


def entry() -> int:
    """The `netconformance` command (main() is also called in-process, by tests, and leaves Hypothesis alone)."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_hypothesis_home())
    return main()


if __name__ == "__main__":
    sys.exit(entry())
