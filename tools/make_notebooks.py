"""Write (and with --execute, run and store with outputs) the two QAT notebooks.

notebooks/qat_classification.ipynb (MobileNetV2, Fashion-MNIST subset) and
notebooks/qat_segmentation.ipynb (DeepLabV3+ MobileNetV2, composite scenes) teach the flow a
TIDL user follows with edgezoo's public API and a plain PyTorch training loop: float model,
check and conversion, PTQ baseline, QAT with distillation and a freeze schedule, save and
reload, export, verify, integer simulation, the TIDL compile options. The code lives here so it
stays reviewable as Python; run from the repository root:

    python tools/make_notebooks.py            # write them without outputs
    python tools/make_notebooks.py --execute  # run them at default settings and store outputs

Executing writes files only to a temporary folder (EDGEZOO_NOTEBOOK_OUT overrides it), so the
checkout stays clean.
"""

import argparse
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TIME_MARK = "Measured run time"


def settings(name: str, model: str, task: str, size: int, float_epochs: int, qat_epochs: int):
    return f'''import copy
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import edgezoo

SMALL = os.environ.get("EDGEZOO_NOTEBOOK_SMALL") == "1"  # the test suite's seconds-long run
MODEL, TASK, INPUT_SIZE = "{model}", "{task}", {size}
FLOAT_EPOCHS = 1 if SMALL else {float_epochs}  # only when no float checkpoint is given
QAT_EPOCHS = 2 if SMALL else {qat_epochs}
MAX_BATCHES = 2 if SMALL else None  # caps every loop (training, calibration, evaluation)
FLOAT_CHECKPOINT = os.environ.get("EDGEZOO_FLOAT_CHECKPOINT")  # your trained float model
# Files go to a temporary folder, never into the checkout.
OUT = Path(os.environ.get("EDGEZOO_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="edgezoo-{name}-"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.set_num_threads(1 if SMALL else torch.get_num_threads())
OUT'''


BATCHES = """def batches(loader):
    \"\"\"The loader, cut to MAX_BATCHES batches in the small run.\"\"\"
    for index, batch in enumerate(loader):
        if MAX_BATCHES is not None and index >= MAX_BATCHES:
            return
        yield batch
"""

DATA_CLASSIFICATION = '''from edgezoo.data import IMAGENET_MEAN, IMAGENET_STD
from edgezoo.tasks import build_task_data

data = build_task_data("embedded", TASK, INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD)
train_loader = DataLoader(data.train, batch_size=64, shuffle=True)
test_loader = DataLoader(data.val, batch_size=256)
example = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE)  # fixes the input shape for tracing
criterion = torch.nn.CrossEntropyLoss()

{batches}

@torch.no_grad()
def evaluate(model):
    """Test top-1 (%) in eval mode."""
    model.eval()
    correct = total = 0
    for images, labels in batches(test_loader):
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return 100.0 * correct / total


data.description'''

DATA_SEGMENTATION = '''from edgezoo.data import IMAGENET_MEAN, IMAGENET_STD
from edgezoo.tasks import build_task_data

data = build_task_data(
    "composite", TASK, INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, composite_scenes=(2000, 256)
)
train_loader = DataLoader(data.train, batch_size=16, shuffle=True)
test_loader = DataLoader(data.val, batch_size=32)
example = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE)
criterion = torch.nn.CrossEntropyLoss(ignore_index=255)

{batches}

@torch.no_grad()
def evaluate(model):
    """Test mIoU (%) in eval mode, over the classes present."""
    model.eval()
    n = data.num_classes
    confusion = torch.zeros(n, n, dtype=torch.long)
    for images, masks in batches(test_loader):
        predicted = model(images).argmax(1)
        kept = masks != 255
        confusion += torch.bincount(masks[kept] * n + predicted[kept], minlength=n * n).view(n, n)
    inter = confusion.diag().double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return 100.0 * float((inter[union > 0] / union[union > 0]).mean())


data.description'''

