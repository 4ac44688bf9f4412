"""Run notebooks at their quick setting, each in its own process, optionally with every model forced onto a device
(`--device cuda`), then call the update callback of every widget (`*Lab` object) each notebook left behind, timed.

    python benchmarks/run_notebooks.py                      # tutorials + widget notebooks, models where they ask
    python benchmarks/run_notebooks.py --device cuda        # every TransformerBridge built on CUDA
    python benchmarks/run_notebooks.py nbs/tutorials/east.ipynb --timeout 300

Notebooks are discovered, not listed: nbs/tutorials/*.ipynb, and every nbs/*.ipynb whose `default_exp` module ends in
`_lab` or is `widgets` (the widget notebooks). Cells flagged `#| notest` or `#| eval: false` are skipped, as
nbdev_test does. A missing folder or notebook is reported and skipped.
"""
from __future__ import annotations
import argparse, glob, json, os, re, statistics, subprocess, sys, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^\s*#\|\s*(notest|eval:\s*false)\b", re.M)


def discover()->list[Path]:
    nbs = sorted(Path(p) for p in glob.glob(str(ROOT / "nbs/tutorials/*.ipynb")))
    if not nbs: print("no tutorials found in nbs/tutorials/ (skipped)")
    widgets = []
    for p in sorted(glob.glob(str(ROOT / "nbs/*.ipynb"))):
        src = Path(p).read_text()
        m = re.search(r"#\|\s*default_exp\s+([\w.]+)", src)
        if m and (m.group(1).endswith("_lab") or m.group(1) == "widgets"): widgets.append(Path(p))
    if not widgets: print("no widget notebooks (default_exp *_lab) found (skipped)")
    return nbs + widgets


def code_cells(path:Path)->list[str]:
    nb = json.loads(path.read_text())
    out = []
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        s = "".join(c["source"])
        if SKIP.search(s): continue
        out.append("\n".join(l for l in s.splitlines() if not l.lstrip().startswith(("%", "!"))))
    return out


# ------------------------------------------------------------------------------------------------ child process
def _devices(ns)->list[str]:
    "Devices of the TransformerBridges the notebook holds."
    from transformer_lens.model_bridge import TransformerBridge
    out = set()
    for v in list(ns.values()):
        if isinstance(v, TransformerBridge):
            try: out.add(str(next(v.parameters()).device))
            except StopIteration: pass
    return sorted(out)


def _labs(ns)->list:
    seen, labs = set(), []
    for name, v in list(ns.items()):
        if type(v).__name__.endswith("Lab") and id(v) not in seen and not isinstance(v, type):
            seen.add(id(v)); labs.append((name, v))
    return labs


def _probe_lab(name, lab, n=7)->dict:
    "Time the lab's update callback: a slider change for a lab with a `coef` slider, else update()/refresh()."
    import torch
    model = getattr(lab, "model", None)
    dev = str(next(model.parameters()).device) if model is not None else "?"
    r = dict(lab=name, cls=type(lab).__name__, model_device=dev)
    err0 = getattr(getattr(lab, "error", None), "value", "")   # a message the notebook itself left there
    slider = getattr(lab, "coef", None)
    if slider is not None and hasattr(slider, "value") and hasattr(slider, "min"):
        lo, hi = float(slider.min), float(slider.max)
        vals = [lo + (hi - lo) * (i + 1) / (n + 2) for i in range(n)]
        def call(i): slider.value = vals[i]
        r["callback"] = "coef slider -> update()"
    elif callable(getattr(lab, "update", None)) or callable(getattr(lab, "refresh", None)):
        fn = getattr(lab, "update", None) if callable(getattr(lab, "update", None)) else lab.refresh
        def call(i): fn()
        r["callback"] = fn.__name__ + "()"
    elif callable(getattr(lab, "_update", None)) and getattr(lab, "run", None) is not None:
        # a training lab (ClampingLab): the notebook trained through it; redraw from its run, as on_eval does
        win, steps = getattr(getattr(lab, "window", None), "value", None), getattr(getattr(lab, "steps", None), "value", None)
        def call(i): lab._update(lab.run, win, steps, force=True)
        r["callback"] = "_update(run, force=True) (the live-curve callback)"
    else:
        return r | dict(status="skipped", error="no update/refresh callback found (or no run to redraw)")
    times = []
    for i in range(n):
        if dev.startswith("cuda"): torch.cuda.synchronize()
        t0 = time.perf_counter(); call(i)
        if dev.startswith("cuda"): torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    err = getattr(getattr(lab, "error", None), "value", "")
    r.update(status="ok" if err in ("", err0) else "error shown", median_ms=1e3 * statistics.median(times[1:] or times),
             error=re.sub("<[^>]+>", "", str(err))[:300] if err != err0 else "")
    return r


