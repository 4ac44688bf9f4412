"""Build collapse_lab's documentation site offline: nbdev's notebook processing + Sphinx with myst-nb.

nbdev_docs needs Quarto, which cannot be installed on the machines that build this project; `make docs` uses
nbdev_docs where `quarto` is on PATH and this script elsewhere. It runs nbdev's own processors on each notebook
(the same ones nbdev_docs uses: `show_doc` for every exported function, with its docments; directives, hidden
and export cells removed), turns each `show_doc` output into markdown, and lets Sphinx render the pages without
executing any notebook (stored outputs, if any, are shown as they are).

    .venv/bin/python docs/build.py [--out _docs] [--src _proc/sphinx]
"""
from __future__ import annotations
import argparse, json, os, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT/"docs"

def _default_exp(nb)->str|None:
    for c in nb.cells:
        if c.cell_type == "code":
            m = re.search(r"^#\|\s*default_exp\s+(\S+)", c.source, re.M)
            if m: return m.group(1)
    return None

def _title(nb)->tuple[str, str]:
    "Title and summary from nbdev's front matter (a raw cell) or the first `# title` markdown cell."
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.startswith("---"):
            import yaml
            fm = yaml.safe_load(c.source.strip().strip("-")) or {}
            return fm.get("title", ""), fm.get("description", "")
    return "", ""

def _text(x)->str: return "".join(x) if isinstance(x, list) else x

_DIRECTIVE = re.compile(r"^#\|.*\n?", re.M)

_slug = lambda s: re.sub(r"[^\w\- ]", "", s.strip().lower()).replace(" ", "-")   # MyST's heading anchor
FALLBACK = {}   # anchor of a method ("steeringvectorsteer") -> anchor of its class ("steeringvector")

def _link_rewriter(cfg, depth:int):
    """Rewrite nbdev's absolute doc links (doc_host + doc_baseurl + page.html#name) into links to this site's
    API notebooks, which Sphinx resolves (and checks) like any other cross-reference."""
    base = (cfg.doc_host.rstrip("/") + "/" + cfg.doc_baseurl.strip("/")).rstrip("/") + "/"
    up = "../" * depth
    def sub(m):
        text, page, anchor = m.group(1), m.group(2), (m.group(3) or "")[1:]
        if anchor.startswith("_"): return text                # private helpers have no entry: no link
        if "." in anchor: FALLBACK[_slug(anchor)] = _slug(anchor.split(".")[0])
        anchor = anchor and "#" + _slug(anchor)
        return f"{text}({up}api/{page}.ipynb{anchor})"
    return lambda s: re.sub(r"(\[[^\]]*\])\(" + re.escape(base) + r"([\w\-]+)\.html(#[^)\s]*)?\)", sub, s)

def _fix_anchors(src_dir:Path):
    """Point links to entries that have no heading of their own (a method documented with its class: nbdev links
    `SteeringVector.steer` to #steeringvectorsteer) at the class's entry, or else at the page: no broken anchors."""
    from execnb.nbio import read_nb, write_nb
    pages = {p: read_nb(p) for p in src_dir.rglob("*.ipynb")}
    anchors = {p.stem: {_slug(h) for c in nb.cells if c.cell_type == "markdown"
                        for h in re.findall(r"^#{1,3}\s+(.+?)\s*$", c.source, re.M)}
               for p, nb in pages.items() if p.parent.name == "api"}
    def sub(m):
        page, anchor = m.group(2), m.group(3)
        if page not in anchors or anchor in anchors[page]: return m.group(0)
        fb = FALLBACK.get(anchor)
        return m.group(1) + (f"#{fb})" if fb in anchors[page] else ")")
    for p, nb in pages.items():
        changed = False
        for c in nb.cells:
            if c.cell_type != "markdown": continue
            new = re.sub(r"(\((?:\.\./)*api/([\w\-]+)\.ipynb)#([\w\-]+)\)", sub, c.source)
            if new != c.source: c.source, changed = new, True
        if changed: write_nb(nb, p)

WARNINGS = []

def _filters():
    "nbdev's `FilterDefaults` without `exec_show_docs`: `show_doc` cells are rendered from the package instead."
    from nbdev.processors import FilterDefaults, exec_show_docs
    class Filters(FilterDefaults):
        def base_procs(self): return [p for p in super().base_procs() if p is not exec_show_docs]
    return Filters()

def _show_doc_md(source:str, module:str|None)->str:
    """Markdown of a `show_doc(...)` cell, evaluated against the exported package (`collapse_lab.<module>`):
    unlike names defined while re-running a notebook, imported objects keep their source, so classes
    (dataclasses) show the docments of their fields too."""
    import importlib
    from nbdev.showdoc import show_doc
    import collapse_lab
    ns = dict(vars(collapse_lab))
    if module: ns |= vars(importlib.import_module(f"{collapse_lab.__name__}.{module}"))
    ns["show_doc"] = show_doc
    code = _DIRECTIVE.sub("", source).strip()
    try: res = eval(code, ns)
    except Exception as e:
        WARNINGS.append(f"{module}: could not render {code!r}: {e!r}"); return ""
    return res._repr_markdown_() if hasattr(res, "_repr_markdown_") else ""

