"""Bad input on the command line (`dinov3nb` outside train/submit, and `dinov3nb eval`): every case ends with a
non-zero exit code and a message that names the problem, never a traceback (unless --debug), and leaves
the files that were there byte-identical."""
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3nb.cli import main
from dinov3nb.models.checkpoints import save
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig

ROOT = Path(__file__).resolve().parents[1]


def importlib_ok(name:str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _tiny(seed:int) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    return DinoVisionTransformer(ViTConfig.tiny()).eval()


def _bomb_png() -> bytes:
    "A PNG header claiming 40000x40000 pixels (Pillow refuses it at open: a decompression bomb)."
    chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    "A folder of inputs, good and bad, and of pre-existing outputs that no failing command may touch."
    d = tmp_path_factory.mktemp("bad_input")
    save(_tiny(0), d / "tiny.safetensors")
    save(_tiny(1), d / "other.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / "img.png")
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / "existing.png")   # an output to keep
    frames = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    (d / "bad.png").write_bytes(b"not a png at all")
    (d / "bad.gif").write_bytes(b"GIF89a" + bytes(20))
    (d / "bad.onnx").write_bytes(b"not a protobuf")
    (d / "bomb.png").write_bytes(_bomb_png())
    (d / "notes.txt").write_text("a file where a folder is expected")
    with open(d / "pickled.pth", "wb") as fh: pickle.dump({"weights": [1, 2, 3]}, fh)
    (d / "truncated.pth").write_bytes((d / "tiny.safetensors").read_bytes()[:100])
    (d / "hf").mkdir(); (d / "hf" / "config.json").write_text("{}")
    (d / "out").mkdir()                                                          # an existing output folder
    for name in ("cat",):                                                        # an image folder with one class
        for split in ("train", "val"):
            (d / "oneclass" / split / name).mkdir(parents=True)
            for i in range(3): Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "oneclass" / split / name / f"{i}.png")
    (d / "corrupt").mkdir(); (d / "corrupt" / "results.json").write_text('[{"protocol": "knn", "metr')   # cut off mid-write
    (d / "corrupt" / "results.csv").write_text("protocol,model\nknn,pixels\n")
    (d / "notalist").mkdir(); (d / "notalist" / "results.json").write_text("{}")
    if importlib_ok("onnxruntime"):
        from dinov3nb.cli import export_model
        export_model(_tiny(0), "onnx", d / "tiny.onnx", height=32, width=32, say=lambda *a: None)
    return d


def snapshot(d:Path) -> dict[str, str]:
    "Every file under `d` and the hash of its bytes."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def env(work, monkeypatch, tmp_path):
    "Run in `work`, with no weights in the environment or the cache, and no display."
    monkeypatch.chdir(work)
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path / "empty-cache"))
    for var in ("DINOV3NB_WEIGHTS", "DISPLAY", "WAYLAND_DISPLAY"): monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(1)
    return work


def run_main(argv:list[str], capsys) -> tuple[int, str]:
    "Run `dinov3nb.cli.main(argv)` in this process; return the exit code and stdout + stderr."
    try: code = main(argv)
    except SystemExit as e: code = e.code  # argparse refuses a bad option by exiting
    out = capsys.readouterr()
    return code, out.out + out.err


