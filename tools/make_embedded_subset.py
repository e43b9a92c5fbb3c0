"""Build edgezoo/data/embedded/: a class-balanced, deterministic subset of Fashion-MNIST.

Run from the repository root with Fashion-MNIST installed (Debian: apt install
dataset-fashion-mnist), or pass --source DIR. The output is byte-identical from run to run.

    python tools/make_embedded_subset.py
"""

import argparse
from pathlib import Path

import numpy as np

from edgezoo.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    split_file_names,
)
from edgezoo.data.idx import write_idx

OUT_DIR = Path(__file__).resolve().parents[1] / "edgezoo" / "data" / "embedded"
SEED = 0

LICENSE_TEXT = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

README_TEXT = """\
# Embedded Fashion-MNIST subset

A real, class-balanced subset of Fashion-MNIST (Zalando Research,
https://github.com/zalandoresearch/fashion-mnist, MIT licence: see LICENSE in this folder),
shipped inside edgezoo so that `edgezoo demo` runs offline on any machine.

- {train_per_class} items per class from the 60000-item training split ({n_train} in all),
  {test_per_class} per class from the 10000-item test split ({n_test} in all).
- Selection: for each class, the first items of a permutation drawn with
  numpy.random.default_rng({seed}) over that class's indices; the chosen indices are kept in
  their original order. Pixels and labels are unchanged.
- Files: the original idx format, gzip-compressed, under the original file names, so any
  Fashion-MNIST reader (edgezoo.data.load_fashion_mnist, torchvision after gunzip) reads them.
- Rebuild: `python tools/make_embedded_subset.py` (needs the full set, e.g. the Debian package
  dataset-fashion-mnist); the output is byte-identical.
"""


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """The first per_class indices of each class under a seeded permutation, in file order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for class_id in range(len(FASHION_MNIST_CLASSES)):
        members = np.flatnonzero(labels == class_id)
        if len(members) < per_class:
            raise SystemExit(f"class {class_id} has only {len(members)} items, {per_class} asked")
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="Fashion-MNIST directory (default: Debian)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        items = load_fashion_mnist(args.source, split)
        keep = balanced_indices(items.labels, per_class, SEED)
        images_name, labels_name = split_file_names(split)
        write_idx(args.out / f"{images_name}.gz", items.images[keep])
        write_idx(args.out / f"{labels_name}.gz", items.labels[keep].astype(np.uint8))
        counts[split] = len(keep)
    (args.out / "LICENSE").write_text(LICENSE_TEXT)
    (args.out / "README.md").write_text(
        README_TEXT.format(
            train_per_class=args.train_per_class,
            test_per_class=args.test_per_class,
            n_train=counts["train"],
            n_test=counts["test"],
            seed=SEED,
        )
    )
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {counts} items to {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
