"""Camera KMeans segmentation: the usual tutorial loop against dinov3nb's pipeline, side by side.

    python bench/camera.py            # ViT-S/16 and ViT-B/16, 40 frames each (a few minutes on 2 cores)
    python bench/camera.py --quick    # ViT-S/16, 6 frames: a smoke test
    python bench/camera.py --models vitb16 --frames 100

The tutorial loop, per frame: a PIL image and a torchvision transform built anew, the forward,
scikit-learn `KMeans(n_clusters=3, n_init=1, max_iter=50)` from scratch, `cv2.applyColorMap` of the
label grid, a resize and `cv2.addWeighted`. Ours: `dinov3nb.jetson.camera.SegmentationPipeline` (OpenCV
resize and a precomputed multiply-add, torch KMeans warm-started with Hungarian id matching, one
`addWeighted`), in eager torch and, with the `onnx` extra, on the CPU fast path (`dinov3nb.accelerate`) at every
backend x precision this CPU runs (ONNX Runtime fp32 / int8, OpenVINO fp32 / int8 / bf16 on AMX or AVX512-BF16;
`--fast` picks some). The CPU model and ISA flags are printed first.
Same random-weight backbone, same square synthetic frames (so both run at 224x224),
2 threads, fp32, frames interleaved (one of each in turn). Reported: mean ms per stage, overall FPS,
ratios, and flicker: the mean fraction of patches whose colour changes between consecutive frames of
a static scene (0 is stable; the tutorial restarts KMeans, so its ids and colours jump).
Needs the `jetson` extra (OpenCV, scikit-learn, SciPy).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

MODELS = {"vits16": "dinov3_vits16", "vitb16": "dinov3_vitb16"}
STAGES = ("preprocess", "forward", "kmeans", "overlay")


class Tutorial:
    "The per-frame loop of the common DINOv3 Jetson tutorial."
    def __init__(self, model, k:int=3):
        self.model, self.k, self.labels = model, k, None
        self.timings = dict.fromkeys(STAGES, 0.0)

    def step(self, frame:np.ndarray) -> np.ndarray:
        import cv2
        from PIL import Image
        from sklearn.cluster import KMeans
        from torchvision import transforms as T
        t0 = time.perf_counter()
        transform = T.Compose([T.Resize((224, 224)), T.ToTensor(),
                               T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])
        x = transform(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))).unsqueeze(0)
        t1 = time.perf_counter()
        with torch.no_grad(): feats = self.model.forward_features(x)["x_norm_patchtokens"][0].numpy()
        t2 = time.perf_counter()
        labels = KMeans(n_clusters=self.k, n_init=1, max_iter=50).fit_predict(feats)
        t3 = time.perf_counter()
        grid = (labels.reshape(14, 14) * (255 // (self.k - 1))).astype(np.uint8)
        seg = cv2.resize(grid, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        out = cv2.addWeighted(frame, 0.5, cv2.applyColorMap(seg, cv2.COLORMAP_JET), 0.5, 0)
        t4 = time.perf_counter()
        for s, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)): self.timings[s] += dt
        self.labels = labels.reshape(14, 14)
        return out


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        return True
    except ImportError: return False


def fast_combos(which:list[str]|None=None) -> list[tuple[str, str]]:
    "(backend, precision) pairs this host runs (see bench/backbones.py), or those named `backend-precision` in `which`."
    from dinov3nb.deploy.fast import cpu_isa, has_openvino
    out = [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    if has_openvino(): out += [("openvino", "fp32"), ("openvino", "int8")] + ([("openvino", "bf16")] if cpu_isa().bf16 else [])
    return [c for c in out if which is None or f"{c[0]}-{c[1]}" in which]


def measure(model_name:str, frames:int, motion:str, combos:list[tuple[str, str]]) -> dict:
    "Run both loops interleaved on the same frames; return ms per stage, FPS and flicker of each."
    from dinov3nb.models.backbones import build
    from dinov3nb.jetson.camera import SegmentationPipeline, SyntheticSource, changed_fraction
    from dinov3nb.deploy.runtime import TorchRuntime
    torch.manual_seed(0)
    model = build(model_name).eval()
    loops = {"tutorial": Tutorial(model), "dinov3nb": SegmentationPipeline(TorchRuntime(model), k=3, size=224)}
    if ort_available():  # the same pipeline on dinov3nb's fast CPU path, at every backend x precision this CPU runs
        from dinov3nb.deploy.fast import accelerate
        for b, p in combos:
            loops[f"{b[:3]}-{p}"] = SegmentationPipeline(accelerate(model, p, b, verbose=False), k=3, size=224)
    for frame in SyntheticSource(3, size=(240, 240)):                                   # warm-up
        for loop in loops.values(): loop.step(frame)
    for n in loops:
        if n != "tutorial": loops[n].kmeans.reset()
    for loop in loops.values(): loop.timings = dict.fromkeys(STAGES, 0.0)
    total, prev, changes = dict.fromkeys(loops, 0.0), {}, {n: [] for n in loops}
    for frame in SyntheticSource(frames, size=(240, 240), motion=motion):
        for name, loop in loops.items():
            t0 = time.perf_counter(); loop.step(frame); total[name] += time.perf_counter() - t0
            labels = np.asarray(loop.labels)
            if name in prev: changes[name].append(changed_fraction(prev[name], labels))
            prev[name] = labels
    return {n: {"ms": {s: 1000 * v / frames for s, v in loops[n].timings.items()}, "fps": frames / total[n],
                "flicker": float(np.mean(changes[n])) if changes[n] else 0.0} for n in loops}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="backbones to run")
    p.add_argument("--frames", type=int, default=40, help="frames per measurement (default 40)")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    p.add_argument("--quick", action="store_true", help="ViT-S/16 only, 6 frames: a smoke test")
    p.add_argument("--fast", nargs="+", metavar="BACKEND-PRECISION", help="fast-path columns to run, e.g. openvino-bf16 "
                   "onnxruntime-int8 (default: every one this CPU runs)")
    args = p.parse_args(argv)
    if args.quick: args.models, args.frames = ["vits16"], 6
    import cv2
    from threadpoolctl import threadpool_limits
    from dinov3nb.deploy.fast import choose, cpu_isa
    isa, combos = cpu_isa(), fast_combos(args.fast) if ort_available() else []
    print(f"CPU: {isa.model}; ISA: {' '.join(isa.flags) or 'no AVX2'}; accelerate() picks {choose(isa)}")
    torch.set_num_threads(args.threads); cv2.setNumThreads(args.threads)
    with threadpool_limits(args.threads):
        for arch in args.models:
            moving = measure(MODELS[arch], args.frames, "pan", combos)
            static = measure(MODELS[arch], max(args.frames // 2, 3), "static", combos)
            t = moving["tutorial"]
            ours = [n for n in moving if n != "tutorial"]
            print(f"\n{arch} at 224x224, {args.frames} panning frames, {args.threads} threads (ms per frame, mean; "
                  "speed-up = tutorial / ours; ope = OpenVINO, onn = ONNX Runtime)")
            print(f"{'stage':<12}{'tutorial':>10}" + "".join(f"{n:>14}{'speed-up':>10}" for n in ours))
            for s in STAGES:
                print(f"{s:<12}{t['ms'][s]:>10.1f}" + "".join(
                    f"{moving[n]['ms'][s]:>14.1f}{t['ms'][s] / max(moving[n]['ms'][s], 1e-9):>9.1f}x" for n in ours))
            print(f"{'overall FPS':<12}{t['fps']:>10.2f}" + "".join(
                f"{moving[n]['fps']:>14.2f}{moving[n]['fps'] / t['fps']:>9.2f}x" for n in ours))
            print(f"{'flicker':<12}{static['tutorial']['flicker']:>10.3f}" + "".join(
                f"{static[n]['flicker']:>14.3f}{'':>10}" for n in ours) +
                  "   (fraction of patches changing colour per frame, static scene)")


if __name__ == "__main__":
    main()
