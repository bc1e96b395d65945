"""`dinov3nb detect`: pictures and COCO results JSON on random weights, and clear errors (exit code 2) for bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3nb.cli import main


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(80, 112, 3), dtype=np.uint8)).save(path)
    return path


def test_detect_writes_pictures_and_coco_results(tmp_path, photo, capsys):
    other = tmp_path / "sub" / "photo.png"; other.parent.mkdir(); Image.open(photo).resize((64, 96)).save(other)
    out = tmp_path / "out"
    assert main(["detect", str(photo), str(other), "--random-weights", "--head", "tiny", "--out", str(out),
                 "--score-threshold", "0.1", "--nms-iou", "0.5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "images.json", "photo_0.png", "photo_1.png"]
    assert Image.open(out / "photo_0.png").size[0] > 100
    res, images = json.loads((out / "detections.json").read_text()), json.loads((out / "images.json").read_text())
    assert [(i["id"], i["width"], i["height"]) for i in images] == [(1, 112, 80), (2, 64, 96)]
    assert {r["image_id"] for r in res} == {1, 2} and all(r["score"] >= 0.1 for r in res)
    for r in res:
        x, y, w, h = r["bbox"]
        W, H = (112, 80) if r["image_id"] == 1 else (64, 96)
        assert set(r) == {"image_id", "category_id", "bbox", "score"} and 0 <= r["category_id"] <= 90
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= W + 0.01 and y + h <= H + 0.01
    assert "detections.json" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["missing.png", "--random-weights"], "no image at"),
    (["{photo}"], "needs the released head file"),
    (["{photo}", "--random-weights", "--weights", "{photo}"], "--random-weights runs without weights"),
    (["{photo}", "--weights", "nope.pth", "--backbone-weights", "x.pth"], "--weights 'nope.pth' does not exist"),
    (["{photo}", "--weights", "{photo}", "--head", "tiny"], "--head tiny has no released weights"),
    (["{text}", "--random-weights", "--head", "tiny", "--out", "{tmp}/o"], "is not a readable image"),
    (["{photo}", "--random-weights", "--head", "tiny", "--out", "{photo}"], "is a file, not a folder"),
    (["{photo}", "--random-weights", "--head", "tiny", "--backbone", "vit_huge"], "--backbone: unknown backbone"),
])
def test_bad_input_is_exit_code_2_with_the_fix(tmp_path, photo, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    args = [a.format(photo=photo, tmp=tmp_path, text=tmp_path / "notes.png") for a in args]
    assert main(["detect", *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_numbers_and_a_full_output_folder(tmp_path, photo, capsys):
    with pytest.raises(SystemExit) as e: main(["detect", str(photo), "--random-weights", "--score-threshold", "1.5"])
    assert e.value.code == 2 and "[0, 1]" in capsys.readouterr().err
    out = tmp_path / "out"; out.mkdir(); (out / "x.txt").write_text("keep")
    assert main(["detect", str(photo), "--random-weights", "--head", "tiny", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_head_file_that_does_not_fit_names_its_keys(tmp_path, photo, capsys):
    torch.save({"model": {"query_embed.weight": torch.zeros(3000, 768)}}, tmp_path / "head.pth")
    assert main(["detect", str(photo), "--weights", str(tmp_path / "head.pth"), "--backbone", "dinov3_vits16",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing keys: input_proj.0.0.weight" in err and "does not fit the dinov3_vit7b16_de head" in err
