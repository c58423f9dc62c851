"""ONNX graphs built with ``onnx.helper`` for the frontend tests (tiny, seeded, dynamic batch)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _init(name: str, shape: tuple, rng: np.random.Generator, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, name: str, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="graph-builder", producer_version="1.2")
    model.ir_version = 8
    helper.set_model_props(model, {"author": "tests"})
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(bias: bool = True, hidden: int = 16, seed: int = 0) -> onnx.ModelProto:
    """``x[N, 8] -> MatMul -> (Add) -> Relu -> MatMul -> Add -> y[N, 4]``."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1/MatMul")]
    inits = [_init("w1", (8, hidden), rng), _init("w2", (hidden, 4), rng), _init("b2", (4,), rng)]
    first = "h0"
    if bias:
        nodes.append(helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1/Add"))
        inits.append(_init("b1", (hidden,), rng))
        first = "h1"
    nodes += [helper.make_node("Relu", [first], ["h"], name="act"),
              helper.make_node("MatMul", ["h", "w2"], ["o0"], name="fc2/MatMul"),
              helper.make_node("Add", ["o0", "b2"], ["y"], name="fc2/Add")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return _model(nodes, [x], [y], inits, "mlp")


def gemm(trans_b: bool, seed: int = 0) -> onnx.ModelProto:
    """``Gemm -> Relu -> Gemm`` with weights stored ``[out, in]`` (transB=1) or ``[in, out]``."""
    rng = np.random.default_rng(seed)
    w1 = (16, 8) if trans_b else (8, 16)
    w2 = (4, 16) if trans_b else (16, 4)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h0"], name="g1", transB=int(trans_b)),
             helper.make_node("Relu", ["h0"], ["h"], name="act"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="g2", transB=int(trans_b),
                              alpha=0.5)]
    inits = [_init("w1", w1, rng), _init("b1", (16,), rng), _init("w2", w2, rng),
             _init("b2", (4,), rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return _model(nodes, [x], [y], inits, "gemm")


def scaled_gemms(inits: dict) -> onnx.ModelProto:
    """``x[B, 6] -> Gemm(alpha=0.5, beta=2, W1 [in, out]) -> Relu -> Gemm(transB, W2 [out, in])
    -> y[B, 3]``, opset 17, with the given ``W1``, ``B1``, ``W2``, ``B2`` arrays."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1", alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
        [numpy_helper.from_array(inits[n], n) for n in ("W1", "B1", "W2", "B2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_bn_residual(seed: int = 0) -> onnx.ModelProto:
    """``x -> Conv3x3 -> BN -> Relu -> Conv1x1 (no bias) -> + x -> Relu -> GAP -> Gemm``."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="block/conv1", pads=[1] * 4,
                         kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"],
                         name="block/bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="block/relu1"),
        helper.make_node("Conv", ["r1", "c2w"], ["c2"], name="block/conv2", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"], name="block/add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fcw", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("c1w", (16, 4, 3, 3), rng), _init("c1b", (16,), rng),
             _init("bn_s", (16,), rng), _init("bn_b", (16,), rng), _init("bn_m", (16,), rng),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn_v"),
             _init("c2w", (4, 16, 1, 1), rng), _init("fcw", (3, 4), rng), _init("fcb", (3,), rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    return _model(nodes, [x], [y], inits, "convnet")


def depthwise(seed: int = 0, multiplier: int = 1) -> onnx.ModelProto:
    """Inverted residual: ``x -> Conv1x1 expand -> Relu -> depthwise Conv3x3 (group = its
    channels, ``multiplier`` outputs each) -> Relu -> Conv1x1 project -> + x -> GAP -> Gemm``."""
    rng = np.random.default_rng(seed)
    wide = 16
    nodes = [
        helper.make_node("Conv", ["x", "ew", "eb"], ["e"], name="block/expand", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["e"], ["r1"], name="block/relu1"),
        helper.make_node("Conv", ["r1", "dw", "db"], ["d"], name="block/dw", kernel_shape=[3, 3],
                         pads=[1] * 4, group=wide),
        helper.make_node("Relu", ["d"], ["r2"], name="block/relu2"),
        helper.make_node("Conv", ["r2", "pw"], ["p"], name="block/project", kernel_shape=[1, 1]),
        helper.make_node("Add", ["p", "x"], ["s"], name="block/add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fcw", "fcb"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("ew", (wide, 4, 1, 1), rng), _init("eb", (wide,), rng),
             _init("dw", (wide * multiplier, 1, 3, 3), rng), _init("db", (wide * multiplier,), rng),
             _init("pw", (4, wide * multiplier, 1, 1), rng), _init("fcw", (3, 4), rng),
             _init("fcb", (3,), rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    return _model(nodes, [x], [y], inits, "inverted_residual")


def upsample(seed: int = 0, sizes: bool = False, mode: str = "nearest") -> onnx.ModelProto:
    """``x -> Conv3x3 -> Relu -> Resize x2 (nearest, as torch exports it; by ``sizes``
    [N, C, 16, 16] instead of scales when asked; another ``mode`` when asked) -> Conv1x1``:
    the channels of the first Conv flow through the Resize."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1] * 4,
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Resize", ["r1", "", "", "sizes"] if sizes else ["r1", "", "scales"],
                         ["u"], name="up", mode=mode,
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Conv", ["u", "c2w", "c2b"], ["y"], name="conv2", kernel_shape=[1, 1]),
    ]
    inits = [_init("c1w", (16, 4, 3, 3), rng), _init("c1b", (16,), rng),
             numpy_helper.from_array(np.array([2, 16, 16, 16], np.int64), "sizes") if sizes
             else numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             _init("c2w", (3, 16, 1, 1), rng), _init("c2b", (3,), rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 16, 16])
    return _model(nodes, [x], [y], inits, "upsample")


def shared_bias(seed: int = 0) -> onnx.ModelProto:
    """Two parallel MLP branches reading ONE zero bias (as exporters deduplicate it) and one
    Reshape shape constant: ``y = fc_a2(relu(fc_a(x) + z)) + fc_b2(relu(fc_b(x) + z))``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [numpy_helper.from_array(np.zeros(16, np.float32), "zero_bias"),
                        numpy_helper.from_array(np.array([0, 4, 4], np.int64), "shape")]
    outs = []
    for branch in "ab":
        w = rng.standard_normal((8, 16)).astype(np.float32)
        w[:, : 8 if branch == "a" else 0] *= 0.01  # the branches lose different units
        w[:, 8:] *= 0.01 if branch == "b" else 1.0
        inits += [numpy_helper.from_array(w, f"w_{branch}"), _init(f"w_{branch}2", (16, 16), rng)]
        nodes += [helper.make_node("MatMul", ["x", f"w_{branch}"], [f"m_{branch}"], name=f"{branch}/fc"),
                  helper.make_node("Add", [f"m_{branch}", "zero_bias"], [f"a_{branch}"], name=f"{branch}/add"),
                  helper.make_node("Relu", [f"a_{branch}"], [f"r_{branch}"], name=f"{branch}/relu"),
                  helper.make_node("MatMul", [f"r_{branch}", f"w_{branch}2"], [f"o_{branch}"], name=f"{branch}/fc2"),
                  helper.make_node("Reshape", [f"o_{branch}", "shape"], [f"y_{branch}"], name=f"{branch}/reshape")]
        outs.append(f"y_{branch}")
    nodes.append(helper.make_node("Add", outs, ["y"], name="sum"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])
    return _model(nodes, [x], [y], inits, "shared")


def heads(seed: int = 0) -> onnx.ModelProto:
    """Self-attention over ``x[N, S, 16]`` with 4 heads of 4 whose Reshape shapes are
    computed from the input's shape (``Concat(Shape(x)[0:2], [4, 4])``), as exporters write."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    nodes = [h("Shape", ["x"], ["xs"], name="shape"),
             h("Slice", ["xs", "zero1", "two1"], ["bs"], name="bs"),
             h("Concat", ["bs", "heads_dims"], ["split_shape"], name="split_shape", axis=0),
             h("Concat", ["bs", "merged"], ["merge_shape"], name="merge_shape", axis=0)]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero1"),
             numpy_helper.from_array(np.array([2], np.int64), "two1"),
             numpy_helper.from_array(np.array([4, 4], np.int64), "heads_dims"),
             numpy_helper.from_array(np.array([16], np.int64), "merged"),
             numpy_helper.from_array(np.array(0.5, np.float32), "scale")]
    for name in "qkv":
        inits += [_init(f"w{name}", (16, 16), rng), _init(f"b{name}", (16,), rng)]
        nodes += [h("MatMul", ["x", f"w{name}"], [f"{name}0"], name=f"{name}/MatMul"),
                  h("Add", [f"{name}0", f"b{name}"], [f"{name}1"], name=f"{name}/Add"),
                  h("Reshape", [f"{name}1", "split_shape"], [f"{name}2"], name=f"{name}/Reshape"),
                  h("Transpose", [f"{name}2"], [f"{name}3"], name=f"{name}/Transpose",
                    perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])]
    inits += [_init("wo", (16, 16), rng), _init("bo", (16,), rng)]
    nodes += [h("MatMul", ["q3", "k3"], ["s0"], name="scores"),
              h("Mul", ["s0", "scale"], ["s1"], name="scale_mul"),
              h("Softmax", ["s1"], ["p"], name="softmax", axis=-1),
              h("MatMul", ["p", "v3"], ["c0"], name="context"),
              h("Transpose", ["c0"], ["c1"], name="merge/Transpose", perm=[0, 2, 1, 3]),
              h("Reshape", ["c1", "merge_shape"], ["c2"], name="merge/Reshape"),
              h("MatMul", ["c2", "wo"], ["o0"], name="out/MatMul"),
              h("Add", ["o0", "bo"], ["y"], name="out/Add")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])
    return _model(nodes, [x], [y], inits, "attention")


def gqa(seed: int = 0) -> onnx.ModelProto:
    """Grouped-query attention over ``x[N, S, 16]``: 4 query heads of 4 share 2 key/value
    heads, repeated as exporters write ``repeat_kv``: ``Unsqueeze -> Expand(constant shape)
    -> Reshape(constant shape)``; the batch and sequence sizes come in as ``0`` (copy)."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    const = {"q_shape": [0, 0, 4, 4], "kv_shape": [0, 0, 2, 4], "axes2": [2],
             "expand_kv": [1, 2, 2, 1, 1], "merge_kv": [0, 4, -1, 4], "out_shape": [0, 0, 16]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in const.items()]
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "scale"))
    nodes = []
    for name, width in (("q", 16), ("k", 8), ("v", 8)):
        inits.append(_init(f"w{name}", (16, width), rng))
        shape = "q_shape" if name == "q" else "kv_shape"
        nodes += [h("MatMul", ["x", f"w{name}"], [f"{name}0"], name=f"{name}/MatMul"),
                  h("Reshape", [f"{name}0", shape], [f"{name}1"], name=f"{name}/Reshape"),
                  h("Transpose", [f"{name}1"], [f"{name}2"], name=f"{name}/Transpose",
                    perm=[0, 2, 1, 3])]
        if name != "q":  # repeat_kv: [N, 2, S, 4] -> [N, 2, 2, S, 4] -> [N, 4, S, 4]
            nodes += [h("Unsqueeze", [f"{name}2", "axes2"], [f"{name}3"], name=f"{name}/Unsqueeze"),
                      h("Expand", [f"{name}3", "expand_kv"], [f"{name}4"], name=f"{name}/Expand"),
                      h("Reshape", [f"{name}4", "merge_kv"], [f"{name}5"], name=f"{name}/repeat")]
    inits.append(_init("wo", (16, 16), rng))
    nodes += [h("Transpose", ["k5"], ["kt"], name="k/T", perm=[0, 1, 3, 2]),
              h("MatMul", ["q2", "kt"], ["s0"], name="scores"),
              h("Mul", ["s0", "scale"], ["s1"], name="scale_mul"),
              h("Softmax", ["s1"], ["p"], name="softmax", axis=-1),
              h("MatMul", ["p", "v5"], ["c0"], name="context"),
              h("Transpose", ["c0"], ["c1"], name="merge/Transpose", perm=[0, 2, 1, 3]),
              h("Reshape", ["c1", "out_shape"], ["c2"], name="merge/Reshape"),
              h("MatMul", ["c2", "wo"], ["y"], name="out/MatMul")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])
    return _model(nodes, [x], [y], inits, "gqa")


def _conv_gru_bytes() -> bytes:
    """``x[N, 3, L] -> Conv1d -> Relu -> Conv1d -> Relu -> GRU(8 -> 6) -> last step ->
    Linear(6, 16) -> Relu -> Linear(16, 4) -> y[N, 4]``, exported by torch's TorchScript
    exporter (opset 17, ``N`` and ``L`` dynamic). onnx2torch has no GRU converter."""
    import io
    import warnings

    import torch

    class ConvGRU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv1d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv1d(8, 8, 3, padding=1)
            self.gru = torch.nn.GRU(8, 6, batch_first=True)
            self.fc1, self.fc2 = torch.nn.Linear(6, 16), torch.nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.c2(torch.relu(self.c1(x)))).transpose(1, 2)
            out, _ = self.gru(h)
            return self.fc2(torch.relu(self.fc1(out[:, -1])))

    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ConvGRU().eval(), (torch.randn(2, 3, 7),), buffer, dynamo=False,
                          opset_version=OPSET, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N", 2: "L"}, "y": {0: "N"}})
    return buffer.getvalue()


_EXPORTED: dict[str, bytes] = {}


def conv_gru() -> onnx.ModelProto:
    """A fresh copy of the exported conv -> GRU -> MLP model (exported once per session)."""
    if "conv_gru" not in _EXPORTED:
        _EXPORTED["conv_gru"] = _conv_gru_bytes()
    return onnx.load_from_string(_EXPORTED["conv_gru"])


def contrib_mlp(op: str = "Gelu", domain: str = "com.microsoft", seed: int = 0
                ) -> onnx.ModelProto:
    """``x[N, 8] -> MatMul -> Add -> Relu -> MatMul -> <domain>.<op> -> MatMul -> y[N, 4]``:
    an op from another domain between the second and third layers."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    nodes = [h("MatMul", ["x", "w1"], ["a0"], name="fc1/MatMul"),
             h("Add", ["a0", "b1"], ["a1"], name="fc1/Add"),
             h("Relu", ["a1"], ["a"], name="act"),
             h("MatMul", ["a", "w2"], ["g0"], name="fc2/MatMul"),
             h(op, ["g0"], ["g"], name="special", domain=domain),
             h("MatMul", ["g", "w3"], ["y"], name="fc3/MatMul")]
    inits = [_init("w1", (8, 16), rng), _init("b1", (16,), rng), _init("w2", (16, 8), rng),
             _init("w3", (8, 4), rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(nodes, "contrib_mlp", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(domain, 1)],
                              producer_name="graph-builder", producer_version="1.2")
    model.ir_version = 8
    return model


def nms(seed: int = 0) -> onnx.ModelProto:
    """``boxes[1, 6, 4] -> Mul(scale) -> NonMaxSuppression(., scores) -> indices[?, 3]``:
    the number of boxes kept depends on the data."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    nodes = [h("Mul", ["boxes", "scale"], ["b"], name="scale_boxes"),
             h("NonMaxSuppression", ["b", "scores", "max_out", "iou"], ["kept"], name="nms")]
    inits = [_init("scale", (4,), rng),
             numpy_helper.from_array(np.array([3], np.int64), "max_out"),
             numpy_helper.from_array(np.array([0.5], np.float32), "iou")]
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 6])
    kept = helper.make_tensor_value_info("kept", TensorProto.INT64, [None, 3])
    return _model(nodes, [boxes, scores], [kept], inits, "nms")