def child(path:Path):
    os.chdir(path.parent)
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = {"__name__": "__main__", "display": lambda *a, **k: None}
    t0 = time.time()
    res = dict(notebook=str(path.relative_to(ROOT)), status="ok")
    cells = code_cells(path)
    for i, src in enumerate(cells):
        try:
            exec(compile(src, f"{path.name}[cell {i}]", "exec"), ns)
            plt.close("all")
        except BaseException as e:
            res.update(status="FAILED", cell=i, error=f"{type(e).__name__}: {e}"[:500],
                       trace="".join(traceback.format_exc().splitlines(True)[-8:])[-1500:])
            break
    res["seconds"] = round(time.time() - t0, 1)
    res["cells"] = len(cells)
    try: res["model_devices"] = _devices(ns)
    except Exception as e: res["model_devices"] = [f"? {e}"]
    res["labs"] = []
    if res["status"] == "ok":
        for name, lab in _labs(ns):
            try: res["labs"].append(_probe_lab(name, lab))
            except Exception as e: res["labs"].append(dict(lab=name, status="FAILED", error=f"{type(e).__name__}: {e}"[:300]))
    print("RESULT " + json.dumps(res), flush=True)


# ------------------------------------------------------------------------------------------------ parent
def run_one(path:Path, device:str|None, timeout:int)->dict:
    env = dict(os.environ, COLLAPSE_LAB_QUICK="1", IN_TEST="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([str(ROOT / "benchmarks/force_device")] if device else [])
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if device: env["COLLAPSE_LAB_FORCE_DEVICE"] = device
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, __file__, "--child", str(path)], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return dict(notebook=str(path.relative_to(ROOT)), status=f"TIMEOUT after {timeout} s",
                    tail=(e.stdout or b"")[-800:].decode(errors="replace") if isinstance(e.stdout, bytes) else str(e.stdout)[-800:])
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    if not line:
        return dict(notebook=str(path.relative_to(ROOT)), status=f"CRASHED (exit {p.returncode})",
                    tail=(p.stdout + p.stderr)[-1500:], seconds=round(time.time() - t0, 1))
    return json.loads(line[-1][7:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="default: discovered")
    ap.add_argument("--device", default=None, help="force every TransformerBridge onto this device (e.g. cuda)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per notebook")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(Path(a.child).resolve())
    paths = [Path(p).resolve() for p in a.notebooks] if a.notebooks else discover()
    missing = [p for p in paths if not p.exists()]
    for p in missing: print(f"{p} does not exist (skipped)")
    paths = [p for p in paths if p.exists()]
    print(f"running {len(paths)} notebook(s), quick setting, models on {a.device or 'the device each asks for'}, "
          f"{a.parallel} at a time, {a.timeout} s each at most", flush=True)
    with ThreadPoolExecutor(max(1, a.parallel)) as ex:
        results = list(ex.map(lambda p: run_one(p, a.device, a.timeout), paths))
    bad = 0
    for r in results:
        ok = r["status"] == "ok"
        bad += not ok
        print(f"\n{r['notebook']}: {r['status']}  ({r.get('seconds', '?')} s, models on {r.get('model_devices', '?')})")
        if not ok: print("   ", r.get("error", ""), "\n", r.get("trace", r.get("tail", "")))
        for lab in r.get("labs", []):
            ms = f"{lab['median_ms']:.1f} ms" if "median_ms" in lab else ""
            print(f"    widget {lab.get('cls', lab['lab'])} ({lab['lab']}): {lab.get('callback', '')} {ms} "
                  f"model on {lab.get('model_device', '?')}: {lab['status']} {lab.get('error', '')}")
    if a.json: Path(a.json).write_text(json.dumps(results, indent=1))
    print(f"\n{len(results) - bad}/{len(results)} notebooks ran through", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
