"""backbones_jax.convert.restore_on_one_device: the one Orbax restore behind search and predict."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from backbones_jax.convert import CheckpointFormatError, restore_on_one_device


def test_sharded_state_restores_on_one_device_with_its_values(tmp_path):
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  w = np.arange(16, dtype=np.float32).reshape(4, 4)
  tree = {"params": {"w": jax.device_put(w, NamedSharding(mesh, P("data"))), "b": np.float32(3.0)}, "step": 7}
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(tmp_path / "state", tree)
  ckptr.wait_until_finished()
  out = restore_on_one_device(tmp_path / "state")
  assert out["params"]["w"].sharding.device_set == {jax.local_devices()[0]}
  np.testing.assert_array_equal(np.asarray(out["params"]["w"]), w)
  assert float(out["params"]["b"]) == 3.0 and int(out["step"]) == 7


def test_missing_or_damaged_state_names_the_directory(tmp_path):
  with pytest.raises(CheckpointFormatError, match=str(tmp_path / "nope")):
    restore_on_one_device(tmp_path / "nope")
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "_METADATA").write_text("{not json")
  with pytest.raises(CheckpointFormatError, match="cannot restore the checkpoint"):
    restore_on_one_device(bad)
