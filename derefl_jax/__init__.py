"""Single image reflection removal via inter-layer complementarity (arXiv 2505.12641)."""
