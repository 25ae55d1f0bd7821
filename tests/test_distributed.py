"""A model served across several hosts with MLX distributed (``hosts = [...]``).

The acceptance test runs two ranks of the tiny model over the ring backend on
this one machine (both hosts are 127.0.0.1), behind the real gateway. Other
hosts are reached over ssh; here a stand-in ``ssh`` on PATH runs the remote
command on this machine (it stands in for the network, not for the engine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from mlx_lama.backends import distributed, hosts
from mlx_lama.backends.base import LaunchError, launch_spec
from mlx_lama.backends.distributed import ring_hostfile
from mlx_lama.backends.hosts import LaunchProblem, Rank, check_rdma, lay_out
from mlx_lama.backends.mlx_lm import ENGINE_MAIN
from mlx_lama.orchestrator.desired import desired
from mlx_lama.orchestrator.hostfiles import (
    CHECK_SCRIPT,
    HostFiles,
    check_host,
    check_hosts,
    folder_files,
)
from mlx_lama.orchestrator.memory import MEMORY_MARGIN, estimate_memory
from mlx_lama.orchestrator.plan import changed_fields
from mlx_lama.orchestrator.policy import fits_beside
from mlx_lama.orchestrator.slots import Slot, rank_counts
from mlx_lama.orchestrator.state import RunRecord, ServerSpec
from mlx_lama.schema import parse_manifest
from mlx_lama.schema.lockfile import Lock
from mlx_lama.units import Duration
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_process, wait_for
from tests.fixtures.manifests import only_problem

# A stand-in for ssh: skips options, takes the host, runs the command here.
# Host names starting with "nowhere" fail the way ssh fails on an unknown host.
SSH_STAND_IN = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    -o) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host="$1"; shift
case "$host" in
  nowhere*) echo "ssh: Could not resolve hostname $host: Name or service not known" >&2; exit 255 ;;
esac
# Like ssh, stay in between and end the "remote" command when this connection ends.
exec 3<&0
/bin/sh -c "$*" <&3 &
remote=$!
trap 'kill $remote 2>/dev/null' TERM HUP INT
wait $remote
"""


@pytest.fixture
def ssh_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    ssh = folder / "ssh"
    ssh.write_text(SSH_STAND_IN)
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return ssh


def write_manifest(tmp_path: Path, tiny_model: Path, extra: str) -> Path:
    model = tmp_path / "tiny"
    if not model.exists():
        shutil.copytree(tiny_model, model)
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models.tiny]\npath = "{model}"\nkeep_alive = "1h"\n{extra}\n'
        "[models.tiny.parameters]\nnum_predict = 4\n"
    )
    return manifest


# -- the manifest -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "message", "hint"),
    [
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nhosts = ["mac-a"]\n',
            "models.m.hosts",
            "needs at least two hosts (got 1)",
            "this one first",
            id="one-host",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nhosts = ["mac-a", "-oProxyCommand=x"]\n',
            "models.m.hosts[1]",
            "'-oProxyCommand=x' is not a host name or address",
            '"me@mac-b"',
            id="option-as-host",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\npipeline = true\n',
            "models.m.pipeline",
            "pipeline is only for a model served across several hosts",
            "add hosts",
            id="pipeline-without-hosts",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nbackend = "vllm-mlx"\nhosts = ["a", "b"]\n',
            "models.m.hosts",
            "backend 'vllm-mlx' cannot serve a model across several hosts",
            'use backend = "mlx-lm"',
            id="engine-without-distributed",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nhosts = ["a", "b"]\nhostfile = "h.json"\n',
            "models.m.hostfile",
            "set either hosts or hostfile, not both",
            None,
            id="hosts-and-hostfile",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nhosts = ["a", "b"]\nadapter = "lora"\n',
            "models.m.adapter",
            "cannot load an adapter when serving across hosts",
            "mlx_lm fuse",
            id="adapter",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nhosts = ["a", "b"]\ndistributed = "jaccl"\n',
            "models.m.distributed",
            'distributed = "jaccl" needs a hostfile that names each host\'s RDMA devices',
            "mlx.distributed_config --backend jaccl",
            id="jaccl-without-hostfile",
        ),
        pytest.param(
            'version = 1\n[models.m]\npath = "m"\nhosts = ["a", "b"]\ndistributed = "nccl"\n',
            "models.m.distributed",
            "",
            None,
            id="unknown-distributed-backend",
        ),
    ],
)
def test_distributed_mistakes_are_located_and_explained(
    text: str, key: str, message: str, hint: str | None
) -> None:
    problem = only_problem(text)
    assert problem.key_path == key
    assert message in problem.message
    if hint is not None:
        assert problem.hint is not None and hint in problem.hint


