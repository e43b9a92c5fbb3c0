"""Object detection: prior boxes TIDL and the model agree on, the prototxt, the composite
scenes and COCO folders, the MultiBox loss and decoding, mAP, and a detector that trains with
QAT, exports with its meta-architecture, verifies and simulates bit-exactly."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import edgezoo
from edgezoo.data.coco_folders import CocoDetectionFolder
from edgezoo.data.composite_detection import CompositeFashionDetection
from edgezoo.data.fashion_mnist import load_embedded_fashion_mnist
from edgezoo.data.transforms import DetectionTransform
from edgezoo.detection import (
    Detections,
    SSDBoxes,
    caffe_prior_boxes,
    coco_map,
    collate_detection,
    parse_prototxt,
    to_prototxt,
)
from edgezoo.engine import TrainConfig, fit, simulated_metrics
from edgezoo.errors import DataError, UsageError
from edgezoo.export import export_onnx, verify_onnx
from edgezoo.tasks import build_task_data, get_task

SIZE = 64


@pytest.fixture(scope="module")
def items():
    return load_embedded_fashion_mnist("train")


def test_the_prototxt_prior_boxes_are_torchvisions_default_boxes():
    boxes = SSDBoxes(((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0,)))
    grids = [(20, 20), (10, 10), (5, 5), (3, 3)]
    params = boxes.prior_box_params((320, 320), grids)
    tidl = caffe_prior_boxes(params, (320, 320), grids)
    model = boxes.anchors(grids).double()
    priors = sum(p * h * w for p, (h, w) in zip(boxes.priors_per_level, grids, strict=True))
    assert tidl.shape == model.shape == (priors, 4)
    assert torch.max(torch.abs(tidl - model)) < 1e-6
    with pytest.raises(UsageError, match="square"):
        boxes.prior_box_params((320, 640), grids)


def test_a_prototxt_reads_back_as_written():
    message = {
        "name": "ssd",
        "caffe_ssd": {"box_input": ["a", "b"], "in_width": 64, "flip": True,
                      "prior_box_param": [{"min_size": [9.6], "step": [16.0]}]},
    }  # fmt: skip
    parsed = parse_prototxt(to_prototxt(message))
    assert parsed["name"] == ["ssd"]
    ssd = parsed["caffe_ssd"][0]
    assert ssd["box_input"] == ["a", "b"] and ssd["in_width"] == [64] and ssd["flip"] == [True]
    assert ssd["prior_box_param"][0] == {"min_size": [9.6], "step": [16.0]}


def test_composite_scenes_repeat_and_box_their_items_tightly(items):
    scenes = CompositeFashionDetection(items, length=8, seed=3)
    for i in range(8):
        image, targets = scenes.scene(i)
        again, same = scenes.scene(i)
        assert np.array_equal(image, again) and torch.equal(targets, same)
        assert len(targets) >= 1 and ((targets[:, 1:] >= 0) & (targets[:, 1:] <= 1)).all()
        for _, x1, y1, x2, y2 in (targets * torch.tensor([1, 128, 128, 128, 128])).tolist():
            inside = image[round(y1) : round(y2), round(x1) : round(x2)] > scenes.threshold
            # Tight: the item's pixels reach every edge of its box.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()


def test_a_flip_mirrors_the_boxes(items):
    scenes = CompositeFashionDetection(items, length=1, seed=0)
    image, targets = scenes.scene(0)
    flipped = DetectionTransform(SIZE, augment=True)
    plain = DetectionTransform(SIZE)
    x, t = plain(image, targets)
    for seed in range(8):  # some seeds flip
        torch.manual_seed(seed)
        y, u = flipped(image, targets)
        if torch.equal(y, x):
            assert torch.equal(u, t)
        else:
            assert torch.allclose(y, x.flip(-1))
            assert torch.allclose(u[:, 1], 1 - t[:, 3]) and torch.allclose(u[:, 3], 1 - t[:, 1])
            assert torch.equal(u[:, [0, 2, 4]], t[:, [0, 2, 4]])


def test_targets_are_padded_to_the_largest_image_of_the_batch():
    batch = [(torch.zeros(3, 4, 4), torch.ones(2, 5)), (torch.zeros(3, 4, 4), torch.zeros(0, 5))]
    images, targets = collate_detection(batch)
    assert images.shape == (2, 3, 4, 4) and targets.shape == (2, 2, 5)
    assert (targets[1, :, 0] == -1).all() and (targets[0] == 1).all()


def test_coco_map_of_perfect_wrong_and_missing_detections():
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]])
    objects = [(torch.tensor([1, 2]), boxes)]
    perfect = Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]))
    wrong = Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([2, 1]))
    assert coco_map([perfect], objects, 3)["map"] == pytest.approx(100.0)
    assert coco_map([wrong], objects, 3)["map"] == pytest.approx(0.0)
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert coco_map([empty], objects, 3, per_class=True)["ap_class_1"] == 0.0


def test_decoding_what_the_loss_is_trained_towards_gives_the_objects_back():
    model = edgezoo.get_model("ssdlite_mobilenetv2_lite", num_classes=3).eval()
    meta = model.meta_arch
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, SIZE, SIZE))
    targets = torch.tensor([[[1.0, 0.1, 0.2, 0.5, 0.7], [2.0, 0.55, 0.5, 0.95, 0.9]]])
    ideal = _ideal_outputs(meta, outputs, targets)
    assert meta.loss(ideal, targets) < meta.loss(outputs, targets)
    found = meta.decode(ideal)[0]
    best = found.scores.argsort(descending=True)[:2]
    assert sorted(found.labels[best].tolist()) == [1, 2]
    for label, box in zip(found.labels[best], found.boxes[best], strict=True):
        assert torch.allclose(box, targets[0, int(label) - 1, 1:], atol=1e-4)


def _ideal_outputs(meta, outputs, targets):
    """Head outputs whose matched anchors encode the objects exactly, scored with certainty."""
    from edgezoo.detection.ssd import _coder, _match

    anchors = meta.anchors(outputs)
    index = _match(anchors, targets[0, :, 1:])
    codes = torch.zeros(anchors.shape[0], 4)
    found = index >= 0
    codes[found] = _coder().encode_single(targets[0, index[found], 1:], anchors[found])
    logits = torch.full((anchors.shape[0], meta.num_classes + 1), -20.0)
    logits[:, meta.background] = 20.0
    logits[found, meta.background] = -20.0
    logits[found, targets[0, index[found], 0].long()] = 20.0
    return _as_heads(meta, outputs, codes, logits)


def _as_heads(meta, outputs, codes, logits):
    """Per-anchor values back in the heads' (N, priors * K, H, W) layout."""
    heads, start = {}, 0
    for box, cls, priors in zip(
        meta.box_outputs, meta.class_outputs, meta.boxes.priors_per_level, strict=True
    ):
        h, w = outputs[box].shape[-2:]
        count = h * w * priors
        for name, values in ((box, codes), (cls, logits)):
            part = values[start : start + count].reshape(h, w, priors * values.shape[1])
            heads[name] = part.permute(2, 0, 1)[None].contiguous()
        start += count
    return heads


