"""One process of the 2-process read test: python shard_worker.py DATA_DIR OUT.json COORD NPROC PID."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":
  data_dir, out, coord, nproc, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
  from train import parallel
  parallel.initialize_distributed(coord, nproc, pid)
  import jax
  import jax.numpy as jnp
  import numpy as np

  from train import data_pipeline
  source = data_pipeline.open_source(data_dir, "lcdh_cross_modal/synthetic", "database")
  n = len(source)
  ds = data_pipeline.make_dataset(source, transform=lambda rec, pos: np.int64(rec["index"]), seed=11,
                                  num_epochs=2)  # process index/count from jax
  per = n // jax.process_count()
  items = [int(x) for x in ds]
  epochs = [items[:per], items[per:]]
  # the two shards assemble into one global array whose sum both processes see
  mesh = parallel.make_mesh()
  local = np.asarray(epochs[0][: per - per % jax.local_device_count()], np.float32)
  total = jax.jit(jnp.sum)(parallel.shard_batch(local, mesh))
  Path(out).write_text(json.dumps({"epochs": epochs, "nproc": jax.process_count(), "ndev": jax.device_count(),
                                   "index": jax.process_index(), "global_sum": float(total)}))
