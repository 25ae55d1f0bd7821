"""``[remotes.NAME]``: one gateway serving another gateway's models.

"studio" is a real ``mlx-lama serve`` (its own home, manifest and ``[server]``
api_key) serving the tiny model through a real ``mlx_lm.server``; "desk" is a
second ``mlx-lama serve`` that lists studio under ``[remotes]`` and has no
model of its own. The official ``ollama`` and ``openai`` clients talk to desk
only. Both gateways live for the module (the engine start costs seconds); the
other tests run their own gateway in a thread against studio, or against a
remote that is not there. The pure parts of ``remotes.py`` are tested on
literals at the end.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import ollama
import openai
import psutil
import pytest

from mlx_lama.gateway.remotes import (
    FORWARDED_HEADER,
    RemoteModel,
    RemoteSet,
    failure_detail,
    listed_models,
    marked,
    remote_headers,
)
from mlx_lama.schema import parse_manifest
from tests.fixtures import hf_env
from tests.fixtures.cli import cli
from tests.fixtures.gateway import (
    RunningGateway,
    gateway_in_thread,
    isolated_gateway_process,
    wait_for,
)
from tests.fixtures.servers import free_port
from tests.fixtures.tiny_model import EOS_TOKEN, SPECIAL_TOKENS

pytestmark = pytest.mark.server

KEY = "studio-secret"
STUDIO = """\
version = 1

[server]
api_key = "{key}"
keep_alive = "10m"

[aliases]
"hidden" = "tiny"     # listed by studio, but not under desk's [remotes.studio] models

[models.tiny]
path = "{model}"

[models.tiny.parameters]
num_predict = 8
temperature = 0.0
"""
DESK = """\
version = 1

