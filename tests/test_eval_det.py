"""`dinov3nb eval det`: COCO box mAP with pycocotools on fake COCO-layout folders written here. Ground-truth boxes
fed back as detections score 100; a tiny random detector runs end to end through `eval_main`; bad input exits 2."""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3nb.eval.cli import PROTOCOLS, eval_main
from dinov3nb.eval.detection import COCO_METRICS, coco_layout, coco_map, detr_detector, evaluate_detector, read_coco
from dinov3nb.models.vit import DinoVisionTransformer, ViTConfig

# image id -> (height, width), [(category id, x, y, w, h)]: one small (< 32²), medium and large (> 96²) object at least
SCENES = {1: ((128, 160), [(1, 10, 12, 20, 24), (3, 60, 40, 90, 80)]),
          2: ((96, 128), [(1, 30, 20, 50, 60), (18, 5, 70, 16, 16)]),
          3: ((120, 120), [(3, 8, 8, 104, 100)])}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_coco(root: Path, scenes=SCENES) -> Path:
    "A COCO-layout folder: noise images with flat coloured boxes, and annotations/instances_val2017.json."
    rng = np.random.default_rng(0)
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, ((h, w), objects) in scenes.items():
        pix = (rng.random((h, w, 3)) * 80).astype(np.uint8)
        for c, x, y, bw, bh in objects:
            pix[y:y + bh, x:x + bw] = rng.integers(100, 255, 3)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, bw, bh], "area": bw * bh,
                         "iscrowd": 0})
        Image.fromarray(pix).save(root / "val2017" / f"{i:012d}.jpg")
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
    cats = [{"id": c, "name": n} for c, n in ((1, "person"), (3, "car"), (18, "dog"))]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture
def coco_root(tmp_path):
    return write_coco(tmp_path / "coco")


def ground_truth_results(coco):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in coco.dataset["annotations"]]


def test_perfect_predictions_score_100(coco_root):
    coco = read_coco(coco_layout(coco_root)[0])
    r = coco_map(coco, ground_truth_results(coco))
    assert r == {k: 100.0 for k in COCO_METRICS}           # every size range has ground truth here
    # a wrong class, a box shifted by half its width, a missing image: each costs AP
    gt = ground_truth_results(coco)
    assert coco_map(coco, [{**g, "category_id": 18 if g["category_id"] != 18 else 1} for g in gt])["AP"] == 0.0
    shifted = coco_map(coco, [{**g, "bbox": [g["bbox"][0] + g["bbox"][2] / 2, *g["bbox"][1:]]} for g in gt])
    assert shifted["AP"] == 0.0 and shifted["AP50"] == 0.0           # IoU 1/3 < 0.5
    assert 0 < coco_map(coco, [g for g in gt if g["image_id"] != 3])["AP"] < 100
    assert coco_map(coco, [])["AP"] == 0.0
    # only the images evaluated count; a size range without ground truth is left out
    assert coco_map(coco, [g for g in gt if g["image_id"] == 3], img_ids=[3]) == {"AP": 100.0, "AP50": 100.0,
                                                                                 "AP75": 100.0, "APl": 100.0}


