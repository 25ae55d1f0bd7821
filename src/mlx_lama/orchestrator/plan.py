"""Compare desired and observed state and decide what to do: :func:`make_plan`.

Called by ``plan``/``apply`` (and later the daemon). Only decides; ``apply``
carries the plan out without second-guessing it. Pure: no I/O, no logging.
Rendering is deterministic and colourless (colour is the CLI's job).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from mlx_lama.humanize import size_str
from mlx_lama.orchestrator.state import (
    CachedRepo,
    DesiredState,
    ModelSpec,
    ObservedState,
    RunningServer,
    ServerSpec,
    files_present,
)


class ActionKind(Enum):
    """What an action does; the order here is the order ``apply`` runs them in."""

    STOP = "stop"
    REMOVE = "remove"
    PULL = "pull"
    RESTART = "restart"
    START = "start"

    @property
    def symbol(self) -> str:
        return {"stop": "-", "remove": "-", "pull": "+", "restart": "~", "start": "+"}[self.value]

    @property
    def destructive(self) -> bool:
        """Stops a running server or deletes files: asks for confirmation."""
        return self in (ActionKind.STOP, ActionKind.REMOVE)


_ORDER = {kind: index for index, kind in enumerate(ActionKind)}


@dataclass(frozen=True, slots=True)
class Action:
    """One change. ``model`` is the manifest name (pull, start, restart), ``repo``
    the repo id (pull, remove), ``server`` the server name (start, stop, restart)."""

    kind: ActionKind
    target: str
    reason: str
    model: str | None = None
    repo: str | None = None
    server: str | None = None

    def sort_key(self) -> tuple[int, str]:
        return (_ORDER[self.kind], self.target)


@dataclass(frozen=True, slots=True)
class PlanOptions:
    prune: bool = False  # remove repos this project pulled that nothing declares any more
    remove_orphans: bool = False  # stop servers whose project's manifest is gone


@dataclass(frozen=True, slots=True)
class Plan:
    """The actions, in execution order, and notes on what the plan leaves alone
    that a person would expect it to touch (orphans, kept models, taken names)."""

    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def of(self, kind: ActionKind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is kind)

    def summary(self) -> str:
        """``1 to pull, 2 to start`` (in execution order), or ``No changes.``"""
        if self.empty:
            return "No changes."
        counts = Counter(a.kind for a in self.actions)
        parts = [f"{counts[kind]} to {kind.value}" for kind in ActionKind if counts[kind]]
        return "Plan: " + ", ".join(parts) + "."

    def render(self) -> str:
        """One line per action, then the summary, then the notes. Deterministic; no colour."""
        notes = [f"note: {note}" for note in self.notes]
        if self.empty:
            return "\n".join(["No changes.", *notes]) + "\n"
        width = max(len(a.target) for a in self.actions)
        lines = [
            f"  {a.kind.symbol} {a.kind.value:<8} {a.target:<{width}}  {a.reason}"
            for a in self.actions
        ]
        return "\n".join([*lines, "", self.summary(), *notes]) + "\n"

    def as_dict(self) -> dict[str, object]:
        """The plan as ``plan --json`` prints it (and the daemon's ``/health`` shows it)."""
        rows = [
            {"action": a.kind.value, "target": a.target, "reason": a.reason} for a in self.actions
        ]
        return {"changes": rows, "summary": self.summary(), "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def make_plan(
    desired: DesiredState, observed: ObservedState, options: PlanOptions = PlanOptions()
) -> Plan:
    """Every action that makes ``observed`` match ``desired``, touching only what
    belongs to ``desired.project``: other projects' servers are never stopped, and
    only repos this project pulled and nothing claims are pruned. Pure."""
    notes: list[str] = list(desired.notes)
    actions = [
        *_model_actions(desired, observed, options, notes),
        *_server_actions(desired, observed, options, notes),
    ]
    return Plan(tuple(sorted(actions, key=Action.sort_key)), tuple(notes))


def _model_actions(
    desired: DesiredState, observed: ObservedState, options: PlanOptions, notes: list[str]
) -> list[Action]:
    actions = []
    for model in desired.models:
        if model.repo is None:
            continue
        reason = _pull_reason(model, observed.repo(model.repo))
        if reason:
            actions.append(
                Action(ActionKind.PULL, model.target, reason, model=model.name, repo=model.repo)
            )
    if options.prune:
        wanted = {m.repo for m in desired.models}
        for repo in observed.repos:
            if repo.repo_id in wanted or repo.repo_id not in observed.pulled:
                continue
            kept = (
                "another project pulled it"
                if repo.repo_id in observed.theirs
                else observed.claims.why_kept(repo.repo_id, observed.pulled)
            )
            if kept:
                notes.append(f"kept model:{repo.repo_id}: {kept}")
            else:
                actions.append(
                    Action(
                        ActionKind.REMOVE,
                        f"model:{repo.repo_id}",
                        f"no longer in the manifest ({size_str(repo.size_on_disk)})",
                        repo=repo.repo_id,
                    )
                )
    return actions


def _pull_reason(model: ModelSpec, cached: CachedRepo | None) -> str | None:
    if model.commit is None:
        return "not in mlxlama.lock yet" if cached else "not in the cache"
    short = model.commit[:12]
    if cached is None:
        return f"not in the cache (locked at {short})"
    revision = cached.revision(model.commit)
    if revision is None:
        return f"locked commit {short} not in the cache"
    if not files_present(revision.files, model.files) or cached.incomplete:
        return f"download of {short} incomplete"
    return None


def _server_actions(
    desired: DesiredState, observed: ObservedState, options: PlanOptions, notes: list[str]
) -> list[Action]:
    wanted = {s.name: s for s in desired.servers}
    known_models = {m.name for m in desired.models}
    externals = {e.name for e in desired.externals}
    mine = [s for s in observed.servers if s.project == desired.project]
    actions = _orphan_actions(observed, desired.project, options, notes)
    for running in mine:
        spec = wanted.get(running.name)
        if spec is None:
            if running.name in known_models:
                reason = 'serve = "never" in the manifest'
            elif running.name in externals:
                reason = "now served by an external server"
            else:
                reason = "no longer in the manifest"
            if not running.alive:
                reason += "; clearing the record of its exited process"
            actions.append(_server_action(ActionKind.STOP, running.name, reason))
        else:
            action = _reconcile_server(spec, running)
            if action:
                actions.append(action)
    for spec in desired.servers:
        if spec.serve != "always" or any(s.name == spec.name for s in mine):
            continue
        taken = next(
            (
                s
                for s in observed.servers
                if s.name == spec.name and s.alive and not (s.orphan and options.remove_orphans)
            ),
            None,
        )
        if taken is None:
            actions.append(
                _server_action(ActionKind.START, spec.name, 'serve = "always"', model=spec.model)
            )
        else:
            notes.append(
                f"server:{spec.name} is not started: the project of {taken.project or '(none)'} "
                f"runs a server of that name (pid {taken.record.pid}); rename the model in "
                "one of the two manifests"
            )
    return actions


def _orphan_actions(
    observed: ObservedState, project: str, options: PlanOptions, notes: list[str]
) -> list[Action]:
    """Stop the servers whose project's manifest is gone (with ``remove_orphans``),
    or say that they are there. Other projects' servers are never touched."""
    actions = []
    for running in observed.servers:
        if running.project == project or not running.orphan:
            continue
        whose = (
            f"its project's manifest {running.project} is gone"
            if running.project
            else "it records no manifest"
        )
        if options.remove_orphans:
            reason = f"orphan: {whose}"
            if not running.alive:
                reason += "; clearing the record of its exited process"
            actions.append(_server_action(ActionKind.STOP, running.name, reason))
        else:
            exited = "" if running.alive else ", exited"
            notes.append(
                f"server:{running.name} (pid {running.record.pid}{exited}) is an orphan: "
                f"{whose}; `mlx-lama apply --remove-orphans` "
                + ("stops it" if running.alive else "clears its record")
            )
    return actions


def _reconcile_server(spec: ServerSpec, running: RunningServer) -> Action | None:
    record = running.record
    if running.state in ("dead", "foreign"):
        if spec.serve != "always":
            return None  # on-demand: started again when a request needs it
        why = (
            f"process {record.pid} exited"
            if running.state == "dead"
            else f"pid {record.pid} now belongs to another program"
        )
        return _server_action(ActionKind.START, spec.name, why, model=spec.model)
    if spec.model_path is None:
        return None  # its model is not resolved yet; decided after the pull
    if record.spec_hash != spec.spec_hash:
        changed = changed_fields(record.spec, spec.launch_fields())
        what = ", ".join(changed) if changed else "launch spec"
        return _server_action(ActionKind.RESTART, spec.name, f"changed: {what}", model=spec.model)
    if running.state == "unresponsive" and spec.serve == "always":
        return _server_action(
            ActionKind.RESTART,
            spec.name,
            f"not answering on port {record.port}",
            model=spec.model,
        )
    return None


def changed_fields(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """Names of launch fields that differ, sorted; inside a table present on both
    sides, its keys (``distribution.hosts``). Pure."""
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{key}.{inner}" for inner in changed_fields(old, new)]
        else:
            changed.append(key)
    return changed


def _server_action(kind: ActionKind, name: str, reason: str, model: str | None = None) -> Action:
    return Action(kind, f"server:{name}", reason, model=model, server=name)
