#!/usr/bin/env python3
"""check_timeline.py FILE.svg [--throttle] - checks a kvmhost --timeline chart.

Well-formed XML with an <svg> root; exactly one series (polyline
class="series") per quantity, each with >= 2 points inside the view box;
axis labels for time and for every panel; the switchover line and the
measured-downtime mark with its label. --throttle: the throttle series must
leave 0 somewhere (a run with auto-converge). Exit 0 when all holds, else 1
with every problem listed."""
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"
QUANTITIES = ["remaining_bytes", "transfer_rate", "dirty_rate", "expected_downtime", "downtime_limit", "throttle"]
Y_LABELS = ["remaining", "rate", "downtime", "throttle"]


def main():
    path = sys.argv[1]
    want_throttle = "--throttle" in sys.argv[2:]
    problems = []
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        print(f"{path}: not well-formed XML: {e}")
        return 1
    if root.tag != NS + "svg":
        problems.append(f"root element is {root.tag}, not svg")
    vb = [float(v) for v in root.get("viewBox", "0 0 0 0").split()]
    width, height = vb[2], vb[3]
    if width <= 0 or height <= 0:
        problems.append("no usable viewBox")

    series = [e for e in root.iter(NS + "polyline") if "series" in e.get("class", "").split()]
    by_q = {}
    for e in series:
        by_q.setdefault(e.get("data-quantity"), []).append(e)
    for q in QUANTITIES:
        n = len(by_q.get(q, []))
        if n != 1:
            problems.append(f"quantity {q}: {n} series (want exactly 1)")
    extra = set(by_q) - set(QUANTITIES)
    if extra:
        problems.append(f"unknown series: {sorted(extra)}")
    values = {}
    for q, es in by_q.items():
        pts = []
        for tok in es[0].get("points", "").split():
            try:
                x, y = (float(v) for v in tok.split(","))
            except ValueError:
                problems.append(f"{q}: bad point {tok!r}")
                continue
            if not (0 <= x <= width and 0 <= y <= height):
                problems.append(f"{q}: point {tok} outside the view box")
            pts.append((x, y))
        if len(pts) < 2:
            problems.append(f"{q}: {len(pts)} point(s) (want >= 2)")
        if any(b[0] < a[0] for a, b in zip(pts, pts[1:])):
            problems.append(f"{q}: time goes backwards")
        values[q] = pts

    labels = [(e.get("data-axis"), "".join(e.itertext())) for e in root.iter(NS + "text")
              if "axis-label" in e.get("class", "").split()]
    if not any(a == "x" and "time" in t for a, t in labels):
        problems.append("no time axis label")
    for want in Y_LABELS:
        if not any(a == "y" and want in t for a, t in labels):
            problems.append(f"no y axis label for {want}")
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    for want in ("switchover", "downtime", "measured-downtime"):
        if want not in ids:
            problems.append(f"no #{want} mark")
    if not any("measured downtime" in "".join(e.itertext()) and "ms" in "".join(e.itertext())
               for e in root.iter(NS + "text")):
        problems.append("no measured-downtime label")
    if want_throttle and "throttle" in values:
        ys = {round(y, 1) for _, y in values["throttle"]}
        if len(ys) < 2:
            problems.append("throttle series never leaves 0")

    if problems:
        print(f"{path}: {len(problems)} problem(s):")
        for p in problems:
            print("  - " + p)
        return 1
    print(f"{path}: OK ({len(series)} series, {sum(len(v) for v in values.values())} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
