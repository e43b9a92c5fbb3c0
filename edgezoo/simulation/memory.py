"""Memory the simulation of a graph needs, estimated from its shapes before anything runs.

A run keeps the values still to be read (released after their last reader); a recorded run
(parity_report, layers) keeps every node's output, in both arithmetics for parity. Values are
held in float32 or float64 (integer_kernels), so 8 bytes per element bounds them.
"""

import math

from edgezoo.errors import MemoryBudgetError
from edgezoo.onnxgraph.indexed import IndexedGraph

__all__ = ["available_memory", "check_simulation_memory", "values_per_image"]

_BYTES_PER_VALUE = 8
_USABLE_SHARE = 0.8
"""Refuse work estimated above this share of the memory the system reports available."""


def available_memory() -> int | None:
    """Bytes the system reports available (Linux /proc/meminfo MemAvailable), else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def values_per_image(graph: IndexedGraph, recorded: bool) -> int:
    """Values one image keeps alive: every node output when `recorded`, else the three largest
    (input, output, an accumulator). Computed once per graph by its simulator."""
    sizes = []
    for node in graph.nodes:
        for name in node.output:
            shape = graph.shapes.get(name)
            if shape:
                sizes.append(math.prod(shape[1:]) if len(shape) > 1 else 1)
    return sum(sizes) if recorded else sum(sorted(sizes)[-3:])


def check_simulation_memory(per_image: int, batch: int, arithmetics: int = 1) -> None:
    """Raise MemoryBudgetError, naming the figures, when `batch` images of `per_image` values
    (values_per_image) in `arithmetics` arithmetics exceed what is free."""
    free = available_memory()
    if free is None:
        return
    needed = per_image * batch * _BYTES_PER_VALUE * arithmetics
    if needed > free * _USABLE_SHARE:
        raise MemoryBudgetError(
            f"simulating a batch of {batch} would need about {needed / 2**30:.1f} GiB, and "
            f"{free / 2**30:.1f} GiB is available: use a smaller batch (--batch-size), "
            "a smaller input, or a machine with more memory"
        )
