"""Projects, without engines: whose servers a plan touches, which repos a prune or rm
keeps and why, the project record, and the pulled ledger's migration from 0.1.0."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mlx_lama import paths
from mlx_lama.orchestrator import claims, projects, pulled, runrecords
from mlx_lama.orchestrator.plan import PlanOptions, make_plan
from mlx_lama.orchestrator.state import (
    Claims,
    DesiredState,
    ObservedState,
    RunningServer,
)
from tests.fixtures.gateway import wait_for
from tests.test_plan import CHAT, CHAT_SERVER, cached, running
from tests.test_runrecords import SLEEP, procs, record_for, spawn

__all__ = ["procs"]  # the fixture, shared with test_runrecords

A = "/work/a/mlxlama.toml"
B = "/work/b/mlxlama.toml"


def owned(server: RunningServer, project: str, *, orphan: bool = False) -> RunningServer:
    return replace(server, project=project, orphan=orphan)


# -- the plan touches only its own project's servers


def test_a_server_of_another_project_is_neither_stopped_nor_restarted() -> None:
    theirs = owned(running(replace(CHAT_SERVER, name="tiny-a", model="tiny-a")), A)
    stale = owned(running(CHAT_SERVER, spec_hash="old"), A)  # B wants "chat" too
    plan = make_plan(
        DesiredState((CHAT,), (replace(CHAT_SERVER, serve="on-demand"),), project=B),
        ObservedState(repos=(cached("org/chat"),), servers=(theirs, stale)),
    )
    assert plan.render() == "No changes.\n"


def test_the_same_plan_stops_its_own_server_that_left_the_manifest() -> None:
    mine = owned(running(replace(CHAT_SERVER, name="tiny-b", model="tiny-b")), B)
    plan = make_plan(DesiredState(project=B), ObservedState(servers=(mine,)))
    assert [(a.kind.value, a.target) for a in plan.actions] == [("stop", "server:tiny-b")]


def test_an_always_server_whose_name_another_project_runs_is_not_started_and_says_why() -> None:
    theirs = owned(running(CHAT_SERVER), A)
    plan = make_plan(
        DesiredState((CHAT,), (CHAT_SERVER,), project=B),
        ObservedState(repos=(cached("org/chat"),), servers=(theirs,)),
    )
    assert plan.empty
    assert plan.notes == (
        f"server:chat is not started: the project of {A} runs a server of that name "
        "(pid 4242); rename the model in one of the two manifests",
    )
    assert plan.render().startswith("No changes.\nnote: server:chat is not started")


def test_an_orphan_is_mentioned_and_stopped_only_with_remove_orphans() -> None:
    orphan = owned(running(CHAT_SERVER), A, orphan=True)
    legacy = owned(running(replace(CHAT_SERVER, name="old", model="old"), "dead"), "", orphan=True)
    observed = ObservedState(servers=(legacy, orphan))
    desired = DesiredState(project=B)

    plan = make_plan(desired, observed)
    assert plan.empty
    assert plan.notes == (
        "server:old (pid 4242, exited) is an orphan: it records no manifest; "
        "`mlx-lama apply --remove-orphans` clears its record",
        f"server:chat (pid 4242) is an orphan: its project's manifest {A} is gone; "
        "`mlx-lama apply --remove-orphans` stops it",
    )
    assert json.loads(plan.to_json())["notes"] == list(plan.notes)

    plan = make_plan(desired, observed, PlanOptions(remove_orphans=True))
    assert [(a.kind.value, a.target, a.reason) for a in plan.actions] == [
        ("stop", "server:chat", f"orphan: its project's manifest {A} is gone"),
        (
            "stop",
            "server:old",
            "orphan: it records no manifest; clearing the record of its exited process",
        ),
    ]


def test_removing_an_orphan_frees_its_name_for_this_projects_server() -> None:
    orphan = owned(running(CHAT_SERVER), A, orphan=True)
    desired = DesiredState((CHAT,), (CHAT_SERVER,), project=B)
    observed = ObservedState(repos=(cached("org/chat"),), servers=(orphan,))
    assert make_plan(desired, observed).empty  # the name is taken: B starts nothing
    plan = make_plan(desired, observed, PlanOptions(remove_orphans=True))
    assert [(a.kind.value, a.target) for a in plan.actions] == [
        ("stop", "server:chat"),
        ("start", "server:chat"),
    ]


# -- prune removes only what this project pulled and nothing claims


def test_prune_keeps_what_another_project_pulled_or_claims_and_says_so() -> None:
    repos = tuple(cached(r) for r in ("org/claimed", "org/legacy", "org/mine", "org/theirs"))
    observed = ObservedState(
        repos=repos,
        pulled=frozenset({"org/mine", "org/theirs", "org/claimed", "org/legacy"}),
        theirs=frozenset({"org/theirs"}),
        claims=Claims({"org/claimed": f"project a ({A}) names it"}),
    )
    plan = make_plan(DesiredState(project=B), observed, PlanOptions(prune=True))
    assert [a.target for a in plan.actions] == ["model:org/legacy", "model:org/mine"]
    assert plan.notes == (
        f"kept model:org/claimed: project a ({A}) names it",
        "kept model:org/theirs: another project pulled it",
    )


def test_a_project_that_cannot_be_read_keeps_everything() -> None:
    observed = ObservedState(
        repos=(cached("org/mine"),),
        pulled=frozenset({"org/mine"}),
        claims=Claims(everything="project a's mlxlama.toml cannot be read"),
    )
    plan = make_plan(DesiredState(project=B), observed, PlanOptions(prune=True))
    assert plan.empty
    assert plan.notes == ("kept model:org/mine: project a's mlxlama.toml cannot be read",)


# -- claims: read from the files of every known project


def _manifest(folder: Path, *repos: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlxlama.toml"
    body = "".join(f'\n[models.m{i}]\nrepo = "{r}"\n' for i, r in enumerate(repos))
    path.write_text("version = 1\n" + body)
    return path


def _lock(manifest: Path, *repos: str) -> None:
    body = "".join(f'\n[models.l{i}]\nrepo = "{r}"\n' for i, r in enumerate(repos))
    manifest.with_name("mlxlama.lock").write_text("version = 1\n" + body)


def test_claims_come_from_known_manifests_other_locks_and_other_servers(tmp_path: Path) -> None:
    a = _manifest(tmp_path / "a", "org/a-manifest")
    _lock(a, "org/a-lock")
    b = _manifest(tmp_path / "b", "org/b-manifest")
    _lock(b, "org/b-lock")  # B's own lock: apply rewrites it, so it claims nothing
    gone = _manifest(tmp_path / "gone", "org/gone")
    for path in (a, b, gone):
        projects.remember(path)
    gone.unlink()
    server = owned(running(CHAT_SERVER), projects.project_key(a))  # runs from org/chat
    own_server = owned(
        running(replace(CHAT_SERVER, model_path=Path("/c/models--org--own/snapshots/x"))),
        projects.project_key(b),
    )

    found = claims.gather(projects.project_key(b), [server, own_server])
    everything = {"org/a-manifest", "org/a-lock", "org/b-manifest", "org/chat", "org/b-lock"}
    kept = {r: found.why_kept(r, everything) for r in sorted(everything)}
    assert kept == {
        "org/a-lock": f"project a ({a}) names it",
        "org/a-manifest": f"project a ({a}) names it",
        "org/b-lock": None,
        "org/b-manifest": f"project b ({b}) names it",
        "org/chat": "server chat of project a (pid 4242) uses it",
    }
    assert found.why_kept("org/own", {"org/own"}) is None  # only its own server uses it
    assert found.why_kept("org/x", set()) == (
        "mlx-lama did not download org/x; another tool may use it"
    )
    # The project whose manifest is gone was forgotten on the next record.
    projects.remember(a)
    recorded = json.loads(projects.projects_file().read_text())["projects"]
    assert sorted(recorded) == sorted(projects.project_key(p) for p in (a, b))


def test_a_project_whose_manifest_cannot_be_parsed_claims_everything(tmp_path: Path) -> None:
    a = _manifest(tmp_path / "a", "org/a")
    projects.remember(a)
    a.write_text('version = 1\n[models.x\nrepo = "org/a"\n')  # half-written
    b = _manifest(tmp_path / "b")
    found = claims.gather(projects.project_key(b), [])
    why = found.why_kept("org/anything", {"org/anything"})
    assert why is not None
    assert why.startswith("project a's mlxlama.toml cannot be read (")
    assert why.endswith("so nothing it may name is deleted; fix that file and try again")


def test_a_damaged_record_of_projects_deletes_nothing_and_is_left_for_a_person(
    tmp_path: Path,
) -> None:
    projects.projects_file().parent.mkdir(parents=True, exist_ok=True)
    projects.projects_file().write_text("{not json")
    b = _manifest(tmp_path / "b")
    projects.remember(b)  # refuses to overwrite what it cannot read
    assert projects.projects_file().read_text() == "{not json"
    why = claims.gather(projects.project_key(b), []).why_kept("org/x", {"org/x"})
    assert why is not None and why.startswith("the record of projects is damaged: ")


def test_project_names_are_folder_names_and_global(tmp_path: Path) -> None:
    link = tmp_path / "link"
    (tmp_path / "real").mkdir()
    link.symlink_to(tmp_path / "real")
    assert projects.project_key(link / "mlxlama.toml") == str(tmp_path / "real" / "mlxlama.toml")
    assert projects.project_name(projects.project_key(link / "mlxlama.toml")) == "real"
    assert projects.project_name(projects.project_key(paths.global_manifest())) == "global"
    assert projects.project_name("") == "-"


# -- the pulled ledger: written by 0.1.0 without projects, read and extended


def test_a_ledger_from_0_1_0_is_read_and_attributed_without_loss_or_doubling() -> None:
    legacy = {"repos": {"org/old": {"first_pulled": 100, "last_pulled": 200}}}
    pulled.pulled_file().parent.mkdir(parents=True, exist_ok=True)
    pulled.pulled_file().write_text(json.dumps(legacy))
    owners, warnings = pulled.read_pulled_checked()
    assert (owners, warnings) == ({"org/old": ()}, ())

    pulled.record_pulled("org/old", project=A, now=300)
    pulled.record_pulled("org/old", project=A, now=400)
    pulled.record_pulled("org/old", project=B, now=500)
    pulled.record_pulled("org/new", project=B, now=600)
    data = json.loads(pulled.pulled_file().read_text())["repos"]
    assert data == {
        "org/new": {"first_pulled": 600, "last_pulled": 600, "projects": [B]},
        "org/old": {"first_pulled": 100, "last_pulled": 500, "projects": [A, B]},
    }
    assert pulled.read_pulled_checked()[0] == {"org/new": (B,), "org/old": (A, B)}


@pytest.mark.parametrize("legacy", [True, False])
def test_observe_says_which_pulled_repos_belong_only_to_other_projects(legacy: bool) -> None:
    from mlx_lama.orchestrator.observe import observe

    pulled.record_pulled("org/a", project=A)
    pulled.record_pulled("org/both", project=A)
    pulled.record_pulled("org/both", project=B)
    pulled.record_pulled("org/nobody" if legacy else "org/b", project="" if legacy else B)
    observed = observe(project=B)
    assert observed.theirs == {"org/a"}
    assert observed.pulled == {"org/a", "org/both", "org/nobody" if legacy else "org/b"}


# -- run records written by 0.1.0: attributed to the manifest they recorded


def test_a_run_record_from_0_1_0_is_attributed_to_the_manifest_it_names(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    from mlx_lama.orchestrator.observe import observe_servers

    a = _manifest(tmp_path / "a")
    proc = spawn(procs, SLEEP)
    wait_for(lambda: len(psutil.Process(proc.pid).cmdline()) > 2, 10, "the process to start")
    record = record_for(proc)
    as_written = json.loads(runrecords.record_to_json(record))
    # 0.1.0 wrote the manifest path as the command was given it, maybe not resolved.
    as_written["manifest"] = str(tmp_path / "a" / ".." / "a" / "mlxlama.toml")
    runrecords.record_path(record.name).parent.mkdir(parents=True, exist_ok=True)
    runrecords.record_path(record.name).write_text(json.dumps(as_written))

    [server] = observe_servers()
    assert (server.name, server.record.pid) == (record.name, proc.pid)
    assert (server.project, server.orphan) == (projects.project_key(a), False)
    plan = make_plan(
        DesiredState(project=projects.project_key(a)), ObservedState(servers=(server,))
    )
    assert [(x.kind.value, x.target) for x in plan.actions] == [("stop", "server:tiny:latest")]
    b_plan = make_plan(DesiredState(project=B), ObservedState(servers=(server,)))
    assert b_plan.render() == "No changes.\n"  # B's plan neither stops nor mentions it
    assert runrecords.read_records()[0] == [replace(record, manifest=as_written["manifest"])]
