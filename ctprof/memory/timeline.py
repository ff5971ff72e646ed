"""A line chart (SVG) of the live heap over time, marked at the peak."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from ..files import write_atomic
# not xml.sax.saxutils: it imports urllib and http.client, 0.2 s per run
from ..render.svg import xml_escape as escape
from ..render.top import human

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 900, 360, 80, 20, 50, 40


def timeline_svg(points: Sequence[Tuple[float, float]], peak: float, peak_time: float, title: str) -> str:
    # The line starts at the program's start with nothing live and passes
    # through the peak: the periodic points alone can miss both.
    pts = sorted([(float(t), float(v)) for t, v in points] + [(0.0, 0.0), (float(peak_time), float(peak))])
    t_max = max(max(t for t, _ in pts), peak_time, 1e-3)
    v_max = max(max(v for _, v in pts), peak, 1.0)
    w, h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    x = lambda t: PAD_L + w * t / t_max
    y = lambda v: PAD_T + h * (1 - v / v_max)
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    parts: List[str] = [
        '<?xml version="1.0" standalone="no"?>',
        f'<svg version="1.1" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-family="Verdana" font-size="16">{escape(title)}</text>',
        f'<text x="{WIDTH / 2}" y="40" text-anchor="middle" font-family="Verdana" font-size="11" fill="#555">'
        f'live heap over run time; peak {escape(human(int(peak), "bytes"))} at {peak_time:.3f} s</text>',
        f'<line x1="{PAD_L}" y1="{PAD_T + h}" x2="{PAD_L + w}" y2="{PAD_T + h}" stroke="#000"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + h}" stroke="#000"/>',
    ]
    for i in range(5):
        v = v_max * i / 4
        parts.append(f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-family="Verdana" '
                     f'font-size="10">{escape(human(int(v), "bytes"))}</text>')
        t = t_max * i / 4
        parts.append(f'<text x="{x(t):.1f}" y="{PAD_T + h + 16}" text-anchor="middle" font-family="Verdana" '
                     f'font-size="10">{t:.2f} s</text>')
    parts.append(f'<polyline fill="none" stroke="#2a7ab0" stroke-width="1.5" points="{line}"/>')
    parts.append(f'<circle cx="{x(peak_time):.1f}" cy="{y(peak):.1f}" r="4" fill="#d62728"><title>peak '
                 f'{escape(human(int(peak), "bytes"))} at {peak_time:.3f} s</title></circle>')
    parts.append('</svg>')
    return "\n".join(parts) + "\n"


def write_timeline(profile, path: str) -> None:
    """Write the timeline of the first (or only) process of a memory profile."""
    per_pid = profile.metadata.get("memory") or {}
    if not per_pid:
        from ..errors import UsageError
        raise UsageError("--timeline needs a memory profile (run with --mem)")
    pid, data = next(iter(sorted(per_pid.items())))
    command = " ".join(profile.metadata.get("command") or [])
    svg = timeline_svg(data.get("timeline") or [], data.get("totals", {}).get("peak_bytes", 0),
                       data.get("peak_time", 0.0), f"Live heap: {command} (pid {pid})")
    write_atomic(path, lambda out: out.write(svg.encode("utf-8")))
