"""Images/s of one dinov3nb backbone through each runtime: torch eager, ONNX Runtime, TensorRT (where present).

    python bench/backends.py              # ViT-S/16 and ConvNeXt-T, 224x224 and 160x288, batch 1
    python bench/backends.py --quick      # fewer repeats, a smoke test
    python bench/backends.py --batch 8 --threads 2

Same process, random weights, fp32 inputs; runtimes run round-robin (one forward of each in turn, after a
warm-up) and the table reports medians, with each runtime's speed relative to torch eager. Exporting and
building engines happens before timing and is reported separately. Needs the `onnx` extra; TensorRT
rows appear only with an NVIDIA GPU and the `tensorrt` package.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

warnings.filterwarnings("ignore")
MODELS = {"vits16": "dinov3_vits16", "convnext_t": "dinov3_convnext_tiny"}
SIZES = [(224, 224), (160, 288)]


def available_runtimes() -> list[str]:
    names = ["torch"]
    try:
        import onnxruntime  # noqa: F401
        names.append("onnxruntime")
    except ImportError: pass
    try:
        import tensorrt  # noqa: F401
        if torch.cuda.is_available(): names.append("tensorrt")
    except ImportError: pass
    return names


def timed(fn, x, repeats:int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(x); out.append(time.perf_counter() - t0)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from dinov3nb.models.backbones import build
    from dinov3nb.deploy.runtime import make_runtime
    repeats, warmup = (3, 1) if a.quick else (9, 2)
    names = available_runtimes()
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, median of {repeats} round-robin runs; "
          f"runtimes: {', '.join(names)}\n")
    print("| model | input | runtime | ms | img/s | vs torch | setup s |")
    print("|---|---|---|---:|---:|---:|---:|")
    folder = tempfile.mkdtemp(prefix="dinov3nb-bench-")
    for arch in a.models:
        torch.manual_seed(0)
        model = build(MODELS[arch]).eval()
        runtimes, setup = {}, {}
        for n in names:
            t0 = time.perf_counter()
            kw = {"folder": folder} if n != "torch" else {}
            runtimes[n] = make_runtime(n, model, sizes=SIZES, max_batch=a.batch, **kw)
            setup[n] = time.perf_counter() - t0
        for h, w in SIZES:
            x = torch.randn(a.batch, 3, h, w)
            times = {n: [] for n in runtimes}
            with torch.inference_mode():
                for rt in runtimes.values():
                    for _ in range(warmup): rt(x)
                for _ in range(repeats):
                    for n, rt in runtimes.items(): times[n] += timed(rt, x, 1)
            base = statistics.median(times["torch"])
            for n, t in times.items():
                ms = statistics.median(t) * 1000
                print(f"| {arch} | {h}x{w} | {n} | {ms:.1f} | {a.batch / ms * 1000:.2f} | {base * 1000 / ms:.2f}x | "
                      f"{setup[n]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
