"""A small inline SVG bar plot: predicted outcome shares against counts observed on a real backend."""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape

PREDICTED = "#4c78a8"
OBSERVED = "#f58518"
LABEL_W, PLOT_W, VALUE_W = 210, 300, 130
ROW_H, BAR_H, TOP = 36, 12, 30


def _short(label: str, limit: int = 30) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def distribution_svg(predicted: Mapping[str, float], observed: Mapping[str, int], *, title: str) -> str:
    """Per outcome, the predicted share (with the +-2 sigma band of a binomial over the observed total)
    and the observed share; an outcome nobody predicted is drawn too, which is the point."""
    labels = sorted(set(predicted) | set(observed), key=lambda k: (-predicted.get(k, 0.0), k))
    total = sum(observed.values())

    def band(p: float) -> float:
        return 2 * math.sqrt(p * (1 - p) / total) if total else 0.0

    shares = {k: (observed.get(k, 0) / total if total else 0.0) for k in labels}
    top = max([0.05, *shares.values(), *(min(1.0, p + band(p)) for p in predicted.values())])
    top = min(1.0, math.ceil(top * 10) / 10)  # a round axis end: 10% steps

    def x(share: float) -> float:
        return LABEL_W + PLOT_W * min(share, top) / top

    width = LABEL_W + PLOT_W + VALUE_W
    height = TOP + ROW_H * len(labels) + 18
    parts = [
        f'<svg class="distribution" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{LABEL_W}" y="6" width="10" height="10" fill="{PREDICTED}"/>',
        f'<text x="{LABEL_W + 14}" y="15" class="legend">predicted (±2σ for n={total})</text>',
        f'<rect x="{LABEL_W + 170}" y="6" width="10" height="10" fill="{OBSERVED}"/>',
        f'<text x="{LABEL_W + 184}" y="15" class="legend">observed</text>',
    ]
    axis_y = TOP + ROW_H * len(labels)
    # The grid first, so the bars are drawn over it.
    for share in (0.0, top / 2, top):
        gx = x(share)
        parts.append(f'<line x1="{gx:.1f}" y1="{TOP - 4}" x2="{gx:.1f}" y2="{axis_y}" stroke="#bbb"/>')
        parts.append(f'<text x="{gx:.1f}" y="{axis_y + 12}" text-anchor="middle" class="value">{share:.0%}</text>')
    for i, k in enumerate(labels):
        y = TOP + i * ROW_H
        p = predicted.get(k, 0.0)
        count = observed.get(k, 0)
        unexpected = p == 0 and count > 0
        parts.append(
            f'<text x="{LABEL_W - 6}" y="{y + BAR_H + 4}" text-anchor="end" class="label{" unexpected" if unexpected else ""}">'
            f"<title>{escape(k)}</title>{escape(_short(k))}</text>"
        )
        parts.append(
            f'<rect class="bar predicted" x="{LABEL_W}" y="{y}" width="{x(p) - LABEL_W:.1f}" height="{BAR_H}" '
            f'fill="{PREDICTED}"><title>{escape(k)}: predicted p={p:.3f}</title></rect>'
        )
        if total and 0 < p < 1:
            lo, hi = x(max(0.0, p - band(p))), x(min(1.0, p + band(p)))
            mid = y + BAR_H / 2
            parts.append(
                f'<path d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {mid - 4}v8M{hi:.1f} {mid - 4}v8" stroke="#222"/>'
            )
        parts.append(
            f'<rect class="bar observed" x="{LABEL_W}" y="{y + BAR_H + 2}" width="{x(shares[k]) - LABEL_W:.1f}" '
            f'height="{BAR_H}" fill="{OBSERVED}"><title>{escape(k)}: observed {count} of {total}</title></rect>'
        )
        parts.append(
            f'<text x="{LABEL_W + PLOT_W + 8}" y="{y + BAR_H + 4}" class="value">p={p:.3f} · {count}/{total}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
