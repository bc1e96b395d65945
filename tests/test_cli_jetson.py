"""The dense-feature subcommands of `dinov3nb`: demo, heatmap, pca, kmeans (image, video, camera), match."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dinov3nb.cli import main

# Block the `jetson` extra in a fresh interpreter: what a base `pip install dinov3nb` has.
BASE_INSTALL = """
import sys
for name in ("cv2", "matplotlib", "sklearn", "ipywidgets"): sys.modules[name] = None   # import raises (scipy comes with scikit-image)
from dinov3nb.cli import main
sys.exit(main())
"""


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    "No weights anywhere: an empty cache folder and no $DINOV3NB_WEIGHTS."
    monkeypatch.setenv("DINOV3NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DINOV3NB_WEIGHTS", raising=False)
    return tmp_path


def test_demo_on_a_base_install_writes_three_pngs(no_cache):
    out = no_cache / "demo"
    r = subprocess.run([sys.executable, "-c", BASE_INSTALL, "demo", "--size", "32", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=no_cache)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "kmeans.png", "pca.png"]
    assert "RANDOM weights" in r.stderr and f"wrote 3 pictures to {out.resolve()}/" in r.stdout
    for p in out.iterdir():
        im = np.asarray(Image.open(p))
        assert im.ndim == 3 and im.shape[0] > 100 and im[:16].any()       # the note band is written


def test_demo_default_folder(no_cache, monkeypatch, capsys):
    monkeypatch.chdir(no_cache)
    assert main(["demo", "--size", "32"]) == 0
    assert len(list((no_cache / "dinov3nb-demo").glob("*.png"))) == 3
    assert "dinov3nb-demo/" in capsys.readouterr().out


@pytest.fixture
def photos(tmp_path):
    from skimage import data
    a, b = tmp_path / "left.png", tmp_path / "right.png"
    left, right, _ = data.stereo_motorcycle()
    Image.fromarray(left[::4, ::4]).save(a); Image.fromarray(right[::4, ::4]).save(b)
    return a, b


@pytest.mark.parametrize("args", [["heatmap"], ["heatmap", "--patch", "0,1"], ["heatmap", "--xy", "10,20"],
                                  ["pca"], ["pca", "--foreground"], ["kmeans", "-k", "3"]])
def test_picture_subcommands(no_cache, photos, capsys, args):
    out = no_cache / "pic.png"
    assert main([*args, str(photos[0]), "--size", "32", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape[0] == 125 + 16                 # 125 px photo + the note band


def test_match(no_cache, photos, capsys):
    out = no_cache / "m.png"
    assert main(["match", str(photos[0]), str(photos[1]), "--size", "48", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    n = int(text.split(" mutual")[0])
    assert 0 < n <= 3 * 4 and np.asarray(Image.open(out)).shape == (125 + 16, 2 * 186, 3)


def test_default_output_name_and_skimage_photos(no_cache, monkeypatch, capsys):
    monkeypatch.chdir(no_cache)
    assert main(["heatmap", "skimage:chelsea", "--size", "32"]) == 0
    assert (no_cache / "chelsea_heatmap.png").is_file()


def test_weights_from_the_environment(no_cache, monkeypatch, capsys):
    import dinov3nb
    w = no_cache / "w.safetensors"
    dinov3nb.save(dinov3nb.build("dinov3_vits16"), w)
    monkeypatch.setenv("DINOV3NB_WEIGHTS", str(w))
    assert main(["pca", "skimage:coffee", "--size", "32", "--out", str(no_cache / "p.png")]) == 0
    assert "RANDOM" not in capsys.readouterr().err


def test_kmeans_on_a_video(no_cache, synthetic_video, capsys):
    from dinov3nb.jetson.camera import open_source
    out = no_cache / "seg.avi"
    assert main(["kmeans", "--video", str(synthetic_video), "-k", "3", "--size", "32", "--frames", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 frames" in text and "FPS" in text
    with open_source(out) as back: frames = list(back)
    assert len(frames) == 3 and frames[0].shape == (64 + 16, 96, 3)         # frame + note band


def test_bad_input_is_a_clear_error(no_cache, photos, capsys):
    pytest.importorskip("cv2")
    assert main(["kmeans", "--camera", "97", "--size", "32"]) == 2
    assert "cannot open USB camera 97" in capsys.readouterr().err
    assert main(["kmeans", "--video", str(no_cache / "none.mp4")]) == 2
    assert "none.mp4" in capsys.readouterr().err
    assert main(["heatmap", str(photos[0]), "--patch", "9,9", "--size", "32"]) == 2
    assert "outside the 2x3 grid" in capsys.readouterr().err
    assert main(["kmeans", str(photos[0]), "--video", "x.mp4"]) == 2
    assert "not several" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["heatmap", str(photos[0]), "--patch", "3"])
    assert "expected two numbers" in capsys.readouterr().err


def test_every_option_has_help():
    from dinov3nb.cli import _parser
    p = _parser()
    subs = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sp in subs.choices.items():
        for a in sp._actions:
            assert a.help, f"dinov3nb {name} {a.option_strings or a.dest} has no help"


def test_every_eval_option_has_help():
    from dinov3nb.eval.cli import _parser
    missing = [a.dest for a in _parser()._actions if not a.help]
    assert not missing, f"dinov3nb eval options without help: {missing}"
    with pytest.raises(SystemExit) as e: main(["eval", "nonsense"])  # routed to eval's own parser, which rejects it
    assert e.value.code == 2
