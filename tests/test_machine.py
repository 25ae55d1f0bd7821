"""What the machine can hold (``machine.py``): the default memory budget, and on a Mac the
GPU's wired limit, read from ``sysctl`` (a stand-in program here, this being Linux)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mlx_lama import machine
from mlx_lama.gateway.core import Gateway
from mlx_lama.orchestrator.scheduler import Scheduler
from mlx_lama.orchestrator.slots import SchedulerConfig
from mlx_lama.schema import parse_manifest
from mlx_lama.schema.lockfile import Lock
from mlx_lama.units import Size
from tests.fixtures.cli import cli

GIB = 2**30


def test_the_default_budget_is_three_quarters_and_no_more_than_the_gpu_may_wire() -> None:
    assert machine.default_budget(32 * GIB, None) == 24 * GIB
    assert machine.default_budget(32 * GIB, 21 * GIB) == 21 * GIB  # macOS's default limit
    assert machine.default_budget(32 * GIB, 30 * GIB) == 24 * GIB  # raised by the user


def test_there_is_no_wired_limit_off_a_mac() -> None:
    assert sys.platform != "darwin"
    assert machine.gpu_wired_limit() is None


def fake_sysctl(folder: Path, answer: str) -> None:
    program = folder / "sysctl"
    program.write_text(f'#!/bin/sh\n[ "$2" = iogpu.wired_limit_mb ] && echo {answer}\n')
    program.chmod(0o755)


def test_on_a_mac_the_users_wired_limit_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    fake_sysctl(tmp_path, "20480")
    assert machine.gpu_wired_limit() == 20 * GIB
    # 0 is macOS's own default: MLX's recommended working set says what it is (on
    # this Linux build MLX reports none, so there is no limit to apply)
    fake_sysctl(tmp_path, "0")
    assert machine.gpu_wired_limit() is None


def gateway(total: int, wired: int | None, budget: str | None) -> Gateway:
    text = "version = 1\n" + (f'[server]\nmemory_budget = "{budget}"\n' if budget else "")
    manifest = parse_manifest(text)
    return Gateway(
        Path("/project/mlxlama.toml"),
        manifest,
        Lock(()),
        cache_dir=Path("/cache"),
        scheduler=Scheduler(SchedulerConfig()),
        total_memory=total,
        wired_limit=wired,
    )


def test_the_gateways_budget_is_the_default_one_unless_the_manifest_says() -> None:
    on_a_mac = gateway(32 * GIB, 21 * GIB, None)
    assert on_a_mac.scheduler.config.memory_budget == 21 * GIB
    assert on_a_mac.memory_budget(Size(bytes=28 * GIB)) == 28 * GIB  # the manifest's own
    assert gateway(32 * GIB, 21 * GIB, "50%").scheduler.config.memory_budget == 16 * GIB
    assert gateway(32 * GIB, None, None).scheduler.config.memory_budget == 24 * GIB


def test_plan_and_show_say_when_a_model_can_never_fit(tmp_path: Path, tiny_model: Path) -> None:
    """Before a start fails on it: a model whose estimate (weights, KV cache bound,
    margin) is over the memory budget is named by ``plan``, and ``show`` says so."""
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        'version = 1\n\n[server]\nmemory_budget = "1GB"\n\n'
        f'[models."roomy"]\npath = "{tiny_model}"\nkv_cache = "2GB"\n\n'
        f'[models."small"]\npath = "{tiny_model}"\n',
        encoding="utf-8",
    )
    code, out, err = cli("plan", "-f", str(manifest))
    assert code == 0, err
    [note] = [line for line in out.splitlines() if "cannot start" in line]
    assert note.startswith("note: model 'roomy' needs about 2.")
    assert "KV caches up to 2.1 GB" in note and "memory_budget 1.1 GB" in note
    assert "lower the model's kv_cache" in note
    code, out, err = cli("show", "roomy", "-f", str(manifest))
    assert code == 0, err
    assert "memory_budget 1.1 GB: more than it: it cannot start" in out
    code, out, err = cli("show", "small", "-f", str(manifest))
    assert "memory_budget 1.1 GB: fits" in out
