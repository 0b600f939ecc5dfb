"""The notebooks of docs/notebooks run from a clean kernel, through cnnrun.api only, and
what they show holds; the copies in the repository keep their outputs for the site."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "docs", "notebooks")
NOTEBOOKS = sorted(name for name in os.listdir(FOLDER) if name.endswith(".ipynb"))


def printed(book):
    return "".join(o.get("text", "") for cell in book.cells if cell.cell_type == "code" for o in cell.outputs
                   if o.output_type == "stream")


def test_every_notebook_has_its_page_and_is_stored_with_its_outputs():
    assert NOTEBOOKS == ["attack-and-defend.ipynb", "backward-by-hand.ipynb", "inside-a-network.ipynb"]
    for name in NOTEBOOKS:
        page = os.path.join(FOLDER, name.replace(".ipynb", ".md"))
        assert open(page).read().strip() == f"<!-- notebook: {name} -->"
        book = nbformat.read(os.path.join(FOLDER, name), as_version=4)
        code = [cell for cell in book.cells if cell.cell_type == "code"]
        assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # run top to bottom
        assert not any(o.output_type == "error" for cell in code for o in cell.outputs)


def test_notebooks_import_nothing_of_cnnrun_but_its_api():
    for name in NOTEBOOKS:
        book = nbformat.read(os.path.join(FOLDER, name), as_version=4)
        source = "\n".join(cell.source for cell in book.cells if cell.cell_type == "code")
        assert set(re.findall(r"^\s*(?:from|import) (cnnrun[\w.]*)(?: import (\w+))?", source, re.M)) == {("cnnrun", "api")}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_runs_and_shows_what_it_claims(name, tmp_path):
    book = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = printed(book)
    pictures = sum("image/png" in o.get("data", {}) for cell in book.cells if cell.cell_type == "code"
                   for o in cell.outputs)
    if name == "backward-by-hand.ipynb":
        errors = [float(v) for v in re.findall(r"\d\.\de[+-]\d+", text)]
        assert len(errors) == 6 and max(errors) < 1e-7
    elif name == "attack-and-defend.ipynb":
        (plain, defended) = [float(v) for v in re.findall(r"PGD at 0.1 ([0-9.]+)", text)]
        assert defended > plain + 0.3 and pictures == 1
    else:
        ig, rise = (float(v) for v in re.search(r"sum to ([-0-9.]+); the logit rose by ([-0-9.]+)", text).groups())
        assert abs(ig - rise) <= 0.01 * abs(rise) and pictures == 3
