"""Which models become QAT-ready through make_module_only, and what blocks the rest.

For every torchvision classification and segmentation model, the backbone of every torchvision
detection model (FPNs with FrozenBatchNorm2d, SSD feature extractors), hand-written user-style
models (benchmarks/user_models.py: UNet, YOLO-style neck, in-place adds in a loop,
squeeze-excitation, channel shuffle, dict outputs, and two probes that must be refused), and timm
models when timm is installed (a fixed list across families), with random weights at 96x96
(segmentation and detection backbones 128x128):
does torch.fx trace it, does make_module_only convert it, are the outputs bit-equal in eval and
train mode (same seed: dropout and stochastic depth draw alike), does one QAT step run with
finite gradients, does the QAT export verify against TIDL's rules (with onnxruntime parity, and
the integer simulation run and agreeing with the QAT model); where a stage fails, the error's
first line (the rule or the reason). Models above --max-params are listed as skipped (this
2-core machine). Writes docs/conversion_coverage.json and docs/conversion_coverage.md.

    python benchmarks/conversion_coverage.py
    python benchmarks/conversion_coverage.py --models resnet18 regnet_x_400mf
"""

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torchvision
from machine import machine_description
from tqdm import tqdm
from user_models import USER_MODELS

from edgezoo import QuantTrainModule, check_model, export_onnx, make_module_only
from edgezoo.conversion.equivalence import compare_outputs
from edgezoo.export.outputs import output_tensors
from edgezoo.fileio import atomic_path

TIMM_MODELS = (
    "resnet18",
    "resnet50d",
    "resnext26ts",
    "seresnet50",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "efficientnet_b0",
    "efficientnet_lite0",
    "tf_efficientnet_lite0",
    "regnetx_002",
    "regnetx_016",
    "regnety_002",
    "ghostnet_100",
    "mixnet_s",
    "dla34",
    "hrnet_w18_small",
    "densenet121",
    "dpn68",
    "vgg11",
    "repvgg_a0",
    "rexnet_100",
    "mnasnet_100",
    "semnasnet_100",
    "fbnetc_100",
    "spnasnet_100",
    "cspresnet50",
    "darknet53",
    "selecsls42b",
    "res2net50_14w_8s",
    "resnest14d",
    "convnext_atto",
    "levit_128s",
)
"""The project's own timm list (its goal: 25 of 30 verified or failing only on a device rule)."""

TIMM_MORE_MODELS = (
    "lcnet_050",
    "ese_vovnet19b_dw",
    "gernet_s",
    "hardcorenas_a",
    "tinynet_a",
    "resnet26d",
    "skresnet18",
    "nf_resnet26",
    "cs3darknet_s",
    "mobileone_s0",
    "ghostnetv2_100",
    "tf_mobilenetv3_small_100",
    "mobilevit_xxs",
    "resnetaa50d",
    "tresnet_m",
    "inception_v3",
    "xception41",
    "efficientvit_b0",
)
"""More timm families, added later to find what the first list missed (source "timm, more")."""


def _equal(original, converted, example, training: bool) -> bool:
    """Every output (tensors, tuples, dicts, namedtuples) equal, same seed for both, compared
    as conversion compares them (float64 copies)."""
    return compare_outputs(original, converted, (example,), training) is None


def _snapshot(model) -> tuple[dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {name: m.training for name, m in model.named_modules()}


def _unchanged(model, snapshot: tuple[dict, dict]) -> bool:
    """The caller's tensors and modes are as they were before conversion."""
    state, modes = snapshot
    now = model.state_dict()
    same_state = all(torch.equal(now[k], v) for k, v in state.items())
    return same_state and modes == {name: m.training for name, m in model.named_modules()}


def _qat_step(converted, example):
    q = QuantTrainModule(converted, example[:1], tidl_rules=False, convert=False)
    _, outputs = output_tensors(q(example))  # every output: a tensor, tuple or dict of them
    sum(out.square().mean() for out in outputs).backward()
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in q.parameters()), q


def _rules(report) -> list[str]:
    return sorted({v.rule for v in report.violations})


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines or [''])[0][:240]}"


def _example(size: int) -> torch.Tensor:
    """Two ImageNet-normalised random images (the input range export checks covers them)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (torch.rand(2, 3, size, size) - mean) / std


def _export(q, example) -> list[str]:
    """What the QAT export fails (empty when it verifies): the TIDL rules it breaks, parity
    with onnxruntime, the integer simulation's agreement, or a graph it could not simulate."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        report = export_onnx(
            q.eval(), path, example_input=example[:1], write_configs=False, strict=False
        )
    failed = [] if report.parity_ok else ["parity"]
    failed += [] if report.integer_ok else ["integer-agreement"]
    failed += ["integer-not-simulated"] if report.integer_not_simulated else []
    return sorted(report.verification.rules()) + failed


