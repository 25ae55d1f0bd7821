"""What ``mlx-lama top`` draws: a pure function of the daemon's stats and the view.

:func:`render` makes the whole screen from ``GET /mlx-lama/stats`` and the user's
:class:`View` (the selected server, the full-log view, the log lines the loop
read): the gateway line, the machine, a row per server that fits 80 columns (an
EST column more where the terminal has room), the latest requests, the log tail
and the keys. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType

KEYS = "↑/↓ select  l log  r restart  s stop  b backend  q quit"
LOG_KEYS = "l/Esc back  q quit"


@dataclass(slots=True)
class View:
    """What the user chose: the selected server, the full-log view, the last action's word."""

    selected: int = 0
    full_log: bool = False
    status: str = ""  # "stopping tiny…", or an action's result
    error: str = ""  # the daemon did not answer the last fetch
    width: int = 80
    height: int = 24
    log_lines: list[str] = field(default_factory=list)


def render(stats: Mapping[str, Any], view: View) -> RenderableType:
    """The whole screen for ``stats``. Pure: no I/O (log lines come in ``view``)."""
    from rich.console import Group
    from rich.text import Text

    servers: list[dict[str, Any]] = list(stats.get("servers") or [])
    header = _header(stats, view)
    footer = Text(view.status or (LOG_KEYS if view.full_log else KEYS), style="reverse")
    footer.truncate(view.width, overflow="ellipsis")
    if view.full_log:
        name = servers[view.selected]["name"] if servers else "-"
        room = max(1, view.height - 4)  # header (2), title, footer
        body = Text("\n".join(view.log_lines[-room:]) or "(the log is empty)", no_wrap=True)
        return Group(header, Text(f"log of {name}", style="bold"), body, footer)
    table = _servers(servers, view)
    recent_room = max(0, min(6, view.height - 9 - len(servers)))
    recent = _recent(list(stats.get("recent") or [])[:recent_room])
    log_room = max(0, view.height - 6 - len(servers) - recent_room - 1)
    parts: list[RenderableType] = [header, table]
    if recent_room:
        parts.append(recent)
    if servers and log_room > 1:
        name = servers[min(view.selected, len(servers) - 1)]["name"]
        tail = view.log_lines[-(log_room - 1) :]
        parts.append(Text(f"log of {name}", style="bold"))
        parts.append(
            Text("\n".join(tail) or "(no log lines yet)", no_wrap=True, overflow="ellipsis")
        )
    parts.append(footer)
    return Group(*parts)


def _header(stats: Mapping[str, Any], view: View) -> RenderableType:
    from rich.text import Text

    gateway = stats.get("gateway") or {}
    system = stats.get("system") or {}
    line = Text("mlx-lama top", style="bold")
    line.append(f"  {gateway.get('url', '?')}  up {_duration(gateway.get('uptime_seconds'))}")
    line.append(f"  {_number(gateway.get('requests_per_second'), '{:.1f}')} req/s")
    line.append(f"  {gateway.get('requests', 0)} requests")
    second = Text(
        f"CPU {_number(system.get('cpu_percent'), '{:.0f}')}% of {system.get('cpus', '?')}"
        f"  memory {_bytes(system.get('memory_used'))} / {_bytes(system.get('memory_total'))}"
    )
    if view.error:
        second.append(f"  {view.error}", style="bold red")
    for text in (line, second):
        text.truncate(view.width, overflow="ellipsis")
    from rich.console import Group

    return Group(line, second)


STATE_WORDS = {"not downloaded": "missing", "restarting": "restart"}  # 8 columns at most
# Title and width of every column after NAME: 57 columns and the 10 spaces between
# them leave 13 for the name in an 80-column terminal.
COLUMNS = (
    ("BACKEND", 8), ("STATE", 8), ("PORT", 5), ("MEM", 5), ("TOK/S", 5), ("TTFT ms", 7),
    ("REQS", 5), ("ERR", 3), ("TOKENS", 6), ("KEEP", 5),
)  # fmt: skip
# Where the terminal has room for it (the non-interactive screen has), EST follows MEM:
# what the memory budget counts the server as, beside what it holds.
ESTIMATE = ("EST", 5)
WIDE = 86


