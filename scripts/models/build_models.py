#!/usr/bin/env python3
"""Builds AwesomeDML's image-classification models as ONNX files, offline.

The graphs are faithful to torchvision's resnet50 (v1.5) and inception_v3
(aux_logits=False, transform_input=False); initializers use torchvision's
state_dict names. The weights are random (seeded), not trained: the files
exercise the inference path (shapes, batching, cost) without downloading
anything. `tiny` is a small model with the same contract for fast tests; it is
committed as assets/models/tiny.onnx (`--models tiny --out assets/models`).

Contract of every model: input "input" float32 [N,3,S,S] (N a dynamic dim
named "N"), output "logits" float32 [N,1000] (raw logits, no softmax), opset 17.

Usage (from the repo root, with the project venv of scripts/venv.sh):
  .venv/bin/python scripts/models/build_models.py [--out DIR] [--models a,b]
      [--seed N] [--count-only] [--check]
--count-only prints each model's learnable parameter count (conv weights, BN
scale and bias, fc weight and bias; not BN running stats) without making
weights, and exits 1 when one differs from the expected count.
--check loads each written file with onnxruntime, runs a random batch of 2
and checks the output is [2,1000] and finite, printing the logit statistics.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OPSET = 17
# The IR version that introduced opset 17: every onnxruntime since 1.12 loads it.
IR_VERSION = 8
NUM_CLASSES = 1000
# Learnable parameter counts (torchvision's, for the two real architectures).
EXPECTED_PARAMS = {"resnet50": 25_557_032, "inceptionv3": 23_834_568, "tiny": 133_872}
INPUT_SIZE = {"resnet50": 224, "inceptionv3": 299, "tiny": 64}
# Scale of the last BN gamma of each ResNet residual branch: keeps the residual
# stream from doubling its variance at every block (zero-init-residual, partly).
RESIDUAL_GAMMA = 0.5
# Std of the fc weights, chosen (measured with --check on normalized random
# images) so the logits have a std of a few units.
FC_STD = {"resnet50": 0.07, "inceptionv3": 0.03, "tiny": 0.2}


class Graph:
    """Collects ONNX nodes and parameters; makes weights only when `rng` is set.

    With rng None (count-only mode) parameters are just shapes, so counting
    needs neither memory nor time.
    """

    def __init__(self, rng):
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.learnable = 0
        self.ids = 0

    def tmp(self, hint):
        self.ids += 1
        return f"{hint}_{self.ids}"

    def param(self, name, shape, learnable, make):
        """Registers a parameter; `make()` gives its float32 values."""
        if learnable:
            self.learnable += int(np.prod(shape))
        if self.rng is not None:
            value = np.ascontiguousarray(make(), dtype=np.float32).reshape(shape)
            self.inits.append((name, value))
        return name

    def node(self, op, inputs, hint, **attrs):
        from onnx import helper

        out = self.tmp(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def normal(self, shape, std):
        return lambda: self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def const(self, shape, value):
        return lambda: np.full(shape, value, dtype=np.float32)

    def conv(self, x, prefix, cin, cout, k, stride=1, pad=(0, 0), bias=False):
        """Conv2d; `k` and `pad` are (h, w). Kaiming-normal, fan_out, relu gain."""
        kh, kw = k
        shape = (cout, cin, kh, kw)
        w = self.param(f"{prefix}.weight", shape, True, self.normal(shape, np.sqrt(2.0 / (cout * kh * kw))))
        inputs = [x, w]
        if bias:
            inputs.append(self.param(f"{prefix}.bias", (cout,), True, self.const((cout,), 0.0)))
        ph, pw = pad
        return self.node(
            "Conv", inputs, prefix, kernel_shape=[kh, kw], strides=[stride, stride], pads=[ph, pw, ph, pw]
        )

    def bn(self, x, prefix, c, eps, gamma=1.0):
        names = [
            self.param(f"{prefix}.weight", (c,), True, self.const((c,), gamma)),
            self.param(f"{prefix}.bias", (c,), True, self.const((c,), 0.0)),
            self.param(f"{prefix}.running_mean", (c,), False, self.const((c,), 0.0)),
            self.param(f"{prefix}.running_var", (c,), False, self.const((c,), 1.0)),
        ]
        return self.node("BatchNormalization", [x, *names], prefix, epsilon=eps)

    def relu(self, x):
        return self.node("Relu", [x], "relu")

    def max_pool(self, x, k, stride, pad=0):
        return self.node("MaxPool", [x], "maxpool", kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def avg_pool(self, x, k, stride, pad):
        # torchvision's F.avg_pool2d counts the zero padding (count_include_pad=True).
        return self.node(
            "AveragePool", [x], "avgpool", kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
            count_include_pad=1,
        )

    def concat(self, xs):
        return self.node("Concat", xs, "concat", axis=1)

    def classifier(self, x, features, fc_std):
        """Flatten then Gemm to the logits (weight [1000, features], as torch)."""
        x = self.node("Flatten", [x], "flatten", axis=1)
        shape = (NUM_CLASSES, features)
        w = self.param("fc.weight", shape, True, self.normal(shape, fc_std))
        b = self.param("fc.bias", (NUM_CLASSES,), True, self.const((NUM_CLASSES,), 0.0))
        return self.node("Gemm", [x, w, b], "fc", transB=1)


# --- ResNet50 (torchvision resnet50: Bottleneck, layers [3, 4, 6, 3]) ---

def resnet50(g, x):
    eps = 1e-5
    x = g.relu(g.bn(g.conv(x, "conv1", 3, 64, (7, 7), 2, (3, 3)), "bn1", 64, eps))
    x = g.max_pool(x, 3, 2, 1)
    cin = 64
    for layer, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
        for i in range(blocks):
            s = stride if i == 0 else 1
            p = f"layer{layer}.{i}"
            cout = planes * 4
            y = g.relu(g.bn(g.conv(x, f"{p}.conv1", cin, planes, (1, 1)), f"{p}.bn1", planes, eps))
            # v1.5: the stride sits on the 3x3 conv.
            y = g.relu(g.bn(g.conv(y, f"{p}.conv2", planes, planes, (3, 3), s, (1, 1)), f"{p}.bn2", planes, eps))
            y = g.bn(g.conv(y, f"{p}.conv3", planes, cout, (1, 1)), f"{p}.bn3", cout, eps, RESIDUAL_GAMMA)
            if s != 1 or cin != cout:
                x = g.bn(g.conv(x, f"{p}.downsample.0", cin, cout, (1, 1), s), f"{p}.downsample.1", cout, eps)
            x = g.relu(g.node("Add", [x, y], "add"))
            cin = cout
    x = g.node("GlobalAveragePool", [x], "gap")
    return g.classifier(x, 2048, FC_STD["resnet50"])


# --- InceptionV3 (torchvision inception_v3, aux_logits=False, transform_input=False) ---

def basic(g, x, prefix, cin, cout, k, stride=1, pad=(0, 0)):
    """torchvision's BasicConv2d: Conv (no bias) + BN (eps 0.001) + Relu."""
    if isinstance(k, int):
        k = (k, k)
    if isinstance(pad, int):
        pad = (pad, pad)
    y = g.conv(x, f"{prefix}.conv", cin, cout, k, stride, pad)
    # gamma sqrt(fan_out / fan_in) undoes the fan_out init's change of scale
    # (which compounds over Inception's 1x1 reductions, with no residual path).
    return g.relu(g.bn(y, f"{prefix}.bn", cout, 1e-3, float(np.sqrt(cout / cin))))