def process(src:Path, dst:Path, depth:int, cfg)->dict:
    "Process one notebook for the site; return {'title', 'module'}."
    from execnb.nbio import read_nb, write_nb, mk_cell
    nb = read_nb(src)
    module = _default_exp(nb)
    cwd = os.getcwd(); os.chdir(src.parent)              # notebooks run relative to their own folder
    try: _filters()(nb)
    finally: os.chdir(cwd)
    title, desc = _title(nb)
    relink = _link_rewriter(cfg, depth)
    cells = [mk_cell(f"# {title or src.stem}\n\n" + (f"> {desc}\n" if desc else ""), "markdown")]
    for c in nb.cells:
        if c.cell_type == "raw": continue
        if c.cell_type == "markdown":
            if "THIS FILE WAS AUTOGENERATED" in c.source: continue
            cells.append(mk_cell(relink(c.source), "markdown")); continue
        if re.fullmatch(r"show_doc\(.*\)", _DIRECTIVE.sub("", c.source).strip(), re.S):
            md = _show_doc_md(c.source, module)
            md = re.sub(r"^\s*---\s*\n", "", md)          # Quarto's rule above each entry
            md = re.sub(r"```python\n\s*\n", "```python\n", md)
            md = re.sub(r"\n\s*\n```(?!\w)", "\n```", md)       # no blank lines framing the signature
            if md.strip(): cells.append(mk_cell(relink(md), "markdown"))
            continue
        src_ = _DIRECTIVE.sub("", c.source).strip()
        if not src_: continue
        cell = mk_cell(src_, "code")
        cell["outputs"] = [o for o in c.get("outputs", []) if o.get("output_type") != "error"]
        cells.append(cell)
    nb.cells = cells
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)
    return dict(title=title or src.stem, module=module)

def stage(src_dir:Path)->dict:
    "Write the Sphinx source tree (processed notebooks + index) into `src_dir`; return what it holds."
    from nbdev.config import get_config
    cfg = get_config()
    nbs = cfg.nbs_path
    if src_dir.exists(): shutil.rmtree(src_dir)
    src_dir.mkdir(parents=True)
    api, tutorials = [], []
    for p in sorted(nbs.glob("*.ipynb")):
        if p.name == "index.ipynb" or p.name.startswith("_"): continue
        name = re.sub(r"^\d+[a-z]?_", "", p.stem)
        info = process(p, src_dir/"api"/f"{name}.ipynb", 1, cfg)
        api.append(f"api/{name}")
    for p in sorted((nbs/"tutorials").glob("*.ipynb")) if (nbs/"tutorials").exists() else []:
        if p.name.startswith("_"): continue
        process(p, src_dir/"tutorials"/p.name, 1, cfg)
        tutorials.append(f"tutorials/{p.stem}")
    process(nbs/"index.ipynb", src_dir/"index.ipynb", 0, cfg)
    # the navigation: tutorials and API pages, appended to the index page as hidden toctrees
    from execnb.nbio import read_nb, write_nb, mk_cell
    idx = read_nb(src_dir/"index.ipynb")
    toc = lambda cap, items: f"```{{toctree}}\n:caption: {cap}\n:maxdepth: 1\n:hidden:\n\n" + "\n".join(items) + "\n```\n"
    if tutorials: idx.cells.append(mk_cell(toc("Tutorials", tutorials), "markdown"))
    idx.cells.append(mk_cell(toc("API", api), "markdown"))
    write_nb(idx, src_dir/"index.ipynb")
    imgs = nbs/"images"
    if imgs.exists(): shutil.copytree(imgs, src_dir/"images")
    _fix_anchors(src_dir)
    return dict(api=api, tutorials=tutorials)

def build(out:Path, src_dir:Path)->dict:
    for name, d in (("--out", out), ("--src", src_dir)):       # both are replaced wholesale
        if d == ROOT or ROOT.is_relative_to(d) or d in (ROOT/"nbs", DOCS):
            sys.exit(f"{name} {d} would replace the repository or its sources: pass a folder of its own, e.g. _docs.")
    t0 = time.time()
    info = stage(src_dir)
    t1 = time.time()
    # Sphinx writes into a folder beside the staged sources: myst-nb puts its `jupyter_execute/` next to the output
    # folder, which must not be the repository (the site then moves to `out`).
    html = src_dir.parent/f"{src_dir.name}_html"
    if html.exists(): shutil.rmtree(html)
    r = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(DOCS), str(src_dir), str(html)],
                       cwd=ROOT)
    if r.returncode: sys.exit(f"sphinx-build failed ({r.returncode})")
    if out.exists(): shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(html), str(out))
    for w in WARNINGS: print("docs warning:", w)
    print(f"docs: {len(info['api'])} API pages, {len(info['tutorials'])} tutorials -> {out}/index.html "
          f"(processing {t1-t0:.1f} s, sphinx {time.time()-t1:.1f} s)")
    return info

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT/"_docs"), help="folder for the HTML site")
    ap.add_argument("--src", default=str(ROOT/"_proc"/"sphinx"), help="staging folder for the Sphinx sources")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings; warnings.filterwarnings("ignore", message="Found cells containing imports")
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))                        # the package as the notebooks export it, installed or not
    build(Path(a.out).resolve(), Path(a.src).resolve())
