"""Engines that serve models: mlx-lm, vllm-mlx and any OpenAI-compatible server.

Each backend is a variant of one interface (base.py), registered by name and
loaded lazily so a missing optional package never breaks an import.
"""
