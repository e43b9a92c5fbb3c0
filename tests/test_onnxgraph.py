"""The one graph model (onnxgraph.IndexedGraph) and the small shared helpers of this release."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgezoo
from edgezoo.module_state import kept_modes
from edgezoo.onnxgraph import IndexedGraph
from edgezoo.quantization import PACT2, QuantizationConfig, graph_quantization

PACKAGE = Path(edgezoo.__file__).parent


def _graph() -> onnx.ModelProto:
    """input -> Clip(0, 4) -> Relu -> two readers (Add of itself, Clip named like the first)."""
    nodes = [
        helper.make_node("Clip", ["input", "low", "high"], ["c"], name="clip"),
        helper.make_node("Relu", ["c"], ["r"], name="clip"),
        helper.make_node("Add", ["r", "r"], ["a"]),
        helper.make_node("Clip", ["r", "", "high"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
        ],
        [
            numpy_helper.from_array(np.array(0.0, np.float32), "low"),
            numpy_helper.from_array(np.array(4.0, np.float32), "high"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_indexed_graph_answers_who_makes_and_reads_each_value():
    graph = IndexedGraph(_graph())
    assert graph.names == ["clip", "clip#1", "Add_2", "Clip_3"]  # unique, in order
    assert graph.inputs == ["input"] and graph.opset == 13
    assert graph.producers["r"] == "Relu" and graph.producer_nodes["c"].name == "clip"
    assert graph.reader_ops("r") == ["Add", "Add", "Clip"]  # one entry per input read
    assert [n.op_type for n in graph.readers("c")] == ["Relu"]
    assert graph.clip_bounds(graph.nodes[0]) == (0.0, 4.0)
    assert graph.clip_bounds(graph.nodes[3]) == (-np.inf, 4.0)
    assert graph.shapes["a"] == (1, 3, 4, 4) and graph.rank("output") == 4
    assert graph.inference_error is None


def test_indexed_graph_reports_a_clip_without_constant_bounds():
    proto = _graph()
    proto.graph.node[0].input[2] = "c"  # a computed bound
    assert IndexedGraph(proto).clip_bounds(proto.graph.node[0]) is None


def test_the_onnx_graph_is_indexed_in_one_place():
    """verify, the QDQ rewrite and the simulator share IndexedGraph; none builds its own."""
    builders = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any(
            marker in path.read_text()
            for marker in ("consumers.setdefault", "producer_nodes[", "{name: node for")
        )
    ]
    assert builders == ["onnxgraph/indexed.py"]
    for user in ("export/verify.py", "export/qdq.py", "simulation/runner.py"):
        assert "IndexedGraph" in (PACKAGE / user).read_text()


def test_kept_modes_restores_mixed_modes_also_on_error():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Dropout())
    model.train()
    model[1].eval()
    with pytest.raises(RuntimeError), kept_modes(model):
        model.eval()
        raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_renamed_spellings_are_gone():
    import edgezoo.engine

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    q = edgezoo.QuantTrainModule(model, torch.randn(1, 3, 8, 8))
    settings = graph_quantization(q)
    pact = next(m for m in q.modules() if isinstance(m, PACT2))
    config = QuantizationConfig()
    assert settings.bitwidth_weights == settings.bitwidth_activations == 8
    for owner, old in (
        (settings, "weight_bits"),
        (settings, "activation_bits"),
        (config, "rounding"),
        (pact, "rounding"),
        (edgezoo.engine, "load_checkpoint"),
    ):
        assert not hasattr(owner, old), old
    pact.enable_rounding(False)
    assert pact.rounding_enabled is False and "rounding_enabled=False" in repr(pact)
