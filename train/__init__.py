"""Entry points (`python -m train.<method>`), configs and the shared training machinery."""