def measure(source: str, name: str, model, size: int) -> dict:
    """One model through every stage; the first failing stage's reason."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    row = {"source": source, "model": name, "params_m": round(params, 1)}
    example = _example(size)
    row["rules_before"] = []
    stage = "converts"
    snapshot = _snapshot(model)
    try:
        row["rules_before"] = _rules(check_model(model, example[:1], tidl_rules=False))
        try:
            converted = make_module_only(model, example[:1], tidl_rules=False)
        finally:
            row["caller_unchanged"] = _unchanged(model, snapshot)
        row["converts"] = True
        row["state_order_kept"] = list(model.state_dict()) == list(converted.state_dict())
        names = [name for name, _ in model.named_parameters()]
        row["parameter_order_kept"] = names == [n for n, _ in converted.named_parameters()]
        stage = "equal_eval"
        row["equal_eval"] = _equal(model, converted, example, False)
        row["equal_train"] = _equal(model, converted, example, True)
        row["rules_after"] = _rules(check_model(converted, example[:1], tidl_rules=False))
        tidl = check_model(converted, example[:1]).violations
        row["tidl_rules"] = sorted({v.rule for v in tidl if v.is_tidl_rule})
        stage = "qat_step"
        row["qat_step"], q = _qat_step(converted, example)
        stage = "export_verifies"
        broken = _export(q, example)
        row["export_verifies"] = not broken
        row["blocked_by"] = broken or None
    except Exception as error:  # a coverage table records every failure, whatever its type
        row.setdefault(stage, False)
        row["blocked_by"] = _first_line(error)
    return row


def _models(args) -> list[tuple[str, str, int]]:
    chosen = []
    for name in torchvision.models.list_models(module=torchvision.models):
        chosen.append(("torchvision", name, args.size))
    for name in torchvision.models.list_models(module=torchvision.models.segmentation):
        chosen.append(("torchvision.segmentation", name, args.seg_size))
    for name in torchvision.models.list_models(module=torchvision.models.detection):
        chosen.append(("torchvision.detection backbone", name, args.seg_size))
    chosen += [("user", name, args.size) for name in USER_MODELS]
    try:
        import timm  # noqa: F401
    except ImportError:
        logging.warning("timm is not installed: its models are left out (pip install timm)")
    else:
        chosen += [("timm", name, args.size) for name in TIMM_MODELS]
        chosen += [("timm, more", name, args.size) for name in TIMM_MORE_MODELS]
    return [m for m in chosen if not args.models or m[1] in args.models]


def _build(source: str, name: str):
    if source.startswith("timm"):
        import timm

        return timm.create_model(name, num_classes=10)
    if source == "torchvision.segmentation":
        return torchvision.models.get_model(
            name, num_classes=5, weights_backbone=None, aux_loss=False
        )
    if source == "torchvision.detection backbone":
        return torchvision.models.get_model(name, weights_backbone=None).backbone
    if source == "user":
        return USER_MODELS[name]()
    return torchvision.models.get_model(name, num_classes=10)


def _mark(value) -> str:
    return {True: "yes", False: "**no**", None: "-"}.get(value, str(value))


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| source | model | params (M) | module-only rules broken before / after | converts "
        "| caller's model unchanged | state / parameter order kept | equal eval / train (every "
        "output) | QAT step | export verifies | TIDL rules / blocked by |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['source']} | {r['model']} | {r['params_m']} |"
        if r.get("skipped"):
            lines.append(f"{head} - | - | - | - | - | - | - | {r['skipped']} |")
            continue
        before = ", ".join(r["rules_before"]) or "none"
        after = ", ".join(r["rules_after"]) or "none" if "rules_after" in r else "-"
        equal = f"{_mark(r.get('equal_eval'))} / {_mark(r.get('equal_train'))}"
        order = f"{_mark(r.get('state_order_kept'))} / {_mark(r.get('parameter_order_kept'))}"
        blocked = r.get("blocked_by")
        blocked = ", ".join(blocked) if isinstance(blocked, list) else (blocked or "")
        why = "; ".join(p for p in (", ".join(r.get("tidl_rules") or []), blocked) if p)
        lines.append(
            f"{head} {before} / {after} | {_mark(r.get('converts'))} | "
            f"{_mark(r.get('caller_unchanged'))} | {order} | {equal} | "
            f"{_mark(r.get('qat_step'))} | {_mark(r.get('export_verifies'))} | "
            f"{why.replace('|', '/')} |"
        )
    return lines


def summary(rows: list[dict]) -> list[str]:
    counted = [r for r in rows if not r.get("skipped")]
    counts = Counter()
    for r in counted:
        counts["models"] += 1
        counts["converts"] += bool(r.get("converts"))
        counts["equal"] += bool(r.get("equal_eval") and r.get("equal_train"))
        counts["qat"] += bool(r.get("qat_step"))
        counts["verifies"] += bool(r.get("export_verifies"))
        counts["changed"] += r.get("caller_unchanged") is False
        counts["silent"] += bool(r.get("converts")) and not (
            r.get("equal_eval") and r.get("equal_train")
        )
    return [
        f"{counts['models']} models measured ({len(rows) - len(counted)} skipped for size): "
        f"{counts['converts']} convert, {counts['equal']} with bit-equal outputs in eval and "
        f"train, {counts['qat']} run a QAT step with finite gradients, {counts['verifies']} "
        "export a graph that verifies (TIDL's rules, onnxruntime parity, and the integer "
        f"simulation run and agreeing with QAT). Silent wrong results: {counts['silent']} "
        f"converted models whose outputs differ from the original's, {counts['changed']} "
        "conversions that changed the caller's model.",
        "",
        "| source | measured | export verifies | fails only on a rule the device has | other |",
        "|---|---|---|---|---|",
        *(
            _source_line(source, [r for r in counted if r["source"] == source])
            for source in dict.fromkeys(r["source"] for r in counted)
        ),
    ]


# verify_onnx's rules for layers TIDL's import refuses (kernel, stride, axis or slicing limits),
# as opposed to what edgezoo could change (ranges, parity, unsupported ops it could rewrite).
DEVICE_RULES = frozenset({"depthwise-conv", "conv", "concat-axis", "resize", "slice"})


def _device_rule_only(row: dict) -> bool:
    blocked = row.get("blocked_by")
    return bool(row.get("qat_step")) and isinstance(blocked, list) and set(blocked) <= DEVICE_RULES


def _source_line(source: str, rows: list[dict]) -> str:
    verifies = sum(bool(r.get("export_verifies")) for r in rows)
    rule_only = sum(_device_rule_only(r) for r in rows)
    other = len(rows) - verifies - rule_only
    return f"| {source} | {len(rows)} | {verifies} | {rule_only} | {other} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="only these names")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seg-size", type=int, default=128)
    parser.add_argument("--max-params", type=float, default=150.0, help="millions; skip above")
    parser.add_argument("--out", type=Path, default=Path("docs/conversion_coverage"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    json_path = args.out.with_suffix(".json")
    done = json.loads(json_path.read_text())["results"] if json_path.exists() else []
    seen = {(r["source"], r["model"]) for r in done}
    for source, name, size in tqdm(_models(args), desc="models"):
        if (source, name) in seen:
            continue
        torch.manual_seed(0)
        model = _build(source, name)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        if params > args.max_params:
            done.append(
                {
                    "source": source,
                    "model": name,
                    "params_m": round(params, 1),
                    "skipped": f"skipped: {params:.0f}M parameters",
                }
            )
        else:
            done.append(measure(source, name, model, size))
        with atomic_path(json_path) as partial:
            partial.write_text(
                json.dumps({"machine": machine_description(), "results": done}, indent=2)
            )
    machine = machine_description()
    text = [
        "# Conversion coverage: make_module_only over torchvision, user-style models and timm",
        "",
        f"Generated by `python benchmarks/conversion_coverage.py --size {args.size} --seg-size "
        f"{args.seg_size}` (random weights; {args.size}x{args.size}, segmentation "
        f"{args.seg_size}x{args.seg_size}, detection backbones too; resumable from its json) "
        f"on {machine['cpu']}, "
        f"{machine['cores']} cores, torch {machine['torch']}, {time.strftime('%Y-%m-%d')}. "
        "A model is converted in train mode; 'equal' compares every output (tensors, tuples, "
        "dicts, namedtuples) with the original's in eval and in train mode (same seed); 'caller's "
        "model unchanged' checks its tensors and modes after conversion, failed or not.",
        "",
        *summary(done),
        "",
        *table(done),
        "",
    ]
    with atomic_path(args.out.with_suffix(".md")) as partial:
        partial.write_text("\n".join(text))
    print("\n".join(summary(done)))


if __name__ == "__main__":
    main()
