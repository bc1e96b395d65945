"""Data pipeline checks the notebooks test poorly: determinism across processes and loader workers, bad inputs."""
import hashlib
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3nb.train.data import (CropConfig, ImageFolderDataset, MaskConfig, MaskingGenerator, MultiCropAugmentation,
                           MultiCropCollate, collate_masks)
from dinov3nb.shapesworld import ShapesWorld, save_image_folder

ROOT = Path(__file__).resolve().parents[1]


def batch_digests(num_workers: int, seed: int = 0) -> list[str]:
    "SHA-256 of every tensor of two seeded multi-crop batches of ShapesWorld images."
    torch.manual_seed(seed)
    cfg = CropConfig.tiny(gram_teacher_crops_size=128)
    ds = ShapesWorld(n_images=8, size=48, transform=MultiCropAugmentation(cfg))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed), collate_fn=MultiCropCollate(cfg))
    out = []
    for batch in loader:
        h = hashlib.sha256()
        for k in sorted(batch):
            if isinstance(batch[k], torch.Tensor): h.update(k.encode() + batch[k].contiguous().numpy().tobytes())
        out.append(h.hexdigest())
    return out


DIGEST_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from tests.test_data import batch_digests
    from dinov3nb.shapesworld import ShapesWorld
    import hashlib
    print(json.dumps({"w0": batch_digests(0), "w2": batch_digests(2),
                      "img": hashlib.sha256(ShapesWorld(50, size=64).sample(37).image.tobytes()).hexdigest()}))
