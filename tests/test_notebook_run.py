"""The notebook executor: runs a notebook with the inline backend, records its source's hash, keeps the caps."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from covidct.errors import CovidctError
from covidct.notebook_run import (
    METADATA_KEY,
    _select,
    check_executed,
    clean_outputs,
    datasets_used,
    execute_notebook,
    executed_copy_path,
    inject_parameters,
    kernel_environment,
    local_paths,
    main,
    notebook_bytes,
    notice_problems,
    parameter_value,
    parse_parameters,
    shrink_images,
    source_notebooks,
    source_sha256,
)


def parameters_cell(extra: str = ""):
    cell = nbformat.v4.new_code_cell('import os\nSMOKE = os.environ.get("COVIDCT_SMOKE", "0") == "1"\nRUN = ""' + extra)
    cell.metadata["tags"] = ["parameters"]
    return cell


def write_notebook(path, cells):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = cells
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_executes_in_smoke_mode_with_inline_figures_and_records_the_source_hash(tmp_path, monkeypatch):
    # The Makefile exports MPLBACKEND=Agg; the kernel must still draw with the inline backend.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("COVIDCT_SMOKE", raising=False)
    monkeypatch.setenv("COVIDCT_DATA_ROOT", str(tmp_path / "datasets"))
    (tmp_path / "datasets").mkdir()
    notebooks = tmp_path / "notebooks"
    source = write_notebook(notebooks / "00_tiny.ipynb", [
        nbformat.v4.new_markdown_cell("# 00 · tiny"),
        parameters_cell(),
        nbformat.v4.new_code_cell(
            'import matplotlib\nprint("Data: real dataset \'sars-cov-2-ct\' from", os.environ["COVIDCT_DATA_ROOT"])\n'
            'print("SMOKE", SMOKE, "RUN", RUN, matplotlib.get_backend())\n'
            'print(os.environ["COVIDCT_DATA_ROOT"] + "/sars-cov-2-ct", os.getcwd())'),
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\nfrom IPython.display import display\n"
            "figure, axis = plt.subplots(figsize=(3, 2))\naxis.plot([0, 1], [0, 1])\ndisplay(figure)\nplt.close(figure)"),
    ])
    done = execute_notebook(source, tmp_path / "executed", notebooks_dir=notebooks, smoke=True,
                            parameters={"RUN": "runs/x", "NOT_A_PARAMETER": "1"}, repo=tmp_path, timeout=120)

    assert done.copy == tmp_path / "executed" / "00_tiny.ipynb"
    executed = nbformat.read(done.copy, as_version=4)
    record = executed.metadata[METADATA_KEY]
    assert record["source_sha256"] == source_sha256(source)
    assert record["mode"] == "smoke" and record["parameters"] == {"RUN": "runs/x"} and record["image_scale"] == 1.0
    assert record["executed_copy_of"] == "notebooks/00_tiny.ipynb"
    assert record["commit"] == "unknown"  # tmp_path is no git checkout
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert code[1].metadata["tags"] == ["injected-parameters"] and code[1].source == "RUN = 'runs/x'"
    printed = "".join(output["text"] for output in code[2].outputs if output["output_type"] == "stream")
    assert "SMOKE True RUN runs/x module://matplotlib_inline.backend_inline" in printed
    # local paths are replaced: the data root and the checkout
    assert "$COVIDCT_DATA_ROOT/sars-cov-2-ct <repo>/notebooks" in printed and str(tmp_path) not in printed
    images = [output["data"]["image/png"] for output in code[3].outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1
    image = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert image.format == "PNG" and 250 < image.size[0] <= 300 and 150 < image.size[1] <= 200  # 3 x 2 in, tight
    # the source stays stripped and its hash equals the hash of the same notebook with outputs
    assert source_sha256(done.copy) != source_sha256(source)  # the injected cell differs
    assert check_executed(notebooks, tmp_path / "executed") == [
        "00_tiny.ipynb: its copy " + str(done.copy) + " was executed in 'smoke' mode, not 'full'"]
    # the dataset it said it used is recorded, and the notice must name it on the notebook's row
    assert record["datasets_used"] == ["sars-cov-2-ct"]
    notice = tmp_path / "executed" / "NOTICE.md"
    assert notice_problems(tmp_path / "executed") == [
        f"00_tiny.ipynb: used the real dataset 'sars-cov-2-ct' but {notice} does not name it on the notebook's row; "
        "add what it shows and under which licence"]
    notice.write_text("| notebook | datasets |\n|---|---|\n| 00_tiny.ipynb | `sars-cov-2-ct` |\n")
    assert notice_problems(tmp_path / "executed") == []


def test_full_mode_unsets_smoke_and_smoke_mode_sets_it():
    full = kernel_environment(smoke=False, base={"COVIDCT_SMOKE": "1", "MPLBACKEND": "Agg", "PATH": "/bin"})
    assert full == {"PATH": "/bin"}
    assert kernel_environment(smoke=True, base={"MPLBACKEND": "Agg"}) == {"COVIDCT_SMOKE": "1"}


def test_a_failing_cell_writes_no_copy(tmp_path):
    notebooks = tmp_path / "notebooks"
    source = write_notebook(notebooks / "01_fails.ipynb", [parameters_cell(), nbformat.v4.new_code_cell("1 / 0")])
    with pytest.raises(CovidctError, match="01_fails.ipynb failed while executing .smoke mode.; no copy written"):
        execute_notebook(source, tmp_path / "executed", smoke=True, repo=tmp_path, timeout=120)
    assert not (tmp_path / "executed").exists()


def oversized_notebook(n_images: int = 3, side: int = 600):
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("display(figure)")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            "image/png": base64.b64encode(png_bytes(side, side, seed=k)).decode("ascii"), "text/plain": "<Figure>"})
        for k in range(n_images)
    ]
    notebook.cells = [cell]
    return notebook


def test_images_are_reencoded_until_the_notebook_fits_its_cap():
    notebook = oversized_notebook()
    before = notebook_bytes(notebook)
    assert before > 3 * 600 * 600 * 3  # noise does not compress: three ~1.1 MB PNGs, base64 on top
    cap = 1_000_000
    scale = shrink_images(notebook, cap_bytes=cap, name="big.ipynb")
    assert notebook_bytes(notebook) <= cap < before
    assert scale < 1.0
    sides = {Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"]))).size
             for output in notebook.cells[0].outputs}
    assert sides == {(round(600 * scale), round(600 * scale))}
    assert all(output["data"]["text/plain"] == "<Figure>" for output in notebook.cells[0].outputs)


def test_a_notebook_within_its_cap_is_left_as_it_is():
    notebook = oversized_notebook(n_images=1, side=100)
    data = notebook.cells[0].outputs[0]["data"]["image/png"]
    assert shrink_images(notebook, cap_bytes=10_000_000) == 1.0
    assert notebook.cells[0].outputs[0]["data"]["image/png"] == data


def test_a_notebook_still_over_its_cap_fails_loudly():
    notebook = oversized_notebook(n_images=1, side=100)
    notebook.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="x" * 50_000))
    with pytest.raises(CovidctError, match=r"big.ipynb: .* bytes with its 1 figure\(s\) shrunk to 30%, over the "
                                           r"20,000-byte cap"):
        shrink_images(notebook, cap_bytes=20_000, name="big.ipynb")


def test_progress_bars_collapse_and_long_texts_are_cut():
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="epoch 1\r 10%\r 50%\r100%\nloaded /data/x/a.png\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": "y" * 30_000}, execution_count=1),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "a"},
                                                     "text/plain": "bar"}),
    ]
    notebook.cells = [cell]
    notebook.metadata["widgets"] = {"state": {}}
    clean_outputs(notebook, {"/data": "$COVIDCT_DATA_ROOT"})
    assert cell.outputs[0]["text"] == "100%\nloaded $COVIDCT_DATA_ROOT/x/a.png\n"
    text = cell.outputs[1]["data"]["text/plain"]
    assert len(text) < 20_100 and "[... 10,000 characters left out of the executed copy ...]" in text
    assert cell.outputs[2]["data"] == {"text/plain": "bar"} and "widgets" not in notebook.metadata


def test_local_paths_hide_the_data_root_checkout_and_python(monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDCT_DATA_ROOT", "data")  # relative: only its absolute form is replaced, never "data"
    paths = local_paths(tmp_path)
    assert paths == {str(tmp_path.resolve()): "<repo>", sys.prefix: "<python>",
                     str(Path("data").resolve()): "$COVIDCT_DATA_ROOT"}


def test_datasets_used_are_read_from_the_data_line():
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(DATA)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="Data: real dataset 'covid-ct-md' from /d\n"),
                    nbformat.v4.new_output("execute_result", execution_count=1, data={
                        "text/plain": "Data: synthetic phantoms ('phantom'), because 'medseg' was not found"})]
    notebook.cells = [nbformat.v4.new_markdown_cell("Data: real dataset 'not-this' (markdown)"), cell]
    assert datasets_used(notebook) == ["covid-ct-md", "phantom"]


def test_source_hash_ignores_outputs_but_not_code(tmp_path):
    stripped = write_notebook(tmp_path / "a.ipynb", [parameters_cell()])
    with_outputs = nbformat.read(stripped, as_version=4)
    with_outputs.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi")]
    with_outputs.cells[0].execution_count = 4
    nbformat.write(with_outputs, tmp_path / "b.ipynb")
    changed = write_notebook(tmp_path / "c.ipynb", [parameters_cell("\nSIZE = 64")])
    # nbformat writes cell ids: give c the same id so only the code differs
    content = json.loads(changed.read_text())
    content["cells"][0]["id"] = json.loads(stripped.read_text())["cells"][0]["id"]
    changed.write_text(json.dumps(content))
    assert source_sha256(stripped) == source_sha256(tmp_path / "b.ipynb")
    assert source_sha256(stripped) != source_sha256(changed)


def make_copy(source, notebooks, out, digest=None, mode="full", padding=0):
    copy = executed_copy_path(source, notebooks, out)
    notebook = nbformat.read(source, as_version=4)
    notebook.metadata[METADATA_KEY] = {"source_sha256": digest or source_sha256(source), "mode": mode,
                                       "commit": "0123456789abcdef"}
    if padding:
        notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * padding)]
    copy.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, copy)
    return copy


def test_check_finds_stale_missing_orphan_and_oversized_copies(tmp_path):
    notebooks, out = tmp_path / "notebooks", tmp_path / "docs"
    fresh = write_notebook(notebooks / "00_a.ipynb", [parameters_cell()])
    stale = write_notebook(notebooks / "01_b.ipynb", [parameters_cell()])
    write_notebook(notebooks / "02_c.ipynb", [parameters_cell()])
    template = write_notebook(notebooks / "templates" / "new_model.ipynb", [parameters_cell()])
    assert source_notebooks(notebooks) == [fresh, stale, notebooks / "02_c.ipynb", template]
    make_copy(fresh, notebooks, out)
    make_copy(stale, notebooks, out)
    make_copy(template, notebooks, out, padding=7_000)
    assert check_executed(notebooks, out, allow_missing={"02_c.ipynb"}) == []
    assert check_executed(notebooks, out) == [
        f"02_c.ipynb: no executed copy at {out / '02_c.ipynb'}; run `make notebooks-executed ONLY=02_c.ipynb`"]

    write_notebook(stale, [parameters_cell("\nSIZE = 64")])  # the source changes, its copy is not refreshed
    make_copy(fresh, notebooks, out, mode="smoke")
    (out / "99_gone.ipynb").write_text((out / "00_a.ipynb").read_text())
    problems = check_executed(notebooks, out, allow_missing={"02_c.ipynb"}, cap_bytes=4_000, total_cap_bytes=8_000)
    assert problems[0] == f"00_a.ipynb: its copy {out / '00_a.ipynb'} was executed in 'smoke' mode, not 'full'"
    assert problems[1].startswith("01_b.ipynb: changed since its executed copy") and "commit 0123456789ab" in problems[1]
    assert problems[2].startswith(f"templates/new_model.ipynb: executed copy {out / 'templates' / 'new_model.ipynb'} is ")
    assert problems[2].endswith("bytes, over the 4,000-byte cap")
    assert problems[3] == f"{out / '99_gone.ipynb'}: executed copy without a source notebook; delete it"
    assert problems[4].startswith(f"{out}: executed copies hold ") and problems[4].endswith("over the 8,000-byte cap")
    assert len(problems) == 5


def test_parameters_and_selection_name_notebooks(tmp_path):
    assert parse_parameters(["RUN=../runs/a:b", "08_cm:RUN=x", "templates/new_model:SIZE=1"],
                            ["08_cm", "new_model"]) == {"*": {"RUN": "../runs/a:b"}, "08_cm": {"RUN": "x"},
                                                        "new_model": {"SIZE": "1"}}
    with pytest.raises(CovidctError, match="Did you mean: 08_cm"):
        parse_parameters(["08_c:RUN=x"], ["08_cm"])
    with pytest.raises(CovidctError, match="write \\[NOTEBOOK:\\]NAME=VALUE"):
        parse_parameters(["RUN"], [])
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [parameters_cell()]
    assert inject_parameters(notebook, {"RUN": "r", "OTHER": "o"}) == ["OTHER"]
    assert notebook.cells[1].source == "RUN = 'r'"
    # Values are read as papermill's -p reads them: numbers, booleans and lists typed, anything else a string.
    assert [parameter_value(text) for text in ("20", "[32, 64, 64]", "false", "../runs/x", "1e-3")] == [
        20, [32, 64, 64], False, "../runs/x", "1e-3"]

    notebooks = tmp_path / "notebooks"
    sources = [write_notebook(notebooks / name, [parameters_cell()])
               for name in ("00_quickstart.ipynb", "08_confusion_matrices.ipynb", "templates/new_model.ipynb")]
    assert _select(sources, notebooks, ["08_confusion_matrices", "templates/new_model,00_quickstart.ipynb"]) == [
        sources[1], sources[2], sources[0]]
    with pytest.raises(CovidctError, match="Did you mean: 08_confusion_matrices"):
        _select(sources, notebooks, ["08_confusion_matrix"])


def test_smoke_copies_are_kept_out_of_the_committed_folder(tmp_path, capsys):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    assert main(["--repo", str(tmp_path), "--smoke", "--out", "docs/notebooks"]) == 2
    assert "--smoke copies do not belong in docs/notebooks" in capsys.readouterr().err
    assert main(["--repo", str(tmp_path), "--check"]) == 0
