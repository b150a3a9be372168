"""colab/mvrec.ipynb runs top to bottom (nbclient) with tiny settings from MVREC_NOTEBOOK."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "colab" / "mvrec.ipynb"


def test_notebook_imports_only_the_library():
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "def " not in src and "class " not in src  # nothing re-implemented in the notebook
  assert "from mvrec_jax import" in src and "from train import mvrec" in src


def test_notebook_executes_tiny(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  official = next((p for p in (REPO.parent / "shared/fixtures/mvrec_official", REPO / "shared/fixtures/mvrec_official")
                   if p.is_dir()), REPO.parent / "shared/fixtures/mvrec_official")
  settings = {"tiny": True, "workdir": str(tmp_path / "nb"), "official_dir": str(official)}
  nb = nbformat.read(NOTEBOOK, as_version=4)
  monkeypatch.setenv("MVREC_NOTEBOOK", json.dumps(settings))
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  out = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "fused predictions" in out and "Zip-Adapter-F loss" in out and "Zip-Adapter-F" in out
  if (official / "transistor_support.pt").is_file():
    assert "[0.7619 0.7143 0.7143 0.9524 0.8095]" in out
  results = json.loads((tmp_path / "nb" / "demo_run" / "results.json").read_text())
  assert list(results["categories"]) == ["weave"]
  # section 5: the classifier for new images wrote one prediction per query row
  assert "accuracy on the labelled queries" in out
  preds = (tmp_path / "nb" / "classify" / "predictions.csv").read_text().splitlines()
  assert len(preds) == 1 + results["categories"]["weave"]["num_query"]
  assert (tmp_path / "nb" / "classify" / "confusion.png").is_file()
