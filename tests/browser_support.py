"""Drive JupyterLab in Debian's Chromium with Playwright: a private Lab server, a browser, and notebook helpers.

Used by `tests/test_browser.py` (fixtures are declared in `tests/conftest.py`). Nothing here downloads a
browser: Playwright launches `/usr/bin/chromium` (`apt-get install chromium`), never `playwright install`.
"""
from __future__ import annotations
import base64, io, json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-gpu"]
ARTIFACTS = ROOT/"test-artifacts"/"browser"
JUPYTER = Path(sys.executable).parent/"jupyter"

# Console messages that would say nothing about collapse_lab, to leave out of the console check. None so far:
# JupyterLab 4.6 with the settings below logs no error on its own. Add a substring here only with a reason.
BENIGN_CONSOLE = ()

REPORT:list[str] = []   # timings and measurements, printed at the end of the pytest run (conftest.py)

def report(line:str):
    "Record a measurement for the end-of-run summary (and test-artifacts/browser/report.txt)."
    REPORT.append(line)
    print(f"\n[browser] {line}", flush=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS/"report.txt", "a") as f: f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

def missing_browser_deps()->str|None:
    "Why browser tests cannot run here (None when they can)."
    if not Path(CHROMIUM).exists(): return f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver; `make test` does it)"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "playwright is not installed (pip install playwright; `make test` does it)"
    if not JUPYTER.exists(): return f"{JUPYTER} is missing (pip install jupyterlab)"
    return None

def free_port()->int:
    "A free TCP port on the loopback interface."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

# JupyterLab user settings for the test server: no news/update pop-ups over the notebook, and every cell kept in
# the DOM (no windowing) so that rendered outputs can be counted.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}

def _ensure_kernelspec(path:Path):
    "Give a notebook copy a python3 kernelspec if it has none, so Lab starts a kernel without asking."
    nb = json.loads(path.read_text())
    meta = nb.setdefault("metadata", {})
    if "kernelspec" not in meta:
        meta["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        path.write_text(json.dumps(nb, indent=1))

def write_notebook(path:Path, sources:list[str]):
    "Write a notebook with one code cell per source string (kernel python3)."
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
              "source": src} for i, src in enumerate(sources)]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}}}
    path.write_text(json.dumps(nb, indent=1))
    return path