""")


def test_batches_reproducible_with_workers():
    w0, w2 = batch_digests(0), batch_digests(2)
    assert len(w0) == len(w2) == 2
    assert batch_digests(0) == w0 and batch_digests(2) == w2        # same seed and worker count, same batches
    assert batch_digests(0, seed=1) != w0


@pytest.mark.slow
def test_batches_reproducible_across_processes():
    res = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, str(ROOT)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    other = json.loads(res.stdout.strip().splitlines()[-1])
    assert other["w0"] == batch_digests(0) and other["w2"] == batch_digests(2)   # another Python process: the same
    assert other["img"] == hashlib.sha256(ShapesWorld(50, size=64).sample(37).image.tobytes()).hexdigest()


def test_shapesworld_independent_of_access_order_and_workers():
    ds = ShapesWorld(n_images=12, size=32)
    forward = [np.asarray(ds[i][0]) for i in range(12)]
    backward = [np.asarray(ds[i][0]) for i in reversed(range(12))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward))
    loader = torch.utils.data.DataLoader(ShapesWorld(12, size=32, transform=np.asarray), batch_size=3, num_workers=2,
                                         collate_fn=lambda b: b)
    from_workers = [np.asarray(x) for batch in loader for x, _ in batch]
    assert all(np.array_equal(a, b) for a, b in zip(forward, from_workers))


@pytest.mark.parametrize("kwargs, match", [
    (dict(global_crops_size="224"), r"crops.global_crops_size='224' is not a positive multiple"),
    (dict(global_crops_size=True), r"crops.global_crops_size=True"),
    (dict(global_crops_size=0), r"crops.global_crops_size=0 .*use 224"),
    (dict(local_crops_size=97), r"crops.local_crops_size=97 .*use 96 or 112"),
    (dict(gram_teacher_crops_size=500), r"crops.gram_teacher_crops_size=500 .*use 496 or 512"),
    (dict(local_crops_number=-1), r"crops.local_crops_number=-1 must be an int >= 0"),
    (dict(global_crops_scale=(0.0, 1.0)), r"crops.global_crops_scale=\(0.0, 1.0\) must be \(low, high\)"),
    (dict(local_crops_scale=0.3), r"crops.local_crops_scale=0.3"),
    (dict(rgb_mean=(0.5,)), r"crops.rgb_mean needs 3 values"),
    (dict(blur_probabilities="Official"), r"crops.blur_probabilities='Official'"),
])
def test_bad_crop_config(kwargs, match):
    with pytest.raises(ValueError, match=match): CropConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_sample_probability=1.5), r"ibot.mask_sample_probability=1.5 must be in \[0, 1\]"),
    (dict(mask_ratio_min_max=(0.2, 1.2)), r"ibot.mask_ratio_min_max=\(0.2, 1.2\)"),
    (dict(min_aspect=0.0), r"ibot.min_aspect=0.0"),
])
def test_bad_mask_config(kwargs, match):
    with pytest.raises(ValueError, match=match): MaskConfig(**kwargs)


def test_masks_official_sizes():
    "A batch of 64 images at 224 px: 64 of 128 global crops masked, counts on the stratum edges, weights sum to 1 per crop."
    m = collate_masks(128, MaskingGenerator(14), generator=torch.Generator().manual_seed(0))
    per_crop = m["collated_masks"].sum(1)
    assert (per_crop > 0).sum() == 64 and per_crop.max() == 98 and per_crop[per_crop > 0].min() == 20
    assert m["upperbound"] == int(per_crop.sum()) == m["n_masked_patches"].item()
    with pytest.raises(ValueError, match="cannot mask -1 patches"): MaskingGenerator(14)(-1)


def test_masks_use_the_global_generator():
    torch.manual_seed(5); a = collate_masks(8, MaskingGenerator(6))["collated_masks"]
    torch.manual_seed(5); b = collate_masks(8, MaskingGenerator(6))["collated_masks"]
    assert torch.equal(a, b)


def _png(path: Path, value: int = 0, size: int = 20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"): ImageFolderDataset(tmp_path / "missing")
    _png(tmp_path / "one.png")
    with pytest.raises(NotADirectoryError, match="is a file; pass the folder"): ImageFolderDataset(tmp_path / "one.png")
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.txt").write_text("hi")
    (only_text / ".hidden.png").write_bytes(b"")
    with pytest.raises(ValueError, match=f"no image files .* found under '{only_text}'"): ImageFolderDataset(only_text)
    broken = tmp_path / "broken"
    for i in range(2): (broken / f"{i}.jpg").parent.mkdir(exist_ok=True); (broken / f"{i}.jpg").write_bytes(b"nope")
    ds = ImageFolderDataset(broken)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="none of the 2 image files .* can be read"): ds[0]


def test_image_folder_truncated_file_reported_once(tmp_path):
    _png(tmp_path / "a" / "0.png", 10)
    buf = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf)
    (tmp_path / "a" / "1.jpg").write_bytes(buf.read_bytes()[:300])      # valid header, truncated data
    buf.unlink()
    _png(tmp_path / "b" / "2.png", 200)
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["a", "b"] and len(ds) == 3
    with pytest.warns(UserWarning, match=r"skipping unreadable image '.*1.jpg'") as rec:
        img, label = ds[1]
    assert len(rec) == 1 and label == 1 and np.asarray(img)[0, 0, 0] == 200   # served the next file, class b
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[1][1] == 1                                                   # no second report
    assert {p.name for p in ds.bad_files} == {"1.jpg"}


def test_image_folder_mixed_layout_is_unlabelled(tmp_path):
    _png(tmp_path / "top.png")
    _png(tmp_path / "cls" / "x.png")
    _png(tmp_path / "cls" / ".ipynb_checkpoints" / "y.png")                   # hidden folders are skipped
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == [] and [label for _, label in ds.samples] == [-1, -1] and len(ds) == 2


def test_shapesworld_folder_round_trip_with_multicrop(tmp_path):
    src = ShapesWorld(6, size=48, classes=("circle", "star"))
    cfg = CropConfig.tiny()
    ds = ImageFolderDataset(save_image_folder(src, tmp_path), transform=MultiCropAugmentation(cfg))
    assert ds.classes == ["circle", "star"] and sorted(label for _, label in ds.samples) == [0, 0, 0, 1, 1, 1]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=MultiCropCollate(cfg))))
    assert batch["collated_global_crops"].shape == (6, 3, 64, 64) and batch["collated_local_crops"].shape == (6, 3, 32, 32)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(size=8), ValueError, "size=8 must be an int >= 16"),
    (dict(size=64.0), ValueError, "size=64.0"),
    (dict(n_images=0), ValueError, "n_images=0 must be >= 1"),
    (dict(classes=()), ValueError, "not available"),
])
def test_shapesworld_bad_args(kwargs, err, match):
    with pytest.raises(err, match=match): ShapesWorld(**kwargs)


def test_shapesworld_indexing():
    ds = ShapesWorld(5, size=32)
    assert np.array_equal(ds.sample(-1).image, ds.sample(4).image)
    with pytest.raises(IndexError, match="index -6 out of range for 5 images"): ds[-6]
    with pytest.raises(IndexError): ds.video(5)
