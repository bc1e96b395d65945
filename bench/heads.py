"""Speed and memory of the released head families, on a tiny and a ViT-S-sized configuration, eager and ONNX Runtime.

Families: the ImageNet linear classifier (`dinov3_vit7b16_lc`), the DPT depther (`dinov3_vit7b16_dd`), CHMv2
(`dinov3_vitl16_chmv2`), dino.txt's image encoder (backbone + vision head) and text encoder (text transformer
+ projection, per prompt), the Plain-DETR detector (`dinov3_vit7b16_de`, list of images -> boxes) and the
ViT-Adapter + Mask2Former segmentor (`dinov3_vit7b16_ms`: its raw forward, and its sliding-window inference).
Each on two backbones: "tiny" (ViT D 64, 4 blocks, patch 16) and "vits" (ViT-S/16: D 384, 12 blocks). Inputs:
64x64 images on tiny and 224x224 on vits, except the detector (96x128 / 480x640) and the segmentor (128x128 /
512x512; the sliding window 256x256 / 512x512 images cut in 3x3 half-side crops). Head sizes: DPT widths scaled
with `scaled_config`; dino.txt's text tower width 64, 2 heads, 2 layers / width 384, 6 heads, 12 layers; the
detector `DetectorConfig.tiny()` / the released head (hidden 768, 6+6 layers, 1500 queries, 3x3 windows); the
segmentor width 64 / width 256, 100 queries, 6 + 9 layers. Random weights, fp32, 2 threads,
`torch.inference_mode()`.

    python bench/heads.py            # full run (several minutes on 2 cores)
    python bench/heads.py --quick    # fewer repeats, a smoke test
    python bench/heads.py --families dpt chmv2 --configs tiny

Rows: eager PyTorch, and the same module exported with `torch.onnx.export` (opset 18) and run by ONNX Runtime
with the same thread count where the graph exports (otherwise the row says why). Eager and ONNX Runtime run
round-robin after a warm-up; the table reports medians. Peak memory is the peak resident set of a fresh process
that imports torch, builds the model and runs one forward (the export, for ONNX Runtime rows, is done beforehand).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

CONFIGS = {"tiny": dict(vit=dict(embed_dim=64, depth=4, num_heads=4), side=64, text=dict(dim=64, num_heads=2, num_layers=2),
                    detector=((96, 128), dict(tiny=True)), segmentor=128, slide=256,
                    seg=dict(hidden_dim=64, conv_inplane=16, adapter_heads=4, pixel_heads=4, pixel_ffn=128, pixel_layers=2,
                             n_queries=10, decoder_heads=4, decoder_ffn=128, decoder_layers=3)),
           "vits": dict(vit=dict(embed_dim=384, depth=12, num_heads=6), side=224, text=dict(dim=384, num_heads=6, num_layers=12),
                        detector=((480, 640), dict(tiny=False)), segmentor=512, slide=512,
                        seg=dict(hidden_dim=256, conv_inplane=64, adapter_heads=6, pixel_heads=8, pixel_ffn=1024, pixel_layers=6,
                                 n_queries=100, decoder_heads=8, decoder_ffn=1024, decoder_layers=9))}
FAMILIES = ("classifier", "dpt", "chmv2", "dinotxt-image", "dinotxt-text", "detector", "segmentor", "segmentor-slide")
BATCH = {f: 1 for f in FAMILIES} | {"dinotxt-text": 8}  # images, or prompts for text
NO_ONNX = {"segmentor-slide": "not exported: a Python loop over crops around the segmentor (its raw forward is the segmentor row)"}
ROW_BUDGET_S = 60  # timed seconds a row may take before it gets fewer repeats (the detector at 480x640)
ONNX_DIR = Path(tempfile.gettempdir()) / "dinov3nb-bench-heads"


def backbone(config:str):
    from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig
    torch.manual_seed(0)
    return DinoVisionTransformer(ViTConfig.tiny(**CONFIGS[config]["vit"], patch_size=16)).eval()


class _Wrap(torch.nn.Module):
    "One tensor in, tensors out: the form `torch.onnx.export` and ONNX Runtime need."
    def __init__(self, m, fn): super().__init__(); self.m, self.fn = m, fn
    def forward(self, x): return self.fn(self.m, x)


def _detect(m, x):  # a list of images -> the first image's (boxes, scores, labels)
    d = m(list(x))[0]
    return d["boxes"], d["scores"], d["labels"]


def _slide(m, x):  # the official evaluation's inference: 3x3 crops of half the side, softmax maps
    from dinov3nb.heads.segmentor import make_inference
    s = x.shape[-1]
    return make_inference(m, x, "slide", crop=(s // 2, s // 2), stride=(s // 4, s // 4))


def build(family:str, config:str) -> tuple[torch.nn.Module, torch.Tensor]:
    "The module of `family` on the `config` backbone, and an input batch for it."
    c, bb = CONFIGS[config], backbone(config)
    x = torch.randn(BATCH[family], 3, c["side"], c["side"])
    if family == "classifier":
        from dinov3nb.heads.classifier import LinearClassifier
        return LinearClassifier(bb, 1000).eval(), x
    if family in ("dpt", "chmv2"):
        from dinov3nb.heads.depth import CHMV2_CONFIG, DD_7B_CONFIG, build_depther, scaled_config
        return build_depther(bb, scaled_config(bb, DD_7B_CONFIG if family == "dpt" else CHMV2_CONFIG)).eval(), x
    if family == "detector":
        from dinov3nb.heads.detector import DE_7B_CONFIG, DetectorConfig, build_detector
        (h, w), kw = c["detector"]
        m = build_detector(bb, DetectorConfig.tiny() if kw["tiny"] else DE_7B_CONFIG).eval()
        return _Wrap(m, _detect), torch.randn(BATCH[family], 3, h, w)
    if family.startswith("segmentor"):
        from dinov3nb.heads.segmentor import SegmentorConfig, build_segmentor
        m = build_segmentor(bb, SegmentorConfig(**c["seg"])).eval()
        side = c["slide" if family == "segmentor-slide" else "segmentor"]
        fn = _slide if family == "segmentor-slide" else (lambda m, x: tuple(m(x)[k] for k in ("pred_logits", "pred_masks")))
        return _Wrap(m, fn), torch.randn(BATCH[family], 3, side, side)
    from dinov3nb.heads.dinotxt import DINOTXT_CONFIG, TextConfig, build_dinotxt
    m = build_dinotxt(bb, replace(DINOTXT_CONFIG, embed_dim=2 * bb.embed_dim), TextConfig(**c["text"])).eval()
    if family == "dinotxt-image": return _Wrap(m, lambda m, x: m.encode_image(x)), x
    ids = torch.randint(1, 49406, (BATCH[family], 77)); ids[:, 0] = 49406; ids[:, 20] = 49407  # [SOT] ... [EOT] at 20
    return _Wrap(m, lambda m, ids: m.encode_text(ids)), ids


@contextlib.contextmanager
def _quiet_stdout():
    "Silence file descriptor 1 (a failed export prints its whole graph there from C++)."
    sys.stdout.flush(); saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try: yield
    finally: os.dup2(saved, 1); os.close(saved); os.close(null)


def export(family:str, config:str) -> tuple[Path|None, str]:
    "Export the module to ONNX once; return the file, or None and why not."
    path = ONNX_DIR / f"{family}-{config}.onnx"
    if family in NO_ONNX: return None, NO_ONNX[family]
    if path.exists(): return path, ""
    m, x = build(family, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.inference_mode(), _quiet_stdout():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=18, input_names=["x"], output_names=["y"])
        import onnxruntime as ort  # a missing runtime, or a graph it cannot load, is a reason too
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return path, ""
    except Exception as e:
        path.unlink(missing_ok=True)
        msg = " ".join(str(e).split()).replace("[ONNXRuntimeError] : 1 : FAIL : ", "ONNX Runtime: ")
        return None, f"{type(e).__name__}: {msg[msg.find('Type Error'):][:130] if 'Type Error' in msg else msg[:130]}"


def runner(impl:str, family:str, config:str):
    "A callable running one batch, and its input."
    m, x = build(family, config)
    if impl == "eager": return (lambda: m(x)), x
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = torch.get_num_threads(); so.inter_op_num_threads = 1
    # no busy-waiting: ORT's idle threads would otherwise spin into the next (eager) run of the round robin
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(ONNX_DIR / f"{family}-{config}.onnx"), so, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return (lambda: sess.run(None, feed)), x


def peak_rss_mb(impl:str, family:str, config:str) -> float:
    "Peak resident memory (MB) of a fresh process that builds the model and runs one batch."
    r = subprocess.run([sys.executable, __file__, "--_memory", impl, family, config], capture_output=True, text=True)
    try: return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError): return float("nan")


def _memory_child(impl:str, family:str, config:str) -> None:
    torch.set_num_threads(2)
    fn, _ = runner(impl, family, config)
    with torch.inference_mode(): fn()
    hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    print(int(hwm.split()[1]) / 1024)


def _fmt(v:float) -> str: return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-onnx", action="store_true", help="eager rows only")
    p.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._memory: return _memory_child(*a._memory)
    torch.set_num_threads(a.threads)
    repeats, warmup = (2, 1) if a.quick else (7, 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, random weights, median of {repeats} "
          f"round-robin runs (at least 3, within about {ROW_BUDGET_S} s a row, for slow rows)\n")
    print("| family | config | input | impl | ms / batch | items/s | peak RSS (MB) | ORT / eager |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for family in a.families:
        for config in a.configs:
            impls, notes = ["eager"], {}
            if not a.no_onnx:
                path, why = export(family, config)
                if path is None: notes["onnxruntime"] = why
                else: impls.append("onnxruntime")
            fns = {i: runner(i, family, config) for i in impls}
            x = fns["eager"][1]
            what = f"{x.shape[0]} prompts x {x.shape[1]} tokens" if family == "dinotxt-text" else f"{x.shape[0]}x{x.shape[2]}x{x.shape[3]}"
            times = {i: [] for i in impls}
            with torch.inference_mode():
                round_s = 0.0
                for i in impls:
                    for _ in range(warmup):
                        t0 = time.perf_counter(); fns[i][0](); dt = time.perf_counter() - t0
                        if dt > 5: break  # one warm-up is enough for a run of seconds
                    round_s += dt
                for _ in range(max(min(repeats, 3), min(repeats, int(ROW_BUDGET_S / round_s)))):
                    for i in impls:
                        t0 = time.perf_counter(); fns[i][0](); times[i].append(time.perf_counter() - t0)
            ms = {i: statistics.median(times[i]) * 1000 for i in impls}
            for i in impls:
                ratio = f"{ms['eager'] / ms[i]:.2f}x" if i != "eager" else ""
                print(f"| {family} | {config} | {what} | {i} | {ms[i]:.1f} | {_fmt(x.shape[0] / ms[i] * 1000)} | "
                      f"{peak_rss_mb(i, family, config):.0f} | {ratio} |", flush=True)
            for i, why in notes.items(): print(f"| {family} | {config} | {what} | {i} | skipped: {why} | | | |", flush=True)
    print("\nitems/s: images (prompts for dinotxt-text) per second; ORT / eager: speed of ONNX Runtime relative to eager "
          "PyTorch in the same run. Export time is not timed.")


if __name__ == "__main__":
    main()
