"""The head commands (`dinov3nb classify | depth | zeroshot | zeroshot-seg`): each writes a picture and a JSON,
never replaces a file without --overwrite, says "random weights" on both when it has none, and ends bad input in
exit code 2 with a message naming the problem."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dinov3nb.cli import main
from dinov3nb.heads.classifier import LinearClassifier
from dinov3nb.heads.depth import CHMV2_CONFIG, DD_7B_CONFIG, build_depther, scaled_config
from dinov3nb.models.checkpoints import save
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig

ROOT = Path(__file__).resolve().parents[1]


def _has(name:str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _save(sd:dict, path:Path) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "A tiny backbone file, and head files in the released layouts for it (classifier, DPT dd, CHMv2 combined)."
    d = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    vit = DinoVisionTransformer(ViTConfig.tiny(depth=4)).eval()
    save(vit, d / "vit.safetensors")
    lc = LinearClassifier(vit, 1000)
    dd = build_depther(vit, scaled_config(vit, DD_7B_CONFIG))
    chm = build_depther(vit, replace(scaled_config(vit, CHMV2_CONFIG), n_output_channels=32))
    return {"dir": d, "backbone": str(d / "vit.safetensors"), "lc": _save(lc.linear_head.state_dict(), d / "lc.safetensors"),
            "dd": _save(dd.decoder.state_dict(), d / "dd.safetensors"), "chmv2_combined": _save(chm.state_dict(), d / "chm.safetensors")}


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _outputs(png:Path) -> tuple[np.ndarray, dict]:
    return np.asarray(Image.open(png)), json.loads(png.with_suffix(".json").read_text())


def test_classify_writes_picture_and_json_and_refuses_to_overwrite(files, tmp_path, capsys):
    png = tmp_path / "cat.png"
    args = ["classify", "skimage:chelsea", "--weights", files["lc"], "--backbone-weights", files["backbone"], "--top-k", "3", "--out", png]
    rc, out, err = _run(capsys, *args)
    assert rc == 0, err
    pic, res = _outputs(png)
    assert pic.ndim == 3 and pic.shape[2] == 3 and pic.shape[0] > 300  # photo + band + the list
    assert len(res["top_k"]) == 3 and res["model"]["random_weights"] is False and res["image_size"] == [300, 451]
    assert all(isinstance(r["name"], str) and 0 <= r["prob"] <= 1 for r in res["top_k"])
    assert res["note"].startswith("dinov3_vit7b16_lc: lc.safetensors") and "RANDOM" not in res["note"]
    before = png.read_bytes()
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and "exists" in err and "--overwrite" in err and "Traceback" not in err
    assert png.read_bytes() == before
    png.with_suffix(".json").unlink()  # the JSON alone is in the way too
    png.unlink(); png.with_suffix(".json").write_text("{}")
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and "cat.json" in err and not png.exists()
    rc, out, err = _run(capsys, *args, "--overwrite")
    assert rc == 0 and png.exists()


def test_random_weights_are_stamped_on_the_picture_and_in_the_json(tmp_path, capsys):
    png = tmp_path / "r.png"
    rc, out, err = _run(capsys, "classify", "skimage:chelsea", "--size", "32", "--out", png)
    assert rc == 0, err
    assert "RANDOM weights" in err
    pic, res = _outputs(png)
    assert res["model"]["random_weights"] is True and "RANDOM WEIGHTS" in res["note"] and res["model"]["backbone"] == "dinov3_vits16"
    band = pic[:20].reshape(-1, 3).astype(int)
    assert ((band[:, 0] > 200) & (band[:, 1] < 120)).any()  # the note is written in red on the black band


def test_depth_modes_flip_tta_and_a_combined_chmv2_file(files, tmp_path, capsys):
    png = tmp_path / "d.png"
    rc, out, err = _run(capsys, "depth", "skimage:chelsea", "--weights", files["dd"], "--backbone-weights", files["backbone"],
                        "--mode", "square", "--size", "48", "--flip-tta", "--out", png)
    assert rc == 0, err
    pic, res = _outputs(png)
    assert res["options"] == {"head": "dd", "mode": "square", "size": 48, "flip_tta": True, "dtype": "fp32"}
    assert 0 < res["depth"]["min"] <= res["depth"]["median"] <= res["depth"]["max"] <= 100 and res["depth"]["unit"] == "metres"
    assert pic.shape[1] > 2 * 451  # photo | colour map | colour bar
    png2 = tmp_path / "h.png"
    rc, out, err = _run(capsys, "depth", "skimage:chelsea", "--head", "chmv2", "--weights", files["chmv2_combined"], "--out", png2)
    assert rc == 0, err
    _, res = _outputs(png2)
    assert res["options"]["mode"] == "native" and res["options"]["size"] is None and res["depth"]["max"] <= 96
    assert res["model"]["backbone_weights"] is None and res["model"]["random_weights"] is False


def test_depth_random_weights_default_names_in_the_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "depth", "skimage:chelsea", "skimage:astronaut", "--size", "32")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut_depth.json", "astronaut_depth.png", "chelsea_depth.json",
                                                          "chelsea_depth.png"]
    assert json.loads((tmp_path / "astronaut_depth.json").read_text())["model"]["random_weights"] is True


@pytest.mark.skipif(not _has("open_clip"), reason="the text extra (open-clip-torch) is not installed")
def test_zeroshot_and_zeroshot_seg_with_random_weights(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("# what to look for\ncat\ngrass\n\nwall\n")
    png = tmp_path / "z.png"
    rc, out, err = _run(capsys, "zeroshot", "skimage:chelsea", "--labels", labels, "--template", "a photo of a {}.",
                        "--size", "32", "--top-k", "2", "--out", png)
    assert rc == 0, err
    _, res = _outputs(png)
    assert [r["label"] for r in res["top_k"]] != [] and len(res["top_k"]) == 2 and res["options"]["labels"] == ["cat", "grass", "wall"]
    assert res["model"]["random_weights"] is True
    png = tmp_path / "s.png"
    rc, out, err = _run(capsys, "zeroshot-seg", "skimage:chelsea", "--labels", "cat,grass", "--template", "a {}", "--size", "32",
                        "--out", png)
    assert rc == 0, err
    pic, res = _outputs(png)
    assert abs(sum(res["pixel_share"].values()) - 1) < 1e-6 and pic.shape[1] == 451 + 180  # overlay + legend


def test_zeroshot_without_the_text_extra_names_it(tmp_path, capsys, monkeypatch):
    import dinov3nb.heads.dinotxt as dt
    def missing(): raise ImportError("dino.txt's tokeniser needs the `text` extra: pip install 'dinov3nb[text]'")
    monkeypatch.setattr(dt, "clip_tokenizer", missing)
    rc, out, err = _run(capsys, "zeroshot", "skimage:chelsea", "--labels", "cat,dog", "--out", tmp_path / "z.png")
    assert rc == 2 and "dinov3nb[text]" in err and "Traceback" not in err and not (tmp_path / "z.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["classify", "no/such/photo.jpg"], "does not exist"),
    (["depth", "skimage:nothing"], "no photo 'nothing'"),
    (["classify", "skimage:chelsea", "skimage:astronaut", "--out", "x.png"], "drop --out"),
    (["classify", "skimage:chelsea", "--out", "x.jpg"], "ending in .png"),
    (["zeroshot", "skimage:chelsea", "--labels", " , "], "holds no label"),
    (["classify", "skimage:chelsea", "--size", "100"], "multiple of the patch size 16"),
    (["depth", "skimage:chelsea", "--head", "dpt"], "invalid choice"),
])
def test_bad_input_exits_2_with_a_message(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try: rc = main(argv)
    except SystemExit as e: rc = e.code  # argparse
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_wrong_head_files_exit_2_naming_the_problem(files, tmp_path, capsys):
    d, bb = files["dir"], files["backbone"]
    (d / "junk.pth").write_bytes(b"not a checkpoint")
    cases = [
        (["classify", "--weights", files["lc"]], "also pass --backbone-weights"),                    # head file, no backbone
        (["classify", "--weights", files["dd"], "--backbone-weights", bb], "missing keys: weight, bias"),  # a DPT file as classifier
        (["depth", "--weights", files["lc"], "--backbone-weights", bb], "not a DPT depth head"),       # a classifier as DPT
        (["depth", "--weights", str(d / "junk.pth"), "--backbone-weights", bb], "junk.pth"),           # not a checkpoint at all
        (["depth", "--weights", files["chmv2_combined"], "--backbone-weights", bb], "drop --backbone-weights"),
        (["classify", "--weights", files["lc"], "--backbone-weights", str(d / "missing.pth")], "missing.pth"),
    ]
    for argv, message in cases:
        out = tmp_path / "o.png"
        rc, _, err = _run(capsys, argv[0], "skimage:chelsea", *argv[1:], "--out", out)
        assert rc == 2 and message in err and "Traceback" not in err, (argv, err)
        assert not out.exists()


def test_the_commands_are_listed_and_run_as_a_program(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dinov3nb", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and all(c in r.stdout for c in ("classify", "depth", "zeroshot", "zeroshot-seg"))
    r = subprocess.run([sys.executable, "-m", "dinov3nb", "depth", str(tmp_path / "none.jpg")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_cuda_device_without_a_gpu_is_bad_input(tmp_path, capsys):
    rc, _, err = _run(capsys, "depth", "skimage:chelsea", "--device", "cuda", "--out", tmp_path / "d.png")
    assert rc == 2 and "no CUDA GPU" in err and "Traceback" not in err