T = "tiny.safetensors"
W = ["--weights", T]
ONNX = "onnx"  # marks the cases that need ONNX Runtime
CASES = [
    # id, argv, exit code, words the message must contain, needs
    ("export-batch-0", ["export", "onnx", *W, "--batch", "0", "--out", "existing.png", "--overwrite"], 2, ["--batch", "0 is too small"], None),
    ("export-height-0", ["export", "onnx", *W, "--height", "0"], 2, ["--height", "0 is too small"], None),
    ("export-height-negative", ["export", "onnx", *W, "--height", "-16"], 2, ["--height", "-16 is too small"], None),
    ("export-height-not-stride", ["export", "onnx", *W, "--height", "40", "--out", "existing.png", "--overwrite"], 2,
     ["--height 40", "multiple of the model's stride 16", "e.g. 32"], ONNX),
    ("export-width-below-stride", ["export", "onnx", *W, "--width", "8"], 2, ["--width 8", "stride 16"], ONNX),
    ("export-layer-out-of-range", ["export", "onnx", *W, "--height", "32", "--width", "32", "--layers", "99", "--out", "out/x.onnx"],
     2, ["[99] out of range", "0..1"], ONNX),
    ("export-out-is-folder", ["export", "onnx", *W, "--out", "out"], 2, ["--out 'out' is a folder"], ONNX),
    ("export-out-under-a-file", ["export", "onnx", *W, "--out", "notes.txt/x.onnx"], 2, ["notes.txt'", "is a file, not a folder"], ONNX),
    ("export-min-cosine-above-1", ["export", "onnx", *W, "--min-cosine", "2"], 2, ["--min-cosine", "at most 1"], None),
    ("size-0", ["heatmap", "img.png", *W, "--size", "0"], 2, ["--size", "0 is too small"], None),
    ("size-not-a-number", ["pca", "img.png", *W, "--size", "big"], 2, ["--size", "'big' is not an integer"], None),
    ("image-missing", ["heatmap", "nowhere.png", *W, "--size", "32"], 2, ["nowhere.png", "not found"], None),
    ("image-corrupt", ["heatmap", "bad.png", *W, "--size", "32"], 2, ["bad.png", "not a readable image"], None),
    ("image-decompression-bomb", ["pca", "bomb.png", *W, "--size", "32"], 2, ["bomb.png", "too large to open safely"], None),
    ("image-unknown-skimage", ["heatmap", "skimage:nope", *W, "--size", "32"], 2, ["skimage:nope", "skimage:chelsea"], None),
    ("patch-off-the-grid", ["heatmap", "img.png", *W, "--size", "32", "--patch", "9,9", "--out", "existing.png", "--overwrite"], 2,
     ["(row=9, col=9)", "outside the 2x3 grid"], None),
    ("pixel-off-the-image", ["heatmap", "img.png", *W, "--size", "32", "--xy", "500,5", "--out", "existing.png", "--overwrite"], 2,
     ["x=500", "outside the 64x48"], None),
    ("out-under-a-file", ["heatmap", "img.png", *W, "--size", "32", "--out", "notes.txt/h.png"], 2, ["is a file, not a folder"], None),
    ("out-is-a-folder", ["heatmap", "img.png", *W, "--size", "32", "--out", "out"], 2, ["--out 'out' is a folder", "give a file name"], None),
    ("out-read-only", ["heatmap", "img.png", *W, "--size", "32", "--out", "/sys/dinov3nb-test.png"], 2, ["'/sys'", "not writable"], "linux"),
    ("kmeans-k-above-patches", ["kmeans", "img.png", *W, "--size", "32", "-k", "1000", "--out", "existing.png", "--overwrite"], 2,
     ["k=1000", "6 patches", "2x3 grid", "1 <= k <= 6"], None),
    ("kmeans-k-0", ["kmeans", "img.png", *W, "-k", "0"], 2, ["-k", "0 is too small"], None),
    ("kmeans-frames-0", ["kmeans", "--video", "anim.gif", *W, "--frames", "0"], 2, ["--frames", "0 is too small"], None),
    ("kmeans-no-input", ["kmeans", *W], 2, ["kmeans needs an image, --camera"], None),
    ("kmeans-image-and-video", ["kmeans", "img.png", "--video", "anim.gif", *W], 2, ["not several"], None),
    ("video-corrupt-gif", ["kmeans", "--video", "bad.gif", *W, "--size", "32", "--out", "v.mp4"], 2,
     ["cannot read GIF 'bad.gif'", "intact GIF"], "cv2"),
    ("video-missing", ["kmeans", "--video", "nowhere.mp4", *W, "--out", "v.mp4"], 2, ["cannot open video 'nowhere.mp4'"], "cv2"),
    ("video-out-not-a-video", ["kmeans", "--video", "anim.gif", *W, "--out", "existing.png", "--overwrite"], 2, ["use a .mp4 or .avi name"], None),
    ("no-display", ["kmeans", "--video", "anim.gif", *W, "--size", "32"], 2, ["no display", "--out result.mp4"], "linux"),
    ("no-camera", ["kmeans", "--camera", "37", *W, "--out", "v.mp4"], 2, ["cannot open USB camera 37"], "cv2"),
    ("match-max-lines-0", ["match", "img.png", "img.png", *W, "--max-lines", "0"], 2, ["--max-lines", "0 is too small"], None),
    ("demo-out-is-a-file", ["demo", *W, "--size", "32", "--out", "notes.txt"], 2, ["'notes.txt' is a file, not a folder"], None),
    ("model-disagrees-with-weights", ["heatmap", "img.png", "--model", "dinov3_vitb16", *W, "--size", "32", "--out", "existing.png", "--overwrite"], 2,
     ["--model dinov3_vitb16 does not match the weights 'tiny.safetensors'", "Drop --model"], None),
    ("unknown-model", ["heatmap", "img.png", "--model", "dinov3_vitz16", *W], 2, ["--model", "invalid choice: 'dinov3_vitz16'"], None),
    ("weights-missing", ["pca", "img.png", "--weights", "nowhere.pth", "--size", "32"], 2, ["nowhere.pth"], None),
    ("weights-pickle", ["info", "pickled.pth"], 2, ["pickled.pth"], None),
    ("weights-truncated", ["info", "truncated.pth"], 2, ["truncated.pth"], None),
    ("weights-empty-hf-config", ["info", "hf"], 2, ["hf"], None),
    ("weights-an-image", ["info", "img.png"], 2, ["img.png"], None),
    ("verify-corrupt-onnx", ["verify", "bad.onnx", *W], 2, ["cannot read ONNX file 'bad.onnx'", "export it again"], ONNX),
    ("verify-missing-file", ["verify", "nowhere.onnx", *W], 2, ["nowhere.onnx does not exist"], None),
    ("verify-without-weights", ["verify", "tiny.onnx"], 2, ["no weights for dinov3_vits16", "--weights PATH"], ONNX),
    ("verify-other-weights", ["verify", "tiny.onnx", "--weights", "other.safetensors"], 1,
     ["does not match the torch model", "at least 0.999 needed, the fp32 threshold", "--min-cosine"], ONNX),
    ("verify-max-diff", ["verify", "tiny.onnx", *W, "--max-diff", "0"], 1, ["max abs diff", "(at most 0.0)"], ONNX),
    ("convert-onto-itself", ["convert", T, T], 2, ["is the checkpoint being converted"], None),
    ("convert-under-a-file", ["convert", T, "notes.txt/x.safetensors"], 2, ["is a file, not a folder"], None),
    ("out-file-exists", ["heatmap", "img.png", *W, "--size", "32", "--out", "existing.png"], 2,
     ["--out 'existing.png' exists: choose a new name, or pass --overwrite"], None),
    ("demo-out-holds-files", ["demo", *W, "--size", "32", "--out", "."], 2, ["already holds files", "--overwrite"], None),
    ("export-out-exists", ["export", "onnx", *W, "--height", "32", "--width", "32", "--out", "existing.png"], 2,
     ["exists: choose a new name, or pass --overwrite"], None),
    ("convert-onto-an-existing-file", ["convert", T, "existing.png"], 2, ["exists: choose a new name, or pass --overwrite"], None),
    ("convert-hf-onto-a-file", ["convert", T, "existing.png", "--to", "hf"], 2, ["'existing.png' is a file, not a folder"], None),
    ("no-command", [], 2, ["required: command"], None),
    ("unknown-command", ["segmentt"], 2, ["invalid choice: 'segmentt'"], None),
    ("eval-one-class", ["eval", "knn", "--model", "pixels", "--data", "oneclass", "--out", "out", "--quiet"], 2,
     ["oneclass/train", "1 class folder (cat)", "at least 2 classes"], None),
    ("eval-corrupt-results", ["eval", "knn", "--model", "pixels", "--out", "corrupt", "--quiet"], 2,
     ["corrupt/results.json is not readable JSON", "left untouched"], None),
    ("eval-results-not-a-list", ["eval", "knn", "--model", "pixels", "--out", "notalist", "--quiet"], 2,
     ["notalist/results.json is not a list"], None),
    ("eval-out-is-a-file", ["eval", "knn", "--model", "pixels", "--out", "notes.txt"], 2, ["--out 'notes.txt' is a file"], None),
    ("eval-cache-is-a-file", ["eval", "knn", "--model", "pixels", "--out", "out", "--cache", "notes.txt"], 2, ["--cache 'notes.txt' is a file"], None),
    ("eval-data-missing", ["eval", "knn", "--model", "pixels", "--data", "nowhere", "--out", "out"], 2, ["nowhere"], None),
    ("eval-ks-0", ["eval", "knn", "--ks", "0,10"], 2, ["--ks", "0 is too small"], None),
    ("eval-ks-not-numbers", ["eval", "knn", "--ks", "ten"], 2, ["--ks", "'ten' is not an integer"], None),
    ("eval-features-unknown", ["eval", "knn", "--features", "cls+max"], 2, ["--features", "unknown feature kind 'cls+max'"], None),
    ("eval-lr-0", ["eval", "seg", "--lr", "0"], 2, ["--lr", "use a number > 0.0"], None),
    ("eval-frames-1", ["eval", "track", "--n-frames", "1"], 2, ["--n-frames", "use an integer >= 2"], None),
    ("eval-size-negative", ["eval", "knn", "--size", "-64"], 2, ["--size", "-64 is too small"], None),
    ("eval-pixels-with-weights", ["eval", "knn", "--model", "pixels", *W, "--out", "out"], 2, ["--model pixels has no weights"], None),
    ("eval-fg-needs-shapesworld", ["eval", "fg", "--model", "pixels", "--data", "oneclass", "--out", "out", "--quiet"], 2,
     ["runs on --data shapesworld only"], None),
]


