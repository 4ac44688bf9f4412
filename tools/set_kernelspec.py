"""Give every notebook under nbs/ the Python 3 kernelspec, so JupyterLab opens it without asking for a kernel.

Metadata only, one quick read-modify-write per file (other cells and metadata untouched), in nbdev's format.

    .venv/bin/python tools/set_kernelspec.py [--check]
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}

def missing()->list[Path]:
    "Notebooks under nbs/ whose kernelspec is not the Python 3 one (nbdev_clean's display_name 'python3' is accepted)."
    out = []
    for p in sorted((ROOT/"nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in p.parts: continue
        ks = json.loads(p.read_text(encoding="utf-8")).get("metadata", {}).get("kernelspec", {})
        if ks.get("name") != "python3" or ks.get("language", "python") != "python": out.append(p)
    return out

if __name__ == "__main__":
    todo = missing()
    if "--check" in sys.argv:
        if todo: sys.exit(f"no Python 3 kernelspec: {[str(p.relative_to(ROOT)) for p in todo]}")
        sys.exit(0)
    for p in todo:
        nb = json.loads(p.read_text(encoding="utf-8"))
        nb.setdefault("metadata", {})["kernelspec"] = dict(KERNELSPEC)
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print("kernelspec:", p.relative_to(ROOT))