FLOAT_MODEL = '''def train(model, epochs, lr, teacher=None, distill=None, schedule=None, log=None):
    """A plain PyTorch loop: what your own training code already does."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for epoch in range(epochs):
        if schedule is not None:
            schedule.step(model, epoch)  # BN and range freezing for this epoch
        model.train()
        for images, labels in batches(train_loader):
            outputs = model(images)
            if distill is None:
                loss = criterion(outputs, labels)
            else:
                with torch.no_grad():
                    target_logits = teacher(images)
                loss = distill(outputs, target_logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if log is not None:
            log.append(evaluate(model))


float_model = edgezoo.get_model(MODEL, num_classes=data.num_classes)
if FLOAT_CHECKPOINT:
    float_model.load_state_dict(torch.load(FLOAT_CHECKPOINT, weights_only=True))
else:  # a small float model of our own, trained from scratch
    train(float_model, FLOAT_EPOCHS, 2e-3)
torch.save(float_model.state_dict(), OUT / "float.pth")
results = {"float": evaluate(float_model)}
results'''

CHECK = """import torchvision

report = edgezoo.check_model(float_model, example)
print("our model:", "module-only, QAT-ready" if report.ok else report)

# A model written with functional calls (torchvision's ResNet18 shares one ReLU and adds with +)
# is converted automatically; make_module_only shows what changes.
converted, changes = edgezoo.make_module_only(
    torchvision.models.resnet18(), torch.rand(1, 3, 64, 64), return_report=True
)
print(changes)"""

PTQ = """calibrated = edgezoo.QuantCalibrateModule(copy.deepcopy(float_model), example)
calibrated.train()  # collects ranges and nudges biases; no gradients, BN stays frozen
with torch.no_grad():
    for images, _ in batches(DataLoader(Subset(data.train, range(1024)), batch_size=64)):
        calibrated(images)
results["PTQ"] = evaluate(calibrated)
results"""

QAT = """q = edgezoo.QuantTrainModule(copy.deepcopy(float_model), example)
teacher = float_model.eval()
distill = edgezoo.DistillationLoss(temperature=2.0, weight=0.5{ignore})
# The recipe edgezoo chose on validation data (docs/accuracy.md): lr 1e-4 with AdamW and no
# weight decay, TI's freeze schedule, distillation from the float model.
schedule = edgezoo.QATSchedule(QAT_EPOCHS)
qat_history = []
train(q, QAT_EPOCHS, 1e-4, teacher, distill, schedule, qat_history)
results["QAT"] = evaluate(q)
results"""

RELOAD = """torch.save(q.module.state_dict(), OUT / "qat.pth")  # your keys + ranges + switches

# Later, or on another machine: the same architecture, wrapped for evaluation, loads it.
tested = edgezoo.QuantTestModule(edgezoo.get_model(MODEL, num_classes=data.num_classes), example)
tested.module.load_state_dict(torch.load(OUT / "qat.pth", weights_only=True))
images, _ = next(iter(test_loader))
with torch.no_grad():
    same = torch.equal(tested(images), q.eval()(images))
print("reloaded model computes the same outputs:", same)"""

EXPORT = """onnx_path = OUT / f"{{MODEL}}_qat.onnx"
export = edgezoo.export_onnx(
    tested, onnx_path, model_name=MODEL, input_size=(INPUT_SIZE, INPUT_SIZE){argmax}
)
print(export)  # nodes, parity, the integer check against QAT, verification, files written
verification = edgezoo.verify_onnx(onnx_path)
print(verification)"""

