"""End-to-end tests in a real browser: JupyterLab (own server, temporary copy of nbs/) in Debian's headless Chromium.

- the harness itself: an error output and a plot in a generated notebook are seen as such;
- each tutorial: Run All through the menu, wait for the kernel to be idle, no error output, every code cell ran,
  the expected number of (non-blank) plots present and rendered, no browser console errors;
- each widget lab (SteeringLab, PatchingLab, ClampingLab) on a tiny model: render, drag / select / click, and the
  displayed numbers and the plot change; no console errors; screenshots in test-artifacts/browser/.

Run: `COLLAPSE_LAB_QUICK=1 .venv/bin/python -m pytest tests/test_browser.py -q -s` (`-s` shows the timings).
"""
import os, time
from pathlib import Path
import pytest
import browser_support as bs

TUTORIALS_DIR = bs.NBS/"tutorials"
# Tutorials this test knows, with the least number of plots each must show. Any other notebook in
# nbs/tutorials/ is tested too (with at least one plot).
TUTORIAL_PLOTS = {"east": 1, "subspace_illusion": 1, "induction_heads": 1, "collapse_zoo": 1}
TUTORIAL_TIMEOUT = float(os.environ.get("COLLAPSE_LAB_TUTORIAL_TIMEOUT", 420))
PARALLEL = int(os.environ.get("COLLAPSE_LAB_BROWSER_PARALLEL", 2))  # tutorials run at once (one kernel each)

def _tutorial_names():
    found = {p.stem for p in TUTORIALS_DIR.glob("*.ipynb")} if TUTORIALS_DIR.exists() else set()
    return sorted(set(TUTORIAL_PLOTS) | found)


# ---------------------------------------------------------------- the harness itself

def test_harness_sees_errors_and_plots(lab_server, lab_page):
    "A plot and an error in a generated notebook are found; cells after the error are reported as not run."
    bs.write_notebook(lab_server.root/"_harness.ipynb", [
        "import matplotlib.pyplot as plt\nplt.plot([0, 1, 0]); plt.title('harness'); plt.show()",
        "1/0",
        "print('never')"])
    bs.open_notebook(lab_page, lab_server, "_harness.ipynb")
    bs.run_all(lab_page)
    st = bs.wait_idle(lab_page, 120)
    assert [e.split(':')[1].strip() for e in bs.errors(st)] == ["ZeroDivisionError"], bs.errors(st)
    assert bs.unexecuted(st) == [2]
    (cell, png), = bs.images(st)
    assert cell == 0 and bs.png_info(png)["colours"] > 2
    assert bs.rendered_images(lab_page) == 1
    print("\n[browser] console:", lab_page.console_messages)
    assert not bs.console_errors(lab_page.console_messages), lab_page.console_messages


# ---------------------------------------------------------------- tutorials

def _run_tutorials(browser, server, names):
    "Run every tutorial in `names` in its own page, `PARALLEL` at a time; return {name: result dict}."
    results, queue, active = {}, list(names), {}
    def finish(name, page, ctx, t0, state=None, exc=None):
        res = dict(seconds=time.time() - t0, state=state, exc=exc, console=bs.console_errors(page.console_messages))
        try:
            if state and bs.images(state):
                page.locator(".jp-OutputArea-output img").last.scroll_into_view_if_needed()
                page.wait_for_timeout(300)
            res["screenshot"] = bs.screenshot(page, f"tutorial_{name}")
            res["rendered_images"] = bs.rendered_images(page)
        except Exception as e: res.setdefault("exc", e)
        ctx.close()
        results[name] = res
        print(f"\n[browser] tutorial {name}: {res['seconds']:.0f} s in the browser (quick setting)", flush=True)
    while queue or active:
        while queue and len(active) < PARALLEL:
            name = queue.pop(0)
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = ctx.new_page(); page.set_default_timeout(120_000)
            page.console_messages = bs.attach_console(page)
            t0 = time.time()
            try:
                bs.open_notebook(page, server, f"tutorials/{name}.ipynb")
                bs.run_all(page)
                active[name] = (page, ctx, t0)
            except Exception as e: finish(name, page, ctx, t0, exc=e)
        for name, (page, ctx, t0) in list(active.items()):
            try:
                st = bs.notebook_state(page)
                if bs.busy(st):
                    if time.time() - t0 > TUTORIAL_TIMEOUT:
                        del active[name]; finish(name, page, ctx, t0, st, TimeoutError(f"{name} still running after {TUTORIAL_TIMEOUT:.0f} s: {bs.summary(st)}"))
                    continue
                st = bs.wait_idle(page, 60)   # idle: make sure it stays so
                del active[name]; finish(name, page, ctx, t0, st)
            except Exception as e:
                active.pop(name, None); finish(name, page, ctx, t0, exc=e)
        if active: time.sleep(1)
    return results

@pytest.fixture(scope="session")
def tutorial_runs(browser, lab_server):
    "Each existing tutorial run once through the browser (several at once), for the per-tutorial tests to check."
    names = [n for n in _tutorial_names() if (TUTORIALS_DIR/f"{n}.ipynb").exists()]
    return _run_tutorials(browser, lab_server, names)

@pytest.mark.parametrize("name", _tutorial_names())
def test_tutorial_runs_in_jupyterlab(name, tutorial_runs):
    if not (TUTORIALS_DIR/f"{name}.ipynb").exists(): pytest.skip(f"nbs/tutorials/{name}.ipynb does not exist yet")
    res = tutorial_runs[name]
    if res["exc"] is not None: raise res["exc"]
    st = res["state"]
    assert not bs.errors(st), f"{name}: error outputs {bs.errors(st)}"
    assert not bs.unexecuted(st), f"{name}: code cells never ran: {bs.unexecuted(st)}"
    plots = bs.images(st)
    need = TUTORIAL_PLOTS.get(name, 1)
    assert len(plots) >= need, f"{name}: {len(plots)} plots, expected at least {need}"
    for cell, png in plots:
        info = bs.png_info(png)
        assert info["width"] >= 200 and info["colours"] > 4, f"{name}: plot in cell {cell} looks blank: {info}"
    assert res["rendered_images"] >= len(plots), f"{name}: {len(plots)} image outputs but {res['rendered_images']} shown"
    assert not res["console"], f"{name}: browser console errors: {res['console']}"
