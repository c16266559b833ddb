"""Gathers tests/replication/run.sh's output folder into the tables of docs/replication.md.

    python3 tests/replication/table.py OUT_DIR [SCATTER.svg]

Window runs: each `dpo-<lo>-<hi>-seed<s>/report.md` (the demo's report: IS/TS with their standard
errors over 48 pictures, and the pixel checks). Over the three seeds this prints the mean and the
standard error of the seed means. Frontier: `frontier/eval/eval.csv` (a row per checkpoint).
"""

import csv
import math
import re
import sys
from collections import defaultdict
from pathlib import Path


def se(values):
    if len(values) < 2:
        return float("nan")
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def mean(values):
    return sum(values) / len(values)


def report_rows(path):
    """variant -> dict(is, ts, background, subject, both) from a demo report's score table."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("variant", "---"):
            continue
        try:
            is_ = float(cells[1].split("±")[0])
            ts = float(cells[2].split("±")[0])
            rows[cells[0]] = dict(is_=is_, ts=ts, background=float(cells[3]),
                                  subject=float(cells[4]), both=float(cells[5]))
        except ValueError:
            continue
    return rows


def scatter_svg(points, frontier, path):
    """IS (y) against TS (x): window means with seed standard errors, the frontier as a line."""
    xs = [p[1] for p in points] + [f[1] for f in frontier]
    ys = [p[2] for p in points] + [f[2] for f in frontier]
    x0, x1 = min(xs) - 0.03, max(xs) + 0.03
    y0, y1 = min(ys) - 0.04, max(ys) + 0.04
    w, h, m = 640, 440, 60
    X = lambda v: m + (v - x0) / (x1 - x0) * (w - 2 * m)
    Y = lambda v: h - m - (v - y0) / (y1 - y0) * (h - 2 * m)
    colours = {"base": "#888", "DreamBooth": "#333", "0–30°": "#1f77b4", "20–70°": "#2ca02c",
               "60–90°": "#d62728"}
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
         f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
         f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
         f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
         f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">TS (prompt)</text>',
         f'<text x="18" y="{h / 2}" transform="rotate(-90 18 {h / 2})" text-anchor="middle">IS (likeness)</text>']
    for i in range(5):
        tx, ty = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        o.append(f'<text x="{X(tx):.1f}" y="{h - m + 16}" text-anchor="middle">{tx:.2f}</text>')
        o.append(f'<text x="{m - 6}" y="{Y(ty) + 4:.1f}" text-anchor="end">{ty:.2f}</text>')
    if frontier:
        pts = " ".join(f"{X(t):.1f},{Y(i):.1f}" for _, t, i in frontier)
        o.append(f'<polyline points="{pts}" fill="none" stroke="#999" stroke-dasharray="4 3"/>')
        for steps, t, i in frontier:
            o.append(f'<circle cx="{X(t):.1f}" cy="{Y(i):.1f}" r="2.5" fill="#999"/>')
            o.append(f'<text x="{X(t) + 4:.1f}" y="{Y(i) - 4:.1f}" fill="#999">{steps}</text>')
    for label, t, i, st, si in points:
        c = colours.get(label.split(" ")[0], "#000")
        o.append(f'<line x1="{X(t - st):.1f}" y1="{Y(i):.1f}" x2="{X(t + st):.1f}" y2="{Y(i):.1f}" stroke="{c}"/>')
        o.append(f'<line x1="{X(t):.1f}" y1="{Y(i - si):.1f}" x2="{X(t):.1f}" y2="{Y(i + si):.1f}" stroke="{c}"/>')
        o.append(f'<circle cx="{X(t):.1f}" cy="{Y(i):.1f}" r="4" fill="{c}"/>')
        o.append(f'<text x="{X(t) + 6:.1f}" y="{Y(i) + 14:.1f}" fill="{c}">{label}</text>')
    o.append("</svg>")
    Path(path).write_text("\n".join(o))


def main(out, svg=None):
    out = Path(out)
    runs = defaultdict(list)  # (window, variant) -> [row per seed]
    for d in sorted(out.glob("dpo-*-seed*")):
        m = re.match(r"dpo-(\d+)-(\d+)-seed(\d+)", d.name)
        if not m or not (d / "report.md").is_file():
            continue
        window = f"{m[1]}–{m[2]}°"
        for variant, row in report_rows(d / "report.md").items():
            runs[(window, variant)].append(row)
    print("| window | variant | seeds | IS | TS | background | subject |")
    print("|---|---|---|---|---|---|---|")
    points = []
    for (window, variant), rows in sorted(runs.items()):
        if variant == "dpo-stage-2" or (variant in ("base", "dreambooth-step-300") and window == "20–70°"):
            label = {"base": "base", "dreambooth-step-300": "DreamBooth"}.get(variant, f"{window} DPO 2")
            points.append((label, mean([r["ts"] for r in rows]), mean([r["is_"] for r in rows]),
                           se([r["ts"] for r in rows]) if len(rows) > 1 else 0.0,
                           se([r["is_"] for r in rows]) if len(rows) > 1 else 0.0))
        f = lambda k: f"{mean([r[k] for r in rows]):.4f} ± {se([r[k] for r in rows]):.4f}"
        g = lambda k: f"{mean([r[k] for r in rows]):.3f}"
        print(f"| {window} | {variant} | {len(rows)} | {f('is_')} | {f('ts')} | {g('background')} "
              f"| {g('subject')} |")
    print()
    print("| DreamBooth steps | IS | TS | pictures |")
    print("|---|---|---|---|")
    path = out / "frontier" / "eval" / "eval.csv"
    frontier = []
    if path.is_file():
        with open(path) as fh:
            rows = [r for r in csv.DictReader(fh) if r["kind"] == "dreambooth"]
        for r in sorted(rows, key=lambda r: int(r["position"])):
            frontier.append((int(r["position"]), float(r["ts_mean"]), float(r["is_mean"])))
            print(f"| {r['position']} | {float(r['is_mean']):.4f} ± {float(r['is_se']):.4f} "
                  f"| {float(r['ts_mean']):.4f} ± {float(r['ts_se']):.4f} | {r['n']} |")
    if svg:
        scatter_svg(points, frontier, svg)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
