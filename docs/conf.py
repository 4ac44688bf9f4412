# Sphinx configuration for the offline docs site (see docs/build.py; `make docs`).
from configparser import ConfigParser
from pathlib import Path

_cfg = ConfigParser(delimiters=["="])
_cfg.read(Path(__file__).resolve().parents[1]/"settings.ini", encoding="utf-8")
_cfg = _cfg["DEFAULT"]

project = _cfg["title"]
author = _cfg["author"]
copyright = _cfg["copyright"]
release = version = _cfg["version"]

extensions = ["myst_nb"]
nb_execution_mode = "off"              # render what the notebooks hold; never execute them while building
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"{project} {version}"
html_static_path = ["_static"]            # docs/_static, beside this file
html_css_files = ["collapse_lab.css"]     # long code lines wrap instead of running past the column
