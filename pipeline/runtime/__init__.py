"""Runners: sequential and on Ray actors, the Ray connection, Ray Train. The only folder whose
modules import ray (tests/test_layout.py checks it)."""
