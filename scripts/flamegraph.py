#!/usr/bin/env python3
"""A flame graph (SVG) from `perf script` output, without Perl or extra crates.

    perf record -F 999 --call-graph dwarf,16384 -o perf.data target/release/teledge replay ...
    perf script -i perf.data | scripts/flamegraph.py "teledge replay" > flame.svg

Stacks are folded as stackcollapse-perf.pl does (frames root first, inlined frames kept);
boxes are as wide as their share of the samples, labelled when wide enough, with the share in
their tooltip.
"""
import html
import re
import sys
from collections import defaultdict


def fold(lines):
    stacks = defaultdict(int)
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                stacks[";".join(reversed(frames))] += 1
            frames = []
            continue
        if not line.startswith((" ", "\t")):
            continue  # the sample's header line
        m = re.match(r"\s*[0-9a-f]+\s+(.*?)(?:\s+\(.*\))?$", line)
        if not m:
            continue
        name = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
        name = re.sub(r"::h[0-9a-f]{16}$", "", name)
        frames.append(name)
    if frames:
        stacks[";".join(reversed(frames))] += 1
    return stacks


def tree(stacks):
    root = {"n": 0, "c": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for frame in stack.split(";"):
            node = node["c"].setdefault(frame, {"n": 0, "c": {}})
            node["n"] += n
    return root


def svg(root, title, width=1200, row=16):
    total = root["n"] or 1
    boxes = []

    def walk(node, name, x, depth):
        w = node["n"] / total * width
        if w < 1.0:
            return
        boxes.append((x, depth, w, name, node["n"]))
        cx = x
        for child_name, child in sorted(node["c"].items()):
            walk(child, child_name, cx, depth + 1)
            cx += child["n"] / total * width

    walk(root, "all", 0.0, 0)
    depth = max(d for _, d, _, _, _ in boxes) + 1
    height = (depth + 2) * row
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<text x="4" y="12">{html.escape(title)} ({total} samples)</text>',
    ]
    for x, d, w, name, n in boxes:
        y = height - (d + 1) * row
        hue = 20 + (hash(name) % 40)
        share = 100.0 * n / total
        label = html.escape(name)
        out.append(
            f'<g><title>{label} ({n} samples, {share:.2f}%)</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
            f'fill="hsl({hue},90%,60%)"/>'
        )
        chars = int(w / 7)
        if chars >= 4:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    title = sys.argv[1] if len(sys.argv) > 1 else "flame graph"
    print(svg(tree(fold(sys.stdin)), title))