def lstm(seed: int = 0, hidden: int = 4) -> onnx.ModelProto:
    """``x[T, 2, 5] -> MatMul -> Relu -> MatMul -> LSTM`` whose ``Y_h`` is omitted (outputs
    ``y, "", c``): ``c -> Squeeze -> MatMul -> out[2, 3]``, and ``y`` a graph output."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    nodes = [h("MatMul", ["x", "w1"], ["a0"], name="fc1"), h("Relu", ["a0"], ["a"], name="act"),
             h("MatMul", ["a", "w2"], ["s"], name="fc2"),
             h("LSTM", ["s", "W", "R", "B"], ["y", "", "c"], name="lstm", hidden_size=hidden),
             h("Squeeze", ["c", "axis0"], ["c1"], name="squeeze"),
             h("MatMul", ["c1", "w3"], ["out"], name="fc3")]
    inits = [_init("w1", (5, 16), rng), _init("w2", (16, 6), rng),
             _init("W", (1, 4 * hidden, 6), rng), _init("R", (1, 4 * hidden, hidden), rng),
             _init("B", (1, 8 * hidden), rng), _init("w3", (hidden, 3), rng),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 2, 5])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 1, 2, hidden])
    return _model(nodes, [x], [out, y], inits, "lstm")


def roi_align(seed: int = 0) -> onnx.ModelProto:
    """``x[N, 3, 8, 8] -> Conv -> Relu -> Conv -> RoiAlign(rois[2, 4], idx[2]) -> y[2, 8, 2, 2]``:
    onnx2torch converts RoiAlign with torchvision, which prunec does not install."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    nodes = [h("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h("Relu", ["c1"], ["r1"], name="act"),
             h("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             h("RoiAlign", ["c2", "rois", "idx"], ["y"], name="roi", output_height=2,
               output_width=2, sampling_ratio=2)]
    inits = [_init("w1", (16, 3, 3, 3), rng), _init("b1", (16,), rng),
             _init("w2", (8, 16, 3, 3), rng), _init("b2", (8,), rng)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, [2, 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 2, 2])
    return _model(nodes, [x, rois, idx], [y], inits, "roi_align")


def branch(seed: int = 0) -> onnx.ModelProto:
    """``x[2, 8] -> MatMul -> If(sum(x) > 0: Relu, else Neg) -> MatMul -> Relu -> MatMul ->
    y[2, 4]``: the If's branches read the first MatMul's output from the main graph."""
    rng = np.random.default_rng(seed)
    h = helper.make_node
    then_graph = helper.make_graph([h("Relu", ["a"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 16])])
    else_graph = helper.make_graph([h("Neg", ["a"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 16])])
    nodes = [h("MatMul", ["x", "w1"], ["a"], name="fc1"),
             h("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             h("Greater", ["s", "zero"], ["cond"], name="positive"),
             h("If", ["cond"], ["b"], name="branch", then_branch=then_graph,
               else_branch=else_graph),
             h("MatMul", ["b", "w2"], ["c"], name="fc2"), h("Relu", ["c"], ["d"], name="act"),
             h("MatMul", ["d", "w3"], ["y"], name="fc3")]
    inits = [_init("w1", (8, 16), rng), _init("w2", (16, 16), rng), _init("w3", (16, 4), rng),
             numpy_helper.from_array(np.array(0, np.float32), "zero")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    return _model(nodes, [x], [y], inits, "branch")
