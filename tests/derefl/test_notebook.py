"""colab/derefl.ipynb runs top to bottom (nbclient) with tiny settings from DEREFL_NOTEBOOK.

To stay within the test budget the notebook's training cell gets a copy of the shared short
demo run (`demo_run`, trained once per test session) as its workdir, with that run's config: the
notebook checks the workdir as the command line does (`train.cli.prepare_workdir`), resumes the
finished checkpoint without a training step, evaluates on 8 pairs instead of 16 (a setting that
may change on resume) and goes on to prediction.
"""
import json
import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "colab" / "derefl.ipynb"


def test_notebook_imports_only_the_library():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "def " not in src  # no model / loss / metric code re-implemented in the notebook
    assert "from derefl_jax import" in src


def test_notebook_executes(demo_run, derefl_demo_argv, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    workdir, summary = demo_run
    nb_workdir = tmp_path / "nb_run"
    shutil.copytree(workdir, nb_workdir)
    demo_config = dict(a[len("--config."):].split("=", 1) for a in derefl_demo_argv)
    settings = {"steps": summary["steps"], "batch_size": 8, "crop": 32, "eval_pairs": 8, "flops_size": 64,
                "flops_presets": ["tiny"], "workdir": str(nb_workdir),
                "config": {k: v for k, v in demo_config.items() if k != "data.eval_pairs"}}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("DEREFL_NOTEBOOK", json.dumps(settings))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "PSNR input" in outputs and "trainable params" in outputs
    # the notebook resumed the demo run (the only change: eval pairs) without training it further
    assert f"resuming {nb_workdir} with changed settings: data.eval_pairs 16 -> 8" in outputs
    assert (nb_workdir / "metrics.jsonl").read_text() == (workdir / "metrics.jsonl").read_text()
    results = json.loads((nb_workdir / "results.json").read_text())
    assert results["test_sets"]["demo"]["num_images"] == 8 and results["steps"] == summary["steps"]


def test_notebook_refuses_a_run_with_another_config(demo_run, tmp_path, monkeypatch):
    """The notebook's defaults (300 steps at crop 48) on the demo run's workdir: refused, nothing written."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    workdir, _ = demo_run
    nb_workdir = tmp_path / "nb_run"
    shutil.copytree(workdir, nb_workdir)
    before = {p: p.read_bytes() for p in sorted(nb_workdir.rglob("*")) if p.is_file()}
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:2] + [c for c in nb.cells if "prepare_workdir" in c.source]  # settings, then the run
    monkeypatch.setenv("DEREFL_NOTEBOOK", json.dumps({"workdir": str(nb_workdir)}))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as e:
        client.execute()
    assert "ConfigError" in str(e.value) and "data.crop (saved 32, now 48)" in str(e.value)
    assert {p: p.read_bytes() for p in sorted(nb_workdir.rglob("*")) if p.is_file()} == before
