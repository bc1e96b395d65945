"""Speed and memory of the ViT-Adapter + Mask2Former segmentor (`dinov3nb.heads.segmentor`) at a tiny and a ViT-S-sized configuration.

    python bench/heads_segmentor.py            # every row (a minute or two on 2 cores)
    python bench/heads_segmentor.py --quick    # fewer repeats, a smoke test

Rows: the raw forward (adapter + pixel decoder + decoder) at one image size, and the official evaluation's
inference (sliding window, softmax maps) on an image larger than the window. Eager PyTorch, fp32, 2 threads,
`torch.inference_mode()`, random weights. Each row runs in a fresh process: images/s is the median over the
repeats after a warm-up; peak memory is the growth of the process's peak resident set from before building the
model (weights included). No ONNX row: the masked attention and the per-level token splits of the adapter make
the graph depend on the image size, and exporting it is left to a later issue.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SETTINGS = {  # name: (backbone, head, what, image side)
    "tiny-forward-128": ("tiny", "tiny", "forward", 128),
    "tiny-slide-256": ("tiny", "tiny", "slide", 256),
    "vits16-forward-256": ("vits16", "small", "forward", 256),
    "vits16-forward-512": ("vits16", "small", "forward", 512),
    "vits16-slide-768": ("vits16", "small", "slide", 768),
}


def _row(name:str, repeats:int) -> dict:
    import resource
    import torch
    from dinov3nb.heads.segmentor import SegmentorConfig, build_segmentor, make_inference
    from dinov3nb.models.backbones import build, n_parameters
    from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
    torch.set_num_threads(2); torch.manual_seed(0)
    backbone, head, what, side = SETTINGS[name]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    vit = DinoVisionTransformer(ViTConfig.tiny(depth=4)) if backbone == "tiny" else build("dinov3_vits16")
    cfg = (SegmentorConfig(hidden_dim=64, conv_inplane=16, adapter_heads=4, pixel_heads=4, pixel_ffn=128, pixel_layers=2,
                           n_queries=10, decoder_heads=4, decoder_ffn=128, decoder_layers=3) if head == "tiny" else
           SegmentorConfig(hidden_dim=256, conv_inplane=64, adapter_heads=6, pixel_heads=8, pixel_ffn=1024, pixel_layers=6,
                           n_queries=100, decoder_heads=8, decoder_ffn=1024, decoder_layers=9))
    model = build_segmentor(vit, cfg)
    x = torch.randn(1, 3, side, side)
    run = ((lambda: model(x)) if what == "forward" else
           (lambda: make_inference(model, x, "slide", crop=(side // 2, side // 2), stride=(side // 3, side // 3))))
    times = []
    with torch.inference_mode():
        run()
        for _ in range(repeats):
            t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB -> MiB (Linux)
    return {"setting": name, "params_M": n_parameters(model) / 1e6, "head_params_M": (n_parameters(model) - n_parameters(vit)) / 1e6,
            "images_per_s": 1 / statistics.median(times), "peak_MiB": peak}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--row", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    repeats = 2 if a.quick else 5
    if a.row: print(json.dumps(_row(a.row, repeats))); return
    print(f"| setting | params (M) | head (M) | images/s | peak memory (MiB) |\n|---|---|---|---|---|")
    for name in a.settings:
        r = subprocess.run([sys.executable, __file__, "--row", name] + (["--quick"] if a.quick else []), capture_output=True, text=True)
        if r.returncode: print(f"| {name} | failed: {r.stderr.strip().splitlines()[-1]} |"); continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {name} | {d['params_M']:.1f} | {d['head_params_M']:.1f} | {d['images_per_s']:.2f} | {d['peak_MiB']:.0f} |")


if __name__ == "__main__": main()