def columns(width: int) -> tuple[tuple[str, int], ...]:
    """The columns after NAME in a terminal ``width`` columns wide."""
    if width < WIDE:
        return COLUMNS
    at = [title for title, _ in COLUMNS].index("MEM") + 1
    return (*COLUMNS[:at], ESTIMATE, *COLUMNS[at:])


def _servers(servers: Sequence[Mapping[str, Any]], view: View) -> RenderableType:
    """One row per server; fits 80 columns (only a long name is cut short)."""
    from rich.table import Table

    shown = columns(view.width)
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    rest = sum(width + 1 for _, width in shown)
    name_width = max(
        6, min(24, view.width - rest, max((len(str(r.get("name"))) for r in servers), default=4))
    )
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", width=name_width)
    for title, width in shown:
        table.add_column(
            title,
            justify="left" if title in ("BACKEND", "STATE") else "right",
            no_wrap=True,
            overflow="ellipsis",
            width=width,
        )
    for index, row in enumerate(servers):
        state = str(row.get("state", ""))
        keep = row.get("keep_alive_left")
        memory = [_bytes(row.get("memory_bytes"))]
        if ESTIMATE in shown:
            memory.append(_bytes(row.get("estimate_bytes")))
        table.add_row(
            str(row.get("name", "?")),
            str(row.get("backend", "")),
            STATE_WORDS.get(state, state),
            str(row.get("port") or "-"),
            *memory,
            _number(row.get("tokens_per_second"), "{:.0f}"),
            f"{_ms(row.get('ttft_p50'))}/{_ms(row.get('ttft_p95'))}",
            str(row.get("requests", 0)),
            str(row.get("errors", 0)),
            _count(int(row.get("prompt_tokens", 0)) + int(row.get("completion_tokens", 0))),
            _duration(keep) if keep is not None else "-",
            style="reverse" if index == view.selected else None,
        )
    if not servers:
        table.add_row("(no models)", *[""] * len(shown))
    return table


def _recent(requests: Sequence[Mapping[str, Any]]) -> RenderableType:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    for title in ("TIME", "MODEL", "ENDPOINT", "STATUS", "TOKENS", "TOOK"):
        table.add_column(title, no_wrap=True, overflow="ellipsis")
    for entry in requests:
        at = entry.get("at")
        when = (
            datetime.fromtimestamp(at).strftime("%H:%M:%S") if isinstance(at, int | float) else "?"
        )
        tokens = int(entry.get("prompt_tokens", 0)) + int(entry.get("completion_tokens", 0))
        table.add_row(
            when,
            str(entry.get("model") or "-"),
            str(entry.get("endpoint", "")),
            str(entry.get("status", "")),
            str(tokens) if tokens else "-",
            _seconds(entry.get("seconds")),
        )
    return table


def _number(value: object, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, int | float) else "-"


def _ms(value: object) -> str:
    return f"{value * 1000:.0f}" if isinstance(value, int | float) else "-"


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def _duration(value: object) -> str:
    from mlx_lama.humanize import duration_str

    return duration_str(value) if isinstance(value, int | float) else "-"


def _bytes(value: object) -> str:
    """A size in 5 columns, in decimal units as ``ps`` and ``list`` print them: ``5.3G``."""
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1000:
            return f"{size:.0f}{unit}" if unit == "B" or size >= 10 else f"{size:.1f}{unit}"
        size /= 1000
    return f"{size:.1f}T"


def _count(value: int) -> str:
    if value < 10_000:
        return str(value)
    if value < 10_000_000:
        return f"{value / 1000:.0f}k"
    return f"{value / 1_000_000:.0f}M"
