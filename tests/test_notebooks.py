"""Both notebooks run end to end at small settings on the public API, leave a verified QAT ONNX
and results outside the checkout, and are stored executed."""

import json
import math
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from edgezoo.export import verify_onnx

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CASES = {
    "qat_classification": ("mobilenetv2_qat.onnx", "top1"),
    "qat_segmentation": ("deeplabv3plus_mobilenetv2_qat.onnx", "miou"),
}


def _untracked() -> set[str]:
    listed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return set(listed.stdout.splitlines())


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs_on_the_public_api(name, tmp_path, monkeypatch):
    onnx_name, metric = CASES[name]
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "edgezoo.engine" not in code and "QuantTrainModule" in code
    out = tmp_path / "out"
    monkeypatch.setenv("EDGEZOO_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("EDGEZOO_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = _untracked()
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # run where a user opens it
    )
    client.execute()
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors == []
    assert verify_onnx(out / onnx_name).ok
    results = json.loads((out / "results.json").read_text())
    assert results["verified"] is True and set(results[metric]) == {"float", "PTQ", "QAT"}
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in results[metric].values())
    assert (out / "qat.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "float.pth").is_file() and (out / "qat.pth").is_file()
    outputs = "".join(str(o) for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "bit for bit: True" in outputs and "computes the same outputs: True" in outputs
    assert _untracked() == before  # nothing written into the checkout


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_is_stored_executed_with_its_run_time(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert "Measured run time:" in notebook.cells[0].source
    assert "minutes at these default settings" in notebook.cells[0].source
    images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the plots are stored in the notebook"
