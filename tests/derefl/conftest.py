"""The shortened `python -m train.derefl` demo run (`demo_run`) shared by the end-to-end, predict,
notebook and bad-input tests is defined in tests/conftest.py, so that one run serves all of them."""
