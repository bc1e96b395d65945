"""Speed and peak memory of the released head families at a tiny and at a ViT-S-sized configuration.

    python bench/heads_detector.py            # every row (a few minutes on 2 cores)
    python bench/heads_detector.py --quick    # fewer repeats, a smoke test
    python bench/heads_detector.py --rows detector-tiny

Random weights, fp32, eager PyTorch, `torch.inference_mode()`, 2 threads unless `--threads`. Each row runs in a
fresh process: images/s is the median over the timed repeats after one warm-up; peak memory is the growth of
the process's peak resident set from just before the model is built to after the last forward (weights
included). ONNX Runtime rows: none yet for the detector — its graph cuts the padded batch into windows with
Python-side sizes and selects proposals with a data-dependent top-k, so an export would fix the image size.
Add a family by adding its builder to `ROWS`.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch


def detector_tiny():
    "A 4-block D=64 ViT, hidden 64, 2+2 layers, 30 queries; one 96x128 image."
    from dinov3nb.heads.detector import DetectorConfig, build_detector
    from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
    model = build_detector(DinoVisionTransformer(ViTConfig.tiny(depth=4)).eval(), DetectorConfig.tiny())
    images = [torch.randn(3, 96, 128)]
    return lambda: model(images)


def detector_vits():
    "ViT-S/16 with the released head size (hidden 768, 6+6 layers, 1500 queries, 3x3 windows); one 480x640 image."
    from dinov3nb.heads.detector import build_detector
    from dinov3nb.models.backbones import build
    model = build_detector(build("dinov3_vits16").eval())
    images = [torch.randn(3, 480, 640)]
    return lambda: model(images)


ROWS = {"detector-tiny": detector_tiny, "detector-vits16": detector_vits}


def _peak_mib() -> float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(name:str, repeats:int, threads:int, queue):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    before = _peak_mib()
    step = ROWS[name]()  # built outside inference mode (the ViT's RoPE cache tracks its periods' version)
    with torch.inference_mode():
        step()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    queue.put((1 / statistics.median(times), _peak_mib() - before))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--quick", action="store_true", help="2 timed repeats instead of 5")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    print(f"| row | images/s | peak memory (MiB) |\n|---|---|---|")
    for name in a.rows:
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, 2 if a.quick else 5, a.threads, q))
        proc.start(); proc.join()
        if q.empty(): print(f"| {name} | failed (exit code {proc.exitcode}) | |", flush=True); continue
        speed, mem = q.get()
        print(f"| {name} | {speed:.2f} | {mem:.0f} |", flush=True)


if __name__ == "__main__":
    main()
