"""The chat's ``/show`` command: the texts it prints about the loaded model.

Everything here is read from the :class:`~mlx_lama.cli._answer.Target`, the
session's :class:`~mlx_lama.cli._answer.Settings` and the model's files
(``config.json``, the tokenizer's chat template); nothing is sent to the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from mlx_lama.cli._answer import Settings, Target
from mlx_lama.orchestrator.facts import chat_template, read_config
from mlx_lama.schema.manifest import ModelEntry, Parameters

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""


def show(target: Target, settings: Settings, what: str) -> str:
    """The text of ``/show WHAT``; its help for anything else."""
    entry = effective_entry(target)
    system = settings.system or entry.system
    if what == "info":
        return show_info(target, settings)
    if what == "parameters":
        return show_parameters(entry, settings.options)
    if what == "system":
        return f"{system}\n" if system else "No system message was specified for this model.\n"
    if what == "template":
        template = entry.template or chat_template(target.folder)
        return f"{template}\n" if template else "No prompt template was specified for this model.\n"
    if what == "modelfile":
        from mlx_lama.schema.modelfile_render import render_modelfile

        return render_modelfile(target.name, entry, system=system)
    if what == "license":
        license_text = "\n".join(getattr(entry, "license", None) or [])
        return f"{license_text}\n" if license_text else "No license was specified for this model.\n"
    return SHOW_HELP


def effective_entry(target: Target) -> ModelEntry:
    """The entry with ``[defaults]`` parameters under its own, as requests get them."""
    parameters = Parameters.from_data(dict(target.parameters))
    return dataclasses.replace(target.entry, parameters=parameters)


def show_parameters(entry: ModelEntry, options: Mapping[str, object]) -> str:
    """``/show parameters``: the manifest's, then the session's. Pure."""
    from mlx_lama.schema.modelfile_render import parameter_lines

    model = parameter_lines(entry)
    user = parameter_lines(ModelEntry(parameters=Parameters.from_data(dict(options))))
    if not model and not user:
        return "No parameters were specified for this model.\n"
    text = ""
    if model:
        text += "Model defined parameters:\n" + "".join(_row(line) for line in model)
    if user:
        text += "User defined parameters:\n" + "".join(_row(line) for line in user)
    return text


def _row(line: str) -> str:
    name, _, value = line.partition(" ")
    return f"{name:<30} {value}\n"


def show_info(target: Target, settings: Settings) -> str:
    """``/show info``: where the model comes from and runs, its architecture, its
    parameters and system prompt."""
    entry = effective_entry(target)
    config = read_config(target.folder)
    quantization = config.get("quantization")
    rows = [
        ("name", target.name),
        ("source", entry.repo or entry.path or entry.url or ""),
        ("architecture", str(config.get("model_type", ""))),
        ("context length", str(config.get("max_position_embeddings", ""))),
        ("embedding length", str(config.get("hidden_size", ""))),
        (
            "quantization",
            f"{quantization.get('bits')}-bit" if isinstance(quantization, dict) else "",
        ),
        ("runs", target.where),
    ]
    text = "  Model\n" + "".join(f"    {k:<18}{v}\n" for k, v in rows if v)
    from mlx_lama.schema.modelfile_render import parameter_lines

    params = parameter_lines(entry) + [
        f"{k} {v}" for k, v in settings.options.items() if not isinstance(v, list)
    ]
    if params:
        text += "\n  Parameters\n" + "".join(
            f"    {n:<18}{v}\n" for n, _, v in (p.partition(" ") for p in params)
        )
    system = settings.system or entry.system
    if system:
        text += "\n  System\n" + "".join(f"    {line}\n" for line in system.splitlines())
    license_lines = getattr(entry, "license", None) or []
    if license_lines:
        first = str(license_lines[0]).splitlines()[0] if str(license_lines[0]) else ""
        text += f"\n  License\n    {first}\n"
    return text + "\n"
