"""make_plan(): literal desired and observed states in, golden rendered plans out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mlx_lama.orchestrator.plan import ActionKind, Plan, PlanOptions, make_plan
from mlx_lama.orchestrator.state import (
    CachedRepo,
    CachedRevision,
    DesiredState,
    ExternalSpec,
    ModelSpec,
    ObservedState,
    RunningServer,
    RunRecord,
    ServerSpec,
    ServerState,
)

C1 = "1" * 40
C2 = "2" * 40
FILES = (("config.json", 10), ("model.safetensors", 1000))
SNAP = Path("/cache/models--org--chat/snapshots") / C1

CHAT = ModelSpec("chat", "org/chat", "main", C1, FILES)
CHAT_SERVER = ServerSpec(
    name="chat", model="chat", backend="mlx-lm", engine="mlx-lm", serve="always",
    model_path=SNAP, repo="org/chat", commit=C1, port=8081,
)  # fmt: skip


def cached(repo: str, commit: str = C1, files: tuple[tuple[str, int], ...] = FILES) -> CachedRepo:
    revision = CachedRevision(commit, ("main",), 1010, files, SNAP, 0.0)
    return CachedRepo(repo, 1_500_000, (revision,), 0.0, Path("/cache") / repo)


def running(spec: ServerSpec, state: ServerState = "running", **changes: object) -> RunningServer:
    record = RunRecord(
        name=spec.name, pid=4242, port=spec.port or 9999, host="127.0.0.1", engine=spec.engine,
        model=spec.model, spec_hash=spec.spec_hash, argv=("python",), started_at=0.0,
        process_started=0.0, log_path="/logs/x.log", spec=spec.launch_fields(),
    )  # fmt: skip
    return RunningServer(replace(record, **changes), state)  # type: ignore[arg-type]


CONVERGED = ObservedState(repos=(cached("org/chat"),), servers=(running(CHAT_SERVER),))


def plan_of(desired: DesiredState, observed: ObservedState, prune: bool = False) -> Plan:
    return make_plan(desired, observed, PlanOptions(prune=prune))


CASES = [
    pytest.param(
        DesiredState((CHAT,), (CHAT_SERVER,)),
        CONVERGED,
        False,
        "No changes.\n",
        id="converged",
    ),
    pytest.param(
        DesiredState((replace(CHAT, commit=None, files=()),), ()),
        ObservedState(),
        False,
        "  + pull     model:org/chat@main  not in the cache\n\nPlan: 1 to pull.\n",
        id="pull-new",
    ),
    pytest.param(
        DesiredState((replace(CHAT, commit=None, files=()),), ()),
        ObservedState(repos=(cached("org/chat"),)),
        False,
        "  + pull     model:org/chat@main  not in mlxlama.lock yet\n\nPlan: 1 to pull.\n",
        id="pull-cached-but-unlocked",
    ),
    pytest.param(
        DesiredState((replace(CHAT, commit=C2),), ()),
        ObservedState(repos=(cached("org/chat"),)),
        False,
        "  + pull     model:org/chat@main  locked commit 222222222222 not in the cache\n\n"
        "Plan: 1 to pull.\n",
        id="pull-new-commit",
    ),
    pytest.param(
        DesiredState((CHAT,), ()),
        ObservedState(repos=(cached("org/chat", files=(("config.json", 10),)),)),
        False,
        "  + pull     model:org/chat@main  download of 111111111111 incomplete\n\n"
        "Plan: 1 to pull.\n",
        id="pull-partial",
    ),
    pytest.param(
        DesiredState((CHAT,), ()),
        ObservedState(
            repos=(cached("org/chat"), cached("org/old"), cached("other/tool")),
            pulled=frozenset({"org/chat", "org/old"}),
        ),
        True,
        "  - remove   model:org/old  no longer in the manifest (1.5 MB)\n\nPlan: 1 to remove.\n",
        id="remove-only-what-we-pulled",
    ),
    pytest.param(
        DesiredState((CHAT,), ()),
        ObservedState(repos=(cached("org/chat"), cached("org/old")), pulled=frozenset({"org/old"})),
        False,
        "No changes.\n",
        id="no-remove-without-prune",
    ),
    pytest.param(
        DesiredState((CHAT,), (CHAT_SERVER,)),
        ObservedState(repos=(cached("org/chat"),)),
        False,
        '  + start    server:chat  serve = "always"\n\nPlan: 1 to start.\n',
        id="start",
    ),
    pytest.param(
        DesiredState((CHAT,), (CHAT_SERVER,)),
        ObservedState(repos=(cached("org/chat"),), servers=(running(CHAT_SERVER, "dead"),)),
        False,
        "  + start    server:chat  process 4242 exited\n\nPlan: 1 to start.\n",
        id="start-after-crash",
    ),
    pytest.param(
        DesiredState((CHAT,), (CHAT_SERVER,)),
        ObservedState(repos=(cached("org/chat"),), servers=(running(CHAT_SERVER, "foreign"),)),
        False,
        "  + start    server:chat  pid 4242 now belongs to another program\n\nPlan: 1 to start.\n",
        id="start-after-pid-reuse",
    ),
    pytest.param(
        DesiredState((CHAT,), (replace(CHAT_SERVER, serve="on-demand"),)),
        ObservedState(repos=(cached("org/chat"),)),
        False,
        "No changes.\n",
        id="on-demand-not-started",
    ),
    pytest.param(
        DesiredState((CHAT,), ()),
        CONVERGED,
        False,
        '  - stop     server:chat  serve = "never" in the manifest\n\nPlan: 1 to stop.\n',
        id="stop-never",
    ),
    pytest.param(
        DesiredState(),
        ObservedState(servers=(running(CHAT_SERVER),)),
        False,
        "  - stop     server:chat  no longer in the manifest\n\nPlan: 1 to stop.\n",
        id="stop-removed",
    ),
    pytest.param(
        DesiredState(externals=(ExternalSpec("chat", "http://127.0.0.1:1234"),)),
        ObservedState(servers=(running(CHAT_SERVER),)),
        False,
        "  - stop     server:chat  now served by an external server\n\nPlan: 1 to stop.\n",
        id="stop-now-external",
    ),
    pytest.param(
        DesiredState(),
        ObservedState(servers=(running(CHAT_SERVER, "dead"),)),
        False,
        "  - stop     server:chat  no longer in the manifest; clearing the record of its "
        "exited process\n\nPlan: 1 to stop.\n",
        id="stop-dead-record",
    ),
    pytest.param(
        DesiredState((CHAT,), (replace(CHAT_SERVER, port=8090, args=("--x",)),)),
        CONVERGED,
        False,
        "  ~ restart  server:chat  changed: args, port\n\nPlan: 1 to restart.\n",
        id="restart-on-spec-change",
    ),
    pytest.param(
        DesiredState((CHAT,), (replace(CHAT_SERVER, parameters=(("temperature", 0.1),)),)),
        CONVERGED,
        False,
        "No changes.\n",
        id="sampling-change-needs-no-restart",
    ),
    pytest.param(
        DesiredState((CHAT,), (CHAT_SERVER,)),
        ObservedState(repos=(cached("org/chat"),), servers=(running(CHAT_SERVER, "unresponsive"),)),
        False,
        "  ~ restart  server:chat  not answering on port 8081\n\nPlan: 1 to restart.\n",
        id="restart-unresponsive",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "prune", "golden"), CASES)
def test_plan_renders_golden(
    desired: DesiredState, observed: ObservedState, prune: bool, golden: str
) -> None:
    assert plan_of(desired, observed, prune).render() == golden


def test_every_kind_in_execution_order() -> None:
    new = ModelSpec("new", "org/new", "main")
    new_server = ServerSpec(
        name="new", model="new", backend="mlx-lm", engine="mlx-lm", serve="always",
        model_path=None, repo="org/new",
    )  # fmt: skip
    gone = replace(CHAT_SERVER, name="gone", model="gone")
    desired = DesiredState((CHAT, new), (replace(CHAT_SERVER, port=8082), new_server))
    observed = ObservedState(
        repos=(cached("org/chat"), cached("org/old")),
        servers=(running(CHAT_SERVER), running(gone)),
        pulled=frozenset({"org/old"}),
    )
    plan = plan_of(desired, observed, prune=True)
    assert plan.render() == (
        "  - stop     server:gone         no longer in the manifest\n"
        "  - remove   model:org/old       no longer in the manifest (1.5 MB)\n"
        "  + pull     model:org/new@main  not in the cache\n"
        "  ~ restart  server:chat         changed: port\n"
        '  + start    server:new          serve = "always"\n'
        "\n"
        "Plan: 1 to stop, 1 to remove, 1 to pull, 1 to restart, 1 to start.\n"
    )
    assert [a.kind for a in plan.actions] == list(ActionKind)
    assert [a.target for a in plan.actions] == [
        "server:gone", "model:org/old", "model:org/new@main", "server:chat", "server:new",
    ]  # fmt: skip
    assert plan.of(ActionKind.PULL)[0].model == "new"
    assert [k.destructive for k in ActionKind] == [True, True, False, False, False]


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    a, b = replace(CHAT, name="a", repo="org/a"), replace(CHAT, name="b", repo="org/b")
    one = plan_of(DesiredState((a, b), ()), ObservedState())
    two = plan_of(DesiredState((b, a), ()), ObservedState())
    assert one == two
    assert one.to_json() == two.to_json()
