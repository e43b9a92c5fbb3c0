"""weights_manifest.json: schema, consistency, agreement with torchvision, packaging."""

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import torch
import torch.hub
from conftest import CONVERTED_FAMILIES
from torchvision.models import get_model_weights

from edgezoo import hub
from edgezoo.models import BUILDERS, CONVERTED
from edgezoo.models.converted import torchvision_model
from edgezoo.registry import checkpoint_classes

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_FILE = ROOT / "weights_manifest.json"
MANIFEST = json.loads(MANIFEST_FILE.read_text())
MODELS = MANIFEST["models"]
CLASSIFIERS = [name for name, entry in MODELS.items() if "torchvision_name" in entry]
RECORDS = [
    (name, tag, record) for name in MODELS for tag, record in MODELS[name]["weights"].items()
]


# Converted models are torchvision's, traced: one per family goes through the zoo builder (the
# conversion keeps every parameter, tested in test_conversion.py); the rest, as torchvision
# builds them, keep the run short.


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    """Build on the meta device: shapes and parameter counts without allocating weights."""
    with torch.device("meta"):
        if name in CONVERTED and name not in CONVERTED_FAMILIES:
            return torchvision_model(name, **kwargs)
        return BUILDERS[name](**kwargs)


def test_schema_is_valid_and_loaded_manifest_is_the_file():
    assert hub.validate_manifest(MANIFEST) == []
    assert hub.load_manifest() == MANIFEST


def test_one_entry_per_builder_and_every_torchvision_tag():
    assert set(MODELS) == set(BUILDERS)
    # 38 classifiers (22 of them with more than one tag) and 4 torchvision segmenters.
    assert len(RECORDS) == 68
    for name in CLASSIFIERS:
        enum = get_model_weights(MODELS[name]["torchvision_name"])
        assert list(MODELS[name]["weights"]) == [member.name for member in enum]
        assert MODELS[name]["default_weights"] == enum.DEFAULT.name


@pytest.mark.parametrize(
    ("name", "tag", "record"), RECORDS, ids=[f"{n}-{t}" for n, t, _ in RECORDS]
)
def test_record_matches_torchvision(name, tag, record):
    weights = get_model_weights(MODELS[name]["torchvision_name"])[tag]
    assert record["url"] == weights.url
    assert record["file_name"] == weights.url.rsplit("/", 1)[-1]
    assert record["sha256_prefix"] == torch.hub.HASH_REGEX.search(record["file_name"]).group(1)
    assert record["num_params"] == MODELS[name]["num_params"]
    assert record["num_params"] == weights.meta["num_params"] - _left_out_params(name)
    assert {record["dataset"]: record["metrics"]} == weights.meta["_metrics"]
    assert record["license"] == weights.meta.get("license", "BSD-3-Clause")
    transforms = weights.transforms()
    prep = record["preprocessing"]
    assert prep["mean"] == list(transforms.mean) and prep["std"] == list(transforms.std)
    assert [prep["resize"]] == transforms.resize_size
    assert [prep["crop"]] == getattr(transforms, "crop_size", [None])
    assert prep["interpolation"] == transforms.interpolation.value
    if tag == MODELS[name]["default_weights"]:
        assert MODELS[name]["input_size"][1] == prep["crop"] or prep["resize"]


def _left_out_params(name: str) -> int:
    """Parameters of the published file that the zoo model leaves out (an auxiliary head)."""
    prefixes = tuple(MODELS[name].get("unused_checkpoint_prefixes", ()))
    if not prefixes:
        return 0
    with torch.device("meta"):
        full = BUILDERS[name](aux_loss=True)
    return sum(p.numel() for n, p in full.named_parameters() if n.startswith(prefixes))


@pytest.mark.parametrize("name", list(MODELS))
def test_entry_matches_edgezoo_builder(name):
    entry = MODELS[name]
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    # The head the manifest names gives the classes (a detector's: priors x (classes + 1)).
    assert checkpoint_classes(name, model.state_dict()) == entry["num_classes"]
    assert checkpoint_classes(name, _meta_model(name, num_classes=3).state_dict()) == 3
    if entry["task"] in ("segmentation", "detection"):
        # YOLOX's CSPDarknet has no torchvision weights: nothing to name.
        backbone = entry.get("pretrained_backbone", {"model": "resnet18", "weights": "none"})
        if name != "yolox_nano_lite":
            assert backbone["weights"] in MODELS[backbone["model"]]["weights"]
        if "torchvision_name" not in entry:  # edgezoo's DeepLabV3+ and detectors: own sizes
            stride = getattr(model, "output_stride", 32)
            assert all(side % stride == 0 for side in entry["input_size"][1:])
            assert entry["preprocessing"]["resize"] == entry["input_size"][1:]


def _broken(change) -> list[str]:
    manifest = copy.deepcopy(MANIFEST)
    change(manifest["models"])
    return hub.validate_manifest(manifest)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: m["resnet18"]["weights"]["IMAGENET1K_V1"].update(sha256_prefix="0badc0de"),
            "sha256_prefix must equal the hash in the file name",
        ),
        (
            lambda m: m["resnet18"]["weights"]["IMAGENET1K_V1"].update(file_name="r.pth"),
            "file_name must be the last part of its url",
        ),
        (lambda m: m["resnet18"]["weights"]["IMAGENET1K_V1"].pop("license"), "lacks 'license'"),
        (lambda m: m["resnet18"].update(licence="MIT"), "unknown key 'licence'"),
        (lambda m: m["resnet50"].update(default_weights="IMAGENET1K_V3"), "default_weights"),
        (lambda m: m["resnet50"].update(task="keypoints"), "task must be one of"),
        (lambda m: m["resnet50"].update(input_size=[3, 224]), "input_size"),
        (
            lambda m: m["mobilenetv2"]["weights"]["IMAGENET1K_V2"]["preprocessing"].update(
                mean=[123.675, 116.28, 103.53]
            ),
            "mean must be three floats",
        ),
        (
            lambda m: m["deeplabv3plus_resnet50"]["pretrained_backbone"].update(weights="V9"),
            "must be a weights tag of resnet50",
        ),
        (lambda m: m["deeplabv3plus_resnet50"].pop("preprocessing"), "needs its own preprocessing"),
        (
            lambda m: m["fcn_resnet50"].update(unused_checkpoint_prefixes="aux_classifier."),
            "unused_checkpoint_prefixes must be a list of key prefixes",
        ),
    ],
)
def test_validator_catches_planted_errors(change, message):
    problems = _broken(change)
    assert any(message in problem for problem in problems), problems


def test_manifest_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_manifest", ROOT / "tools/make_manifest.py")
    make_manifest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_manifest)
    assert make_manifest.to_json(make_manifest.build_manifest()) == MANIFEST_FILE.read_text()


def test_package_carries_the_manifest_in_an_installed_wheel(tmp_path):
    packaged = resources.files("edgezoo").joinpath("weights_manifest.json")
    assert packaged.read_bytes() == MANIFEST_FILE.read_bytes()
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "weights_manifest.json"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "edgezoo",
        source / "edgezoo",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(command, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("edgezoo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("edgezoo/weights_manifest.json") == MANIFEST_FILE.read_bytes()


def test_readme_zoo_table_lists_every_model_with_its_parameters():
    section = (ROOT / "README.md").read_text().split("## Model zoo", 1)[1].split("\n\n", 2)[1]
    cells = [line.split("|")[1:3] for line in section.splitlines()[2:]]
    table = {name.strip().removesuffix(" (converted)"): params.split()[0] for name, params in cells}
    assert table == {name: f"{entry['num_params']:,}" for name, entry in MODELS.items()}
