"""``mlx-lama config``: the user settings in effect, and where each comes from.

The settings are read by :mod:`mlx_lama.config`; this only renders them.
"""

from __future__ import annotations

import json

import typer

from mlx_lama.cli._app import app
from mlx_lama.cli._common import JsonFlag, format_table, handles_errors

# What a setting does, shown beside it: it matters only where the manifest is silent.
_EFFECT = {
    "default_backend": "backend of models whose entry and [defaults] name none",
    "default_port": "first port tried for model servers without a port",
}
_UNSET_PORT = "any free port"


@app.command("config")
@handles_errors
def config(as_json: JsonFlag = False) -> None:
    """Show the user settings in effect and where each comes from.

    Settings live in $MLX_LAMA_HOME/config.yaml (default ~/.mlx-lama/config.yaml),
    as `default_backend: vllm-mlx` and `default_port: 8100` lines;
    MLX_LAMA_DEFAULT_BACKEND and MLX_LAMA_DEFAULT_PORT override the file. They
    apply only where the manifest says nothing: a model's own backend and
    [defaults] backend win, and a model's port wins. A setting that is not set
    keeps the built-in behaviour (mlx-lm; any free port). An invalid value is an
    error naming its file and line (exit 2).
    """
    from mlx_lama import paths
    from mlx_lama.config import SETTING_KEYS, load_settings

    settings = load_settings()
    rows = []
    for key in SETTING_KEYS:
        value: object = getattr(settings, key)
        if key == "default_port" and settings.user_port is None:
            value = None
        rows.append(
            {
                "setting": key,
                "value": value,
                "source": settings.source_of(key),
                "effect": _EFFECT[key],
            }
        )
    if as_json:
        typer.echo(json.dumps({"file": str(paths.config_file()), "settings": rows}, indent=2))
        return
    table = [
        (
            str(row["setting"]),
            _UNSET_PORT if row["value"] is None else str(row["value"]),
            str(row["source"]),
            str(row["effect"]),
        )
        for row in rows
    ]
    typer.echo(format_table(("SETTING", "VALUE", "SOURCE", "USED FOR"), table))