class LabServer:
    "A private JupyterLab server on a free loopback port, serving a temporary copy of `nbs/`."
    def __init__(self, workdir:Path):
        self.workdir, self.port, self.token = Path(workdir), free_port(), secrets.token_hex(16)
        self.root = self.workdir/"nbs"
        shutil.copytree(NBS, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs", "_proc", "checkpoints"))
        for nb in self.root.rglob("*.ipynb"): _ensure_kernelspec(nb)
        settings = self.workdir/"lab-settings"
        for name, value in _LAB_SETTINGS.items():
            p = settings/name; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps(value))
        self.env = os.environ | {"COLLAPSE_LAB_QUICK": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                 "JUPYTERLAB_SETTINGS_DIR": str(settings),
                                 "JUPYTERLAB_WORKSPACES_DIR": str(self.workdir/"lab-workspaces"),
                                 "PYTHONUNBUFFERED": "1",
                                 # kernels import this checkout's package, installed (-e) or not
                                 "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        self.env.pop("MPLBACKEND", None)
        self.log_path = self.workdir/"jupyter-lab.log"
        self.proc = None

    @property
    def url(self)->str: return f"http://127.0.0.1:{self.port}"

    def start(self, timeout:float=120):
        cmd = [str(JUPYTER), "lab", "--no-browser", f"--ServerApp.token={self.token}", f"--port={self.port}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0",
               "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.api("status"); return self
            except OSError: time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer within {timeout}s:\n{self.log()[-3000:]}")

    def api(self, path:str, method:str="GET", timeout:float=5):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def close_sessions(self, path:str|None=None):
        "Shut down the kernel of the notebook at `path` (all of them when None), freeing its CPU and memory."
        for sess in self.api("sessions"):
            if path is None or sess.get("path") == path:
                try: self.api(f"sessions/{sess['id']}", method="DELETE")
                except OSError: pass

    def log(self)->str: return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        "Shut the server and its kernels down; kill whatever of them is left after 15 s."
        if self.proc is None: return
        import psutil
        try: family = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error: family = []
        try: self.api("shutdown", method="POST")
        except Exception: pass
        try: self.proc.wait(15)
        except subprocess.TimeoutExpired:
            try: os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError: pass
            try: self.proc.wait(5)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        _, alive = psutil.wait_procs(family, timeout=5)
        for p in alive:
            try: p.kill()
            except psutil.Error: pass
        self._log.close()
        self.proc = None

    def lab_url(self, path:str)->str: return f"{self.url}/lab/tree/{path}?token={self.token}&reset"


# ---- notebook state, read from the JupyterLab front end (exposed as `window.jupyterapp`) ----

JS_NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.map((c, i) => {
    const m = c.model;
    if (m.type !== 'code') return {i, type: m.type};
    return {i, type: 'code', count: m.executionCount, source: m.sharedModel.getSource(),
            prompt: c.node.querySelector('.jp-InputPrompt') ? c.node.querySelector('.jp-InputPrompt').textContent : '',
            outputs: m.outputs.toJSON()};
  });
  return {kernel: kernel ? kernel.status : 'none', path: panel.context.path, cells};
}"""

def notebook_state(page)->dict|None: return page.evaluate(JS_NOTEBOOK_STATE)

def open_notebook(page, server:LabServer, path:str, timeout:float=120):
    "Open `path` (relative to the server root) in Lab and wait for its kernel to be idle."
    page.goto(server.lab_url(path))
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=timeout*1000)
    page.wait_for_function("""() => { const p = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = p && p.sessionContext && p.sessionContext.session && p.sessionContext.session.kernel;
        return k && k.status === 'idle'; }""", timeout=timeout*1000)

def run_all(page):
    "Run > Run All Cells, through the menu bar, as a person would."
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    try:   # the run has begun once a cell is queued ([*]) or has run; only then can "idle" mean "finished"
        page.wait_for_function("""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
            .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""", timeout=30_000)
    except Exception: pass   # an empty notebook never shows one; `unexecuted` reports cells that did not run

def busy(state:dict)->bool:
    "True while the kernel works or a cell is queued/running (`[*]`)."
    return state is None or state["kernel"] != "idle" or any("*" in c.get("prompt", "") for c in state["cells"])

def wait_idle(page, timeout:float, settle:float=1.0)->dict:
    "Wait until the kernel is idle and no cell is queued, stably for `settle` seconds; return the state."
    t0, since = time.time(), None
    while time.time() - t0 < timeout:
        st = notebook_state(page)
        if busy(st): since = None
        elif since is None: since = time.time()
        elif time.time() - since >= settle: return st
        page.wait_for_timeout(250)
    raise TimeoutError(f"notebook still busy after {timeout}s: {summary(notebook_state(page))}")

def errors(state:dict)->list[str]:
    "Every error output in the notebook, as 'cell i: Ename: value'."
    return [f"cell {c['i']}: {o.get('ename')}: {o.get('evalue')}" for c in state["cells"] if c["type"] == "code"
            for o in c["outputs"] if o.get("output_type") == "error"]

def unexecuted(state:dict)->list[int]:
    "Code cells with a non-empty source that have no execution count."
    return [c["i"] for c in state["cells"] if c["type"] == "code" and c["source"].strip() and c["count"] is None]

def images(state:dict)->list[tuple[int, bytes]]:
    "Every PNG image output as (cell index, PNG bytes)."
    return [(c["i"], base64.b64decode(o["data"]["image/png"])) for c in state["cells"] if c["type"] == "code"
            for o in c["outputs"] if "image/png" in o.get("data", {})]

import re as _re
# A code cell that draws a figure at its top level (not inside an `if`, e.g. a GPU-only parameter path).
_PLOT_CELL = _re.compile(r"^(?:[\w(][\w, .()\[\]]*=\s*)?(?:plt\.(?:subplots|figure|plot|imshow)\(|(?:cl\.)?(?:viz\.)?plot_\w+\()", _re.M)

def plot_cells(state:dict)->list[int]:
    "Code cells that draw a figure at their top level: each must show an image."
    return [c["i"] for c in state["cells"] if c["type"] == "code" and _PLOT_CELL.search(c["source"])]

def cells_with_images(state:dict)->set[int]: return {i for i, _ in images(state)}

def summary(state:dict|None)->str:
    if state is None: return "no notebook open"
    return f"kernel={state['kernel']} running={[c['i'] for c in state['cells'] if '*' in c.get('prompt', '')]}"

def png_info(png:bytes)->dict:
    "Width, height and number of distinct colours of a PNG (a blank figure has one or two colours)."
    from PIL import Image
    im = Image.open(io.BytesIO(png)).convert("RGB")
    small = im.resize((min(im.width, 200), min(im.height, 200)))
    return dict(width=im.width, height=im.height, colours=len(small.getcolors(small.width*small.height)))

def rendered_images(page)->int:
    "How many output images in the page have loaded (naturalWidth > 0)."
    return page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output img, .jp-OutputArea img')]
        .filter(im => im.complete && im.naturalWidth > 0).length""")

