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
    graph with the QAT model's eval output, in steps of the output's scale, and
    integer_first_difference names the first graph layer where the integers leave QAT's
    arithmetic; a QDQ export compares the graph's QDQ semantics instead (qdq_semantics). Either
    figure above 0 steps fails the export like a broken TIDL rule: the device would not compute
    what the QAT model computes.
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
    integer_first_difference: str | None = None
    integer_assumed_ops: tuple[str, ...] = ()
    """Ops of the graph whose device arithmetic the simulation assumes rather than knows
    (simulation.ASSUMED_OPS): the integer figure holds for edgezoo's model of them."""
    output_names: tuple[str, ...] = ("output",)
    """The graph's outputs (several for a model that returns a tuple or dict of tensors)."""
    integer_not_simulated: str | None = None
    """Why a QAT Clip graph was not simulated (an op or form the simulation does not define):
    its integers are unchecked, which the report says."""
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
    def integer_ok(self) -> bool:
        """True unless the device arithmetic was measured and differs from the QAT model."""
        if self.integer_max_steps is not None and self.integer_max_steps != 0:
            return False
        return self.qdq_semantics is None or self.qdq_semantics.max_steps == 0

    @property
    def ok(self) -> bool:
        """True when the graph verifies, parity holds and the device computes what QAT does."""
        return self.verification.ok and self.parity_ok and self.integer_ok

    def integer_failure(self) -> str:
        """Why integer_ok is False, naming the first differing layer where it is known."""
        if self.qdq_semantics is not None and self.qdq_semantics.max_steps != 0:
            return f"the graph's QDQ semantics differ from the QAT model: {self.qdq_semantics}"
        where = self.integer_first_difference or "no single graph layer (the graph as a whole)"
        return (
            f"TIDL's integer arithmetic (simulate_tidl) is {self.integer_max_steps:g} output "
            f"steps from the QAT model; first differing layer: {where}. `edgezoo simulate` on "
            "the file (strict=False / --no-strict writes it) prints every layer"
        )

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
            *([f"  outputs: {', '.join(self.output_names)}"] if len(self.output_names) > 1 else []),
            f"  parity vs PyTorch: max abs {self.parity_max_abs_diff:.3g}, max rel "
            f"{self.parity_max_rel_diff:.3g} (tolerance {self.parity_tolerance:g}): {parity}",
        ]
        if self.integer_max_steps is not None:
            verdict = "OK" if self.integer_ok else "FAILED"
            lines.append(
                f"  TIDL integer simulation vs QAT: max {self.integer_max_steps:g} output steps "
                f"apart, {100 * (self.integer_share_differing or 0.0):.3g} % of outputs differ: "
                f"{verdict}"
            )
            if self.integer_first_difference:
                lines.append(f"    first differing layer: {self.integer_first_difference}")
            if self.integer_assumed_ops:
                lines.append(
                    f"    assumed, not known: {', '.join(self.integer_assumed_ops)} simulated as "
                    "QAT computes them, rounded onto their range (TIDL's own arithmetic for them "
                    "is not modelled); check these layers on the device"
                )
        if self.integer_not_simulated:
            lines.append(
                f"  TIDL integer simulation: not run, so the device's integers are unchecked "
                f"({self.integer_not_simulated})"
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