def inception_a(g, x, p, cin, pool_features):
    b1 = basic(g, x, f"{p}.branch1x1", cin, 64, 1)
    b5 = basic(g, x, f"{p}.branch5x5_1", cin, 48, 1)
    b5 = basic(g, b5, f"{p}.branch5x5_2", 48, 64, 5, pad=2)
    b3 = basic(g, x, f"{p}.branch3x3dbl_1", cin, 64, 1)
    b3 = basic(g, b3, f"{p}.branch3x3dbl_2", 64, 96, 3, pad=1)
    b3 = basic(g, b3, f"{p}.branch3x3dbl_3", 96, 96, 3, pad=1)
    bp = basic(g, g.avg_pool(x, 3, 1, 1), f"{p}.branch_pool", cin, pool_features, 1)
    return g.concat([b1, b5, b3, bp])


def inception_b(g, x, p, cin):
    b3 = basic(g, x, f"{p}.branch3x3", cin, 384, 3, stride=2)
    bd = basic(g, x, f"{p}.branch3x3dbl_1", cin, 64, 1)
    bd = basic(g, bd, f"{p}.branch3x3dbl_2", 64, 96, 3, pad=1)
    bd = basic(g, bd, f"{p}.branch3x3dbl_3", 96, 96, 3, stride=2)
    bp = g.max_pool(x, 3, 2)
    return g.concat([b3, bd, bp])


def inception_c(g, x, p, cin, c7):
    b1 = basic(g, x, f"{p}.branch1x1", cin, 192, 1)
    b7 = basic(g, x, f"{p}.branch7x7_1", cin, c7, 1)
    b7 = basic(g, b7, f"{p}.branch7x7_2", c7, c7, (1, 7), pad=(0, 3))
    b7 = basic(g, b7, f"{p}.branch7x7_3", c7, 192, (7, 1), pad=(3, 0))
    bd = basic(g, x, f"{p}.branch7x7dbl_1", cin, c7, 1)
    bd = basic(g, bd, f"{p}.branch7x7dbl_2", c7, c7, (7, 1), pad=(3, 0))
    bd = basic(g, bd, f"{p}.branch7x7dbl_3", c7, c7, (1, 7), pad=(0, 3))
    bd = basic(g, bd, f"{p}.branch7x7dbl_4", c7, c7, (7, 1), pad=(3, 0))
    bd = basic(g, bd, f"{p}.branch7x7dbl_5", c7, 192, (1, 7), pad=(0, 3))
    bp = basic(g, g.avg_pool(x, 3, 1, 1), f"{p}.branch_pool", cin, 192, 1)
    return g.concat([b1, b7, bd, bp])


def inception_d(g, x, p, cin):
    b3 = basic(g, x, f"{p}.branch3x3_1", cin, 192, 1)
    b3 = basic(g, b3, f"{p}.branch3x3_2", 192, 320, 3, stride=2)
    b7 = basic(g, x, f"{p}.branch7x7x3_1", cin, 192, 1)
    b7 = basic(g, b7, f"{p}.branch7x7x3_2", 192, 192, (1, 7), pad=(0, 3))
    b7 = basic(g, b7, f"{p}.branch7x7x3_3", 192, 192, (7, 1), pad=(3, 0))
    b7 = basic(g, b7, f"{p}.branch7x7x3_4", 192, 192, 3, stride=2)
    bp = g.max_pool(x, 3, 2)
    return g.concat([b3, b7, bp])


def inception_e(g, x, p, cin):
    b1 = basic(g, x, f"{p}.branch1x1", cin, 320, 1)
    b3 = basic(g, x, f"{p}.branch3x3_1", cin, 384, 1)
    b3 = g.concat([
        basic(g, b3, f"{p}.branch3x3_2a", 384, 384, (1, 3), pad=(0, 1)),
        basic(g, b3, f"{p}.branch3x3_2b", 384, 384, (3, 1), pad=(1, 0)),
    ])
    bd = basic(g, x, f"{p}.branch3x3dbl_1", cin, 448, 1)
    bd = basic(g, bd, f"{p}.branch3x3dbl_2", 448, 384, 3, pad=1)
    bd = g.concat([
        basic(g, bd, f"{p}.branch3x3dbl_3a", 384, 384, (1, 3), pad=(0, 1)),
        basic(g, bd, f"{p}.branch3x3dbl_3b", 384, 384, (3, 1), pad=(1, 0)),
    ])
    bp = basic(g, g.avg_pool(x, 3, 1, 1), f"{p}.branch_pool", cin, 192, 1)
    return g.concat([b1, b3, bd, bp])


def inceptionv3(g, x):
    x = basic(g, x, "Conv2d_1a_3x3", 3, 32, 3, stride=2)
    x = basic(g, x, "Conv2d_2a_3x3", 32, 32, 3)
    x = basic(g, x, "Conv2d_2b_3x3", 32, 64, 3, pad=1)
    x = g.max_pool(x, 3, 2)
    x = basic(g, x, "Conv2d_3b_1x1", 64, 80, 1)
    x = basic(g, x, "Conv2d_4a_3x3", 80, 192, 3)
    x = g.max_pool(x, 3, 2)
    x = inception_a(g, x, "Mixed_5b", 192, 32)
    x = inception_a(g, x, "Mixed_5c", 256, 64)
    x = inception_a(g, x, "Mixed_5d", 288, 64)
    x = inception_b(g, x, "Mixed_6a", 288)
    x = inception_c(g, x, "Mixed_6b", 768, 128)
    x = inception_c(g, x, "Mixed_6c", 768, 160)
    x = inception_c(g, x, "Mixed_6d", 768, 160)
    x = inception_c(g, x, "Mixed_6e", 768, 192)
    x = inception_d(g, x, "Mixed_7a", 768)
    x = inception_e(g, x, "Mixed_7b", 1280)
    x = inception_e(g, x, "Mixed_7c", 2048)
    # Adaptive avg pool to 1x1 (the map is 8x8 here); dropout is an identity at inference.
    x = g.node("GlobalAveragePool", [x], "gap")
    return g.classifier(x, 2048, FC_STD["inceptionv3"])


# --- tiny: 64x64 -> 4x4 by stride-2 convs, then flatten (keeps where things are) ---

def tiny(g, x):
    cin = 3
    for i, cout in enumerate([8, 16, 16, 8]):
        x = g.relu(g.conv(x, f"conv{i + 1}", cin, cout, (3, 3), 2, (1, 1), bias=True))
        cin = cout
    return g.classifier(x, 8 * 4 * 4, FC_STD["tiny"])


BUILDERS = {"resnet50": resnet50, "inceptionv3": inceptionv3, "tiny": tiny}


def build(name, rng):
    """Runs the model's builder; returns the Graph (with weights when rng is set)."""
    g = Graph(rng)
    g.output = BUILDERS[name](g, "input")
    return g


def to_model(name, g):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s = INPUT_SIZE[name]
    # The last node writes the logits directly (no Identity in between).
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
        initializer=[numpy_helper.from_array(v, n) for n, v in g.inits],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="awesomedml-build_models",
        ir_version=IR_VERSION,
    )
    model.doc_string = f"{name} with random weights (architecture only; not trained)"
    onnx.checker.check_model(model)
    return model


def check(path, name, seed):
    """Runs a batch of 2 normalized random images through onnxruntime."""
    import onnxruntime as ort

    s = INPUT_SIZE[name]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    if inp.name != "input" or out.name != "logits" or inp.shape != ["N", 3, s, s]:
        raise SystemExit(f"{name}: unexpected signature {inp.name}{inp.shape} -> {out.name}{out.shape}")
    rng = np.random.default_rng(seed + 1)
    pixels = rng.random((2, 3, s, s), dtype=np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    t = time.perf_counter()
    (logits,) = sess.run(["logits"], {"input": (pixels - mean) / std})
    ms = (time.perf_counter() - t) * 1e3
    if logits.shape != (2, NUM_CLASSES) or logits.dtype != np.float32:
        raise SystemExit(f"{name}: output is {logits.dtype}{list(logits.shape)}, expected float32[2,1000]")
    if not np.isfinite(logits).all():
        raise SystemExit(f"{name}: output has non-finite values")
    sd = float(logits.std())
    if not 0.1 <= sd <= 100.0:
        raise SystemExit(f"{name}: logit std {sd:.3g} is outside [0.1, 100]: the weights are badly scaled")
    if np.array_equal(logits[0], logits[1]):
        raise SystemExit(f"{name}: two different images gave the same logits")
    print(
        f"  check {name}: onnxruntime {ort.__version__}, batch 2 in {ms:.0f} ms, logits "
        f"min {logits.min():.3f} max {logits.max():.3f} std {sd:.3f}, "
        f"argmax {logits.argmax(axis=1).tolist()}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / ".dml/models/built"), help="output folder")
    ap.add_argument("--models", default="resnet50,inceptionv3", help=f"comma-separated, of {','.join(BUILDERS)}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--count-only", action="store_true", help="print learnable parameter counts and compare")
    ap.add_argument("--check", action="store_true", help="run each written file with onnxruntime")
    args = ap.parse_args()

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        ap.error(f"unknown model(s) {unknown} in --models '{args.models}'; known: {', '.join(BUILDERS)}")

    if args.count_only:
        bad = 0
        for name in names:
            count = build(name, None).learnable
            ok = count == EXPECTED_PARAMS[name]
            bad += not ok
            print(f"{name}: {count:,} learnable parameters "
                  f"({'ok' if ok else f'EXPECTED {EXPECTED_PARAMS[name]:,}'})")
        return 1 if bad else 0

    import onnx

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        t = time.perf_counter()
        g = build(name, np.random.default_rng(args.seed))
        if g.learnable != EXPECTED_PARAMS[name]:
            raise SystemExit(f"{name}: {g.learnable:,} parameters, expected {EXPECTED_PARAMS[name]:,}")
        model = to_model(name, g)
        path = out / f"{name}.onnx"
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
        secs = time.perf_counter() - t
        print(f"{name}: wrote {path} ({path.stat().st_size:,} bytes, {g.learnable:,} learnable parameters, "
              f"{len(g.nodes)} nodes) in {secs:.2f} s")
        if args.check:
            check(path, name, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
