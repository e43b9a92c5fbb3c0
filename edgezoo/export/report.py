"""Report types of the export: what verify_onnx found and what export_onnx wrote and measured."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgezoo.export.qdq_check import RuntimeAgreement

__all__ = ["ExportReport", "GraphViolation", "VerifyReport"]


@dataclass(frozen=True)
class GraphViolation:
    """One broken TIDL rule: the rule's name, the node (or graph value) and what to do."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.message}"


@dataclass(frozen=True)
class VerifyReport:
    """Every TIDL rule violation of one ONNX graph; `ok` when there is none."""

    source: str
    opset: int | None
    quantized: bool
    node_counts: dict[str, int]
    violations: tuple[GraphViolation, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the graph breaks no rule."""
        return not self.violations

    def rules(self) -> set[str]:
        """The names of the rules that were broken."""
        return {v.rule for v in self.violations}

    def __str__(self) -> str:
        kind = "quantized (QAT) rules" if self.quantized else "float rules"
        head = f"{self.source}: opset {self.opset}, {sum(self.node_counts.values())} nodes, {kind}"
        if self.ok:
            return f"{head}: OK, no TIDL rule violations"
        by_rule = Counter(v.rule for v in self.violations)
        summary = ", ".join(f"{rule} x{count}" for rule, count in sorted(by_rule.items()))
        lines = [f"{head}: {len(self.violations)} violation(s) ({summary})"]
        lines += [f"  {violation}" for violation in self.violations]
        return "\n".join(lines)


@dataclass(frozen=True)
class ExportReport:
    """What export_onnx wrote, the graph's verification and the onnxruntime parity it measured.

    parity_max_abs_diff / parity_max_rel_diff compare onnxruntime on the written graph (before
    an appended ArgMax) with the PyTorch model (in clip-only mode for QAT models); the relative
    difference is max|ort - torch| / max|torch|. For a QAT model, integer_max_steps and
    integer_share_differing compare edgezoo.simulate_tidl (TIDL's integer arithmetic) on the
    graph with the QAT model's eval output, in steps of the output's scale (goal 0).
    """

    path: Path
    opset: int
    quantized: bool
    input_shape: tuple[int, ...]
    verification: VerifyReport
    parity_max_abs_diff: float
    parity_max_rel_diff: float
    parity_tolerance: float
    clip_count: int
    aligned_weights: tuple[str, ...] = ()
    config_files: dict[str, Path] = field(default_factory=dict)
    integer_max_steps: float | None = None
    integer_share_differing: float | None = None
    target: str = "tda4vm"
    int8: RuntimeAgreement | None = None
    """For a QDQ export: onnxruntime's int8 kernels against the QAT model (RuntimeAgreement)."""
    qdq_semantics: RuntimeAgreement | None = None
    """For a QDQ export: the graph's literal QDQ semantics against the QAT model (goal 0 steps
    on power-of-two grids)."""

    @property
    def node_counts(self) -> dict[str, int]:
        """Node count per ONNX op type of the written graph."""
        return self.verification.node_counts

    @property
    def parity_ok(self) -> bool:
        """True when onnxruntime matches PyTorch within the relative tolerance."""
        return self.parity_max_rel_diff <= self.parity_tolerance

    @property
    def ok(self) -> bool:
        """True when the graph verifies and parity holds."""
        return self.verification.ok and self.parity_ok

    def __str__(self) -> str:
        kind = "QAT (Clip ranges, grid weights)" if self.quantized else "float (TIDL PTQ)"
        if "QuantizeLinear" in self.node_counts:
            kind = "QAT (QDQ, integer weights)"
        counts = ", ".join(f"{op} {n}" for op, n in sorted(self.node_counts.items()))
        parity = "OK" if self.parity_ok else "FAILED"
        lines = [
            f"{self.path}: {kind} for {self.target}, opset {self.opset}, input "
            f"{list(self.input_shape)}",
            f"  nodes: {counts}",
            f"  parity vs PyTorch: max abs {self.parity_max_abs_diff:.3g}, max rel "
            f"{self.parity_max_rel_diff:.3g} (tolerance {self.parity_tolerance:g}): {parity}",
        ]
        if self.integer_max_steps is not None:
            lines.append(
                f"  TIDL integer simulation vs QAT: max {self.integer_max_steps:g} output steps "
                f"apart, {100 * (self.integer_share_differing or 0.0):.3g} % of outputs differ"
            )
        lines += [f"  {figure}" for figure in (self.qdq_semantics, self.int8) if figure]
        if self.aligned_weights:
            lines.append(f"  weights nudged onto TIDL's grid: {', '.join(self.aligned_weights)}")
        lines += [f"  {role}: {path}" for role, path in self.config_files.items()]
        if self.verification.ok:
            lines.append("  verification: OK, no TIDL rule violations")
        else:
            lines.append(f"  verification: {len(self.verification.violations)} violation(s)")
            lines += [f"    {violation}" for violation in self.verification.violations]
        return "\n".join(lines)