@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory, one_thread):
    """A 3-class SSDLite after one short QAT epoch on composite scenes, exported at 64x64."""
    torch.manual_seed(0)
    data = build_task_data("composite-detection", "detection", SIZE, composite_scenes=(32, 16))
    model = edgezoo.get_model("ssdlite_mobilenetv2_lite", num_classes=10)
    qat = edgezoo.wrap_model(model, "train", torch.rand(1, 3, SIZE, SIZE))
    config = TrainConfig(task="detection", mode="qat", epochs=1, batch_size=8, lr=1e-4,
                         optimizer="adamw", num_classes=10, ignore_index=None)  # fmt: skip
    result = fit(qat, data.train, data.val, config, progress=False)
    path = tmp_path_factory.mktemp("detector") / "ssd.onnx"
    report = export_onnx(qat, path, input_size=(SIZE, SIZE), model_name="ssdlite_mobilenetv2_lite")
    return result, report, path, data


def test_a_detector_trains_with_qat_and_reports_map(exported_detector):
    result, _, _, _ = exported_detector
    record = result.history[-1]
    assert {"train_loss", "val_loss", "val_map", "val_map50"} <= set(record)
    assert np.isfinite(record["train_loss"]) and 0.0 <= record["val_map"] <= 100.0


def test_a_detector_exports_its_meta_architecture_for_tidl(exported_detector):
    _, report, path, _ = exported_detector
    assert report.ok and report.integer_max_steps == 0
    files = report.config_files
    options = json.loads(files["compile_options"].read_text())["provider_options"]
    assert options["object_detection:meta_arch_type"] == 3
    assert options["object_detection:meta_layers_names_list"] == files["meta_arch"].name
    assert 'metaLayersNamesList = "ssd_meta_arch.prototxt"' in files["import_config"].read_text()
    ssd = parse_prototxt(files["meta_arch"].read_text())["caffe_ssd"][0]
    graph_outputs = set(report.output_names)
    assert set(ssd["box_input"]) | set(ssd["class_input"]) == graph_outputs
    assert ssd["detection_output_param"][0]["num_classes"] == [11]
    assert ssd["detection_output_param"][0]["background_label_id"] == [10]
    assert verify_onnx(path, meta_arch=files["meta_arch"].read_text()).ok


