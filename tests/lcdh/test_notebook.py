"""colab/lcdh.ipynb runs top to bottom (tiny settings) through nbclient."""
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "colab" / "lcdh.ipynb"


@pytest.mark.slow
def test_notebook_runs_with_tiny_settings(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("LCDH_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("LCDH_NOTEBOOK_WORKDIR", str(tmp_path / "wd"))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")  # faster compiles
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "student I->T" in text
  for name in ("results.json", "results_table.png", "map_per_round.png", "pr_curves.png"):
    assert (tmp_path / "wd" / name).exists(), name