def test_a_distributed_entry_becomes_the_servers_distribution(tmp_path: Path) -> None:
    manifest = parse_manifest(
        'version = 1\n[models.big]\npath = "m"\nhosts = ["127.0.0.1", "me@mac-b"]\n'
        "pipeline = true\n"
        'distributed = "mpi"\nfiles = "shared"\nring_port = 40000\n'
        '[models.one]\npath = "m"\n',
        "m.toml",
    )
    state = desired(manifest, Lock(), manifest_dir=tmp_path, cache_dir=tmp_path)
    big, one = state.servers
    assert big.distribution is not None and one.distribution is None
    assert big.distribution.hosts == ("127.0.0.1", "me@mac-b")
    assert (big.distribution.backend, big.distribution.pipeline) == ("mpi", True)
    assert (big.distribution.files, big.distribution.ring_port) == ("shared", 40000)
    assert big.launch_fields()["distribution"] == {
        "backend": "mpi",
        "hosts": ["127.0.0.1", "me@mac-b"],
        "hostfile": None,
        "pipeline": True,
        "ring_port": 40000,
    }
    # A one-machine server's launch fields (and so its hash) do not mention distribution,
    # so upgrading mlx-lama restarts nothing.
    assert "distribution" not in one.launch_fields()


def test_a_hostfile_is_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = parse_manifest(
        'version = 1\n[models.big]\npath = "m"\nhostfile = "hosts.json"\n', "m.toml"
    )
    (big,) = desired(manifest, Lock(), manifest_dir=tmp_path, cache_dir=tmp_path).servers
    assert big.distribution is not None
    assert (big.distribution.backend, big.distribution.hostfile) == (
        "ring",
        tmp_path / "hosts.json",
    )


def test_a_changed_host_list_names_the_key_that_changed() -> None:
    before = {"port": 1, "distribution": {"hosts": ["a", "b"], "pipeline": False}}
    after = {"port": 1, "distribution": {"hosts": ["a", "c"], "pipeline": False}}
    assert changed_fields(before, after) == ["distribution.hosts"]
    assert changed_fields({"port": 1}, after) == ["distribution"]


# -- the launch command -------------------------------------------------------------------


def distributed_spec(folder: Path, entry: str) -> ServerSpec:
    """The server of a manifest with one model, in ``folder``, and ``entry``'s keys."""
    manifest = parse_manifest(f'version = 1\n[models.big]\npath = "{folder}"\n{entry}', "m.toml")
    (server,) = desired(manifest, Lock(), manifest_dir=folder, cache_dir=folder).servers
    return server


def test_mlx_lm_runs_under_the_launcher_with_every_rank_on_the_same_command(
    tmp_path: Path,
) -> None:
    server = distributed_spec(
        tmp_path, 'hosts = ["127.0.0.1", "mac-b"]\npipeline = true\nenv = {SECRET = "s3"}\n'
    )
    launch = launch_spec(server, 8123)
    argv = launch.argv
    assert argv[:3] == (sys.executable, "-m", "mlx_lama.backends.distributed")
    split = argv.index("--")
    launcher, command = argv[:split], argv[split + 1 :]
    assert launcher.count("--host") == 2 and "mac-b" in launcher
    assert "SECRET" in launcher and "s3" not in " ".join(argv)  # names only, values in env
    assert command[1:4] == ("-c", ENGINE_MAIN, "server")  # each rank without torch, too
    assert "--pipeline" in command and command[command.index("--port") + 1] == "8123"
    assert ("SECRET", "s3") in launch.env
    assert launch.port == 8123  # readiness is probed on rank 0's HTTP port, here


def test_the_first_host_must_be_this_machine(tmp_path: Path) -> None:
    server = distributed_spec(tmp_path, 'hosts = ["nowhere-a", "127.0.0.1"]\n')
    with pytest.raises(LaunchError, match="first host"):
        launch_spec(server, 8123)


