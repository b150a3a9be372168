"""Single image reflection removal via inter-layer complementarity (Huang et al., arXiv 2505.12641v1 -- v1 only:
v2 and later of that arXiv number are a different paper, a dual-prior interaction transformer)."""