def console_errors(messages:list)->list[str]:
    "Console errors and uncaught page errors, less the benign ones in `BENIGN_CONSOLE`."
    return [m for m in messages if not any(b in m for b in BENIGN_CONSOLE)]

def attach_console(page)->list[str]:
    "Collect the page's console errors and uncaught exceptions into a list (returned, filled as they come)."
    msgs = []
    page.on("console", lambda m: msgs.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: msgs.append(f"pageerror: {e}"))
    return msgs

def screenshot(page_or_locator, name:str)->Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS/f"{name}.png"
    page_or_locator.screenshot(path=str(p))
    return p


# ---- widgets ----

def run_generated_notebook(page, server:LabServer, name:str, sources:list[str], timeout:float=240)->dict:
    "Write `sources` as a notebook in the server root, open it, Run All, wait for idle; fail on any error output."
    write_notebook(server.root/f"{name}.ipynb", sources)
    open_notebook(page, server, f"{name}.ipynb")
    run_all(page)
    st = wait_idle(page, timeout)
    assert not errors(st), f"{name}: {errors(st)}"
    assert not unexecuted(st), f"{name}: cells never ran {unexecuted(st)}"
    return st

JS_PLOT_KEY = """el => (el.tagName === 'IMG' ? [el] : [...el.querySelectorAll('img')]).filter(i => i.complete && i.naturalWidth > 0).map(i => {
    let h = 5381; const s = i.src; for (let k = 0; k < s.length; k += 7) h = ((h * 33) ^ s.charCodeAt(k)) >>> 0;
    return s.length + ':' + h; }).join('|')"""

def plot_key(locator)->str:
    "A fingerprint of the loaded images inside `locator` ('' when none has loaded): changes when a plot is redrawn."
    return locator.evaluate(JS_PLOT_KEY)

def wait_plot_change(page, locator, old:str, timeout:float=60, settle:float=0.8)->str:
    """Wait until the images inside `locator` differ from fingerprint `old` (and are loaded), then until they stay
    the same for `settle` seconds (a redraw queued behind this one lands first); return the new fingerprint."""
    page.wait_for_function(f"([el, old]) => {{ const k = ({JS_PLOT_KEY})(el); return k !== '' && k !== old; }}",
                           arg=[locator.element_handle(), old], timeout=timeout*1000)
    key, t = plot_key(locator), time.time()
    while time.time() - t < settle:
        page.wait_for_timeout(100)
        k = plot_key(locator)
        if k != key and k: key, t = k, time.time()
    return key

def wait_text(page, locator, pattern:str, timeout:float=60):
    "Wait until `locator`'s text matches the regular expression `pattern`."
    page.wait_for_function("([el, p]) => new RegExp(p).test(el.innerText)", arg=[locator.element_handle(), pattern],
                           timeout=timeout*1000)
    return locator.inner_text()

def numbers(text:str)->list[float]:
    "Every number written in `text`."
    import re
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]

def drag(page, handle, dx:float, steps:int=12):
    "Drag `handle` (a locator) horizontally by `dx` pixels with the mouse, in `steps` moves, and release it."
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y); page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(x + dx * i / steps, y)
        page.wait_for_timeout(15)
    page.mouse.up()

# Installed before a drag: at the pointer's release, note the time and the slider's readout, then note the time
# at which the lab's status shows that value with a redrawn plot.
JS_ARM_LATENCY = """([root, sel]) => {
  const plot = root.querySelector(sel.plot), status = root.querySelector(sel.status);
  const readout = root.querySelector(sel.readout);
  const w = window.__clLatency = {before: plot.innerHTML};
  document.addEventListener('pointerup', () => {
    w.up = performance.now(); w.target = readout.textContent.trim().replace('\u2212', '-');   // d3-format writes U+2212
    const done = () => status.textContent.includes(sel.prefix + w.target) && plot.innerHTML !== w.before;
    if (done()) { w.plot = w.up; return; }
    const obs = new MutationObserver(() => { if (done()) { w.plot = performance.now(); obs.disconnect(); } });
    obs.observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
  }, {capture: true, once: true});
}"""

def slider_latency(page, root, dx:float, sel:dict, timeout:float=60)->tuple[float, str]:
    """Drag the slider in `root` by `dx` px; return (ms from releasing it to the plot redrawn for the released
    value, that value as the readout shows it), measured in the browser with `performance.now()`."""
    page.evaluate(JS_ARM_LATENCY, [root.element_handle(), sel])
    drag(page, root.locator(sel["handle"]).first, dx)
    page.wait_for_function("() => window.__clLatency && window.__clLatency.plot !== undefined", timeout=timeout*1000)
    w = page.evaluate("() => window.__clLatency")
    return w["plot"] - w["up"], w["target"]
