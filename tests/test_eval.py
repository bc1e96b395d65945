"""Evaluation end to end: every protocol through `eval_main` on a small ShapesWorld split, the results files read
back, the classification probes learning separable features, folder layouts written here, and bad input."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3nb.eval.classification import knn_classify, linear_probe, logistic_regression
from dinov3nb.eval.cli import PROTOCOLS, eval_main
from dinov3nb.eval.data import ADE20KSegmentation, NYUv2Depth, classification_splits
from dinov3nb.eval.features import extract_features
from dinov3nb.shapesworld import ShapesWorld, save_image_folder

SMALL = ["--size", "32", "--n-train", "12", "--n-val", "6", "--n-test", "6", "--n-videos", "1", "--n-frames", "3",
         "--n-fg", "3", "--epochs", "2", "--steps", "5", "--ks", "1,5", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    "Tiny tensors: one thread avoids OpenMP contention with other test processes."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def read_results(out: Path):
    records = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as fh: rows = list(csv.DictReader(fh))
    return records, rows


def test_every_protocol_writes_results_read_back(tmp_path, capsys):
    assert eval_main(["all", "--model", "vit_tiny", "--out", str(tmp_path), *SMALL]) == 0
    records, rows = read_results(tmp_path)
    assert [r["protocol"] for r in records] == list(PROTOCOLS)
    assert all(r["model"] == "vit_tiny" and r["weights"] == "random init" and r["data"] == "shapesworld" for r in records)
    by = {r["protocol"]: r["metrics"] for r in records}
    assert set(by["knn"]) == {"top1@1", "top5@1", "top1@5", "top5@5"}
    assert 0 <= by["seg"]["mIoU"] <= 100 and 0 <= by["depth"]["delta1"] <= 1 and 0 <= by["track"]["J&F"] <= 100
    assert 0 <= by["fg"]["AP"] <= 100 and 0 <= by["match"]["dense_acc"] <= 100
    # the CSV holds one row per metric, with the same values as the JSON
    assert len(rows) == sum(len(r["metrics"]) for r in records)
    csv_seg = {r["metric"]: float(r["value"]) for r in rows if r["protocol"] == "seg"}
    assert csv_seg == pytest.approx(by["seg"])
    out = capsys.readouterr().out
    assert "| protocol | model |" in out and "results.csv" in out
    # a second run appends to the JSON and rewrites the CSV from all records
    assert eval_main(["knn", "--model", "pixels", "--out", str(tmp_path), *SMALL]) == 0
    records2, rows2 = read_results(tmp_path)
    assert len(records2) == len(records) + 1 and records2[-1]["model"] == "pixels"
    assert len(rows2) == len(rows) + 4


def test_weights_from_a_checkpoint(tmp_path):
    from dinov3nb.models.checkpoints import save
    from dinov3nb.eval.cli import eval_model
    model = eval_model("vit_tiny", seed=3)
    save(model, tmp_path / "tiny.safetensors")
    assert eval_main(["knn", "--weights", str(tmp_path / "tiny.safetensors"), "--out", str(tmp_path), *SMALL]) == 0
    rec = json.loads((tmp_path / "results.json").read_text())[0]
    assert rec["weights"].endswith("tiny.safetensors") and set(rec["metrics"]) >= {"top1@1"}


def test_classification_folder_and_feature_cache(tmp_path):
    for split, n in (("train", 12), ("val", 6)):
        save_image_folder(ShapesWorld(n, size=32, split=split, classes=("circle", "cross")), tmp_path / "in" / split)
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["knn", "--model", "vit_tiny", "--data", str(tmp_path / "in"), "--size", "32", "--ks", "1,3",
            "--cache", str(cache), "--out", str(out), "--quiet"]
    assert eval_main(args) == 0
    assert len(list(cache.iterdir())) == 3                                      # train, held-out val, test
    assert eval_main(args) == 0                                                 # from the cache
    a, b = json.loads((out / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["data"] == str(tmp_path / "in")


def test_probes_learn_separable_features():
    "k-NN and the linear probe reach 100 % on separable clusters and beat chance by far on overlapping ones."
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g) * 3

    def split(n, spread):
        y = torch.arange(6).repeat_interleave(n)
        return centres[y] + spread * torch.randn(len(y), 16, generator=g), y

    tr, va, te = split(20, 0.2), split(5, 0.2), split(10, 0.2)
    assert knn_classify(*tr, *te, ks=(5, 20))[20]["top1"] == 100.0
    assert linear_probe(tr, va, te, epochs=10)["test_top1"] == 100.0
    assert logistic_regression(tr, va, te, Cs=(1.0,))["test_top1"] == 100.0
    tr, va, te = split(30, 4.0), split(10, 4.0), split(30, 4.0)
    assert knn_classify(*tr, *te, ks=(20,))[20]["top1"] > 50                     # chance: 16.7 %
    assert linear_probe(tr, va, te, epochs=20)["test_top1"] > 50


def test_pixels_separate_colour_classes():
    "Raw pixels separate classes that differ by colour: the whole pipeline from images to probes learns."
    def coloured(n, seed):
        rng = np.random.default_rng(seed)
        ys = np.arange(n) % 3
        imgs = [np.clip(np.full((16, 16, 3), [[200 * (y == 0), 200 * (y == 1), 200 * (y == 2)]]) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                for y in ys]
        return [(Image.fromarray(i), int(y)) for i, y in zip(imgs, ys)]

    from dinov3nb.eval.features import PixelFeatures
    model = PixelFeatures(8, grid=2)
    f = {s: extract_features(model, coloured(n, k), "cls", progress=False) for k, (s, n) in enumerate((("tr", 30), ("va", 9), ("te", 30)))}
    assert knn_classify(*f["tr"], *f["te"], ks=(5,))[5]["top1"] == 100.0
    assert linear_probe(f["tr"], f["va"], f["te"], epochs=10)["test_top1"] == 100.0


def test_bad_input(tmp_path, capsys):
    assert eval_main(["seg", "--model", "vit_tiny", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "ADEChallengeData2016/images" in capsys.readouterr().err
    assert eval_main(["match", "--model", "vit_tiny", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "shapesworld only" in capsys.readouterr().err
    assert eval_main(["knn", "--model", "dinov3_vitq16", "--out", str(tmp_path)]) == 2
    assert "unknown --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:   # refused by the parser, before the model is built
        eval_main(["knn", "--model", "vit_tiny", "--features", "max", "--out", str(tmp_path), *SMALL])
    assert e.value.code == 2 and "unknown feature kind" in capsys.readouterr().err
    with pytest.raises(SystemExit): eval_main(["classify"])
    with pytest.raises(FileNotFoundError, match="root/train/<class>"): classification_splits(tmp_path)
    (tmp_path / "nyu" / "test" / "rgb").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nyu/test/depth|folder test/depth"): NYUv2Depth(tmp_path / "nyu")
    with pytest.raises(ValueError, match="split='val'"): ADE20KSegmentation(tmp_path, "val")
