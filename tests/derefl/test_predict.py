"""derefl_jax.predict: padding/tiling geometry (stub model) and the CLI on a trained demo checkpoint."""
import numpy as np
import pytest
from PIL import Image

from derefl_jax import predict


class _PointwiseModel:
    """A stand-in network, pixel-wise: T = 0.8 x, R = 0.2 x (so tiling must change nothing)."""

    def apply(self, variables, x):
        return {"T": 0.8 * x, "R": 0.2 * x}, {}

    def __repr__(self):
        return "PointwiseModel"


class _ShapeCheckModel(_PointwiseModel):
    seen = []

    def apply(self, variables, x):
        self.seen.append(tuple(x.shape))
        return super().apply(variables, x)

    def __repr__(self):
        return "ShapeCheckModel"


def test_pad_to_multiple_and_tiles():
    x = np.random.default_rng(0).random((45, 70, 3)).astype(np.float32)
    p, hw = predict.pad_to_multiple(x, 32)
    assert p.shape == (64, 96, 3) and hw == (45, 70)
    np.testing.assert_array_equal(p[:45, :70], x)
    np.testing.assert_array_equal(p[45, :70], x[43, :70])  # reflect padding (edge not repeated)
    tiny, _ = predict.pad_to_multiple(x[:5, :3], 32, 32)  # smaller than the padding: still works
    assert tiny.shape == (32, 32, 3)
    assert predict.tile_slices(100, 64, 16) == [0, 36]
    assert predict.tile_slices(64, 64, 16) == [0]
    starts = predict.tile_slices(1000, 512, 64)
    assert starts[-1] == 1000 - 512 and all(b - a <= 512 - 64 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (130, 97)])
def test_whole_tiled_and_downscaled_agree_for_pointwise_model(shape):
    x = np.random.default_rng(1).random(shape + (3,)).astype(np.float32)
    whole = predict.Predictor(_PointwiseModel(), {}, max_pixels=10**9)
    tiled = predict.Predictor(_PointwiseModel(), {}, max_pixels=100, tile=64, overlap=16, batch=3)
    t1, r1 = whole(x)
    t2, r2 = tiled(x)
    assert t1.shape == x.shape and t2.shape == x.shape
    np.testing.assert_allclose(t1, 0.8 * x, atol=1e-6)
    np.testing.assert_allclose(r1, 0.2 * x, atol=1e-6)
    np.testing.assert_allclose(t2, t1, atol=1e-6)  # feathered tiles of a pixel-wise net == whole image
    np.testing.assert_allclose(r2, r1, atol=1e-6)
    down = predict.Predictor(_PointwiseModel(), {}, max_pixels=400, large="downscale")
    t3, r3 = down(x)
    assert t3.shape == x.shape and np.abs(t3 - 0.8 * x).mean() < 0.08


def test_shapes_fed_to_the_network():
    m = _ShapeCheckModel()
    p = predict.Predictor(m, {}, max_pixels=10**9)
    m.seen.clear()
    p(np.zeros((33, 70, 3), np.float32))
    assert m.seen == [(1, 64, 96, 3)]  # padded to multiples of 32
    p = predict.Predictor(m, {}, max_pixels=1000, tile=64, overlap=16, batch=2)
    m.seen.clear()
    p(np.zeros((100, 70, 3), np.float32))
    assert set(m.seen) == {(2, 64, 64, 3)}  # fixed tile batch
    # a folder of mixed sizes: one compiled shape per size bucket, not one per size
    p = predict.Predictor(m, {}, max_pixels=10**9, bucket=128)
    m.seen.clear()
    for hw in ((33, 70), (100, 60), (128, 128), (33, 70), (129, 20)):
        t, r = p(np.zeros(hw + (3,), np.float32))
        assert t.shape == hw + (3,)
    assert m.seen == [(1, 128, 128, 3), (1, 256, 128, 3)]  # traced (= compiled) once per bucket
    assert p.shapes_seen == {(1, 128, 128, 3), (1, 256, 128, 3)}
    with pytest.raises(ValueError, match="multiple of 32"):
        predict.Predictor(m, {}, bucket=100)
    with pytest.raises(ValueError, match="multiple of 32"):
        predict.Predictor(m, {}, tile=50)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predict.Predictor(m, {})(np.zeros((8, 8)))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict.find_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        predict.find_checkpoint(tmp_path)
    assert predict.main(["--checkpoint", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2


def _write_inputs(folder):
    from skimage import data as skdata

    folder.mkdir()
    rgb = skdata.coffee()[100:161, 200:251]  # 61 x 51, odd
    Image.fromarray(rgb).save(folder / "odd.jpg", quality=95)
    Image.fromarray(skdata.camera()[:50, :63]).save(folder / "gray.png")  # grayscale
    Image.fromarray(skdata.logo()[:45, :33]).save(folder / "logo.png")  # RGBA
    g16 = (np.random.default_rng(0).random((40, 40)) * 65535).astype(np.uint16)
    Image.fromarray(g16).save(folder / "deep.png")  # 16-bit grayscale
    (folder / "notes.png").write_text("not an image")  # bad file with an image extension
    (folder / "readme.txt").write_text("also not an image")
    return {"odd": (61, 51), "gray": (50, 63), "logo": (45, 33), "deep": (40, 40)}


def test_predict_cli_on_demo_checkpoint(demo_run, tmp_path, capsys):
    workdir, _ = demo_run
    sizes = _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    rc = predict.main(["--checkpoint", str(workdir), "--input", str(tmp_path / "in"), "--output", str(out),
                       "--bucket", "32"])
    assert rc == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "images/s" in captured.out
    assert "notes.png" in err and "readme.txt" in err  # skipped with a warning
    for stem, (h, w) in sizes.items():
        for layer in ("T", "R"):
            img = np.asarray(Image.open(out / f"{stem}_{layer}.png"))
            assert img.shape == (h, w, 3) and img.dtype == np.uint8, (stem, layer)
    assert not (out / "notes_T.png").exists()
    # The PNGs are the network's output: model.apply on the image reflect-padded to 32 px, clipped,
    # within one 8-bit level (rounding), for T and R.
    import json

    from derefl_jax import models
    from derefl_jax.data import read_image

    spec = json.loads((workdir / "model.json").read_text())
    model = models.build_model(spec["preset"], **spec["fields"])
    params = predict.load_predictor(workdir).params
    src = read_image(tmp_path / "in" / "odd.jpg", keep_uint8=False)
    x, _ = predict.pad_to_multiple(src, 32, 32)
    # make_forward_layers is jax.jit of model.apply returning its raw outputs; same shape -> no new compile
    ref = predict.make_forward_layers(model)(params, x[None])
    for layer in ("T", "R"):
        want = np.clip(np.asarray(ref[layer])[0, :61, :51], 0, 1) * 255.0
        got = np.asarray(Image.open(out / f"odd_{layer}.png")).astype(np.float64)
        assert np.abs(got - want).max() <= 1.0, layer

    # a single bad file is an error, a single good one works
    rc = predict.main(["--checkpoint", str(workdir), "--input", str(tmp_path / "in" / "notes.png"),
                       "--output", str(tmp_path / "o2")])
    assert rc == 2 and "not a readable image" in capsys.readouterr().err
    rc = predict.main(["--checkpoint", str(workdir / "checkpoints"), "--input", str(tmp_path / "in" / "logo.png"),
                       "--output", str(tmp_path / "o3")])
    assert rc == 0 and (tmp_path / "o3" / "logo_T.png").exists()
