"""Tutorials may carry their results (outputs stored by `make tutorials`, tools/execute_tutorials.py): stored outputs
must come from the code the notebook holds now. A notebook whose code changed after its outputs were stored fails
here; a notebook without stored outputs passes (nbdev_test runs every tutorial afresh at the quick size either way)."""
import copy, json, os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"tools"))
from execute_tutorials import code_hash, stale, execute, is_progress_bar, kept_widget_state, KEY

TUTORIALS = sorted((ROOT/"nbs"/"tutorials").glob("*.ipynb"))

@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_stored_outputs_match_the_code(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    why = stale(nb)
    assert why is None, f"{path.relative_to(ROOT)}: {why}"
    bars = [o["data"]["text/plain"] for c in nb["cells"] for o in c.get("outputs", []) if is_progress_bar(o)]
    assert not bars, f"{path.relative_to(ROOT)} stores progress bars: {bars[:2]}"

def test_progress_bars_are_dropped_and_widget_state_cut_to_what_is_shown():
    view = "application/vnd.jupyter.widget-view+json"
    bar = {"output_type": "display_data", "data": {"text/plain": "train VAE:   0%|          | 0/2000 [00:00<?, ?it/s]", view: {"model_id": "a1"}}}
    lab = {"output_type": "display_data", "data": {"text/plain": "VBox(children=(HBox(...),))", view: {"model_id": "b2"}}}
    assert is_progress_bar(bar) and not is_progress_bar(lab)
    assert not is_progress_bar({"output_type": "stream", "name": "stdout", "text": " 40%|####  | 4/10"})   # printed text stays
    key = "application/vnd.jupyter.widget-state+json"
    widgets = {key: {"version_major": 2, "state": {"a1": {"state": {}}, "b2": {"state": {"children": ["IPY_MODEL_c3"]}},
                                                   "c3": {"state": {}}, "d4": {"state": {}}}}}
    kept = kept_widget_state(widgets, [{"outputs": [lab]}])
    assert set(kept[key]["state"]) == {"b2", "c3"} and kept[key]["version_major"] == 2
    assert kept_widget_state(widgets, [{"outputs": []}]) == {}

def _nb(*cells, outputs=True):
    mk = lambda i, s: {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}] if outputs else [], "source": s}
    return {"cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# t"}]
                     + [mk(i, s) for i, s in enumerate(cells)], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

def _stamp(nb, quick=False):
    nb["metadata"][KEY] = {"outputs": {"code_sha256": code_hash(nb), "quick": quick, "executed": "2026-11-30T14:00Z"}}
    return nb

def test_the_check_tells_stale_outputs_from_current_ones():
    assert stale(_nb("x = 1", "print(x)", outputs=False)) is None                # nothing stored: nothing to check
    assert "no record" in stale(_nb("x = 1", "print(x)"))                         # outputs of unknown origin
    nb = _stamp(_nb("x = 1", "print(x)"))
    assert stale(nb) is None
    edited = copy.deepcopy(nb); edited["cells"][1]["source"] = "x = 2"
    assert "code changed" in stale(edited)
    moved = copy.deepcopy(nb); moved["cells"][1:] = moved["cells"][:0:-1]         # same cells, other order
    assert "code changed" in stale(moved)
    prose = copy.deepcopy(nb); prose["cells"][0]["source"] = "# a better title"; prose["cells"][1]["source"] = ["x = 1\n", "\n"]
    assert stale(prose) is None                                                   # markdown and trailing blanks do not count
    assert "quick" in stale(_stamp(_nb("x = 1"), quick=True))

def test_execute_stores_full_size_outputs_and_a_record(tmp_path, monkeypatch):
    "A real run: the kernel sees no COLLAPSE_LAB_QUICK (full size), outputs and record land in the file, ids kept."
    monkeypatch.setenv("COLLAPSE_LAB_QUICK", "1")                                 # as under `make test`
    path = tmp_path/"t.ipynb"
    path.write_text(json.dumps(_nb("import os\nprint('quick=' + repr(os.environ.get('COLLAPSE_LAB_QUICK')))", "6 * 7",
                                   outputs=False), indent=1))
    execute(path, timeout=120)
    nb = json.loads(path.read_text())
    assert [c["id"] for c in nb["cells"]] == ["m", "c0", "c1"]
    assert nb["cells"][1]["outputs"][0]["text"] == "quick=None\n"
    assert nb["cells"][2]["outputs"][0]["data"]["text/plain"] == "42"
    assert nb["metadata"][KEY]["outputs"]["code_sha256"] == code_hash(nb) and stale(nb) is None
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert os.environ["COLLAPSE_LAB_QUICK"] == "1"                                # this process's setting restored

def test_every_notebook_has_a_python3_kernelspec():
    "JupyterLab opens each notebook on the Python 3 kernel, without a 'Select Kernel' dialog (tools/set_kernelspec.py)."
    from set_kernelspec import missing
    bad = [str(p.relative_to(ROOT)) for p in missing()]
    assert not bad, f"no Python 3 kernelspec in {bad}: run .venv/bin/python tools/set_kernelspec.py"
