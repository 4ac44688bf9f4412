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
    r = subprocess.run([sys.executable, str(ROOT/"docs"/"build.py"), "--out", str(d/"html"), "--src", str(d/"src")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(f"\n[docs] build took {time.time()-t0:.1f} s\n{r.stdout[-2000:]}")
    assert r.returncode == 0, f"docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return d/"html"

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
