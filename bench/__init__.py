"""mlx-lama's benchmarks: ``uv run --all-extras python -m bench`` regenerates docs/benchmarks.md."""
