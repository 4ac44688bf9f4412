"""Render a bench.py --json file as Markdown tables (one per section), for benchmarks/RESULTS.md.

    python benchmarks/results_table.py run.json
"""
import json, sys
from itertools import groupby


def render(path)->str:
    d = json.load(open(path))
    i = d["info"]
    out = [f"`{i['date']}` | {i.get('gpu', i['machine'] + ' CPU')} | python {i['python']}, torch {i['torch']}, "
           f"transformers {i['transformers']}, transformer-lens {i['transformer_lens']} | {i['dtype'].removeprefix('torch.')}, "
           f"batch {i['batch']} x {i['seq']}, {i['reps']} rounds, {i['threads']} CPU thread(s)", ""]
    for section, rows in groupby(d["results"], key=lambda r: r["section"]):
        out += [f"**{section}**", "", "| | value | |", "|---|---:|---|"]
        for r in rows:
            v = r["value"]
            fmt = f"{v:.2e}" if r["unit"] == "" else f"{v:.3f}" if r["unit"] == "x" else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
            out.append(f"| {r['name']} | {fmt} {r['unit']} | {r['note']} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(sys.argv[1]))
