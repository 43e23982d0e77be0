"""Training tests use the phantom fixtures of tests/conftest.py."""
