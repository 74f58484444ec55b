"""Weights: the embedded default model's file (scsam-phantom.pt), and the official checkpoints by name
(`registry.py`: URL, size, sha256 and their sources; `fetch.py`: the verified download into the cache)."""
