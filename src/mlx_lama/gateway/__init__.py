"""The Ollama- and OpenAI-compatible HTTP gateway that ``mlx-lama serve`` runs.

Shape translation lives in pure functions; only the proxy talks to backends.
"""
