"""The committed notebooks: they carry the outputs of the current smoke run, and read as a course.

Regenerate them with ``python reproduce.py --all --update-notebooks`` after changing a code cell.
"""
import re
import sys
from pathlib import Path

import nbformat
import pytest

from pst.repro.notebooks import (
    INJECTED_TAG,
    METADATA_KEY,
    PARAMETERS_TAG,
    code_digest,
    for_commit,
    problems,
    unsupported_numbers,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from reproduce import NOTEBOOKS  # noqa: E402

COMMON_PARAMETERS = ("profile", "out_dir", "shard", "force")


def _read(name):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _words(notebook):
    return sum(len(re.findall(r"[A-Za-z]{2,}", cell.source)) for cell in notebook.cells if cell.cell_type == "markdown")


def _images(notebook):
    return sum("image/png" in output.get("data", {}) for cell in _code_cells(notebook) for output in cell.outputs)


def test_every_notebook_file_is_run_by_reproduce_and_there_are_at_least_eight():
    assert sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb")) == sorted(NOTEBOOKS)
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_carries_the_outputs_of_its_current_code(name):
    notebook = _read(name)
    stamp = notebook.metadata.get(METADATA_KEY, {}).get("code_digest")
    assert stamp is not None, f"{name} has no outputs from a smoke run: python reproduce.py --all --update-notebooks"
    assert stamp == code_digest(notebook), (
        f"{name}: code cells changed since the outputs were made: python reproduce.py --all --update-notebooks")
    assert problems(notebook) == []
    code = _code_cells(notebook)
    assert sum(bool(cell.outputs) for cell in code) >= len(code) / 2, f"{name}: most code cells show nothing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_teaches_and_takes_the_common_parameters(name):
    notebook = _read(name)
    tagged = [cell for cell in notebook.cells if PARAMETERS_TAG in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged {PARAMETERS_TAG!r}"
    assert all(re.search(rf"^{p}\s*=", tagged[0].source, re.M) for p in COMMON_PARAMETERS)
    assert not any(INJECTED_TAG in cell.metadata.get("tags", []) for cell in notebook.cells)
    assert notebook.cells[0].cell_type == "markdown" and _words(notebook) >= 150, f"{name}: too little prose"


def test_the_notebooks_show_at_least_eight_figures():
    assert sum(_images(_read(name)) for name in NOTEBOOKS) >= 8


def _executed():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("out_dir = '../out'", metadata={"tags": [PARAMETERS_TAG]}),
        nbformat.v4.new_code_cell("out_dir = '/tmp/run/out'", metadata={"tags": [INJECTED_TAG], "papermill": {}}),
        nbformat.v4.new_code_cell("print(ws.root)", metadata={"papermill": {"duration": 1.0}}, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="wrote /tmp/run/out/tables/x.md\n"),
            nbformat.v4.new_output("display_data", data={"text/plain": "/home/me/pst/notebooks"}),
        ]),
    ]
    notebook.metadata["papermill"] = {"parameters": {"out_dir": "/tmp/run/out"}}
    return notebook


def test_for_commit_drops_the_injected_cell_and_the_machine_and_stamps_the_code():
    committed = for_commit(_executed(), {"/tmp/run/out": "../out", "/home/me/pst": ".."})
    assert [cell.source for cell in committed.cells] == ["out_dir = '../out'", "print(ws.root)"]
    outputs = committed.cells[1].outputs
    assert outputs[0].text == "wrote ../out/tables/x.md\n" and outputs[1].data["text/plain"] == "../notebooks"
    assert "papermill" not in committed.metadata and "papermill" not in committed.cells[1].metadata
    assert committed.metadata[METADATA_KEY]["code_digest"] == code_digest(committed) == code_digest(_executed())
    assert problems(committed) == []


def test_problems_name_error_outputs_and_absolute_paths():
    notebook = _executed()
    notebook.cells[2].outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[]))
    found = problems(notebook)
    assert any("error output ValueError: bad" in p for p in found)
    assert any("absolute path '/tmp/'" in p for p in found) and any("'/home/'" in p for p in found)


def test_update_notebooks_refuses_anything_but_the_smoke_defaults(capsys):
    from reproduce import parse_args

    for argv in (["--all", "--update-notebooks", "--profile", "paper"],
                 ["--all", "--update-notebooks", "-p", "steps=3"],
                 ["--all", "--update-notebooks", "--dry-run"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert "--update-notebooks writes the smoke run" in capsys.readouterr().err


def _claims(prose, printed):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("print(table)", outputs=[nbformat.v4.new_output("stream", name="stdout", text=printed)]),
        nbformat.v4.new_markdown_cell(prose),
    ]
    return notebook


def test_prose_that_quotes_a_number_no_output_holds_is_not_fit_to_commit():
    printed = "PST 56.9  MaP 59.2  params 30464  share 82.3%\n"
    assert unsupported_numbers(_claims("PST reaches 56.9% against MaP's 59.2, with 30,464 parameters; 82.3% kept.",
                                       printed)) == []
    assert unsupported_numbers(_claims("82% kept, a share of 0.82; PST at 57% of 100", "share 0.823 57.1\n")) == []
    doctored = _claims("PST reaches 57.9% against MaP's 59.2; 83% of its weights are kept.", printed)
    found = unsupported_numbers(doctored)
    assert found == ["cell 1: the prose states 57.9, which no output holds",
                     "cell 1: the prose states 83, which no output holds"]
    assert found[0] in problems(doctored)
    # a number inside a longer one is not held: 6.9 is not 56.9, 159.2 is not 59.2
    assert len(unsupported_numbers(_claims("6.9 and 159.2", printed))) == 2
    # settings of the paper, plain integers and years are not result claims
    assert unsupported_numbers(_claims("At 90% sparsity with 10% warm-up, 8 layers (IJCAI 2022).", printed)) == []
    assert unsupported_numbers(_claims("Try `-p model=meta-llama/Llama-3.2-1B`.", printed)) == []  # a name in code


def test_for_commit_drops_progress_bar_widgets():
    executed = _executed()
    executed.cells[2].outputs.append(nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "0%|"}))
    executed.metadata["widgets"] = {"state": {}}
    committed = for_commit(executed, {"/tmp/run/out": "../out", "/home/me/pst": ".."})
    assert len(committed.cells[1].outputs) == 2 and "widgets" not in committed.metadata
    assert problems(committed) == []


def test_progress_bars_and_widget_state_are_not_fit_to_commit():
    notebook = _executed()
    notebook.cells[2].outputs.append(nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "bar"}))
    notebook.cells[2].outputs.append(nbformat.v4.new_output("stream", name="stderr", text="run:  0%|    | 0/16 [00:00]"))
    notebook.metadata["widgets"] = {"state": {}}
    found = problems(notebook)
    assert "notebook metadata holds widget state" in found
    assert sum("progress bar or widget" in p for p in found) == 2
