"""Re-execute tutorials at full size and store their outputs (figures, tables, printed numbers) in the notebooks.

Each notebook runs top to bottom in a fresh Python 3 kernel, in its own folder, with `COLLAPSE_LAB_QUICK` unset
(the full size). On success its outputs are written back, and the notebook metadata records a hash of its code
cells under `collapse_lab.outputs`:

    "collapse_lab": {"outputs": {"code_sha256": "...", "quick": false, "executed": "2026-11-30T14:00Z", "seconds": 412}}

`tests/test_tutorial_outputs.py` fails when a notebook carries outputs and its code no longer hashes to the
recorded value (the outputs would show what other code computed); notebooks without stored outputs pass.
`nbdev_test` ignores stored outputs and runs every tutorial afresh at the quick size.

The notebook is read again after the run and only the outputs are copied in, by cell id, so edits to markdown made
meanwhile survive; if its code changed during the run, nothing is written.

    .venv/bin/python tools/execute_tutorials.py [NOTEBOOK ...]    (default: nbs/tutorials/*.ipynb; `make tutorials`)
"""
from __future__ import annotations
import argparse, hashlib, json, os, re, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "collapse_lab"          # notebook metadata key (settings.ini: allowed_metadata_keys keeps it through nbdev_clean)
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}

def _source(cell)->str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s

def code_hash(nb:dict)->str:
    "sha256 of the notebook's code cells, in order (trailing whitespace of each cell ignored); markdown does not count."
    h = hashlib.sha256()
    for c in nb.get("cells", []):
        if c.get("cell_type") == "code":
            h.update(_source(c).rstrip().encode("utf-8")); h.update(b"\n\x1e\n")   # record separator between cells
    return h.hexdigest()

def has_outputs(nb:dict)->bool:
    "Whether any code cell carries stored outputs."
    return any(c.get("outputs") for c in nb.get("cells", []) if c.get("cell_type") == "code")

def record(nb:dict)->dict|None:
    "The stored-outputs record (`code_sha256`, `quick`, `executed`, `seconds`), or None."
    return nb.get("metadata", {}).get(KEY, {}).get("outputs")

def stale(nb:dict)->str|None:
    "Why the stored outputs of `nb` cannot be trusted, or None (also None when it stores no outputs)."
    if not has_outputs(nb): return None
    rec = record(nb)
    if rec is None:
        return "it carries outputs but no record of the code that made them (run `make tutorials`, or clear its outputs)"
    if rec.get("code_sha256") != code_hash(nb):
        return (f"its code changed since its outputs were stored on {rec.get('executed', '?')} "
                "(run `make tutorials`, or clear its outputs)")
    if rec.get("quick"): return "its stored outputs are from the quick setting; store the full-size run"
    return None

_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+")   # tqdm's text: "desc:  40%|####      | 4/10 [...]"

def is_progress_bar(out:dict)->bool:
    "Whether a stored output is a progress bar (a tqdm widget or its text): it shows the run, not a result, and is dropped."
    data = out.get("data", {})
    text = data.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    return "application/vnd.jupyter.widget-view+json" in data and bool(_BAR.search(text))

def kept_widget_state(widgets:dict, cells:list)->dict:
    "The notebook's widget state cut to the models that the kept outputs show, and the models those refer to."
    key = "application/vnd.jupyter.widget-state+json"
    state = widgets.get(key, {}).get("state", {})
    todo = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in cells for o in c.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    keep = set()
    while todo:
        m = todo.pop()
        if m in keep or m not in state: continue
        keep.add(m)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[m]))
    if not keep: return {}
    return {key: dict(widgets[key], state={m: state[m] for m in state if m in keep})}

def _load(path:Path)->dict: return json.loads(path.read_text(encoding="utf-8"))
def _dump(path:Path, nb:dict):
    "nbdev's format (one-space indent, UTF-8 kept), written atomically."
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)

def execute(path:Path, timeout:int=7200, quick:bool=False)->float:
    "Run `path` in a fresh kernel and store its outputs and record; return the seconds it took."
    import nbformat
    from nbclient import NotebookClient
    path = Path(path).resolve()
    before = _load(path)
    h0 = code_hash(before)
    nb = nbformat.reads(json.dumps(before), as_version=4)
    for c in nb.cells:
        if c.cell_type == "code": c.outputs, c.execution_count = [], None
    env_quick = os.environ.pop("COLLAPSE_LAB_QUICK", None)       # the kernel inherits this process's environment
    if quick: os.environ["COLLAPSE_LAB_QUICK"] = "1"
    t0 = time.time()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.pop("COLLAPSE_LAB_QUICK", None)
        if env_quick is not None: os.environ["COLLAPSE_LAB_QUICK"] = env_quick
    secs = time.time() - t0
    now = _load(path)                                            # others may have edited markdown meanwhile
    if code_hash(now) != h0:
        raise RuntimeError(f"{path.name}: its code changed while it ran; nothing written, run it again.")
    outs = {c.get("id"): c for c in nb.cells if c.cell_type == "code"}
    for c in now["cells"]:
        if c.get("cell_type") == "code":
            ran = outs[c["id"]]
            c["outputs"] = [dict(o) for o in json.loads(json.dumps(ran.outputs)) if not is_progress_bar(o)]
            c["execution_count"] = None                          # as nbdev_clean leaves it: no churn in diffs
            for o in c["outputs"]:
                if "execution_count" in o: o["execution_count"] = None
    md = now.setdefault("metadata", {})
    md.pop("widgets", None)
    state = kept_widget_state(json.loads(json.dumps(nb.metadata.get("widgets", {}))), now["cells"])
    if state: md["widgets"] = state                              # the state of the widget views still shown
    md.setdefault("kernelspec", KERNELSPEC)
    md.setdefault(KEY, {})["outputs"] = dict(code_sha256=h0, quick=quick, seconds=round(secs),
        executed=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"))
    _dump(path, now)
    return secs

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (default: nbs/tutorials/*.ipynb)")
    ap.add_argument("--timeout", type=int, default=7200, help="most seconds one cell may run")
    ap.add_argument("--quick", action="store_true", help="run at the quick size (for trying the tool; the test refuses such outputs)")
    a = ap.parse_args(argv)
    paths = [Path(p) for p in a.notebooks] or sorted((ROOT/"nbs"/"tutorials").glob("*.ipynb"))
    bad = [str(p) for p in paths if not (p.suffix == ".ipynb" and p.is_file())]
    if bad: sys.exit(f"not notebooks: {bad}; pass .ipynb files (default: nbs/tutorials/*.ipynb).")
    failed = []
    for p in paths:
        print(f"{p}: running at the {'quick' if a.quick else 'full'} size ...", flush=True)
        try: print(f"{p}: outputs stored ({execute(p, a.timeout, a.quick):.0f} s)", flush=True)
        except Exception as e:                                   # keep going; report every failure at the end
            failed.append(p); print(f"{p}: FAILED, nothing written: {type(e).__name__}: {str(e)[-2000:]}", flush=True)
    if failed: sys.exit(f"{len(failed)} of {len(paths)} notebooks failed: {', '.join(map(str, failed))}")

if __name__ == "__main__": main()
