"""Speed and memory of dinov3nb backbones against Hugging Face transformers and timm, side by side.

Rows: dinov3nb in eager PyTorch, dinov3nb through its fast CPU path (`dinov3nb.accelerate`) at every backend x
precision this CPU runs (ONNX Runtime fp32 / int8, OpenVINO fp32 / int8 / bf16 where the CPU has AMX or
AVX512-BF16), Hugging Face and timm in eager PyTorch, and timm exported to ONNX Runtime with the same session
settings (what a timm user could do by hand). The CPU model and ISA flags are printed above the table.

    python bench/backbones.py            # full run (a few minutes on 2 cores)
    python bench/backbones.py --quick    # fewer repeats, a smoke test
    python bench/backbones.py --settings vits16-224-b1 convnext_t-224-b1

2 threads, fp32 inputs, `torch.inference_mode()`, random weights, identical architectures. Each candidate
lives in a process of its own (`--same-process` puts them all in this one), and they run round-robin
(one forward of each in turn, after a warm-up) so that drifts in machine speed hit all of them alike;
the table reports medians. Peak memory is the growth of the process's peak
resident set of a fresh process that imports the library, builds the model and runs one forward
(imports and weights included, as a user's process would see it).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

SETTINGS = {  # name: (family, size, image side, batch)
    "vits16-224-b1": ("vits16", 224, 1), "vits16-224-b8": ("vits16", 224, 8), "vits16-448-b1": ("vits16", 448, 1),
    "vitb16-224-b1": ("vitb16", 224, 1), "vitb16-224-b8": ("vitb16", 224, 8), "convnext_t-224-b1": ("convnext_t", 224, 1),
}
VIT = {"vits16": dict(D=384, L=12, h=6), "vitb16": dict(D=768, L=12, h=12)}


def ours(arch:str):
    from dinov3nb.models.backbones import build
    name = {"vits16": "dinov3_vits16", "vitb16": "dinov3_vitb16", "convnext_t": "dinov3_convnext_tiny"}[arch]
    m = build(name).eval()
    return lambda x: m.forward_features(x)["x_norm_patchtokens"]


ONNX_DIR = Path(tempfile.gettempdir()) / "dinov3nb-bench-onnx"
NAMES = {"vits16": "dinov3_vits16", "vitb16": "dinov3_vitb16", "convnext_t": "dinov3_convnext_tiny"}


def cpu_header() -> str:
    "The CPU model, its ISA flags and what `accelerate()` picks on it: printed above the tables."
    from dinov3nb.deploy.fast import choose, cpu_isa
    isa = cpu_isa()
    return f"CPU: {isa.model}; ISA: {' '.join(isa.flags) or 'no AVX2'}; accelerate() picks {choose(isa)}"


def fast_combos() -> list[tuple[str, str]]:
    "Every (backend, precision) this host can run: ONNX Runtime fp32/int8, OpenVINO fp32/int8 and bf16 where the CPU has it."
    from dinov3nb.deploy.fast import cpu_isa, has_openvino
    out = [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    if has_openvino(): out += [("openvino", "fp32"), ("openvino", "int8")] + ([("openvino", "bf16")] if cpu_isa().bf16 else [])
    return out


def ours_fast(backend:str, precision:str):
    "dinov3nb's CPU fast path (`dinov3nb.accelerate`) at one backend and precision; export and quantisation are cached."
    def make(arch:str):
        from dinov3nb.deploy.fast import accelerate
        from dinov3nb.models.backbones import build
        torch.manual_seed(0)  # same weights in the memory child: the cached files are reused, not rebuilt
        m = accelerate(build(NAMES[arch]).eval(), precision, backend, folder=ONNX_DIR, verbose=False)
        return lambda x: m.forward_features(x)["x_norm_patchtokens"]
    return make


def timm_onnxruntime(arch:str):
    "What a timm user gets from ONNX Runtime: timm's model exported with torch.onnx, run with the same settings."
    if arch == "convnext_t": return None
    import timm
    from dinov3nb.deploy.export import OnnxRuntimeBackbone
    path = ONNX_DIR / f"timm-{arch}.onnx"
    if not path.exists():
        m = timm.create_model({"vits16": "vit_small_patch16_dinov3_qkvb", "vitb16": "vit_base_patch16_dinov3_qkvb"}[arch],
                              pretrained=False, dynamic_img_size=True).eval()
        class Patches(torch.nn.Module):  # output names as dinov3nb's so one runner serves both
            def __init__(self, m): super().__init__(); self.m = m
            def forward(self, pixel_values): f = self.m.forward_features(pixel_values); return f[:, :1, :][:, 0], f
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Patches(m), (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=18,
                              input_names=["pixel_values"], output_names=["cls", "patch"],
                              dynamic_axes={"pixel_values": {0: "b", 2: "h", 3: "w"}, "patch": {0: "b", 1: "n"}})
    m = OnnxRuntimeBackbone(path, threads=torch.get_num_threads())
    return lambda x: m.forward_features(x)["x_norm_patchtokens"]


def huggingface(arch:str):
    import transformers
    if arch == "convnext_t":
        m = transformers.DINOv3ConvNextModel(transformers.DINOv3ConvNextConfig(hidden_sizes=[96, 192, 384, 768],
                                                                               depths=[3, 3, 9, 3])).eval()
    else:
        a = VIT[arch]
        m = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
            hidden_size=a["D"], num_hidden_layers=a["L"], num_attention_heads=a["h"], intermediate_size=4 * a["D"],
            num_register_tokens=4, patch_size=16, layerscale_value=1e-5)).eval()
    return lambda x: m(pixel_values=x).last_hidden_state


def timm_model(arch:str):
    if arch == "convnext_t": return None  # timm has no DINOv3 ConvNeXt
    import timm
    m = timm.create_model({"vits16": "vit_small_patch16_dinov3_qkvb", "vitb16": "vit_base_patch16_dinov3_qkvb"}[arch],
                          pretrained=False, dynamic_img_size=True).eval()
    return lambda x: m.forward_features(x)


CANDIDATES = {"dinov3nb": ours, **{f"dinov3nb-{b}-{p}": ours_fast(b, p) for b, p in fast_combos()},  # ours first
              "huggingface": huggingface, "timm": timm_model, "timm-onnxruntime": timm_onnxruntime}


def peak_rss_mb(impl:str, setting:str) -> float:
    "Peak resident memory (MB) of a fresh process that builds `impl` for `setting` and runs one forward."
    import subprocess, sys
    r = subprocess.run([sys.executable, __file__, "--_memory", impl, setting], capture_output=True, text=True)
    try: return float(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError): return float("nan")


def _memory_child(impl:str, setting:str) -> None:
    torch.set_num_threads(2)
    arch, side, batch = SETTINGS[setting]
    fn = CANDIDATES[impl](arch)
    with torch.inference_mode(): fn(torch.randn(batch, 3, side, side))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec
    hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    print(int(hwm.split()[1]) / 1024)


def _worker(impl:str, setting:str, threads:int, warmup:int, conn) -> None:
    "One candidate in a process of its own: build it, warm up, then time one forward per request from the parent."
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    arch, side, batch = SETTINGS[setting]
    fn = CANDIDATES[impl](arch)
    conn.send(fn is not None)
    if fn is None: return
    x = torch.randn(batch, 3, side, side)
    with torch.inference_mode():
        for _ in range(warmup): fn(x)
        conn.send("ready")
        while conn.recv() == "run":
            t0 = time.perf_counter(); fn(x); conn.send(time.perf_counter() - t0)


def run_setting(name:str, repeats:int, warmup:int, memory:bool=True, threads:int=2, same_process:bool=False) -> list[dict]:
    """Median time of every candidate, one forward of each in turn. By default each candidate lives in a process of its
    own (idle while the others run), so one runtime's thread pool cannot slow another's: with ONNX Runtime sessions in
    the same process eager torch ran 15-20x slower on an AMX host. `same_process` measures them side by side instead."""
    arch, side, batch = SETTINGS[name]
    if same_process:
        x = torch.randn(batch, 3, side, side)
        cands = {k: f(arch) for k, f in CANDIDATES.items()}
        cands = {k: v for k, v in cands.items() if v is not None}
        def step(k): fn = cands[k]; t0 = time.perf_counter(); fn(x); return time.perf_counter() - t0
        with torch.inference_mode():
            for fn in cands.values():
                for _ in range(warmup): fn(x)
    else:
        import multiprocessing as mp
        ctx, procs, conns = mp.get_context("spawn"), {}, {}
        for k in CANDIDATES:
            parent, child = ctx.Pipe()
            procs[k] = ctx.Process(target=_worker, args=(k, name, threads, warmup, child), daemon=True)
            procs[k].start()
            if parent.recv(): conns[k] = parent                                   # False: no such model (timm ConvNeXt)
            else: procs.pop(k).join()
        for c in conns.values(): c.recv()                                        # every worker warmed up
        cands = conns
        def step(k): conns[k].send("run"); return conns[k].recv()
    times = {k: [] for k in cands}
    for _ in range(repeats):
        for k in cands:
            times[k].append(step(k))
            if not same_process: time.sleep(0.02)                                # let the last runtime's threads go idle
    if not same_process:
        for k, c in conns.items(): c.send("stop"); procs[k].join()
    rows = []
    for k in cands:
        ms = statistics.median(times[k]) * 1000
        rows.append(dict(setting=name, impl=k, ms=ms, ips=batch / ms * 1000, mem=peak_rss_mb(k, name) if memory else float("nan")))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory column (one fresh process per row)")
    p.add_argument("--same-process", action="store_true", help="run every candidate in this process (default: one "
                   "process per candidate, driven round-robin, so runtimes' thread pools cannot slow each other)")
    p.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._memory: return _memory_child(*a._memory)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    repeats, warmup = (2, 1) if a.quick else (7, 2)
    from dinov3nb.deploy.fast import choose, cpu_isa
    auto = choose(cpu_isa())
    print(cpu_header())
    where = "all in this process" if a.same_process else "each candidate in a process of its own"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 inputs, median of {repeats} round-robin runs ({where})\n")
    print("| setting | impl | ms | img/s | peak RSS (MB) | ours / best other |")
    print("|---|---|---:|---:|---:|---:|")
    for s in a.settings:
        rows = run_setting(s, repeats, warmup, memory=not a.no_memory, threads=a.threads, same_process=a.same_process)
        best_eager = max(r["ips"] for r in rows if r["impl"] in ("huggingface", "timm"))
        best_any = max(r["ips"] for r in rows if not r["impl"].startswith("dinov3nb"))
        for r in rows:
            ratio, impl = "", r["impl"] + (" (auto)" if r["impl"] == f"dinov3nb-{auto.backend}-{auto.precision}" else "")
            if r["impl"] == "dinov3nb": ratio = f"{r['ips'] / best_eager:.2f}x"
            elif r["impl"].startswith("dinov3nb-"): ratio = f"{r['ips'] / best_eager:.2f}x / {r['ips'] / best_any:.2f}x"
            print(f"| {r['setting']} | {impl} | {r['ms']:.1f} | {r['ips']:.2f} | {r['mem']:.0f} | {ratio} |", flush=True)
    print("\nratio: dinov3nb rows against the best eager alternative (Hugging Face, timm); the fast-path rows "
          "(dinov3nb-<backend>-<precision>, `dinov3nb.accelerate`) also against the best alternative of all, timm exported "
          "to ONNX Runtime included; (auto) marks what accelerate() picks on this CPU. Export, quantisation and "
          "compilation are not timed.")


if __name__ == "__main__":
    main()
