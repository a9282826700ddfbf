"""Benchmarks against PyTorch, numpy and faiss references: run as `python -m benchmarks.<name>` from the repository root."""
