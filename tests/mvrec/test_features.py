"""Features: one sharded jitted call for all views, padding, disk cache, official buffers without torch."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvrec_jax import data as D
from mvrec_jax import features as F
from mvrec_jax import synthetic as S
from mvrec_jax import views as V

REPO = Path(__file__).resolve().parents[2]
FIXTURES = next((p for p in (REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures") if p.is_dir()),
                REPO.parent / "shared" / "fixtures")
OFFICIAL = FIXTURES / "mvrec_official"

TRACES = {"n": 0}


def fake_encode(params, images, alphas):
  """Mean-pool RGB + alpha, then a linear map: (M, H, W, 3), (M, H, W, 1) -> (M, D)."""
  TRACES["n"] += 1
  pooled = jnp.concatenate([images.mean((1, 2)), alphas.mean((1, 2))], -1)
  return pooled @ params["w"]


def fake_ref(params, images, alphas):
  pooled = np.concatenate([images.mean((2, 3)), alphas.mean((2, 3))], -1)
  return pooled @ np.asarray(params["w"])


@pytest.fixture(scope="module")
def params():
  return {"w": np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)}


def test_encode_views_one_sharded_call_with_padding(params):
  assert jax.device_count() == 8  # tests/conftest.py
  rng = np.random.default_rng(1)
  imgs = rng.normal(size=(5, 3, 4, 4, 3)).astype(np.float32)
  alps = rng.normal(size=(5, 3, 4, 4, 1)).astype(np.float32)
  enc = F.make_view_encoder(fake_encode, F.make_mesh())
  TRACES["n"] = 0
  out = F.encode_views(enc, params, imgs, alps)
  assert out.shape == (5, 3, 6) and out.dtype == np.float32
  np.testing.assert_allclose(out, fake_ref(params, imgs, alps), rtol=1e-5, atol=1e-5)
  out2 = F.encode_views(enc, params, imgs[:3], alps[:3])  # 3 -> padded to 8 again: no retrace
  np.testing.assert_allclose(out2, out[:3], rtol=1e-6)
  assert TRACES["n"] == 1
  raw = enc(params, np.zeros((8, 3, 4, 4, 3), np.float32), np.zeros((8, 3, 4, 4, 1), np.float32))
  assert raw.sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(raw.sharding.device_set) == 8
  with pytest.raises(ValueError, match=r"\(N, V, H, W, 1\)"):
    F.encode_views(enc, params, imgs, alps[..., 0])


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
  root = tmp_path_factory.mktemp("syn_feat")
  S.make_dataset(root, categories=("disc",), image_size=64, n_train=2, n_valid=1, seed=3)
  return D.load_category(root, "disc", data_root=root)


def test_extract_features_matches_reference_and_caches(tmp_path, syn, params):
  kw = dict(dataset="syn-disc", backbone="fake", split="train", crop_sizes=(16, 24, 32), resize=(16,),
            batch_size=3, cache_dir=tmp_path, progress=False)
  TRACES["n"] = 0
  fs = F.extract_features(fake_encode, params, syn.train, **kw)
  assert fs.features.shape == (10, 27, 6) and not fs.from_cache
  np.testing.assert_array_equal(fs.labels, [i.label for i in syn.train])
  rendered = [D.instance_inputs(i, crop_sizes=(16, 24, 32), resize=(16,)) for i in syn.train]
  ref = fake_ref(params, np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]))
  np.testing.assert_allclose(fs.features, ref, rtol=1e-5, atol=1e-5)
  assert TRACES["n"] == 1  # batch 3 -> 8 per call, two calls, one compile
  files = sorted(p.name for p in tmp_path.iterdir())
  assert len(files) == 2 and files[0].startswith("syn-disc__fake__train__") and files[1].endswith(".npz")
  TRACES["n"] = 0
  again = F.extract_features(fake_encode, params, syn.train, **kw)
  assert again.from_cache and TRACES["n"] == 0
  np.testing.assert_array_equal(again.features, fs.features)
  # another view recipe is another cache entry
  other = F.extract_features(fake_encode, params, syn.train, **{**kw, "crop_sizes": (16,), "resize": (16,)}, method="none")
  assert not other.from_cache and other.features.shape == (10, 1, 6)
  assert len(list(tmp_path.glob("*.npz"))) == 2
  with pytest.raises(ValueError, match="No instances"):
    F.extract_features(fake_encode, params, [], dataset="x", backbone="y")


def test_cache_never_serves_features_of_another_view_preprocessing(tmp_path, syn, params, monkeypatch):
  kw = dict(dataset="syn-disc", backbone="fake", split="train", crop_sizes=(16,), resize=(16,), method="none",
            cache_dir=tmp_path, progress=False)
  key = F.cache_key(syn.train, dataset="syn-disc", backbone="fake", method="none", crop_sizes=(16,), resize=(16,),
                    split="train")
  assert key["views"] == V.PREPROCESSING_VERSION and key["version"] == F.CACHE_VERSION
  # an entry written by older views (poisoned features, same everything else) must not be served
  monkeypatch.setattr(V, "PREPROCESSING_VERSION", "official-1")
  old = F.extract_features(fake_encode, params, syn.train, **kw)
  npz = next(tmp_path.glob("*.npz"))
  np.savez(npz, features=np.full_like(old.features, 7.0), labels=old.labels)
  assert F.extract_features(fake_encode, params, syn.train, **kw).from_cache  # same version: served
  monkeypatch.undo()
  new = F.extract_features(fake_encode, params, syn.train, **kw)
  assert not new.from_cache and not np.any(new.features == 7.0)
  assert len(list(tmp_path.glob("*.npz"))) == 2  # another file name: the old entry is left alone


def test_tiny_alpha_clip_features(syn):
  alpha_clip = pytest.importorskip("backbones_jax.alpha_clip")
  spec = alpha_clip.tiny_alpha_clip_spec()
  model = alpha_clip.AlphaCLIP(spec)
  # random weights straight from the parameter shapes (quicker than init on a busy CPU); unlike
  # init_alpha_clip, conv1_alpha is non-zero here so that the alpha maps matter
  rng = np.random.default_rng(0)
  p = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype),
                   alpha_clip.abstract_params(model))
  size = spec.vision.image_size
  kw = dict(dataset="syn", backbone="tiny", crop_sizes=(16, 24, 32), resize=(size,), progress=False)
  fs = F.extract_features(F.alpha_clip_encode_fn(model), p, syn.valid, **kw)
  assert fs.features.shape == (len(syn.valid), 27, spec.projection_dim)
  x, a = D.instance_inputs(syn.valid[1], crop_sizes=(16, 24, 32), resize=(size,))
  ref = np.asarray(alpha_clip.encode_image(model, p, x, a))
  np.testing.assert_allclose(fs.features[1], ref, rtol=1e-4, atol=1e-5)
  no_alpha = np.asarray(alpha_clip.encode_image(model, p, x, np.zeros_like(a)))
  assert np.abs(no_alpha - ref).max() > 1e-3  # the region map changes the feature
  # the same model gives the same encode_fn, hence the same compiled encoder
  assert F.alpha_clip_encode_fn(model) is F.alpha_clip_encode_fn(model)
  assert F.make_view_encoder(F.alpha_clip_encode_fn(model)) is F.make_view_encoder(F.alpha_clip_encode_fn(model))


def test_official_fixture_without_torch():
  if not (OFFICIAL / "transistor_support.pt").is_file():
    pytest.skip("official MVREC feature fixture not present")
  torch = pytest.importorskip("torch")
  sup = F.load_official_features(OFFICIAL / "transistor_support.pt")
  assert sup.features.shape == (22, 27, 3, 768) and sup.features.dtype == np.float16
  ref = torch.load(OFFICIAL / "transistor_support.pt", map_location="cpu", weights_only=False)
  np.testing.assert_array_equal(sup.labels, [int(r["y"]) for r in ref])
  np.testing.assert_array_equal(sup.features[7], ref[7]["mvrec"].numpy())
  q = F.load_official_features(OFFICIAL / "transistor_query.pt", cls_only=True)
  assert q.features.shape == (21, 27, 768)
  np.testing.assert_array_equal(q.labels, [0] * 6 + [1] * 5 + [2] * 5 + [3] * 5)
  s_path, q_path = F.find_official_buffers(OFFICIAL, "transistor")
  assert s_path.name == "transistor_support.pt" and q_path.name == "transistor_query.pt"
  assert F.official_categories(OFFICIAL) == ["transistor"]


def test_tiny_torch_saved_buffer(tmp_path):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(4, 27, 3, 8)).astype(np.float16)
  items = [{"y": torch.tensor(k % 2), "mvrec": torch.from_numpy(feats[k])} for k in range(4)]
  torch.save(items, tmp_path / "buf.pt")
  got = F.load_official_features(tmp_path / "buf.pt")
  np.testing.assert_array_equal(got.features, feats)
  assert got.features.dtype == np.float16
  np.testing.assert_array_equal(got.labels, [0, 1, 0, 1])
  np.testing.assert_array_equal(F.load_official_features(tmp_path / "buf.pt", cls_only=True).features, feats[:, :, 0])
  torch.save({"y": 1}, tmp_path / "bad.pt")
  with pytest.raises(ValueError, match="list of"):
    F.load_official_features(tmp_path / "bad.pt")
  torch.save([{"mvrec": torch.zeros(27, 3, 8)}], tmp_path / "noy.pt")
  with pytest.raises(ValueError, match="item 0 should be a dict with 'y' and 'mvrec'"):
    F.load_official_features(tmp_path / "noy.pt")
  (tmp_path / "junk.pt").write_bytes(b"not a torch file")
  with pytest.raises(ValueError, match="not a readable MVREC feature buffer"):
    F.load_official_features(tmp_path / "junk.pt")
  with pytest.raises(FileNotFoundError, match="buffer/mso"):
    F.load_official_features(tmp_path / "nope.pt")


def test_find_official_buffers_official_names(tmp_path):
  d = tmp_path / "buffer" / "mso" / "AlphaClip_ViT-L"
  d.mkdir(parents=True)
  for role in ("support", "query"):
    (d / f"14_mvtec_pill_{role}.pt").write_bytes(b"")
    (d / f"14_mvtec_bottle_data_{role}.pt").write_bytes(b"")
  (d / "14_mvtec_cable_data_support.pt").write_bytes(b"")
  s, q = F.find_official_buffers(tmp_path / "buffer", "pill")
  assert s.name == "14_mvtec_pill_support.pt" and q.name == "14_mvtec_pill_query.pt"
  assert F.official_categories(tmp_path / "buffer") == ["bottle", "pill"]
  with pytest.raises(FileNotFoundError, match="No query buffer for 'cable'"):
    F.find_official_buffers(d, "cable")


def test_features_from_prepared_tfds_records_equal_raw_and_share_the_cache(tmp_path, params):
  """load_image= from the prepared records: the same views and features, the same cache entries."""
  import sys
  sys.path.insert(0, str(REPO / "tests" / "data"))
  import fakes  # tests/data/fakes.py: two synthetic categories, one RGBA and one grayscale image
  from mvrec_jax import tfds_builder as tb
  raw = fakes.make_mvrec_raw(tmp_path / "raw")
  tb.prepare(raw, tmp_path / "prep", category="weave")
  ref = D.load_category(raw, "weave", data_root=raw)
  got = tb.load_prepared(tmp_path / "prep", "weave")
  load = tb.image_loader(tmp_path / "prep", "weave", got)
  assert {load(i).mode for i in got.train + got.valid} == {"RGB", "RGBA", "L"}
  vkw = dict(crop_sizes=(16, 24, 32), resize=(16,))
  for a, b in zip(ref.train + ref.valid, got.train + got.valid):  # every view, bit for bit
    for x, y in zip(D.instance_inputs(a, **vkw), F.instance_views(b, load_image=load, **vkw)):
      np.testing.assert_array_equal(x, y)
  kw = dict(dataset="weave", backbone="fake", batch_size=3, num_threads=3, progress=False, **vkw)
  for s in D.SPLITS:
    a = F.extract_features(fake_encode, params, ref.split(s), split=s, cache_dir=tmp_path / "raw_cache", **kw)
    b = F.extract_features(fake_encode, params, got.split(s), split=s, cache_dir=tmp_path / "rec_cache",
                           load_image=load, **kw)
    assert not a.from_cache and not b.from_cache and a.keys == b.keys
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.features, b.features)
    # the same key: the raw route's entry is served to the records' route (and would be refused otherwise)
    assert F.cache_key(ref.split(s), dataset="weave", backbone="fake", method="mso", split=s, **vkw) == F.cache_key(
        got.split(s), dataset="weave", backbone="fake", method="mso", split=s, **vkw)
    c = F.extract_features(fake_encode, params, got.split(s), split=s, cache_dir=tmp_path / "raw_cache",
                           load_image=load, **kw)
    assert c.from_cache
  assert sorted(p.name for p in (tmp_path / "raw_cache").iterdir()) == sorted(
      p.name for p in (tmp_path / "rec_cache").iterdir())
  # an instance that is not in the prepared records is refused, not rendered from another record
  other = D.load_category(raw, "disc", data_root=raw).train[0]
  with pytest.raises(KeyError, match="not"):
    load(other)