[remotes.studio]
url = "{url}"
api_key = "{key}"
models = ["tiny"]
"""
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("studio")
    with isolated_gateway_process(root, STUDIO.format(key=KEY, model=tiny_model)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def desk(
    tmp_path_factory: pytest.TempPathFactory, studio: RunningGateway
) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("desk")
    with isolated_gateway_process(root, DESK.format(url=studio.url, key=KEY)) as gateway:
        yield gateway


@pytest.fixture
def client(desk: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=desk.url) as ollama_client:
        yield ollama_client


def _get(url: str, path: str, key: str | None = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(trust_env=False, timeout=60) as http:
        response = http.get(url + path, headers=headers)
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


def _models(body: dict[str, object]) -> dict[str, dict[str, object]]:
    models = body["models"]
    assert isinstance(models, list)
    return {str(m["name"]): m for m in models}


# -- the acceptance: list and chat through desk, answered by studio


def test_list_shows_the_remote_model_marked_remote(
    desk: RunningGateway, studio: RunningGateway, client: ollama.Client
) -> None:
    assert [m.model for m in client.list().models] == ["tiny:latest"]
    tiny = _models(_get(desk.url, "/api/tags"))["tiny:latest"]
    assert (tiny["remote_model"], tiny["remote_host"]) == ("tiny:latest", studio.url)
    assert tiny["details"] == _models(_get(studio.url, "/api/tags", KEY))["tiny:latest"]["details"]
    # Studio lists "hidden" too, but desk routes only the models it names.
    assert "hidden:latest" in _models(_get(studio.url, "/api/tags", KEY))
    with openai.OpenAI(base_url=desk.url + "/v1", api_key="unused") as oai:
        [model] = oai.models.list().data
        assert (model.id, model.owned_by) == ("tiny:latest", studio.url)
        assert oai.models.retrieve("tiny").id == "tiny:latest"


def test_chat_through_desk_is_answered_by_studio(
    desk: RunningGateway, studio: RunningGateway, client: ollama.Client
) -> None:
    answer = client.chat("tiny", messages=USER)
    assert answer.done and answer.message.role == "assistant" and answer.message.content
    assert answer.model == "tiny"
    parts = list(client.chat("tiny", messages=USER, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)
    assert client.generate("tiny", "once upon").response

    with openai.OpenAI(base_url=desk.url + "/v1", api_key="unused") as oai:
        completion = oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.choices[0].message.content
        assert completion.model == "tiny"
        stream = oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text

    # Studio's own server answered: it runs there, and desk started nothing.
    assert "tiny:latest" in _models(_get(studio.url, "/api/ps", KEY))
    assert psutil.pid_exists(studio.pid_of("tiny"))
    assert not list((desk.home / "run").glob("*.json"))
    assert _get(desk.url, "/health")["models"] == {}
    running = _models(_get(desk.url, "/api/ps"))["tiny:latest"]
    assert running["remote_host"] == studio.url
    assert [m.model for m in client.ps().models] == ["tiny:latest"]


def test_run_on_the_desk_answers_with_the_remote_model(
    desk: RunningGateway, studio: RunningGateway
) -> None:
    """`mlx-lama run tiny` on the desk, whose manifest only lists tiny under [remotes]:
    the daemon routes it to the studio; nothing is pulled or added to the desk's manifest."""
    root = desk.home.parent
    manifest = root / "mlxlama.toml"
    before = manifest.read_text()
    env = {**hf_env.isolated_copy(root), "MLX_LAMA_MANIFEST": str(manifest)}
    done = subprocess.run(
        [sys.executable, "-m", "mlx_lama", "run", "tiny", "hello"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the desk has no model of its own: the studio answered
    assert manifest.read_text() == before
    assert not list((desk.home / "run").glob("*.json"))


def test_show_and_the_remotes_own_errors_pass_through(client: ollama.Client) -> None:
    shown = client.show("tiny")
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed("tiny", "words")  # studio's mlx-lm engine has no embeddings
    assert caught.value.status_code == 400
    assert "does not support embeddings" in caught.value.error


def test_a_model_studio_has_but_desk_does_not_list_is_not_found(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat("hidden", messages=USER)
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'hidden' not found"


def test_managing_a_remote_model_is_refused_with_where_to_do_it(
    desk: RunningGateway, studio: RunningGateway
) -> None:
    with httpx.Client(base_url=desk.url, trust_env=False, timeout=60) as http:
        answers = [
            http.request("DELETE", "/api/delete", json={"model": "tiny"}),
            http.post("/api/copy", json={"source": "tiny", "destination": "mine"}),
            http.post("/api/pull", json={"model": "tiny", "stream": False}),
        ]
    commands = {"remove": "rm", "copy": "cp", "pull": "pull"}
    for answer, verb in zip(answers, commands, strict=True):
        assert answer.status_code == 400
        assert answer.json()["error"] == (
            f"model 'tiny' is served by remote 'studio' at {studio.url}; "
            f"{verb} it on that machine (`mlx-lama {commands[verb]}` there)"
        )


def _connections(pid: int, port: int) -> int:
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def test_a_client_that_leaves_cancels_the_request_on_the_remote(
    desk: RunningGateway, studio: RunningGateway, client: ollama.Client
) -> None:
    client.generate("tiny")  # an empty prompt loads it, on studio
    pid = studio.pid_of("tiny")
    port = int(studio.health()["models"]["tiny"]["port"])  # type: ignore[index]
    body = {
        "model": "tiny",
        "messages": USER,
        "stream": True,
        "max_tokens": 200000,  # minutes of tokens if nothing cancels them:
        "logit_bias": {str(SPECIAL_TOKENS.index(EOS_TOKEN)): -100},  # the end never comes
    }
    with (
        httpx.Client(trust_env=False, timeout=60) as http,
        http.stream("POST", desk.url + "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith(("data: {", ":")), first
        # This stream's request alone, once a connection left idle by the model's
        # readiness check has expired from studio's pool (5 s; seen under load).
        wait_for(lambda: _connections(pid, port) == 1, 15, "only the streaming request")
    # Desk closed its request to studio, studio its request to the engine.
    wait_for(lambda: _connections(pid, port) == 0, 30, "the engine request to end")
    wait_for(lambda: studio.health()["models"]["tiny"]["in_flight"] == 0, 10, "studio's lease")  # type: ignore[index]


# -- desk in a thread: other manifests against studio, or against nothing


def test_an_unreachable_remote_is_a_clear_error_in_each_api(tmp_path: Path) -> None:
    gone, dark = free_port(), free_port()
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[remotes.gone]\nurl = "http://127.0.0.1:{gone}"\nmodels = ["ghost"]\n\n'
        f'[remotes.dark]\nurl = "http://127.0.0.1:{dark}"\n',
        encoding="utf-8",
    )
    where = f"remote 'gone' at http://127.0.0.1:{gone} is not reachable: connection refused"
    with gateway_in_thread(manifest) as desk, ollama.Client(host=desk.url) as client:
        assert client.list().models == []
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat("ghost", messages=USER)
        assert caught.value.status_code == 502
        assert caught.value.error.startswith(where)
        assert "start `mlx-lama serve` there, or fix [remotes.gone] url" in caught.value.error
        with pytest.raises(ollama.ResponseError) as caught:
            list(client.chat("ghost", messages=USER, stream=True))
        assert caught.value.status_code == 502 and caught.value.error.startswith(where)

        with openai.OpenAI(base_url=desk.url + "/v1", api_key="unused", max_retries=0) as oai:
            with pytest.raises(openai.APIStatusError) as failed:
                oai.chat.completions.create(
                    model="ghost", messages=[{"role": "user", "content": "hello"}]
                )
            assert failed.value.status_code == 502
            assert failed.value.body["message"].startswith(where)  # type: ignore[index]
            assert failed.value.body["type"] == "api_error"  # type: ignore[index]

        # A name no remote is known to have: not found, saying which remote did not answer.
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat("anything", messages=USER)
        assert caught.value.status_code == 404
        assert caught.value.error == (
            "model 'anything' not found here, and not every remote answered "
            f"(remote 'dark' at http://127.0.0.1:{dark}: connection refused)"
        )


@contextmanager
def breaking_remote() -> Iterator[str]:
    """A "gateway" on 127.0.0.1 that starts one NDJSON answer, then drops the connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        with suppress(OSError), listener.accept()[0] as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            line = b'{"model":"flaky","message":{"role":"assistant","content":"hi"},"done":false}\n'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(line), line)
            )

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(10)


def test_a_remote_that_breaks_off_mid_stream_ends_it_with_an_error_line(tmp_path: Path) -> None:
    with breaking_remote() as url:
        manifest = tmp_path / "mlxlama.toml"
        manifest.write_text(
            f'version = 1\n\n[remotes.flaky]\nurl = "{url}"\nmodels = ["flaky"]\n',
            encoding="utf-8",
        )
        with gateway_in_thread(manifest) as desk, ollama.Client(host=desk.url) as client:
            stream = client.chat("flaky", messages=USER, stream=True)
            assert next(stream).message.content == "hi"
            with pytest.raises(ollama.ResponseError) as caught:
                next(stream)
    assert caught.value.error.startswith(f"remote 'flaky' at {url} stopped answering (")


def _local_tiny(tmp_path: Path, tiny_model: Path) -> str:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model, folder)
    return f'version = 1\n\n[models.tiny]\npath = "{folder}"\nserve = "never"\n'


def test_local_names_win_and_remotes_follow_reloads(
    tmp_path: Path, tiny_model: Path, studio: RunningGateway
) -> None:
    local = _local_tiny(tmp_path, tiny_model)
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(local, encoding="utf-8")
    with gateway_in_thread(manifest) as desk, ollama.Client(host=desk.url) as client:
        gateway = desk.gateway
        assert gateway is not None
        assert [m.model for m in client.list().models] == ["tiny:latest"]
        every = f'\n[remotes.studio]\nurl = "{studio.url}"\napi_key = "{KEY}"\n'
        manifest.write_text(local + every, encoding="utf-8")
        wait_for(lambda: "studio" in gateway.manifest.remotes, 30, "the reload")

        # Studio has tiny and hidden; desk's own tiny wins, hidden comes from studio.
        tags = _models(_get(desk.url, "/api/tags"))
        assert set(tags) == {"tiny:latest", "hidden:latest"}
        assert "remote_host" not in tags["tiny:latest"]
        assert tags["hidden:latest"]["remote_host"] == studio.url
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat("tiny", messages=USER)
        assert caught.value.status_code == 400 and 'serve = "never"' in caught.value.error
        assert client.show("hidden").modelinfo is not None

        # Without the key, studio refuses desk: a 502 that names the fix.
        named = f'\n[remotes.studio]\nurl = "{studio.url}"\nmodels = ["hidden"]\n'
        manifest.write_text(local + named, encoding="utf-8")
        wait_for(lambda: gateway.manifest.remotes["studio"].api_key is None, 30, "reload")
        with pytest.raises(ollama.ResponseError) as caught:
            client.show("hidden")
        assert caught.value.status_code == 502
        assert caught.value.error == (
            f"remote 'studio' at {studio.url} refused the request (HTTP 401): "
            "set api_key under [remotes.studio] to the key of its [server]"
        )
        assert set(_models(_get(desk.url, "/api/tags"))) == {"tiny:latest"}

        # Removing the remote removes its models.
        manifest.write_text(local, encoding="utf-8")
        wait_for(lambda: not gateway.manifest.remotes, 30, "the reload")
        with pytest.raises(ollama.ResponseError) as caught:
            client.show("hidden")
        assert caught.value.status_code == 404


def test_a_forwarded_request_is_answered_from_local_models_only(
    tmp_path: Path, studio: RunningGateway
) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[remotes.studio]\nurl = "{studio.url}"\napi_key = "{KEY}"\n',
        encoding="utf-8",
    )
    with (
        gateway_in_thread(manifest) as desk,
        httpx.Client(base_url=desk.url, trust_env=False, timeout=60) as http,
    ):
        assert http.get("/api/tags").json()["models"]
        mark = {FORWARDED_HEADER: "1"}
        assert http.get("/api/tags", headers=mark).json() == {"models": []}
        answer = http.post("/api/show", json={"model": "tiny"}, headers=mark)
        assert answer.status_code == 404


def test_validate_counts_the_remotes(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        'version = 1\n[remotes.studio]\nurl = "http://10.0.0.2:11434"\n', encoding="utf-8"
    )
    assert cli("validate", "-f", str(manifest)) == (
        0,
        f"OK: 0 models, 0 aliases, 1 remote ({manifest})\n",
        "",
    )


def test_plan_warns_about_each_remote_that_does_not_answer(
    tmp_path: Path, studio: RunningGateway
) -> None:
    gone = free_port()
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[remotes.studio]\nurl = "{studio.url}"\napi_key = "{KEY}"\n\n'
        f'[remotes.gone]\nurl = "http://127.0.0.1:{gone}"\n\n'
        f'[remotes.keyless]\nurl = "{studio.url}"\nmodels = ["tiny"]\n',
        encoding="utf-8",
    )
    code, out, err = cli("plan", "-f", str(manifest), "--detailed-exitcode")
    assert (code, out) == (0, "No changes.\n")
    assert err.splitlines() == [
        f"warning: remote 'gone' at http://127.0.0.1:{gone} is not answering: connection refused",
        f"warning: remote 'keyless' at {studio.url} is not answering: "
        "HTTP 401: it wants an api_key (set the key of its [server])",
    ]


def test_list_shows_what_each_remote_serves_and_local_names_win(
    tmp_path: Path, tiny_model: Path, studio: RunningGateway
) -> None:
    gone = free_port()
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[models.tiny]\npath = "{tiny_model}"\n\n'
        f'[remotes.studio]\nurl = "{studio.url}"\napi_key = "{KEY}"\n\n'
        f'[remotes.gone]\nurl = "http://127.0.0.1:{gone}"\nmodels = ["big:70b"]\n',
        encoding="utf-8",
    )
    code, out, err = cli("list", "--json", "-f", str(manifest))
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    # Studio serves tiny and hidden: tiny is also local here, so the local one is listed.
    assert rows["tiny"]["status"] == "in manifest" and rows["tiny"]["remote"] is None
    hidden = rows["hidden:latest"]
    assert (hidden["status"], hidden["remote"], hidden["url"]) == (
        "remote studio",
        "studio",
        studio.url,
    )
    assert hidden["size"] > 0 and hidden["modified"] > 0
    assert "tiny:latest" not in rows
    # A remote that does not answer: its named models are listed, and a warning says why.
    assert rows["big:70b"]["status"] == "remote gone, not answering"
    assert err == (
        f"warning: remote 'gone' at http://127.0.0.1:{gone} is not answering: connection refused\n"
    )
    code, table, _ = cli("list", "-f", str(manifest))
    assert "hidden:latest" in table and "remote studio" in table


# -- the pure parts, on literals


def test_remote_headers_carry_the_key_and_the_mark() -> None:
    assert remote_headers("http://a", None) == {FORWARDED_HEADER: "1"}
    assert remote_headers("http://a", "k") == {FORWARDED_HEADER: "1", "Authorization": "Bearer k"}


def test_listed_models_keeps_valid_names_by_comparison_key() -> None:
    body = {
        "models": [
            {"name": "Tiny:latest", "model": "Tiny:latest", "size": 1},
            {"name": "tiny", "size": 2},  # the same name again: the first one stays
            {"model": "org/repo"},
            {"name": "bad name"},
            "not an object",
        ]
    }
    assert listed_models(body) == {
        "tiny:latest": {"name": "Tiny:latest", "model": "Tiny:latest", "size": 1},
        "org/repo:latest": {"model": "org/repo"},
    }
    assert listed_models({"models": None}) == {} == listed_models([1, 2])


def test_marked_entries_say_where_the_model_is() -> None:
    assert marked({"model": "m:latest", "size": 3}, "http://studio:11434") == {
        "name": "m:latest",
        "model": "m:latest",
        "size": 3,
        "remote_model": "m:latest",
        "remote_host": "http://studio:11434",
    }


def test_failure_details_are_short_and_name_the_cause() -> None:
    request = httpx.Request("GET", "http://studio/api/tags")
    try:  # as httpx raises it: its own error, over anyio's, over the socket's
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as cause:
            raise httpx.ConnectError("All connection attempts failed") from cause
    except httpx.ConnectError as error:
        refused = error
    assert failure_detail(refused) == "connection refused"
    assert failure_detail(httpx.ConnectError("no route")) == "cannot connect (no route)"
    assert failure_detail(httpx.ReadTimeout("timed out", request=request)).startswith(
        "no answer within"
    )
    unauthorized = httpx.HTTPStatusError(
        "401", request=request, response=httpx.Response(401, request=request)
    )
    assert "api_key" in failure_detail(unauthorized)
    missing = httpx.HTTPStatusError(
        "404", request=request, response=httpx.Response(404, request=request)
    )
    assert failure_detail(missing) == "HTTP 404 on /api/tags"
    assert failure_detail(json.JSONDecodeError("x", "", 0)) == "its /api/tags is not a model list"


def test_a_remote_set_knows_named_models_without_asking() -> None:
    manifest = parse_manifest(
        'version = 1\n[remotes.a]\nurl = "http://10.0.0.1:11434"\nmodels = ["M1"]\n'
        '[remotes.b]\nurl = "http://10.0.0.2:11434"\napi_key = "k"\nmodels = ["m2"]\n'
    )
    remotes = RemoteSet()
    assert not remotes
    remotes.configure(manifest.remotes)

    async def find(name: str) -> RemoteModel | None:
        async with httpx.AsyncClient() as client:  # never used: the names are in the manifest
            return await remotes.find(client, name)

    assert remotes and remotes.unanswered() == []
    assert asyncio.run(find("m1")) == RemoteModel("a", "http://10.0.0.1:11434", None, "M1")
    assert asyncio.run(find("M2:latest")) == RemoteModel("b", "http://10.0.0.2:11434", "k", "m2")
    assert asyncio.run(find("other")) is None
