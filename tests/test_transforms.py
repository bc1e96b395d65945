"Bad inputs and file round trips for `dinov3nb.models.transforms`."
import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from dinov3nb.models.transforms import (get_normalization, load_image, make_transform, patch_multiple_size,
                                 preprocess)

CAT = skdata.chelsea()  # 300x451x3 uint8 RGB


@pytest.fixture
def cat_png(tmp_path):
    path = tmp_path / "chelsea.png"
    Image.fromarray(CAT).save(path)
    return path


# --- files -------------------------------------------------------------------------------

def test_png_round_trip(cat_png):
    assert np.array_equal(np.asarray(load_image(cat_png)), CAT)
    assert np.array_equal(np.asarray(load_image(str(cat_png))), CAT)
    assert torch.equal(preprocess(cat_png), preprocess(CAT))


def test_rgba_and_16bit_files(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([CAT, np.zeros(CAT.shape[:2], np.uint8)])).save(rgba)
    assert np.array_equal(np.asarray(load_image(rgba)), CAT)  # alpha dropped, RGB kept
    deep = tmp_path / "gray16.png"
    cam = skdata.camera()
    Image.fromarray(cam.astype(np.uint16) * 257).save(deep)
    out = np.asarray(load_image(deep))
    assert out.shape == (512, 512, 3) and np.array_equal(out[..., 1], cam)  # scaled, not clipped


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "missing_cat.jpg"
    for arg in (missing, str(missing)):
        with pytest.raises(FileNotFoundError, match="missing_cat.jpg"):
            load_image(arg)
    with pytest.raises(FileNotFoundError, match="missing_cat.jpg"):
        preprocess(missing)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not an image at all" * 10, bytes(range(256)) * 4])
def test_corrupt_file(tmp_path, content):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"corrupt\.jpg.*is not a readable image"):
        load_image(bad)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png(cat_png, keep):
    raw = cat_png.read_bytes()
    cut = cat_png.with_name("truncated.png")
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ValueError, match=r"truncated\.png.*is not a readable image"):
        load_image(cut)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(CAT).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"cut\.jpg.*is not a readable image"):
        load_image(path)


# --- arrays ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(16,), (16, 16, 2), (16, 16, 5), (2, 16, 16, 3), (0, 16, 3), (3, 16, 16)])
def test_bad_array_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"image array has shape {shape}; expected HxW (gray), HxWx3")):
        load_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_, np.uint32])
def test_bad_array_dtype(dtype):
    with pytest.raises(ValueError, match=rf"dtype {np.dtype(dtype)}.*uint8"):
        load_image(np.zeros((16, 16, 3), dtype))


@pytest.mark.parametrize("lo,hi", [(0.0, 255.0), (-0.5, 0.5), (0.0, np.inf), (np.nan, np.nan)])
def test_float_array_out_of_range(lo, hi):
    arr = np.full((16, 16, 3), 0.5, np.float32)
    arr[0, 0, 0], arr[1, 1, 1] = lo, hi
    with pytest.raises(ValueError, match=r"float image array has values in \[.*\]; expected \[0, 1\]"):
        load_image(arr)


def test_float_arrays_in_range():
    for dtype in (np.float16, np.float32, np.float64):
        assert np.array_equal(np.asarray(load_image((CAT / 255).astype(dtype))), CAT)
    assert np.asarray(load_image(np.ones((16, 16), np.float64))).min() == 255


def test_bgr_and_bgra_arrays():
    bgr = np.ascontiguousarray(CAT[..., ::-1])
    assert np.array_equal(np.asarray(load_image(bgr, bgr=True)), CAT)
    assert not np.array_equal(np.asarray(load_image(bgr)), CAT)
    bgra = np.dstack([bgr, np.full(CAT.shape[:2], 255, np.uint8)])
    assert torch.equal(preprocess(bgra, bgr=True), preprocess(CAT))


def test_bgr_only_for_arrays(cat_png):
    with pytest.raises(ValueError, match="bgr=True only applies to numpy arrays"):
        load_image(cat_png, bgr=True)


def test_channels_first_hint():
    with pytest.raises(ValueError, match=r"channels-first.*transpose\(1, 2, 0\)"):
        load_image(np.zeros((3, 32, 48), np.uint8))


def test_unsupported_type():
    with pytest.raises(TypeError, match="cannot load an image from Tensor"):
        load_image(torch.zeros(3, 16, 16))


# --- sizes and names ---------------------------------------------------------------------

def test_resize_false_rejects_non_multiple():
    with pytest.raises(ValueError, match=r"image is 225x224 px .*not a multiple of the patch size 16; "
                                         r"pass resize=True or crop to 224x224"):
        make_transform(resize=False)(Image.new("RGB", (224, 225)))
    with pytest.raises(ValueError, match=r"image is 300x451 px .*crop to 288x448"):
        preprocess(CAT, resize=False)
    with pytest.raises(ValueError, match=r"patch size 14; pass resize=True or crop to 294x448"):
        preprocess(CAT, resize=False, patch_size=14)
    assert preprocess(CAT[:288, :448], resize=False).shape == (1, 3, 288, 448)


@pytest.mark.parametrize("size", [(224, 230), (0, 224), (224,), (224, 224, 3), (224.0, 224)])
def test_bad_exact_size(size):
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        make_transform(size=size)


@pytest.mark.parametrize("size", [0, -16, 224.5, True, "224"])
def test_bad_shorter_side(size):
    with pytest.raises(ValueError, match="size must be a positive int"):
        make_transform(size=size)


def test_patch_size_14():
    h, w = patch_multiple_size(300, 451, 224, patch_size=14)
    assert (h, w) == (224, 336) and h % 14 == 0 and w % 14 == 0
    assert preprocess(CAT, size=518, patch_size=14).shape == (1, 3, 518, 784)


def test_weights_names():
    for name in ("lvd", "LVD", "lvd1689m", "LVD1689M", "lvd-1689m"):
        assert get_normalization(name).mean == (0.485, 0.456, 0.406)
    for name in ("sat", "SAT", "sat493m", "SAT-493M"):
        assert get_normalization(name).std == (0.213, 0.156, 0.143)
    with pytest.raises(ValueError, match=r"unknown weights 'web'; valid names are 'lvd', 'sat', 'lvd1689m', 'sat493m'"):
        preprocess(CAT, weights="web")


def test_batches():
    with pytest.raises(ValueError, match=r"different sizes \[\(224, 224\), \(224, 336\)\]"):
        preprocess([CAT, skdata.astronaut()])
    with pytest.raises(ValueError, match="empty list"):
        preprocess([])
    b = preprocess((CAT, skdata.astronaut()), size=(224, 224), device="cpu")
    assert b.shape == (2, 3, 224, 224) and b.device.type == "cpu" and b.dtype == torch.float32


def test_normalisation_exact():
    const = np.full((32, 64, 3), 128, np.uint8)
    for name in ("lvd", "sat"):
        n = get_normalization(name)
        want = (128 / 255 - torch.tensor(n.mean)) / torch.tensor(n.std)
        x = preprocess(const, weights=name, size=48)[0]                      # [3, 48, 96]
        assert x.shape == (3, 48, 96)
        assert (x - want[:, None, None]).abs().max().item() < 1e-6