SIMULATE = """from edgezoo.simulation import parity_report

(device,) = edgezoo.simulate_tidl(onnx_path, images)  # what TIDL outputs, dequantized
with torch.no_grad():
    qat_outputs = tested(images)
if TASK == "segmentation":  # the graph ends in ArgMax: compare the class maps
    qat_outputs = qat_outputs.argmax(1, keepdim=True)
same = bool((torch.from_numpy(device) == qat_outputs.to(torch.from_numpy(device).dtype)).all())
print("the device's outputs equal the QAT model's, bit for bit:", same)
print(parity_report(onnx_path, [images[:4]]))  # every layer: integers vs QAT's arithmetic"""

TIDL_OPTIONS = """options = json.loads(export.config_files["compile_options"].read_text())
for key, value in options["provider_options"].items():
    print(f"{key:45} {value!s:>10}  {options['option_meanings'][key]}")"""

PLOTS = """import matplotlib.pyplot as plt

sqnr = edgezoo.layer_report(q, [images[:16]])
figure, axes = plt.subplots(1, 3, figsize=(15, 3.5))
axes[0].plot(range(1, len(qat_history) + 1), qat_history, marker="o")
axes[0].axhline(results["float"], color="gray", linestyle="--", label="float")
axes[0].axhline(results["PTQ"], color="tab:orange", linestyle=":", label="PTQ")
axes[0].set(xlabel="QAT epoch", ylabel="test {metric} (%)", title="QAT per epoch")
axes[0].legend()
axes[1].plot([layer.sqnr_db for layer in sqnr.layers], marker=".")
axes[1].set(xlabel="conv / linear layer", ylabel="SQNR (dB)", title="per-layer SQNR after QAT")
axes[2].bar(list(results), list(results.values()))
axes[2].set(ylabel="test {metric} (%)", title="{title}")
figure.tight_layout()
figure.savefig(OUT / "qat.png")
summary = {{"{key}": results, "onnx": str(onnx_path), "verified": verification.ok}}
(OUT / "results.json").write_text(json.dumps(summary, indent=2))
plt.close(figure)
from IPython.display import Image  # shown whatever matplotlib backend the kernel uses

Image(filename=str(OUT / "qat.png"))"""


