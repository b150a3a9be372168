"""Image reading, the dataset layouts (on fake trees) and the offline demo set."""
import warnings

import numpy as np
import pytest
from PIL import Image

from derefl_jax import data, demo_data, metrics


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rand_u8(rng, h, w, c=3):
    return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


# ---------------------------------------------------------------- read_image

def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = _rand_u8(rng, 9, 13)
    _save(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(data.read_image(tmp_path / "rgb.png"), rgb)

    gray = _rand_u8(rng, 9, 13, 0)
    _save(tmp_path / "gray.png", gray)
    g = data.read_image(tmp_path / "gray.png")
    assert g.shape == (9, 13, 3) and np.all(g == gray[..., None])

    rgba = _rand_u8(rng, 9, 13, 4)
    _save(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(data.read_image(tmp_path / "rgba.png"), rgba[..., :3])

    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.gif")
    assert data.read_image(tmp_path / "pal.gif").shape == (9, 13, 3)

    g16 = (rng.random((9, 13)) * 65535).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    f = data.read_image(tmp_path / "g16.png")
    assert f.dtype == np.float32 and f.shape == (9, 13, 3)
    np.testing.assert_allclose(f[..., 0], g16 / 65535.0, atol=1e-6)  # all 16 bits kept

    import tifffile
    rgb16 = (rng.random((9, 13, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16)
    np.testing.assert_allclose(data.read_image(tmp_path / "rgb16.tif"), rgb16 / 65535.0, atol=1e-6)

    lf = data.load_image(tmp_path / "rgb.png")
    assert lf.dtype == np.float32 and np.allclose(lf, rgb / 255.0)


def test_read_image_exif_orientation(tmp_path):
    rgb = _rand_u8(np.random.default_rng(1), 10, 20)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = data.read_image(tmp_path / "rot.jpg")
    assert out.shape == (20, 10, 3)


def test_read_image_errors(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a PNG")
    with pytest.raises(data.ImageReadError, match="not a readable image"):
        data.read_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError):
        data.read_image(tmp_path / "missing.png")
    with pytest.raises(data.ImageReadError, match="directory"):
        data.read_image(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError):
        data.read_image(tmp_path / "empty.jpg")


# ---------------------------------------------------------------- layouts

@pytest.fixture()
def fake_root(tmp_path):
    """A miniature data root in the DSRNet layout (odd sizes, one unpaired file)."""
    rng = np.random.default_rng(2)
    root = tmp_path / "data"
    sets = {"test/real20_420": False, "test/SIR2/SolidObjectDataset": True, "test/SIR2/PostcardDataset": True,
            "test/SIR2/WildSceneDataset": True, "test/Nature": False, "train/real": False, "train/nature": False}
    for rel, has_r in sets.items():
        for i in range(2):
            h, w = 70 + 3 * i, 97
            _save(root / rel / "blended" / f"{i}.png", _rand_u8(rng, h, w))
            _save(root / rel / "transmission_layer" / f"{i}.png", _rand_u8(rng, h, w))
            if has_r:
                _save(root / rel / "reflection_layer" / f"{i}.png", _rand_u8(rng, h, w))
    # a blended file without ground truth, and a GT with another extension
    _save(root / "test/real20_420/blended/orphan.png", _rand_u8(rng, 40, 40))
    _save(root / "test/Nature/blended/x.jpg", _rand_u8(rng, 40, 50))
    _save(root / "test/Nature/transmission_layer/x.png", _rand_u8(rng, 40, 50))
    for i in range(4):
        _save(root / "train/VOCdevkit/VOC2012/PNGImages" / f"{i:04d}.png", _rand_u8(rng, 50 + i, 60))
    return root


def test_test_sets_layout(fake_root):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sets = data.test_sets(fake_root)
    assert any("without a ground-truth partner" in str(x.message) for x in w)
    assert sorted(sets) == sorted(data.TEST_SETS)
    assert len(sets["real20"]) == 2 and "orphan.png" not in sets["real20"].names
    assert len(sets["nature"]) == 3  # x.jpg paired with x.png by stem
    assert sets["objects"].reflection is not None and sets["real20"].reflection is None
    pair = sets["objects"].load(1)
    assert pair["input"].shape == (64, 96, 3) and pair["T"].shape == (64, 96, 3) and pair["R"].shape == (64, 96, 3)
    # the papers' protocol: bicubic resize of the 8-bit files to multiples of 32
    raw = np.asarray(Image.open(sets["objects"].transmission[1]))
    np.testing.assert_allclose(pair["T"], metrics.resize_to_multiple(raw) / 255.0, atol=1e-7)
    full = sets["objects"].load(1, multiple=None)
    assert full["input"].shape == (73, 97, 3)
    assert pair["input"].dtype == np.float32 and 0 <= pair["input"].min() and pair["input"].max() <= 1


def test_missing_layout_errors(tmp_path, fake_root):
    with pytest.raises(FileNotFoundError, match="expected layout"):
        data.test_sets(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="transmission_layer"):
        (tmp_path / "half/blended").mkdir(parents=True)
        data.paired_folder(tmp_path / "half")
    (tmp_path / "half/transmission_layer").mkdir()
    _save(tmp_path / "half/blended/a.png", _rand_u8(np.random.default_rng(0), 8, 8))
    with pytest.raises(FileNotFoundError, match="No image pairs"):
        data.paired_folder(tmp_path / "half")
    with pytest.raises(ValueError, match="Unknown test set"):
        data.test_sets(fake_root, ["real20", "sir3"])
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        data.voc_images(tmp_path)


def test_train_sampler_pure_function_of_step(fake_root):
    voc = data.voc_images(fake_root)
    assert len(voc) == 4
    real = [data.paired_folder(fake_root / "train/real", name="real"),
            data.paired_folder(fake_root / "train/nature", name="nature")]
    s = data.TrainSampler(voc=voc, real=real, weights={"synthetic": 0.6, "real": 0.2, "nature": 0.2},
                          batch_size=6, crop=32, seed=3, num_workers=2)
    b = s.batch(5)
    assert b["t"].shape == (6, 32, 32, 3) and b["t"].dtype == np.float32
    assert b["synthetic"].dtype == bool
    again = data.TrainSampler(voc=voc, real=real, batch_size=6, crop=32, seed=3, num_workers=1,
                              weights={"synthetic": 0.6, "real": 0.2, "nature": 0.2}).batch(5)
    for k in b:
        np.testing.assert_array_equal(b[k], again[k])
    assert not np.array_equal(s.batch(6)["t"], b["t"])
    mix = np.concatenate([s.batch(i)["synthetic"] for i in range(20)])
    assert 0.35 < mix.mean() < 0.85  # ~0.6 synthetic
    real_rows = ~b["synthetic"]
    np.testing.assert_allclose(b["r"][real_rows], np.clip(b["blended"][real_rows] - b["t"][real_rows], 0, 1))
    with pytest.raises(FileNotFoundError, match="no training data"):
        data.TrainSampler(batch_size=2)


# ---------------------------------------------------------------- demo set

def test_demo_pool_and_sampler():
    photos = demo_data.available_photos(demo_data.EVAL_PHOTOS + ("astronaut",))
    assert "astronaut" in photos and "coffee" in photos  # bundled with scikit-image, offline
    assert not set(demo_data.TRAIN_PHOTOS) & set(demo_data.EVAL_PHOTOS)  # held out by source photo
    pool = demo_data.make_pool("eval", num_images=12, crop=32, seed=0)
    assert pool.shape == (12, 32, 32, 3) and pool.dtype == np.float32
    assert 0 <= pool.min() and pool.max() <= 1 and pool.std() > 0.05
    np.testing.assert_array_equal(pool, demo_data.make_pool("eval", num_images=12, crop=32, seed=0))
    s = demo_data.DemoSampler(batch_size=4, crop=32, pool_size=16, seed=1)
    b = s.batch(3)
    assert b["t"].shape == (4, 32, 32, 3) and b["synthetic"].all()
    np.testing.assert_array_equal(b["r"], s.batch(3)["r"])
    with pytest.raises(ValueError, match="split"):
        demo_data.make_pool("test", num_images=2)