def test_verify_names_what_a_wrong_prototxt_gets_wrong(exported_detector, tmp_path):
    _, report, path, _ = exported_detector
    text = report.config_files["meta_arch"].read_text()
    assert verify_onnx(path).ok  # the prototxt beside it is read
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(path, lonely)
    assert any(v.rule == "meta-arch" for v in verify_onnx(lonely).violations)
    broken = {
        "cls_9": text.replace('class_input: "cls_1"', 'class_input: "cls_9"'),
        "step": text.replace("step: 16.0", "step: 8.0", 1),
        "differ": text.replace("min_size: 9.6", "min_size: 12.8", 1),
        "channels": text.replace(
            "aspect_ratio: 3.0", "aspect_ratio: 4.0\n    aspect_ratio: 3.0", 1
        ),
        "the graph takes 64x64": text.replace("in_width: 64", "in_width: 32"),
    }
    for expected, changed in broken.items():
        assert changed != text, expected
        violations = [
            v for v in verify_onnx(path, meta_arch=changed).violations if v.rule == "meta-arch"
        ]
        assert violations and expected in " ".join(str(v) for v in violations), expected


def test_the_integer_simulation_of_a_detector_gives_its_map(exported_detector):
    _, _, path, data = exported_detector
    figures = simulated_metrics(path, data.val, "detection", 10, batch_size=8, progress=False)
    assert {"loss", "map", "map50"} <= set(figures)
    with pytest.raises(UsageError, match="classes"):
        simulated_metrics(path, data.val, "detection", 4, progress=False)


def test_a_detector_checkpoint_knows_its_classes(tmp_path):
    model = edgezoo.get_model("ssdlite_mobilenetv2_lite", num_classes=4)
    torch.save(model.state_dict(), tmp_path / "ssd.pth")
    loaded = edgezoo.get_model("ssdlite_mobilenetv2_lite", pretrained=tmp_path / "ssd.pth")
    assert loaded.meta_arch.num_classes == 4


def test_detection_needs_its_model_and_refuses_distillation():
    with pytest.raises(UsageError, match="bind"):
        get_task("detection").make_meter(10, None)
    model = edgezoo.get_model("ssdlite_mobilenetv2_lite", num_classes=2)
    config = TrainConfig(task="detection", epochs=1, distill=True, num_classes=10, batch_size=2)
    data = build_task_data("composite-detection", "detection", SIZE, composite_scenes=(2, 2))
    with pytest.raises(UsageError, match="distillation"):
        fit(model, data.train, data.val, config, teacher=model, progress=False)
    with pytest.raises(DataError, match="detection"):
        build_task_data("composite-detection", "segmentation", SIZE)


def test_coco_folders_give_relative_boxes_and_refuse_bad_ones(tmp_path):
    root = tmp_path / "train"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(root / "images" / "a.png")
    notes = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [4, 2, 20, 10]}],
    }
    (root / "annotations.json").write_text(json.dumps(notes))
    folder = CocoDetectionFolder(root, DetectionTransform(16))
    image, targets = folder[0]
    assert folder.classes == ("dog", "cat") and image.shape == (3, 16, 16)
    assert torch.allclose(targets, torch.tensor([[1.0, 0.1, 0.1, 0.6, 0.6]]))
    notes["annotations"][0]["bbox"] = [30, 2, 20, 10]
    (root / "annotations.json").write_text(json.dumps(notes))
    with pytest.raises(DataError, match="outside"):
        CocoDetectionFolder(root)


