"""`edgezoo list` and `edgezoo info NAME`: what the registry and weights manifest hold."""

import argparse
import json
from typing import Any

from edgezoo import registry
from edgezoo.tasks import task_names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the list and info subcommands."""
    list_parser = subparsers.add_parser("list", help="list the models and their default weights")
    list_parser.add_argument("--task", choices=task_names(), help="only models of this task")
    list_parser.set_defaults(func=run_list)

    info_parser = subparsers.add_parser("info", help="show a model's weights, metrics, inputs")
    info_parser.add_argument("name", help="model name or alias, e.g. mobilenetv2")
    info_parser.add_argument("--json", action="store_true", help="print the raw manifest entry")
    info_parser.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    """Print one table row per model."""
    header = ("name", "task", "params", "default weights", "metric")
    rows = [header]
    for name in registry.list_models(args.task):
        info = registry.model_info(name)
        tag = info["default_weights"]
        if tag is None:
            backbone = info.get("pretrained_backbone")
            tag_text = f"backbone: {backbone['model']} {backbone['weights']}" if backbone else "-"
            acc = "-"
        else:
            # acc@1 for ImageNet classifiers, mIoU for segmentation: the first published metric.
            metric, value = next(iter(info["weights"][tag]["metrics"].items()))
            tag_text, acc = tag, f"{metric} {value:.3f}"
        rows.append((name, info["task"], _millions(info["num_params"]), tag_text, acc))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print a model's manifest entry, readable or as JSON."""
    info = registry.model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} ({info['task']})")
    if info.get("description"):
        print(f"  {info['description']}")
    print(f"  aliases:     {', '.join(info['aliases']) or '-'}")
    print(f"  parameters:  {info['num_params']:,} ({info['num_classes']} classes)")
    print(f"  input size:  {'x'.join(map(str, info['input_size']))} (C x H x W)")
    if "preprocessing" in info:
        print(f"  preprocess:  {_preprocessing(info['preprocessing'])}")
    if "pretrained_backbone" in info:
        backbone = info["pretrained_backbone"]
        published = "" if info["weights"] else "none published; "
        print(
            f"  weights:     {published}pretrained_backbone=True loads "
            f"{backbone['model']} {backbone['weights']}"
        )
    if info.get("unused_checkpoint_prefixes"):
        print(f"  left out:    {', '.join(info['unused_checkpoint_prefixes'])} (in the weights)")
    for tag, record in info["weights"].items():
        default = " (default)" if tag == info["default_weights"] else ""
        metrics = ", ".join(f"{k} {v}" for k, v in record["metrics"].items())
        print(f"  {tag}{default}")
        print(f"    {record['dataset']}: {metrics}")
        print(f"    url:        {record['url']}")
        print(f"    sha256:     {record['sha256_prefix']}...  license: {record['license']}")
        print(f"    preprocess: {_preprocessing(record['preprocessing'])}")
        print(f"    source:     {record['source']}")
    return 0


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


def _preprocessing(prep: dict[str, Any]) -> str:
    resize = prep["resize"]
    if isinstance(resize, list):
        resize_text = "x".join(map(str, resize))
    else:
        resize_text = f"shorter side {resize}"
    crop = f", center crop {prep['crop']}" if prep["crop"] else ""
    return (
        f"resize {resize_text} ({prep['interpolation']}){crop}, "
        f"mean {prep['mean']}, std {prep['std']}"
    )
