"""MkDocs hook: `<!-- notebook: NAME.ipynb -->` in a page becomes that notebook (beside
the page) as it was last run: its markdown, its code, and its outputs (text, and pictures
embedded). The notebooks are run again by the tests (tests/test_notebooks.py); a
notebook whose stored outputs hold an error fails the build."""

import os
import re

MARKER = re.compile(r"<!-- notebook: ([\w.-]+\.ipynb) -->")


def _text(value):
    return "".join(value) if isinstance(value, list) else value


def notebook_markdown(path):
    import nbformat

    book = nbformat.read(path, as_version=4)
    download = f"[Download the notebook]({os.path.basename(path)}) (run it with Jupyter, beside an installed cnnrun)."
    out = []
    for index, cell in enumerate(book.cells):
        source = _text(cell.source)
        if cell.cell_type == "markdown":
            out += [source, ""] + ([download, ""] if index == 0 else [])
            continue
        if cell.cell_type != "code":
            continue
        out += ["```python", source, "```", ""]
        for output in cell.get("outputs", []):
            kind = output["output_type"]
            if kind == "error":
                raise ValueError(f"{path}: a stored output is an error ({output.get('ename')}): run it again")
            if kind == "stream":
                out += ["```text", _text(output["text"]).rstrip("\n"), "```", ""]
                continue
            data = output.get("data", {})
            if "image/png" in data:
                png = _text(data["image/png"]).replace("\n", "")
                out += [f'<img alt="output" src="data:image/png;base64,{png}">', ""]
            elif "text/plain" in data:
                out += ["```text", _text(data["text/plain"]), "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    folder = os.path.dirname(page.file.abs_src_path)
    return MARKER.sub(lambda m: notebook_markdown(os.path.join(folder, m.group(1))), markdown)