def test_the_memory_budget_counts_only_this_machines_share(
    tmp_path: Path, tiny_model: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    whole = estimate_memory(folder)
    half = distributed_spec(folder, 'hosts = ["127.0.0.1", "nowhere-b"]\n')
    both = distributed_spec(folder, 'hosts = ["127.0.0.1", "localhost"]\n')
    assert rank_counts(half) == (1, 2) and rank_counts(both) == (2, 2)
    weights = whole - MEMORY_MARGIN
    assert estimate_memory(folder, *rank_counts(half)) == weights // 2 + MEMORY_MARGIN
    assert estimate_memory(folder, *rank_counts(both)) == weights + 2 * MEMORY_MARGIN
    # the bound on the KV caches counts too, shared out as the weights are
    kv = 2**30
    assert estimate_memory(folder, kv_cache=kv) == whole + kv
    assert estimate_memory(folder, *rank_counts(half), kv_cache=kv) == (
        (weights + kv) // 2 + MEMORY_MARGIN
    )


def test_mpi_without_mpirun_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no mpirun here
    server = distributed_spec(tmp_path, 'hosts = ["127.0.0.1", "mac-b"]\ndistributed = "mpi"\n')
    with pytest.raises(LaunchError, match="needs mpirun") as caught:
        launch_spec(server, 8123)
    assert caught.value.hint is not None and "open-mpi" in caught.value.hint


def test_a_ring_across_machines_refuses_loopback_addresses(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(
        json.dumps(
            [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}, {"ssh": "mac-b", "ips": ["10.0.0.2"]}]
        )
    )
    with pytest.raises(LaunchProblem, match="loopback address"):
        lay_out([], hostfile)
    hostfile.write_text(
        json.dumps(
            {
                "hosts": [
                    {"ssh": "127.0.0.1", "ips": ["10.0.0.1"]},
                    {"ssh": "mac-b", "ips": ["10.0.0.2"]},
                ]
            }
        )
    )
    ranks = lay_out([], hostfile)
    assert ranks == [Rank(0, "127.0.0.1", "10.0.0.1", True), Rank(1, "mac-b", "10.0.0.2", False)]
    assert json.loads(ring_hostfile(ranks, 5000)) == [["10.0.0.1:5000"], ["10.0.0.2:5001"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not JSON"),
        ('[{"ssh": "a"}]', "at least two hosts"),
        ('[{"ssh": "a"}, {"ips": ["1.2.3.4"]}]', 'host 1 has no "ssh" name'),
        ('[{"ssh": "a"}, {"ssh": "b", "ips": "1.2.3.4"}]', "must be a list of strings"),
    ],
)
def test_a_bad_hostfile_says_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(content)
    with pytest.raises(LaunchProblem, match=message):
        lay_out([], hostfile)


def test_this_machine_is_known_by_loopback_name_and_interface_address() -> None:
    assert hosts.is_this_machine("127.0.0.1")
    assert hosts.is_this_machine("me@localhost")
    assert hosts.is_this_machine(socket.gethostname())
    assert not hosts.is_this_machine("nowhere-mac-b")
    addresses = [a for a in hosts._local_addresses() if not a.startswith("127.")]
    for address in addresses[:1]:
        assert hosts.is_this_machine(address)


def test_a_remote_rank_gets_its_environment_and_ring_file_through_one_shell_line(
    tmp_path: Path,
) -> None:
    rank = Rank(1, "mac-b", "10.0.0.2", False)
    script = distributed.remote_script(
        rank,
        [
            "python",
            "-c",
            "import os; e = os.environ; print(e['X'], open(e['MLX_HOSTFILE']).read(), e['MLX_RANK'])",  # noqa: E501
        ],
        {"X": "it's $HOME"},
        '[["10.0.0.1:5000"], ["10.0.0.2:5001"]]',
    )
    script = script.replace("exec python", f"exec {sys.executable}")
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'it\'s $HOME [["10.0.0.1:5000"], ["10.0.0.2:5001"]] 1'


# -- files on the other hosts ---------------------------------------------------------------


def missing_files(folder: str, files: tuple[tuple[str, int], ...]) -> list[str]:
    """What the check script reports when run on this machine."""
    job = json.dumps({"folder": folder, "files": files})
    result = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT], input=job, capture_output=True, text=True, check=True
    )
    return list(json.loads(result.stdout))