TI_PROTO = os.environ.get("EDGEZOO_TIDL_META_ARCH_PROTO")


@pytest.mark.skipif(
    not TI_PROTO or shutil.which("protoc") is None,
    reason="set EDGEZOO_TIDL_META_ARCH_PROTO to TI's tidl_meta_arch*.proto (edgeai-tensorlab) "
    "and install protoc to parse the prototxt with TI's own schema",
)
def test_the_prototxt_parses_with_tis_own_schema(exported_detector, exported_yolox, tmp_path):
    ssd, yolox = exported_detector[1], exported_yolox[1]
    source = tmp_path / "proto"
    source.mkdir()
    shutil.copy(TI_PROTO, source / "tidl_meta_arch.proto")
    subprocess.run(
        ["protoc", f"-I{source}", f"--python_out={source}", "tidl_meta_arch.proto"], check=True
    )
    script = (
        "import sys; from google.protobuf import text_format; sys.path.insert(0, sys.argv[1]);"
        "import tidl_meta_arch_pb2 as pb;"
        "m = text_format.Parse(open(sys.argv[2]).read(), pb.TIDLMetaArch());"
        "head = m.caffe_ssd[0].prior_box_param if m.caffe_ssd else m.tidl_yolo[0].yolo_param;"
        "print(len(head))"
    )
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    for report, levels in ((ssd, 6), (yolox, 3)):
        prototxt = str(report.config_files["meta_arch"])
        command = [sys.executable, "-c", script, str(source), prototxt]
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        assert int(run.stdout) == levels


def test_edgezoo_verify_reads_the_prototxt_beside_the_graph(exported_detector, tmp_path, capsys):
    from edgezoo.cli import main

    _, _, path, _ = exported_detector
    assert main(["verify", str(path)]) == 0
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(path, lonely)
    assert main(["verify", str(lonely)]) == 1
    assert "meta-arch" in capsys.readouterr().out
    prototxt = path.with_name(path.stem + "_meta_arch.prototxt")
    assert main(["verify", str(lonely), "--meta-arch", str(prototxt)]) == 0


def test_a_detector_with_16_bit_heads_exports_them_for_tidl(tmp_path, one_thread):
    from edgezoo.quantization import QuantizationConfig

    torch.manual_seed(0)
    config = QuantizationConfig(layer_bits={"box_heads.*": 16, "class_heads.*": 16})
    model = edgezoo.get_model("ssdlite_mobilenetv2_lite", num_classes=2)
    qat = edgezoo.wrap_model(model, "train", torch.rand(1, 3, SIZE, SIZE), config=config)
    for _ in range(2):
        qat(torch.randn(2, 3, SIZE, SIZE))
    report = export_onnx(qat, tmp_path / "ssd16.onnx", input_size=(SIZE, SIZE))
    assert report.ok and report.integer_max_steps == 0
    options = json.loads(report.config_files["compile_options"].read_text())["provider_options"]
    features = options["advanced_options:output_feature_16bit_names_list"].split(", ")
    params = options["advanced_options:params_16bit_names_list"].split(", ")
    assert set(report.output_names) <= set(params)  # the heads' last convs
    assert len(features) == 12 and all("_heads." in name for name in features)


@pytest.fixture(scope="module")
def exported_yolox(tmp_path_factory, one_thread):
    """A 10-class YOLOX-nano lite after a few QAT steps on composite scenes, exported at 64."""
    torch.manual_seed(0)
    data = build_task_data("composite-detection", "detection", SIZE, composite_scenes=(16, 8))
    qat = edgezoo.wrap_model(
        edgezoo.get_model("yolox_nano_lite", num_classes=10), "train", torch.rand(1, 3, SIZE, SIZE)
    )
    config = TrainConfig(task="detection", mode="qat", epochs=1, batch_size=8, lr=1e-3,
                         optimizer="adamw", num_classes=10, ignore_index=None)  # fmt: skip
    result = fit(qat, data.train, data.val, config, progress=False)
    path = tmp_path_factory.mktemp("yolox") / "yolox.onnx"
    return result, export_onnx(qat, path, input_size=(SIZE, SIZE), model_name="yolox_nano_lite")