def notebook_cells(task: str) -> list:
    classification = task == "classification"
    if classification:
        intro = (
            "# Quantization-aware training for TIDL: classification\n\n"
            "MobileNetV2 on the Fashion-MNIST subset shipped with edgezoo (real images, 6000 "
            "train / 1000 test), in the order a TIDL user lives it, with edgezoo's public API "
            "and your own PyTorch loop: float model, check, PTQ baseline, QAT with "
            "distillation, save and reload, export, verify, integer simulation, TIDL options."
        )
        setup = settings("classification", "mobilenetv2", "classification", 32, 4, 3)
        data, metric, key, title = DATA_CLASSIFICATION, "top-1", "top1", "Fashion-MNIST subset"
    else:
        intro = (
            "# Quantization-aware training for TIDL: segmentation\n\n"
            "DeepLabV3+ MobileNetV2 on COMPOSITE scenes (real Fashion-MNIST items pasted on a "
            "background, 64x64; not a real segmentation data set), the same flow as the "
            "classification notebook: float model, check, PTQ, QAT with distillation (per "
            "pixel), save and reload, export with ArgMax, verify, integer simulation."
        )
        setup = settings("segmentation", "deeplabv3plus_mobilenetv2", "segmentation", 64, 3, 2)
        data, metric, key, title = DATA_SEGMENTATION, "mIoU", "miou", "COMPOSITE scenes"
    ignore = "" if classification else ", ignore_index=255"
    argmax = "" if classification else ", argmax=True"
    return [
        new_markdown_cell(intro + f"\n\n{TIME_MARK}: not yet measured."),
        new_markdown_cell(
            "## Settings\n\n`EDGEZOO_NOTEBOOK_SMALL=1` (the test suite) runs every loop for two "
            "batches: seconds, meaningless numbers. `EDGEZOO_FLOAT_CHECKPOINT=path.pth` starts "
            "from your own float model instead of training a small one here."
        ),
        new_code_cell(setup),
        new_markdown_cell("## Data\n\nTrain and test sets with ImageNet normalisation."),
        new_code_cell(data.replace("{batches}", "\n" + BATCHES)),
        new_markdown_cell(
            "## The float model\n\n`get_model` builds the module-only network (every "
            "operation a module of its own, the keys torchvision's). Your own loop trains it; "
            "with a float checkpoint, it is loaded instead."
        ),
        new_code_cell(FLOAT_MODEL),
        new_markdown_cell(
            "## Check it, and convert a model that is not module-only\n\n`check_model` lists "
            "what quantization cannot handle; `make_module_only` converts functional calls."
        ),
        new_code_cell(CHECK),
        new_markdown_cell(
            "## PTQ baseline\n\n`QuantCalibrateModule`: power-of-two ranges measured on "
            "training images, biases calibrated, no gradients: what TIDL's own calibration "
            "does, and the figure QAT has to beat."
        ),
        new_code_cell(PTQ),
        new_markdown_cell(
            "## QAT in your loop\n\n`QuantTrainModule` quantizes in the forward pass (BN folded "
            "on the fly, PACT2 ranges, straight-through gradients). `QATSchedule` freezes BN and "
            "ranges by epoch; `DistillationLoss` lets the float model teach the quantized one "
            "(`distill(student, teacher_logits)` without labels works too). The small float "
            "model trained here is far from converged, so QAT's extra epochs also train it "
            "further and can end above float; docs/accuracy.md starts from converged ones."
        ),
        new_code_cell(QAT.format(ignore=ignore)),
        new_markdown_cell(
            "## Save, reload\n\n`q.module.state_dict()` is your model's state dict plus the "
            "ranges and switches; `QuantTestModule` reloads it for evaluation and export."
        ),
        new_code_cell(RELOAD),
        new_markdown_cell(
            "## Export and verify\n\n`export_onnx` writes the TDA4VM Clip graph and TIDL's "
            "files, and refuses a graph that breaks TIDL's rules or whose integers differ from "
            "the QAT model."
        ),
        new_code_cell(EXPORT.format(argmax=argmax)),
        new_markdown_cell(
            "## What the device computes\n\n`simulate_tidl` runs the graph in TIDL's integer "
            "arithmetic; the QAT model computes the same integers, layer by layer."
        ),
        new_code_cell(SIMULATE),
        new_markdown_cell("## TIDL's compile options, and what each means"),
        new_code_cell(TIDL_OPTIONS),
        new_markdown_cell("## Accuracy per epoch, per-layer SQNR"),
        new_code_cell(PLOTS.format(metric=metric, key=key, title=title)),
    ]


def build(path: Path, cells: list) -> nbformat.NotebookNode:
    for index, cell in enumerate(cells):
        cell.id = f"{path.stem}-{index}"  # stable ids: regenerated notebooks stay comparable
    notebook = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.validate(notebook)
    return notebook


def execute(notebook: nbformat.NotebookNode, workdir: Path) -> float:
    """Run the notebook at default settings; its wall time in seconds."""
    started = time.perf_counter()
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    seconds = time.perf_counter() - started
    first = notebook.cells[0]
    first.source = first.source.split(f"\n\n{TIME_MARK}")[0] + (
        f"\n\n{TIME_MARK}: {seconds / 60:.1f} minutes at these default settings on a shared "
        f"2-core CPU ({time.strftime('%Y-%m-%d')})."
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execute", action="store_true", help="run and store outputs")
    args = parser.parse_args()
    for task in ("classification", "segmentation"):
        path = NOTEBOOKS / f"qat_{task}.ipynb"
        notebook = build(path, notebook_cells(task))
        if args.execute:
            with tempfile.TemporaryDirectory() as workdir:
                print(f"{path.name}: {execute(notebook, Path(workdir)):.0f} s")
        path.write_text(nbformat.writes(notebook))


if __name__ == "__main__":
    main()