def test_the_check_script_finds_missing_and_resized_files(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    wanted = folder_files(folder)
    assert ("config.json", (folder / "config.json").stat().st_size) in wanted
    assert missing_files(str(folder), wanted) == []
    (folder / "config.json").unlink()
    (folder / "tokenizer.json").write_text("{}")
    assert missing_files(str(folder), wanted) == ["config.json", "tokenizer.json"]


def test_a_host_lacking_files_is_a_warning_that_names_the_copy_command() -> None:
    found = HostFiles("big", "mac-b", "/m/snap", 14, ("model.safetensors", "config.json"))
    assert not found.complete
    assert found.warning() == (
        "server 'big': mac-b lacks 2 of 14 model files in /m/snap (first: model.safetensors); "
        "copy them with `rsync -aL --relative /m/snap/ mac-b:/`, "
        'or set files = "shared" if every host sees this folder'
    )
    unreachable = HostFiles("big", "mac-c", "/m/snap", 14, error="ssh: no route")
    assert (
        unreachable.warning()
        == "server 'big': cannot check the model files on mac-c: ssh: no route"
    )


def test_hosts_are_checked_over_ssh(tmp_path: Path, tiny_model: Path, ssh_on_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    files = folder_files(folder)
    here = check_host("big", "mac-b", folder, files)
    assert here.complete and here.total == len(files)
    gone = check_host("big", "nowhere-b", folder, files)
    assert gone.error is not None and "Could not resolve hostname nowhere-b" in gone.error
    assert "passwordless ssh" in gone.error
    lacking = check_host("big", "mac-b", folder, (*files, ("extra.safetensors", 10)))
    assert lacking.missing == ("extra.safetensors",)


def test_only_other_hosts_are_checked_and_shared_folders_not_at_all(
    tmp_path: Path, tiny_model: Path, ssh_on_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    entry = 'hosts = ["127.0.0.1", "mac-b", "nowhere-c", "mac-b"]\n'
    checked = check_hosts([distributed_spec(folder, entry)])
    assert sorted((h.host, h.complete) for h in checked) == [("mac-b", True), ("nowhere-c", False)]
    shared = distributed_spec(folder, entry + 'files = "shared"\n')
    assert check_hosts([shared]) == ()


def test_plan_warns_about_a_host_it_cannot_check(
    tmp_path: Path, tiny_model: Path, ssh_on_path: Path
) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'hosts = ["127.0.0.1", "nowhere-b"]\n')
    code, out, err = cli("plan", "-f", str(manifest))
    assert code == 0, err
    assert "No changes." in out  # on-demand: nothing to start now
    assert "warning: server 'tiny': cannot check the model files on nowhere-b" in err


def test_show_names_the_hosts(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'hosts = ["127.0.0.1", "mac-b"]\n')
    code, out, err = cli("show", "tiny", "-f", str(manifest))
    assert code == 0, err
    assert "hosts          127.0.0.1, mac-b" in out
    assert "distributed    ring, tensor parallel" in out
    code, out, err = cli("show", "tiny", "--json", "-f", str(manifest))
    shown = json.loads(out)["manifest"]
    assert (shown["hosts"], shown["distributed"], shown["pipeline"]) == (
        ["127.0.0.1", "mac-b"],
        "ring",
        False,
    )


def test_run_without_a_daemon_does_not_load_a_distributed_model_here(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'hosts = ["127.0.0.1", "mac-b"]\n')
    code, _, err = cli("run", "tiny", "hello", "-f", str(manifest))
    assert code == 1
    assert "served across several hosts, which run reaches only through the daemon" in err
    assert "start `mlx-lama serve`" in err


# -- serving --------------------------------------------------------------------------------


def rank_pids(manifest: Path) -> list[int]:
    row = tiny_in_ps(manifest)
    return [rank["pid"] for rank in row["ranks"]] if row else []


def tiny_in_ps(manifest: Path) -> dict[str, Any] | None:
    """The ``ps --json`` row of the tiny server, if ps lists it."""
    code, out, err = cli("ps", "--json", "-f", str(manifest))
    assert code == 0, err
    rows = [row for row in json.loads(out) if row["name"] == "tiny"]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def chat(url: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=240)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    return reply.choices[0].message.content or ""


def all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)


@pytest.mark.server
def test_two_ranks_over_loopback_answer_through_the_gateway_and_stop_together(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'hosts = ["127.0.0.1", "127.0.0.1"]\n')
    with gateway_process(manifest, log_path=tmp_path / "gateway.log") as gateway:
        assert chat(gateway.url).strip()
        row = tiny_in_ps(manifest)
        assert row is not None and row["hosts"] == ["127.0.0.1", "127.0.0.1"]
        assert [(r["rank"], r["host"], r["via_ssh"]) for r in row["ranks"]] == [
            (0, "127.0.0.1", False),
            (1, "127.0.0.1", False),
        ]
        pids = [r["pid"] for r in row["ranks"]]
        for rank, pid in enumerate(pids):
            process = psutil.Process(pid)
            assert process.environ()["MLX_RANK"] == str(rank)
            assert ENGINE_MAIN in process.cmdline() and "server" in process.cmdline()
        code, table, _ = cli("ps", "-f", str(manifest))
        for rank in (0, 1):  # under its server, with the host in the BACKEND column
            assert re.search(
                rf"^  rank {rank}\s+127\.0\.0\.1\s+{pids[rank]}\s+running", table, re.M
            )
        launcher = row["pid"]

        code, _, err = cli("stop", "tiny", "-f", str(manifest))
        assert code == 0, err
        wait_for(lambda: all_gone([launcher, *pids]), 30, "the launcher and both ranks to exit")
        assert rank_pids(manifest) == []


@pytest.mark.server
def test_a_rank_that_dies_takes_its_group_down_and_the_next_request_starts_it_again(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = write_manifest(tmp_path, tiny_model, 'hosts = ["127.0.0.1", "127.0.0.1"]\n')
    with gateway_process(manifest, log_path=tmp_path / "gateway.log") as gateway:
        assert chat(gateway.url).strip()
        first = rank_pids(manifest)
        launcher = gateway.pid_of("tiny")
        os.kill(first[1], signal.SIGKILL)
        wait_for(lambda: all_gone([launcher, first[0]]), 30, "rank 0 and the launcher to exit")
        log = (gateway.home / "logs" / "tiny.log").read_text()
        assert "rank 1 on 127.0.0.1 ended (killed by SIGKILL); stopping the others" in log

        assert chat(gateway.url).strip()
        second = rank_pids(manifest)
        assert len(second) == 2 and not set(second) & set(first)


def non_loopback_ipv4() -> str | None:
    return next(
        (a for a in hosts._local_addresses() if "." in a and not a.startswith("127.")), None
    )


@pytest.mark.server
def test_a_rank_on_another_host_runs_over_ssh(
    tmp_path: Path, tiny_model: Path, ssh_on_path: Path
) -> None:
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address for a ring between hosts")
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(
        json.dumps([{"ssh": "127.0.0.1", "ips": [address]}, {"ssh": "mac-b", "ips": [address]}])
    )
    manifest = write_manifest(tmp_path, tiny_model, f'hostfile = "{hostfile}"\nfiles = "shared"\n')
    with gateway_process(manifest, log_path=tmp_path / "gateway.log") as gateway:
        assert chat(gateway.url).strip()
        row = tiny_in_ps(manifest)
        assert row is not None and row["hosts"] == [f"hostfile {hostfile}"]
        assert [r["via_ssh"] for r in row["ranks"]] == [False, True]
        pids = [row["pid"], *(r["pid"] for r in row["ranks"])]
        code, _, err = cli("stop", "tiny", "-f", str(manifest))
        assert code == 0, err
        wait_for(lambda: all_gone(pids), 30, "the launcher and both ranks to exit")


# -- the launcher on its own (a small Python program as the ranks) ---------------------------

RANK_PROGRAM = """
import json, os, sys, time
rank = int(os.environ["MLX_RANK"])
ring = json.load(open(os.environ["MLX_HOSTFILE"]))
print(f"rank {rank} of {len(ring)}: {ring[rank][0]}", flush=True)
open(f"rank-{rank}-said-so", "w").close()
if rank == int(sys.argv[1]):
    while not all(os.path.exists(f"rank-{r}-said-so") for r in range(len(ring))):
        time.sleep(0.05)
    sys.exit(3)
time.sleep(120)
"""


def launcher(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlx_lama.backends.distributed", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=tmp_path,
    )


def children_of(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children()]


def test_the_launcher_gives_each_rank_its_place_and_ends_with_a_rank_that_fails(
    tmp_path: Path,
) -> None:
    proc = launcher(
        tmp_path, "--host", "127.0.0.1", "--host", "localhost", "--ring-port", "45000",
        "--", sys.executable, "-c", RANK_PROGRAM, "1",
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 3, out
    assert "rank 0 of 2: 127.0.0.1:45000" in out and "rank 1 of 2: 127.0.0.1:45001" in out
    assert "rank 1 on localhost ended (exit code 3); stopping the others" in out


def test_sigterm_stops_every_rank_and_the_launcher_exits_cleanly(tmp_path: Path) -> None:
    proc = launcher(
        tmp_path, "--host", "127.0.0.1", "--host", "127.0.0.1",
        "--", sys.executable, "-c", RANK_PROGRAM, "-1",
    )  # fmt: skip
    try:
        wait_for(lambda: len(children_of(proc.pid)) == 2, 30, "two ranks")
        ranks = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)  # only the launcher: it must stop its ranks itself
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "SIGTERM: stopping 2 ranks" in out
    wait_for(lambda: all_gone(ranks), 10, "both ranks to exit")


def test_a_stop_while_a_rank_starts_waits_until_the_rank_is_recorded() -> None:
    """SIGTERM inside Popen (after the fork) or before the new rank is in the launcher's
    table would leave that rank unstopped: it is raised once the rank is recorded."""
    previous = signal.signal(signal.SIGUSR1, distributed._on_signal)
    recorded = []
    try:
        with pytest.raises(distributed._Stop, match="SIGUSR1"), distributed._signals_held():
            signal.raise_signal(signal.SIGUSR1)
            recorded.append("rank 1")  # still runs: the stop waits for the block's end
        assert recorded == ["rank 1"]
        with pytest.raises(distributed._Stop, match="SIGUSR1"):
            signal.raise_signal(signal.SIGUSR1)  # anywhere else: at once
            recorded.append("not reached")
        assert recorded == ["rank 1"]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_launcher_refuses_a_first_host_that_is_elsewhere(tmp_path: Path) -> None:
    proc = launcher(tmp_path, "--host", "nowhere-a", "--host", "127.0.0.1", "--", "true")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "error: the first host (nowhere-a) runs rank 0" in out


def test_a_distributed_server_is_never_restarted_beside_its_predecessor(tmp_path: Path) -> None:
    """Starting the new ring while the old one runs would need the model's memory twice on
    every host; the scheduler stops the old one first."""
    spec = distributed_spec(tmp_path, 'hosts = ["127.0.0.1", "mac-b"]\n')
    local = replace(spec, distribution=None)
    record = RunRecord(
        name="big", pid=1, port=9000, host="127.0.0.1", engine="mlx-lm", model="big",
        spec_hash="x", argv=(), started_at=0.0, process_started=0.0, log_path="",
    )  # fmt: skip

    def slot(server: ServerSpec, running: bool) -> Slot:
        return Slot(
            spec=server, keep_alive=Duration(60.0), pinned=False, memory=1,
            record=record if running else None,
        )  # fmt: skip

    def beside(old: Slot, new: Slot) -> bool:
        return fits_beside(old, new, [], budget=None, available=2**40)

    assert beside(slot(local, True), slot(local, False))
    assert not beside(slot(spec, True), slot(spec, False))
    assert not beside(slot(local, True), slot(spec, False))


def test_the_schemas_list_of_distributed_engines_is_the_backends() -> None:
    from mlx_lama.backend_names import BUILTIN_BACKENDS
    from mlx_lama.backends.base import get_backend
    from mlx_lama.schema.engine_checks import DISTRIBUTED_ENGINES

    capable = tuple(b for b in BUILTIN_BACKENDS if get_backend(b).capabilities().distributed)
    assert capable == DISTRIBUTED_ENGINES


# -- jaccl: RDMA over Thunderbolt 5 (no RDMA here: the hostfile and the command are checked)


def rdma_hostfile(folder: Path, devices: list[list[str | None]], ips: bool = True) -> Path:
    """A jaccl hostfile of this machine and ``len(devices) - 1`` others."""
    folder.mkdir(exist_ok=True)
    hosts: list[dict[str, object]] = [
        {"ssh": "127.0.0.1" if index == 0 else f"mac-{index}", "rdma": row}
        for index, row in enumerate(devices)
    ]
    if ips:
        hosts[0]["ips"] = ["10.0.0.1"]
    path = folder / "hosts.json"
    path.write_text(json.dumps(hosts))
    return path


FULL = [
    [None, "rdma_en3", "rdma_en4"],
    ["rdma_en3", None, "rdma_en5"],
    ["rdma_en4", "rdma_en5", None],
]
RING4 = [
    [None, "rdma_en3", None, "rdma_en4"],
    ["rdma_en3", None, "rdma_en5", None],
    [None, "rdma_en5", None, "rdma_en6"],
    ["rdma_en4", None, "rdma_en6", None],
]


def test_a_jaccl_hostfile_names_a_device_for_every_host_each_talks_to(tmp_path: Path) -> None:
    check_rdma(rdma_hostfile(tmp_path, FULL), "jaccl")
    check_rdma(rdma_hostfile(tmp_path, RING4), "jaccl-ring")  # neighbours only
    with pytest.raises(LaunchProblem, match=r"host 0 names no device for host 2 \(mac-2\)"):
        check_rdma(rdma_hostfile(tmp_path, RING4), "jaccl")


@pytest.mark.parametrize(
    ("devices", "ips", "message"),
    [
        ([[None, "a"], ["a"]], True, 'host 1 needs "rdma", a list of 2 devices'),
        ([[None, "a"], ["a", "b"]], True, '"rdma" of host 1 must be null at 1'),
        ([[None, ""], ["a", None]], True, "host 0 names no device for host 1"),
        ([[None, "a"], ["a", None]], False, 'host 0 needs "ips"'),
    ],
)
def test_a_bad_jaccl_hostfile_says_what_is_wrong(
    tmp_path: Path, devices: list[list[str | None]], ips: bool, message: str
) -> None:
    with pytest.raises(LaunchProblem, match=re.escape(message)):
        check_rdma(rdma_hostfile(tmp_path, devices, ips), "jaccl")


def test_jaccl_is_refused_before_anything_starts_when_its_hostfile_is_bad(tmp_path: Path) -> None:
    hostfile = rdma_hostfile(tmp_path, [[None, "a"], ["a", "b"]])
    server = distributed_spec(tmp_path, f'hostfile = "{hostfile}"\ndistributed = "jaccl"\n')
    with pytest.raises(LaunchError, match="must be null") as caught:
        launch_spec(server, 8123)
    assert caught.value.hint is not None and "mlx.distributed_config" in caught.value.hint


@pytest.mark.server  # runs mlx.launch, which refuses the hostfile before any rank starts
def test_jaccl_ranks_are_started_by_mlx_launch_with_the_hostfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostfile = rdma_hostfile(tmp_path, FULL)
    server = distributed_spec(
        tmp_path, f'hostfile = "{hostfile}"\ndistributed = "jaccl"\nenv = {{SECRET = "s3"}}\n'
    )
    argv = launch_spec(server, 8123).argv
    split = argv.index("--")
    launcher, command = list(argv[:split]), list(argv[split + 1 :])
    assert launcher[launcher.index("--backend") + 1] == "jaccl"
    assert launcher[launcher.index("--hostfile") + 1] == str(hostfile)
    # The launcher hands the ranks to mlx.launch (the process is replaced: caught here).
    execs: list[list[str]] = []

    def replaced(program: str, args: list[str]) -> None:
        execs.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", replaced)
    monkeypatch.setenv("SECRET", "s3")
    with pytest.raises(SystemExit):
        distributed.main([*launcher[3:], "--", *command])
    (run,) = execs
    assert run[1:3] == ["-c", "from mlx._distributed_utils.launch import main; main()"]
    assert run[run.index("--backend") + 1] == "jaccl"
    assert run[run.index("--hostfile") + 1] == str(hostfile)
    assert "--env=SECRET=s3" in run and run[run.index("--") + 1 :] == command
    # That command is one MLX's own launcher understands: given a hostfile our check
    # would have refused, mlx.launch reads its RDMA devices and refuses it too (with
    # no RDMA here, that is as far as jaccl can go on this machine).
    broken = rdma_hostfile(tmp_path / "broken", [[None, "a"], ["a"]])
    run[run.index("--hostfile") + 1] = str(broken)
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "The hostfile is malformed" in done.stderr and "RDMA" in done.stderr


def test_the_launcher_refuses_jaccl_with_a_bad_hostfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostfile = rdma_hostfile(tmp_path, [[None, "a"], ["a", None]], ips=False)
    code = distributed.main(["--backend", "jaccl", "--hostfile", str(hostfile), "--", "true"])
    assert code == 2
    assert 'host 0 needs "ips"' in capsys.readouterr().err
