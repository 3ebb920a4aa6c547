"""mkdocs hook: serve MathJax with the site, so the math renders without internet (`mkdocs serve` offline).

MathJax 3's browser build comes from the `django-static-mathjax` wheel (the docs extra; it ships the es5/
folder and needs no Django); `on_post_build` copies it to site/javascripts/mathjax/, which
mkdocs.yml's extra_javascript loads.
"""

import shutil
from pathlib import Path

TARGET = Path("javascripts") / "mathjax"


def mathjax_es5() -> Path:
    """The es5/ folder of the installed MathJax (tex-mml-chtml.js and the fonts and extensions it loads)."""
    try:
        import mathjax
    except ImportError as err:
        raise SystemExit("The docs need MathJax served with the site: pip install -e '.[docs]'") from err
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def on_post_build(config, **kwargs):
    shutil.copytree(mathjax_es5(), Path(config["site_dir"]) / TARGET, dirs_exist_ok=True)
