"""``python -m mlx_lama`` runs the CLI."""

from mlx_lama.cli import main

main()
