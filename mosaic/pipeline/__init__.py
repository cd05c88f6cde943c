"""The write side: the orchestrator (``orchestrator.run_pipeline``) and one module per stage.

collect -> decode (thumbnail, embed) -> reduce -> grid -> render -> index,
metadata, hotspots. Stage functions take arrays in and return new ones; only
the orchestrator writes the bundle.
"""
