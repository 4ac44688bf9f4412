"""The offline docs site (docs/build.py, what `make docs` runs without Quarto) builds, has one API page per
module listing each public function and class with its docments, and has the tutorials in its navigation."""
import html, importlib, inspect, json, re, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/"nbs"

def _modules():
    "(module name, page name) for every notebook in nbs/ that exports a module."
    out = []
    for p in sorted(NBS.glob("*.ipynb")):
        src = "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code")
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", src, re.M)
        if m: out.append((m.group(1), re.sub(r"^\d+[a-z]?_", "", p.stem)))
    return out

def _text(path:Path)->str:
    "The visible text of an HTML page, tags stripped and entities decoded, whitespace collapsed."
    s = re.sub(r"<(script|style)\b.*?</\1>", " ", path.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", s)))

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx"); pytest.importorskip("myst_nb")
    d = tmp_path_factory.mktemp("docs")
    t0 = time.time()
    # the repository's own layout (`make docs`: _docs/ and _proc/sphinx/), in a folder of its own
    r = subprocess.run([sys.executable, str(ROOT/"docs"/"build.py"), "--out", str(d/"_docs"), "--src", str(d/"_proc"/"sphinx")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(f"\n[docs] build took {time.time()-t0:.1f} s\n{r.stdout[-2000:]}")
    assert r.returncode == 0, f"docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    warnings = [l for l in r.stderr.splitlines() if "WARNING" in l]
    assert not warnings, "Sphinx warns:\n" + "\n".join(warnings[:20])
    left = sorted(p.name for p in d.iterdir() if p.name not in ("_docs", "_proc"))
    assert not left, f"the docs build left {left} beside _docs/ (in the repository it would be untracked litter)"
    return d/"_docs"

@pytest.mark.parametrize("module,page", _modules())
def test_api_page_lists_public_functions_with_docments(site, module, page):
    from fastcore.docments import docments
    path = site/"api"/f"{page}.html"
    assert path.exists(), f"no API page for collapse_lab.{module} ({path.name})"
    raw, text = path.read_text(), _text(path)
    mod = importlib.import_module(f"collapse_lab.{module}")
    public = [n for n in getattr(mod, "__all__", []) if (inspect.isfunction(getattr(mod, n)) or inspect.isclass(getattr(mod, n)))
              and getattr(getattr(mod, n), "__module__", None) == mod.__name__]
    assert public or not getattr(mod, "__all__", []), f"collapse_lab.{module} exports nothing documentable"
    for name in public:
        obj = getattr(mod, name)
        assert re.search(rf'<h\d[^>]*>\s*{re.escape(name)}\s*<a class="headerlink"', raw), f"{page}: no entry for {name}"
        for arg, doc in docments(obj).items():
            if doc and arg != "return":
                assert " ".join(doc.split()) in text, f"{page}: docment of {name}({arg}) missing: {doc!r}"

def test_navigation_has_api_pages_and_tutorials(site):
    idx = (site/"index.html").read_text()
    for _, page in _modules(): assert f'href="api/{page}.html"' in idx, f"api/{page}.html not in the navigation"
    tutorials = sorted((NBS/"tutorials").glob("*.ipynb")) if (NBS/"tutorials").exists() else []
    for t in tutorials:
        assert f'href="tutorials/{t.stem}.html"' in idx, f"tutorials/{t.stem}.html not in the navigation"
        assert (site/"tutorials"/f"{t.stem}.html").exists()

def test_nbdev_links_point_into_the_site(site):
    "Backticked names that nbdev links (e.g. `tiny_model`) lead to this site's API pages, not to an absent host."
    pages = [p.read_text() for p in (site/"api").glob("*.html")]
    assert not any("collapse-lab.github.io" in p for p in pages)


def _readme_links(text:str)->list[str]:
    "Relative link and picture targets in a markdown text (http(s) links and anchors left out)."
    found = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    return [t.split("#")[0] for t in found if not re.match(r"[a-z]+:", t) and not t.startswith("#")]

def test_readme_is_rendered_from_index_and_its_links_work(tmp_path):
    "README.md is what `make readme` makes of nbs/index.ipynb, and each picture and link it names exists."
    r = subprocess.run([str(Path(sys.executable).parent/"jupyter"), "nbconvert", "--to", "markdown", str(NBS/"index.ipynb"),
                        "--output-dir", str(tmp_path), "--output", "README"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    fresh = re.sub(r'\]\((images|tutorials)/', r'](nbs/\1/', (tmp_path/"README.md").read_text())
    fresh = re.sub(r'src="(images|tutorials)/', r'src="nbs/\1/', fresh)
    readme = (ROOT/"README.md").read_text()
    squash = lambda t: re.sub(r"\s+", " ", t).strip()        # whitespace may differ between nbconvert versions
    assert squash(readme) == squash(fresh), "README.md is stale: run `make readme`"
    links = _readme_links(readme)
    missing = [t for t in links if not (ROOT/t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    for t in links:
        if t.endswith(".png"): assert (ROOT/t).stat().st_size < 300_000, f"{t} is large for a README picture"


def test_stored_outputs_are_shown(tmp_path):
    """A notebook that carries outputs (a tutorial after `make tutorials`) shows them on its page, as they are: a
    figure, printed text and a table, without running anything; an error output is left out."""
    pytest.importorskip("sphinx"); pytest.importorskip("myst_nb")
    import base64, io
    import matplotlib; matplotlib.use("agg")
    import matplotlib.pyplot as plt
    sys.path.insert(0, str(ROOT/"docs"))
    import build
    from nbdev.config import get_config
    fig, ax = plt.subplots(figsize=(2, 1.5)); ax.plot([0, 1], [1, 0]); buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    code = lambda i, src, outs: {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": outs, "source": src}
    nb = {"cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# Stored outputs\n\nA figure:"},
                    code(0, "print(6 * 7)", [{"output_type": "stream", "name": "stdout", "text": "the answer is 42\n"}]),
                    code(1, "plt.plot([0, 1], [1, 0])", [{"output_type": "display_data", "metadata": {},
                          "data": {"image/png": png, "text/plain": "<Figure size 200x150 with 1 Axes>"}}]),
                    code(2, "df", [{"output_type": "execute_result", "execution_count": 3, "metadata": {},
                          "data": {"text/html": "<table><tr><td>cell 7.25</td></tr></table>", "text/plain": "7.25"}}]),
                    code(3, "1/0", [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": []}])],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path/"nbs").mkdir(); (tmp_path/"nbs"/"stored.ipynb").write_text(json.dumps(nb))
    src = tmp_path/"src"
    build.process(tmp_path/"nbs"/"stored.ipynb", src/"stored.ipynb", 0, get_config())
    (src/"index.md").write_text("# Site\n\n```{toctree}\nstored\n```\n")
    r = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(ROOT/"docs"), str(src), str(tmp_path/"site"/"html")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path/"site"/"html"/"stored.html").read_text()
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert imgs and all((tmp_path/"site"/"html"/i).is_file() for i in imgs), f"the stored figure is not on the page: {imgs}"
    text = _text(tmp_path/"site"/"html"/"stored.html")
    assert "the answer is 42" in text and "cell 7.25" in text
    assert "ZeroDivisionError" not in text
