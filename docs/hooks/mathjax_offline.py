"""MkDocs hook: the site serves MathJax itself, so its equations render with no network.

MathJax 3.2.2 comes from a Python package (django-static-mathjax, in the `[docs]`
extra); after each build its browser files are copied into the site under
assets/mathjax/, and every page loads them from there, never from another host."""

import os
import shutil

TARGET = "assets/mathjax"
SCRIPT = TARGET + "/tex-mml-chtml.js"
# The bundle a page loads, and the folders it fetches from on demand (TeX extensions,
# fonts, the menu, accessibility).
PARTS = ("tex-mml-chtml.js", "input", "output", "ui", "a11y", "adaptors", "sre")


def mathjax_dir():
    try:
        import mathjax
    except ImportError:
        raise SystemExit("the docs need MathJax from the docs extra: pip install -e '.[docs]'") from None
    return os.path.join(os.path.dirname(mathjax.__file__), "static", "mathjax", "es5")


def on_config(config):
    if SCRIPT not in [str(s) for s in config.extra_javascript]:
        config.extra_javascript.append(SCRIPT)
    return config


def on_post_build(config):
    source, target = mathjax_dir(), os.path.join(config.site_dir, TARGET)
    for part in PARTS:
        path = os.path.join(source, part)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(target, part), dirs_exist_ok=True)
        else:
            os.makedirs(target, exist_ok=True)
            shutil.copy2(path, os.path.join(target, part))
