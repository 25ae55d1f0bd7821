"""mlx-lama: the Ollama experience on MLX, driven by a declarative manifest."""

__version__ = "0.1.0"