def test_tiny_random_detector_end_to_end(coco_root, tmp_path, capsys):
    out = tmp_path / "results"
    assert eval_main(["det", "--model", "vit_tiny", "--data", str(coco_root), "--out", str(out), "--quiet"]) == 0
    records = json.loads((out / "results.json").read_text())
    (rec,) = records
    assert (rec["protocol"], rec["model"], rec["weights"], rec["data"]) == ("det", "vit_tiny", "random init", str(coco_root))
    assert set(rec["metrics"]) == {*COCO_METRICS, "n_images"} and rec["metrics"]["n_images"] == 3
    assert all(math.isfinite(rec["metrics"][k]) and 0 <= rec["metrics"][k] <= 100 for k in COCO_METRICS)
    with open(out / "results.csv", newline="") as fh: rows = list(csv.DictReader(fh))
    assert {r["metric"]: float(r["value"]) for r in rows} == pytest.approx(rec["metrics"])
    assert "| det | vit_tiny |" in capsys.readouterr().out
    # explicit files, the first image only, threshold and NMS: appended as a second record
    ann = coco_root / "annotations" / "instances_val2017.json"
    assert eval_main(["det", "--model", "vit_tiny", "--annotations", str(ann), "--images", str(coco_root / "val2017"),
                      "--max-images", "1", "--score-threshold", "0.1", "--nms-iou", "0.5", "--max-size", "96",
                      "--out", str(out), "--quiet"]) == 0
    second = json.loads((out / "results.json").read_text())[-1]
    assert second["data"] == str(ann) and second["metrics"]["n_images"] == 1
    assert 0 <= second["metrics"]["AP"] <= 100
    assert "det" not in PROTOCOLS                             # `all` runs the backbone protocols only


def test_seeded_detector_gives_the_same_score(coco_root):
    ann, img = coco_layout(coco_root)
    def score():
        torch.manual_seed(0)
        return evaluate_detector(detr_detector(DinoVisionTransformer(ViTConfig.tiny(patch_size=8)), seed=1), ann, img,
                                 max_images=2, progress=False)
    a = score()
    assert a["n_images"] == 2 and 0 <= a["AP"] <= 100 and a == score()


def _bad_json(root: Path) -> None:
    (root / "annotations" / "instances_val2017.json").write_text("{ not json")


def _no_annotations_key(root: Path) -> None:
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps({"images": [], "categories": []}))


def _image_missing(root: Path) -> None:
    (root / "val2017" / "000000000002.jpg").unlink()


def _images_folder_missing(root: Path) -> None:
    for f in (root / "val2017").iterdir(): f.unlink()
    (root / "val2017").rmdir()


@pytest.mark.parametrize("spoil, extra, message", [
    (None, ["--data", "{tmp}/nowhere"], "no COCO annotation file"),
    (None, [], "--annotations FILE --images DIR"),                       # det on the default --data shapesworld
    (_bad_json, ["--data", "{root}"], "is not JSON"),
    (_no_annotations_key, ["--data", "{root}"], "needs a list 'annotations'"),
    (_image_missing, ["--data", "{root}"], "000000000002.jpg"),
    (_images_folder_missing, ["--data", "{root}"], "no image folder"),
    (None, ["--data", "{root}", "--head-weights", "{tmp}/missing.pth"], "no such file"),
    (None, ["--data", "{root}", "--head", "m2f"], "--head m2f is a head for seg, not det"),
    (None, ["--data", "{root}", "--model", "pixels"], "is not one: use a ViT --model"),
])
def test_bad_input_exits_2(coco_root, tmp_path, capsys, spoil, extra, message):
    if spoil: spoil(coco_root)
    args = [a.format(tmp=tmp_path, root=coco_root) for a in extra]
    model = [] if "--model" in args else ["--model", "vit_tiny"]
    assert eval_main(["det", *model, *args, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "r" / "results.json").exists()


def test_bad_numbers_and_det_options_elsewhere(coco_root, tmp_path, capsys):
    for bad in (["--max-images", "0"], ["--score-threshold", "2"], ["--nms-iou", "-1"], ["--max-size", "8"]):
        with pytest.raises(SystemExit) as e: eval_main(["det", "--data", str(coco_root), *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
    assert eval_main(["knn", "--model", "pixels", "--max-images", "3", "--out", str(tmp_path / "r")]) == 2
    assert "--max-images: for det only" in capsys.readouterr().err


def test_missing_pycocotools_names_the_extra(coco_root, tmp_path, capsys, monkeypatch):
    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)             # `import pycocotools` raises ImportError
    assert eval_main(["det", "--model", "vit_tiny", "--data", str(coco_root), "--out", str(tmp_path / "r")]) == 2
    assert "pip install 'dinov3nb[eval]'" in capsys.readouterr().err
