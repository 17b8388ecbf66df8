"""index.html: one static page for people, rendered from results.json's content.

No server, no scripts, no external assets: inline CSS and inline SVG, so the
file can be archived by CI and opened anywhere. Every status is spelled out
in text as well as coloured.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from conformance.reporting.document import Json
from conformance.reporting.meta import Interruption
from conformance.reporting.svg import OBSERVED, PREDICTED, distribution_svg

CSS = f"""
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 16px 24px 48px; color: #1b1b1b; background: #fff; }}
h1 {{ font-size: 22px; margin: 8px 0; }} h2 {{ font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }}
h3 {{ font-size: 15px; margin: 0 0 8px; }} h4 {{ font-size: 13px; margin: 12px 0 4px; color: #444; }}
code, pre {{ font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }}
pre {{ background: #f6f6f6; border: 1px solid #e2e2e2; padding: 8px; overflow-x: auto; white-space: pre-wrap;
      word-break: break-word; margin: 4px 0; }}
dl.meta {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 8px 0; }}
dl.meta dt {{ color: #555; }} dl.meta dd {{ margin: 0; }}
.totals span {{ margin-right: 12px; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
thead th {{ background: #f0f0f0; }}
table.matrix td.cell {{ text-align: center; min-width: 88px; font-weight: 600; }}
td.cell a {{ color: inherit; }}
td.cell .detail, th .detail {{ display: block; font-weight: normal; font-size: 11px; opacity: .8; }}
.pass {{ background: #d9f2dd; color: #11501c; }}
.FAIL {{ background: #f9d0cc; color: #7a0d05; }}
.ERROR {{ background: #fde8b6; color: #6b4500; }}
.interrupted {{ background: #fff3cd; color: #664d03; padding: 4px 8px; font-weight: bold; }}
.missing {{ background: #fafafa; color: #999; }}
article {{ border: 1px solid #ddd; border-left: 6px solid #c33; padding: 10px 14px; margin: 14px 0; }}
article.error {{ border-left-color: #d9a400; }}
article.plot {{ border-left-color: {PREDICTED}; }}
.side {{ display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }}
.side > div {{ min-width: 0; }}
.reproduce {{ background: #eef3fb; border: 1px solid #c9d7ef; padding: 6px 8px; margin: 8px 0; }}
.reproduce code {{ user-select: all; }}
ul.outcomes {{ margin: 4px 0; padding-left: 18px; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #222; }}
svg text.unexpected {{ fill: #b00; font-weight: 600; }}
.legend-pred {{ color: {PREDICTED}; }} .legend-obs {{ color: {OBSERVED}; }}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def cell_anchor(spec: str, backend: str, implementation: str) -> str:
    return f"f-{spec}-{backend}-{implementation}"


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _header(doc: Json) -> str:
    run = doc["run"]
    statuses = [r["status"] for r in doc["results"]]
    disagreements = sum(1 for c in doc["comparisons"] if c["status"] == "FAIL")
    versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v is not None)
    rows = [
        ("started", run["started"]),
        ("duration", f"{run['seconds']:.1f} s"),
        ("command", " ".join(run["command"])),
        ("seeds", ", ".join(str(s) for s in run["seeds"]) or "none"),
        ("versions", versions),
    ]
    n_caught = sum(1 for r in doc["results"] if r.get("broken") and r["status"] == "FAIL")
    # A broken implementation's FAIL is a spec doing its job; say so beside the count.
    caught = f"<span>({n_caught} of them broken implementations caught, as intended)</span>" if n_caught else ""
    totals = (
        f'<p class="totals"><span class="pass">&nbsp;{statuses.count("pass")} pass&nbsp;</span>'
        f'<span class="FAIL">&nbsp;{statuses.count("FAIL")} FAIL&nbsp;</span>{caught}'
        f'<span class="ERROR">&nbsp;{statuses.count("ERROR")} ERROR&nbsp;</span>'
        f"<span>{disagreements} backend disagreement(s)</span></p>"
    )
    backend_runs = run.get("backend_runs") or {}
    if backend_runs:  # what `netconformance cleanup --run ID` takes, should a backend have left something
        rows.append(("backend runs", ", ".join(f"{name} {run_id}" for name, run_id in backend_runs.items())))
    meta = "".join(f"<dt>{_e(k)}</dt><dd><code>{_e(v)}</code></dd>" for k, v in rows)
    stop = run.get("interrupted")
    # A partial run: cells it did not reach are missing from the matrix, not passed.
    interrupted = (
        f'<p class="interrupted">{_e(Interruption(**stop).describe())}: the other cells did not run</p>' if stop else ""
    )
    return (
        f"<header><h1>netconformance run <code>{_e(run['id'])}</code></h1>{interrupted}{totals}"
        f'<dl class="meta">{meta}</dl></header>'
    )


def _matrix(results: Sequence[Json]) -> str:
    if not results:
        return '<section id="matrix"><h2>Results</h2><p>no spec was run (comparisons only).</p></section>'
    specs = _ordered([r["spec"] for r in results])
    backends = _ordered([r["backend"] for r in results])
    impls = _ordered([r["implementation"] for r in results])
    by_key = {(r["spec"], r["backend"], r["implementation"]): r for r in results}
    head1 = "".join(f'<th colspan="{len(specs)}">backend {_e(b)}</th>' for b in backends)
    head2 = "".join(f"<th>{_e(s)}</th>" for _ in backends for s in specs)
    rows = []
    for impl in impls:
        cells = []
        for b in backends:
            for s in specs:
                data = f'data-spec="{_e(s)}" data-backend="{_e(b)}" data-implementation="{_e(impl)}"'
                r = by_key.get((s, b, impl))
                if r is None:
                    cells.append(f'<td class="cell missing" {data}><span class="status">not run</span></td>')
                    continue
                status = r["status"]
                text = f'<span class="status">{_e(status)}</span>'
                if status != "pass":
                    text = f'<a href="#{_e(cell_anchor(s, b, impl))}">{text}</a>'
                detail = f'<span class="detail">{r["examples"]} ex · {r["seconds"]:.1f} s</span>'
                title = f"{s} / {b} / {impl}: {status}, seed {r['seed']}"
                cells.append(f'<td class="cell {_e(status)}" {data} title="{_e(title)}">{text}{detail}</td>')
        broken = any(r.get("broken") for r in results if r["implementation"] == impl)
        note = '<span class="detail">broken on purpose: FAIL = caught</span>' if broken else ""
        rows.append(f'<tr><th scope="row">{_e(impl)}{note}</th>{"".join(cells)}</tr>')
    return (
        '<section id="matrix"><h2>Results: implementation × backend × spec</h2>'
        '<table class="matrix"><thead>'
        f'<tr><th rowspan="2">implementation</th>{head1}</tr><tr>{head2}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _outcomes(obs: Json) -> str:
    items = []
    for o in obs["outcomes"]:
        reason = f" <em>({_e(o['reason'])})</em>" if o["reason"] and o["verdict"] != "delivered" else ""
        items.append(f"<li><code>p={o['p']:.3f}</code> {_e(o['key'])}{reason}</li>")
    return f'<ul class="outcomes">{"".join(items)}</ul>'


def _traces(obs: Json, *, first_open: bool = True) -> str:
    out = []
    for i, o in enumerate(o for o in obs["outcomes"] if o.get("trace")):
        opened = " open" if first_open and i == 0 else ""
        out.append(
            f"<details{opened}><summary>trace of p={o['p']:.3f}: {_e(o['key'])}</summary>"
            f"<pre>{_e(chr(10).join(o['trace']))}</pre></details>"
        )
    return "".join(out) or "<p>no trace recorded</p>"


def _case_link(case_file: str | None) -> str:
    if not case_file:
        return ""
    rel = f"cases/{Path(case_file).name}"
    return f' <a href="{_e(rel)}">case file</a>'


def _reproduce(commands: Sequence[str], case_file: str | None) -> str:
    lines = "<br>".join(f"<code>{_e(c)}</code>" for c in commands)
    return f'<div class="reproduce"><strong>Reproduce:</strong>{_case_link(case_file)}<br>{lines}</div>'


def _failure(r: Json) -> str:
    f = r["failure"]
    violations = "".join(f"<li>{_e(v)}</li>" for v in f["violations"])
    named = [o for o in f["observations"] if any(o["text"] in v for v in f["violations"])] or f["observations"]
    observations = "".join(f"<li><code>{_e(o['text'])}</code>{_outcomes(o)}</li>" for o in f["observations"])
    traced = next((o for o in named if any(x.get("trace") for x in o["outcomes"])), None)
    trace = f"<h4>trace of <code>{_e(traced['text'])}</code></h4>{_traces(traced)}" if traced is not None else ""
    return (
        f'<article class="failure" id="{_e(cell_anchor(r["spec"], r["backend"], r["implementation"]))}">'
        f"<h3>FAIL: {_e(r['spec'])} / {_e(r['backend'])} / {_e(r['implementation'])}</h3>"
        f"<p>{r['examples']} example(s), seed {r['seed']}; minimal case <code>{_e(f['case_id'])}</code></p>"
        f"{_reproduce([f['reproduce']] if f['reproduce'] else [], f['case_file'])}"
        f"<h4>violations</h4><ul>{violations}</ul>"
        f"<h4>observations</h4><ul>{observations}</ul>{trace}"
        f"<h4>minimal scenario</h4><pre>{_e(f['scenario'])}</pre></article>"
    )


def _error(r: Json) -> str:
    return (
        f'<article class="error" id="{_e(cell_anchor(r["spec"], r["backend"], r["implementation"]))}">'
        f"<h3>ERROR: {_e(r['spec'])} / {_e(r['backend'])} / {_e(r['implementation'])}</h3>"
        f"<p>the run could not judge the spec:</p><pre>{_e(r['error'])}</pre>"
        f'<div class="reproduce"><strong>Re-run:</strong><br><code>{_e(r["rerun"])}</code></div></article>'
    )


def _failures(results: Sequence[Json]) -> str:
    bad = [r for r in results if r["status"] != "pass"]
    if not bad:
        return '<section id="failures"><h2>Failures</h2><p>none: every spec held.</p></section>'
    body = "".join(_failure(r) if r["failure"] is not None else _error(r) for r in bad)
    return f'<section id="failures"><h2>Failures and their minimal scenarios</h2>{body}</section>'


def _disagreement(c: Json) -> str:
    d = c["disagreement"]
    return (
        f'<article class="disagreement"><h3>{_e(d["backend"])} disagrees with {_e(d["predictor"])}: '
        f"<code>{_e(d['text'])}</code></h3>"
        f"<p>implementation {_e(c['implementation'])}, {c['examples']} examples, seed {c['seed']}; "
        f"minimal case <code>{_e(d['case_id'])}</code></p>"
        '<div class="side">'
        f'<div class="predicted"><h4>{_e(d["predictor"])} predicted (every possible outcome)</h4>'
        f"{_outcomes(d['predicted'])}{_traces(d['predicted'])}</div>"
        f'<div class="observed"><h4>{_e(d["backend"])} observed</h4>{_outcomes(d["observed"])}'
        f"{_traces(d['observed'])}</div></div>"
        f"{_reproduce(d['reproduce'], d['case_file'])}"
        f"<details><summary>minimal scenario</summary><pre>{_e(d['scenario'])}</pre></details></article>"
    )


def _comparisons(comparisons: Sequence[Json]) -> str:
    if not comparisons:
        return ""
    rows = "".join(
        f"<tr><td>{_e(c['implementation'])}</td><td>{_e(' vs '.join(c['backends']))}</td>"
        f'<td class="cell {_e(c["status"])}"><span class="status">{_e(c["status"])}</span></td>'
        f"<td>{c['examples']}</td><td>{_e(c['error'] or '')}</td></tr>"
        for c in comparisons
    )
    table = (
        "<table><thead><tr><th>implementation</th><th>backends</th><th>result</th><th>examples</th><th>error</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )
    found = "".join(_disagreement(c) for c in comparisons if c["disagreement"] is not None)
    return f'<section id="disagreements"><h2>Backend comparisons</h2>{table}{found}</section>'


def _distributions(comparisons: Sequence[Json]) -> str:
    plots = []
    for c in comparisons:
        for d in c["distributions"]:
            title = f"{d['text']}: {c['backends'][0]} predicted vs {d['backend']} observed"
            rows = "".join(
                f"<tr><td>{_e(k)}</td><td>{d['predicted'].get(k, 0.0):.3f}</td><td>{d['observed'].get(k, 0)}</td></tr>"
                for k in sorted(set(d["predicted"]) | set(d["observed"]))
            )
            plots.append(
                f'<article class="plot"><h3>{_e(title)}</h3>'
                f"{distribution_svg(d['predicted'], d['observed'], title=title)}"
                "<details><summary>numbers</summary><table><thead><tr><th>outcome</th><th>predicted p</th>"
                f"<th>observed count</th></tr></thead><tbody>{rows}</tbody></table></details></article>"
            )
    if not plots:
        return ""
    return (
        '<section id="distributions"><h2>Load balancing: predicted distribution vs observed counts</h2>'
        f"{''.join(plots)}</section>"
    )


def render_html(doc: Json) -> str:
    title = f"netconformance run {doc['run']['id']}"
    body = "".join(
        [
            _header(doc),
            _matrix(doc["results"]),
            _comparisons(doc["comparisons"]),
            _failures(doc["results"]),
            _distributions(doc["comparisons"]),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )
