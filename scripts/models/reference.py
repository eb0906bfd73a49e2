#!/usr/bin/env python3
"""Independent reference for the agent's preprocessing and inference.

Decodes images with PIL, preprocesses them in numpy (float64) exactly as the
agent does (agent/src/infer/preprocess.rs), runs the model with onnxruntime
on the CPU and prints JSON on stdout:

    {"inputs": [[...CHW...], ...],   # only with --dump-input
     "logits": [[...], ...], "probs": [[...], ...]}

Preprocessing: 8-bit RGB (grey replicated, alpha dropped, 16-bit scaled by
round(v * 255 / 65535)); resize so the shorter side is --resize and the
longer int(long * resize / short), with a separable antialiased triangle
(bilinear) filter whose support grows with the downscale factor, weights as
fast_image_resize computes them; centre crop --input-size at
int(round((h - s) / 2)); x / 255; (x - mean) / std; CHW float32.

    python scripts/models/reference.py --model M.onnx --input-size S \\
        --resize R --mean a,b,c --std a,b,c [--dump-input] IMG...
"""

import argparse
import json
import math
import sys

import numpy as np
from PIL import Image


def load_rgb8(path):
    """The image as an (H, W, 3) uint8 array."""
    img = Image.open(path)
    img.load()
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        # 16-bit greyscale: scale to 8 bits with rounding.
        grey = np.asarray(img).astype(np.float64)
        grey = np.rint(grey * 255.0 / 65535.0).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("1", "L", "LA"):
        grey = np.asarray(img.convert("L") if mode == "1" else img)
        if grey.ndim == 3:
            grey = grey[:, :, 0]
        return np.repeat(grey[:, :, None].astype(np.uint8), 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        raise ValueError(f"{path}: unsupported image mode {mode}")
    return np.asarray(img)[:, :, :3].astype(np.uint8)


def triangle(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def resize_weights(in_size, out_size):
    """(out_size, in_size) matrix of normalised triangle-filter weights.

    Output pixel i is centred at (i + 0.5) * scale in input coordinates;
    input pixel x (centre x + 0.5) within the support radius
    max(scale, 1) gets triangle((x + 0.5 - centre) / max(scale, 1)).
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    radius = 1.0 * filter_scale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(math.floor(centre - radius)), 0)
        hi = min(int(math.ceil(centre + radius)), in_size)
        xs = np.arange(lo, hi, dtype=np.float64)
        w = triangle((xs + 0.5 - centre) / filter_scale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        weights[i, lo:hi] = w
    return weights


def preprocess(path, input_size, resize, mean, std):
    rgb = load_rgb8(path).astype(np.float64)
    h, w = rgb.shape[:2]
    if w <= h:
        rw, rh = resize, int(resize * h / w)
    else:
        rw, rh = int(resize * w / h), resize
    wy = resize_weights(h, rh)
    wx = resize_weights(w, rw)
    # Horizontal then vertical: (C, H, W) -> (C, H, RW) -> (C, RH, RW).
    chw = rgb.transpose(2, 0, 1)
    resized = wy @ (chw @ wx.T)
    s = input_size
    top = int(round((rh - s) / 2.0))
    left = int(round((rw - s) / 2.0))
    crop = resized[:, top : top + s, left : left + s]
    x = crop / 255.0
    x = (x - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    return x.astype(np.float32)


def softmax(logits):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def triple(text):
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return parts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input-size", type=int, required=True)
    ap.add_argument("--resize", type=int, required=True)
    ap.add_argument("--mean", type=triple, required=True)
    ap.add_argument("--std", type=triple, required=True)
    ap.add_argument("--dump-input", action="store_true")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()

    import onnxruntime as ort

    batch = np.stack(
        [preprocess(p, args.input_size, args.resize, args.mean, args.std) for p in args.images]
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: batch})[0]
    out = {}
    if args.dump_input:
        out["inputs"] = batch.reshape(batch.shape[0], -1).tolist()
    out["logits"] = logits.astype(np.float64).tolist()
    out["probs"] = softmax(logits).tolist()
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