def _skip_unless(need:str|None) -> None:
    if need == ONNX and not importlib_ok("onnxruntime"): pytest.skip("needs the onnx extra")
    if need == "cv2" and not importlib_ok("cv2"): pytest.skip("needs OpenCV (the jetson extra)")
    if need == "linux" and not sys.platform.startswith("linux"): pytest.skip("Linux paths and $DISPLAY")


@pytest.mark.parametrize("argv,code,words,need", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message(env, capsys, argv, code, words, need):
    _skip_unless(need)
    before = snapshot(env)
    got, text = run_main(argv, capsys)
    assert got == code, text
    for w in words: assert w in text, f"{w!r} not in:\n{text}"
    assert "error:" in text and "Traceback" not in text and "internal error" not in text, text
    assert snapshot(env) == before, "a failing command changed or added files"


def test_each_message_is_one_paragraph(env, capsys):
    code, text = run_main(["heatmap", "bomb.png", *W, "--size", "32"], capsys)
    assert code == 2 and text.count("\n") == 1 and text.startswith("dinov3nb heatmap: error: ")


def test_a_bug_is_an_internal_error_without_traceback(env, capsys, monkeypatch):
    import dinov3nb.cli
    monkeypatch.setattr(dinov3nb.cli, "describe", lambda model: {}["arch"])   # a KeyError: our bug, not the input
    code, text = run_main(["info", T], capsys)
    assert code == 70 and "dinov3nb info: internal error: KeyError: 'arch'" in text, text
    assert "rerun with --debug and report" in text and "Traceback" not in text


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(env, capsys, monkeypatch, where):
    import dinov3nb.cli
    monkeypatch.setattr(dinov3nb.cli, "describe", lambda model: {}["arch"])
    argv = ["--debug", "info", T] if where == "before" else ["info", T, "--debug"]
    code, text = run_main(argv, capsys)
    assert code == 70 and "Traceback (most recent call last)" in text and "KeyError: 'arch'" in text
    code, text = run_main(["--debug", "kmeans", "img.png", *W, "--size", "32", "-k", "99"], capsys)   # expected ones too
    assert code == 2 and "Traceback" in text and "dinov3nb kmeans: error: k=99 clusters" in text


def test_eval_takes_debug_before_or_after(env, capsys):
    for argv in (["--debug", "eval", "knn", "--model", "pixels", "--out", "corrupt"],
                 ["eval", "knn", "--model", "pixels", "--out", "corrupt", "--debug"]):
        code, text = run_main(argv, capsys)
        assert code == 2 and "Traceback" in text and "results.json is not readable JSON" in text, text


def test_help_documents_debug_and_exit_codes(capsys):
    code, text = run_main(["--help"], capsys)
    assert code == 0 and "--debug" in text and "Exit codes" in text
    code, text = run_main(["pca", "--help"], capsys)
    assert code == 0 and "--debug" in text


def test_missing_optional_dependency(env, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` now raises ImportError
    code, text = run_main(["verify", "bad.onnx", *W], capsys)
    assert code == 2 and "onnxruntime" in text and "pip install" in text and "Traceback" not in text, text


def test_ctrl_c(env, capsys, monkeypatch):
    import dinov3nb.cli
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(dinov3nb.cli, "describe", interrupted)
    code, text = run_main(["info", T], capsys)
    assert code == 130 and "dinov3nb info: interrupted" in text and "Traceback" not in text


def test_results_turned_bad_during_eval_are_kept(env, capsys, monkeypatch, tmp_path):
    "results.json corrupted while the evaluation runs: the metrics go to results-1.json, the old file stays."
    import dinov3nb.eval.cli as ev
    out = tmp_path / "res"; out.mkdir()
    real = ev.run_protocol
    def corrupting(*a, **k):
        (out / "results.json").write_text("[{oops")
        return real(*a, **k)
    monkeypatch.setattr(ev, "run_protocol", corrupting)
    argv = ["eval", "knn", "--model", "pixels", "--out", str(out), "--size", "16", "--n-train", "12", "--n-val", "4",
            "--n-test", "6", "--ks", "1,3", "--quiet"]
    code, text = run_main(argv, capsys)
    assert code == 1 and "results.json became unreadable" in text and "results-1.json" in text, text
    assert (out / "results.json").read_text() == "[{oops" and "top1@1" in (out / "results-1.json").read_text()


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DINOV3NB_CACHE": str(Path(cwd) / "no-cache"), "OMP_NUM_THREADS": "1"}
    env.pop("DINOV3NB_WEIGHTS", None)
    return subprocess.run([sys.executable, "-m", "dinov3nb", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_crash_cases_in_a_real_process(work):
    "`export --batch 0` used to die of SIGFPE; now every one of these exits 2 with a message, in a fresh process."
    before = snapshot(work)
    for args, words in [(["export", "onnx", *W, "--batch", "0", "--height", "32", "--width", "32", "--out", "existing.png", "--overwrite"],
                         "argument --batch: 0 is too small"),
                        (["export", "onnx", *W, "--height", "0"], "argument --height: 0 is too small"),
                        (["kmeans", "img.png", *W, "--size", "32", "-k", "1000", "--out", "existing.png", "--overwrite"], "k=1000 clusters for 6 patches")]:
        r = _cli(*args, cwd=work)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert snapshot(work) == before


def test_debug_traceback_in_a_real_process(work):
    r = _cli("--debug", "heatmap", "bad.png", *W, "--size", "32", cwd=work)
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr and "dinov3nb heatmap: error:" in r.stderr
