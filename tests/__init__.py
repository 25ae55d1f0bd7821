"""mlx-lama test suite."""