def test_yolox_trains_exports_its_tidl_yolo_head_and_simulates_bit_exactly(exported_yolox):
    result, report = exported_yolox
    assert np.isfinite(result.history[-1]["train_loss"]) and "val_map" in result.history[-1]
    assert report.ok and report.integer_max_steps == 0
    options = json.loads(report.config_files["compile_options"].read_text())["provider_options"]
    assert options["object_detection:meta_arch_type"] == 6
    yolo = parse_prototxt(report.config_files["meta_arch"].read_text())["tidl_yolo"][0]
    assert [p["input"][0] for p in yolo["yolo_param"]] == ["out_8", "out_16", "out_32"]
    assert [p["anchor_width"][0] for p in yolo["yolo_param"]] == [8.0, 16.0, 32.0]
    assert yolo["detection_output_param"][0]["code_type"] == ["CODE_TYPE_YOLO_X"]
    assert yolo["detection_output_param"][0]["background_label_id"] == [-1]


def test_verify_names_what_a_wrong_yolo_prototxt_gets_wrong(exported_yolox):
    _, report = exported_yolox
    text = report.config_files["meta_arch"].read_text()
    broken = {
        "stride": text.replace("anchor_width: 16.0", "anchor_width: 12.0"),
        "channels": text.replace("num_classes: 10", "num_classes: 11"),
        "out_64": text.replace('input: "out_32"', 'input: "out_64"'),
    }
    for expected, changed in broken.items():
        assert changed != text, expected
        found = [v for v in verify_onnx(report.path, meta_arch=changed).violations]
        assert any(expected in str(v) for v in found if v.rule == "meta-arch"), expected


def test_yolox_decoding_of_ideal_outputs_gives_the_objects_back():
    model = edgezoo.get_model("yolox_nano_lite", num_classes=3).eval()
    meta = model.meta_arch
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, SIZE, SIZE))
    target = torch.tensor([2.0, 0.2, 0.3, 0.6, 0.8])
    ideal = {name: torch.full_like(t, -20.0) for name, t in outputs.items()}
    out = ideal["out_8"]  # 8x8 cells
    cells = out.shape[-1]
    cx, cy = (target[1] + target[3]) / 2, (target[2] + target[4]) / 2
    col, row = int(cx * cells), int(cy * cells)
    out[0, :4, row, col] = torch.stack([
        cx * cells - col, cy * cells - row,
        torch.log((target[3] - target[1]) * cells), torch.log((target[4] - target[2]) * cells),
    ])  # fmt: skip
    out[0, 4, row, col] = 20.0
    out[0, 5 + 2, row, col] = 20.0
    found = meta.decode(ideal)[0]
    assert found.labels.tolist() == [2]
    assert torch.allclose(found.boxes[0], target[1:], atol=1e-5)
    assert meta.loss(ideal, target[None, None]) < meta.loss(outputs, target[None, None])


def test_a_detector_trains_on_coco_folders(tmp_path, one_thread):
    for split in ("train", "val"):
        root = tmp_path / split
        (root / "images").mkdir(parents=True)
        images, notes = [], []
        for i in range(2):
            Image.new("RGB", (48, 32), (40 * i, 90, 200)).save(root / "images" / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": 48, "height": 32})
            notes.append({"id": i + 1, "image_id": i, "category_id": 5, "bbox": [4, 4, 20, 16]})
        categories = [{"id": 5, "name": "box"}, {"id": 9, "name": "tag"}]
        (root / "annotations.json").write_text(
            json.dumps({"images": images, "annotations": notes, "categories": categories})
        )
    data = build_task_data(tmp_path, "detection", SIZE)
    assert data.num_classes == 2 and data.classes == ("box", "tag") and len(data.val) == 2
    model = edgezoo.get_model("yolox_nano_lite", num_classes=data.num_classes)
    config = TrainConfig(task="detection", epochs=1, batch_size=2, num_classes=2, lr=1e-3,
                         optimizer="adamw", ignore_index=None)  # fmt: skip
    record = fit(model, data.train, data.val, config, progress=False).history[-1]
    assert np.isfinite(record["train_loss"]) and 0.0 <= record["val_map"] <= 100.0
