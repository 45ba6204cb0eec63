"""Server-side SVG charts: sparklines, size-over-time with entries and exits, histograms.

Drawn here rather than by a JavaScript library because every chart in the product is small and
static (a page is a snapshot), they must print (the weekly review), and the pages must load
fast with no script and no CDN. The SVG is built from numbers only; every text is escaped.
"""

from __future__ import annotations

from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import mark_safe

INK, MUTED, ENTER, EXIT, GRID = "#2b6cb0", "#a0aec0", "#38a169", "#e53e3e", "#e2e8f0"


def _scale(values, low, high, size):
    span = (high - low) or 1
    return [size - (v - low) / span * size for v in values]


def sparkline(values: list[float | None], *, width: int = 120, height: int = 28, label: str = "") -> str:
    points = [v for v in values if v is not None]
    if len(points) < 2:
        return mark_safe(
            f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="{escape(label or "no data yet")}"></svg>'
        )
    low, high = min(points), max(points)
    step = width / (len(values) - 1)
    # the line starts at the first known size: no flat week before an audience existed
    known = [i for i, v in enumerate(values) if v is not None]
    ys = _scale([values[i] for i in known], low, high, height - 4) if high > low else [(height - 4) / 2] * len(known)
    path = " ".join(f"{'M' if n == 0 else 'L'}{i * step:.1f},{y + 2:.1f}" for n, (i, y) in enumerate(zip(known, ys)))
    last_x, last_y = known[-1] * step, ys[-1] + 2
    color = EXIT if points[-1] == 0 else INK
    # an audience younger than the window: say so beside its short line
    new = (
        f'<text x="{known[0] * step - 5:.1f}" y="{height / 2 + 4:.1f}" text-anchor="end" font-size="11" fill="{MUTED}">new</text>'
        if known[0] * step > width * 0.6
        else ""
    )
    return mark_safe(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}"><path d="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="2.2" fill="{color}"/>{new}</svg>'
    )


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def whole_ticks(high: float, *, most: int = 4) -> list[int]:
    """Whole-number axis values from 0 to at least `high`, at most `most` steps of 1, 2 or 5
    times a power of ten: an audience has 3 members, never 1.5."""
    high = max(1, int(-(-high // 1)))  # ceiling, and at least 1
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if step * most >= high:
                top = -(-high // step) * step
                return list(range(0, top + 1, step))
        magnitude *= 10


def size_chart(
    points: list[tuple[datetime, int | None, int, int]],
    *,
    width: int = 1100,
    height: int = 260,
    label_format: str = "%b %d",
    title: str = "",
    lows: dict[int, int] | None = None,
) -> str:
    """Size as a line over whole-number gridlines; entries and exits as bars side by side,
    both rising from their own zero line under it (an exit is a count, not a negative size);
    the legend above."""
    if not any(p[1] is not None for p in points):
        return mark_safe('<p class="muted">No evaluations yet: the chart starts with the first one.</p>')
    # top: room for the legend; bottom: bars (50), a gap and the time labels
    left, right, top, bars_h = 48, 10, 26, 50
    line_h = height - top - bars_h - 52
    plot_w = width - left - right
    sizes = [p[1] for p in points]
    known = [s for s in sizes if s is not None]
    gridlines = whole_ticks(max(known))
    high = gridlines[-1]
    step = plot_w / max(len(points) - 1, 1)
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
    ]
    for value in gridlines:
        y = top + line_h - value / high * line_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{_fmt(value)}</text>')
    path, started = [], False
    for i, size in enumerate(sizes):
        if size is None:
            continue
        x, y = left + i * step, top + line_h - size / high * line_h
        path.append(f"{'L' if started else 'M'}{x:.1f},{y:.1f}")
        started = True
    parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{INK}" stroke-width="2"/>')
    # a bucket whose samples dipped under its largest size (selectors.size_lows): a line down to
    # the lowest, so a drop to 0 and back inside one bucket still shows
    for i, low in sorted((lows or {}).items()):
        if not 0 <= i < len(points) or points[i][1] is None:
            continue
        dip_x = left + i * step
        y_peak, y_low = top + line_h - points[i][1] / high * line_h, top + line_h - low / high * line_h
        color = EXIT if low == 0 else INK
        parts.append(
            f'<line class="dip" x1="{dip_x:.1f}" x2="{dip_x:.1f}" y1="{y_peak:.1f}" y2="{y_low:.1f}" stroke="{color}" stroke-width="1.5"/>'
        )
        parts.append(
            f'<circle class="dip" cx="{dip_x:.1f}" cy="{y_low:.1f}" r="2.5" fill="{color}"><title>down to {low:,}</title></circle>'
        )
    # the latest size as a dot: visible even when there is a single evaluation
    parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{INK}"><title>{known[-1]:,}</title></circle>')
    flow_high = whole_ticks(max(max(p[2], p[3]) for p in points), most=1)[-1]
    base = top + line_h + 28 + bars_h  # the bars' zero line: every bar rises from it
    bar_w = max(1.0, min(12.0, step * 0.35))
    for i, (_, _, entered, exited) in enumerate(points):
        x = left + i * step
        if entered:
            h = max(1.0, entered / flow_high * bars_h)
            parts.append(
                f'<rect x="{x - bar_w:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{ENTER}"><title>+{entered:,} entered</title></rect>'
            )
        if exited:
            h = max(1.0, exited / flow_high * bars_h)
            parts.append(
                f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{EXIT}"><title>{exited:,} exited</title></rect>'
            )
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{base:.1f}" y2="{base:.1f}" stroke="{GRID}"/>')
    ticks = max(1, len(points) // 6)
    for i in range(0, len(points), ticks):
        x = left + i * step
        anchor = "end" if x > width - right - 30 else "middle"  # the last label stays inside the chart
        parts.append(
            f'<text x="{x:.1f}" y="{height - 4}" text-anchor="{anchor}" class="axis">{escape(points[i][0].strftime(label_format))}</text>'
        )
    parts.append(
        f'<text x="{width - right}" y="14" text-anchor="end" class="axis"><tspan fill="{INK}">― size</tspan>  '
        f'<tspan fill="{ENTER}">■ entered</tspan>  <tspan fill="{EXIT}">■ exited</tspan>'
        f'<tspan fill="{MUTED}">  (bars: full height {_fmt(flow_high)})</tspan></text></svg>'
    )
    return mark_safe("".join(parts))


def bars(items: list[tuple[str, float]], *, width: int = 520, row: int = 24, color: str = INK, unit: str = "") -> str:
    """Horizontal bars with labels: histograms, overlaps."""
    if not items:
        return mark_safe('<p class="muted">Nothing yet.</p>')
    high = max(v for _, v in items) or 1
    label_w, value_w = 210, 60
    plot = width - label_w - value_w
    height = row * len(items) + 4
    parts = [f'<svg class="chart bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        w = value / high * plot
        short = label if len(label) <= 30 else label[:29] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + row * 0.65:.1f}" text-anchor="end" class="axis"><title>{escape(label)}</title>{escape(short)}</text>'
        )
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{color}" rx="2"/>')
        parts.append(
            f'<text x="{label_w + w + 4:.1f}" y="{y + row * 0.65:.1f}" class="axis">{escape(_fmt(value))}{escape(unit)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def lag_chart(
    points: list[tuple[datetime, float | None, float | None]], *, width: int = 600, height: int = 200, target: float | None = None
) -> str:
    """p50 and p95 suppression lag over time, with the target as a dashed line."""
    known = [v for _, a, b in points for v in (a, b) if v is not None]
    if not known:
        return mark_safe('<p class="muted">No suppression has been acknowledged in this period.</p>')
    left, right, top, plot_h = 48, 10, 10, height - 34
    high = max(known + ([target] if target else [])) * 1.1 or 1
    step = (width - left - right) / max(len(points) - 1, 1)
    parts = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="suppression lag">'
    ]
    for fraction in (0, 0.5, 1):
        y = top + plot_h - fraction * plot_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{_fmt(high * fraction)} s</text>')
    if target:
        y = top + plot_h - target / high * plot_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{EXIT}" stroke-dasharray="4 3"/>')
    for index, color in ((1, MUTED), (2, INK)):
        path = [
            f"{'M' if not i else 'L'}{left + i * step:.1f},{top + plot_h - p[index] / high * plot_h:.1f}"
            for i, p in enumerate(points)
            if p[index] is not None
        ]
        if path:
            path[0] = "M" + path[0][1:]
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2"/>')
        # a point with no known neighbour makes no line: draw it as a dot (a single hour of data)
        for i, p in enumerate(points):
            alone = p[index] is not None and all(not 0 <= j < len(points) or points[j][index] is None for j in (i - 1, i + 1))
            if alone:
                x, y = left + i * step, top + plot_h - p[index] / high * plot_h
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"><title>{p[index]:,.1f} s</title></circle>'
                )
    ticks = max(1, len(points) // 6)
    for i in range(0, len(points), ticks):
        x = left + i * step
        anchor = "end" if x > width - right - 20 else "middle"
        parts.append(
            f'<text x="{x:.1f}" y="{height - 4}" text-anchor="{anchor}" class="axis">{escape(points[i][0].strftime("%H:%M"))}</text>'
        )
    parts.append(
        f'<text x="{width - right}" y="{top + 10}" text-anchor="end" class="axis"><tspan fill="{MUTED}">■ p50</tspan>  <tspan fill="{INK}">■ p95</tspan></text></svg>'
    )
    return mark_safe("".join(parts))
