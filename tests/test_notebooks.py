"""Both notebooks run end to end (tiny settings) and leave a verified QAT ONNX and results."""

import json
import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from edgezoo.export import verify_onnx

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL_TIMEOUT_S = 300

CASES = {
    "qat_classification": ("qat_classification_out", "mobilenetv2_qat.onnx", "top1"),
    "qat_segmentation": (
        "qat_segmentation_out",
        "deeplabv3plus_mobilenetv2_qat.onnx",
        "miou",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_name, onnx_name, metric = CASES[name]
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    monkeypatch.setenv("EDGEZOO_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells)
    errors = [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    assert errors == []

    out = tmp_path / out_name
    onnx_path = out / onnx_name
    assert verify_onnx(onnx_path).ok
    results = json.loads((out / "results.json").read_text())
    assert results["verified"] is True
    assert set(results[metric]) == {"float", "PTQ", "QAT"}
    assert all(math.isfinite(value) and 0 <= value <= 100 for value in results[metric].values())
    plots = list(out.glob("*.png"))
    assert plots and all(p.read_bytes().startswith(PNG_MAGIC) for p in plots)
    for stage in ("float", "ptq", "qat"):
        assert (out / stage / "last.pth").is_file()


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_is_committed_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    settings = next(c.source for c in notebook.cells if c.cell_type == "code")
    assert "EDGEZOO_NOTEBOOK_SMALL" in settings
