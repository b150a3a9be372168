"""A shortened `python -m train.derefl` demo run shared by the end-to-end and predict tests."""
import pytest

# Shortened demo: same model (tiny preset), data, losses and evaluation as the default
# demo, fewer steps and smaller pools. Batch 8 = one image per fake CPU device.
SHORT_DEMO = [
    "--config.num_steps=80", "--config.data.batch_size=8", "--config.data.crop=32", "--config.data.pool_size=128",
    "--config.data.eval_pairs=16", "--config.eval.batch_size=1", "--config.log_every_steps=40",
    "--config.checkpoint.every_steps=80", "--config.optim.warmup_steps=10",
]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    from train import derefl

    workdir = tmp_path_factory.mktemp("derefl_demo")
    summary = derefl.main(SHORT_DEMO + [f"--workdir={workdir}"])
    return workdir, summary
