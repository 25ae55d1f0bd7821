"""``backend = "external"``: probing the servers mlx-lama routes to; plan, ps and list on them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlx_lama.netaddr import url_port
from mlx_lama.orchestrator.inventory import ServerRow, external_rows, inventory
from mlx_lama.orchestrator.observe import observe, observe_externals
from mlx_lama.orchestrator.state import (
    DesiredState,
    ExternalSpec,
    ExternalStatus,
    ModelSpec,
    ObservedState,
)
from tests.fixtures.cli import cli
from tests.fixtures.servers import free_port, mlx_lm_server_argv, running_server

Routes = dict[str, tuple[int, str]]  # path -> (status, JSON or text body)
OPENAI_LIKE: Routes = {
    "/v1/models": (200, json.dumps({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}))
}


@contextmanager
def fake_server(routes: Routes) -> Iterator[str]:
    """A tiny HTTP server on 127.0.0.1 answering ``routes`` (404 elsewhere); yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = routes.get(self.path, (404, "not found"))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_manifest(folder: Path, url: str) -> Path:
    path = folder / "mlxlama.toml"
    path.write_text(f'version = 1\n\n[models.far]\nbackend = "external"\nurl = "{url}/v1"\n')
    return path


# -- probing -------------------------------------------------------------------


def test_a_server_with_a_model_list_answers() -> None:
    with fake_server(OPENAI_LIKE) as url:
        [status] = observe_externals([ExternalSpec("far", url)])
    assert status == ExternalStatus("far", url, True, "HTTP 200, 2 models")


def test_a_server_without_a_model_list_answers_on_its_root() -> None:
    with fake_server({"/": (200, "Ollama is running")}) as url:
        [status] = observe_externals([ExternalSpec("far", url)])
    assert status == ExternalStatus("far", url, True, "HTTP 404 on /v1/models, HTTP 200 on /")


def test_a_failing_server_and_a_closed_port_are_not_answering() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with fake_server({"/v1/models": (500, "boom"), "/": (503, "down")}) as url:
        statuses = observe_externals([ExternalSpec("b", closed), ExternalSpec("a", url)])
    assert statuses == (
        ExternalStatus("a", url, False, "HTTP 500 on /v1/models, HTTP 503 on /"),
        ExternalStatus("b", closed, False, "connection refused"),
    )


def test_observe_warns_about_an_external_server_that_does_not_answer() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    observed = observe(externals=[ExternalSpec("far", closed)])
    assert observed.externals == (ExternalStatus("far", closed, False, "connection refused"),)
    assert observed.warnings == (
        f"external server 'far' at {closed} is not answering: connection refused",
    )


def test_observe_without_externals_does_not_import_httpx() -> None:
    script = (
        "import sys\n"
        "from mlx_lama.orchestrator.observe import observe\n"
        "assert observe().externals == ()\n"
        "print('httpx' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr


# -- rows (pure) ---------------------------------------------------------------


def test_list_shows_external_models_among_the_manifest_models() -> None:
    desired = DesiredState(
        models=(ModelSpec("b", "org/b", "main"), ModelSpec("d", "org/d", "main")),
        externals=(ExternalSpec("a", "http://127.0.0.1:1234"), ExternalSpec("c", "http://h")),
    )
    rows = inventory(desired, ObservedState())
    assert [(r.name, r.status, r.url) for r in rows] == [
        ("a", "external", "http://127.0.0.1:1234"),
        ("b", "not pulled", None),
        ("c", "external", "http://h"),
        ("d", "not pulled", None),
    ]


def test_ps_rows_for_externals_take_the_port_from_the_url() -> None:
    rows = external_rows(
        (
            ExternalStatus("a", "http://127.0.0.1:1234", True, "HTTP 200, 1 model"),
            ExternalStatus("b", "https://box.lan/proxy", False, "connection refused"),
        ),
        "/p/mlxlama.toml",
    )
    assert rows == [
        ServerRow(
            "a", "external", 1234, None, "answering", None, None,
            "http://127.0.0.1:1234", "HTTP 200, 1 model", project="/p/mlxlama.toml",
        ),
        ServerRow(
            "b", "external", 443, None, "not answering", None, None,
            "https://box.lan/proxy", "connection refused", project="/p/mlxlama.toml",
        ),
    ]  # fmt: skip
    assert rows[0].to_json(now=100.0)["uptime"] is None
    assert url_port("http://h") == 80


# -- the command line ----------------------------------------------------------


def test_plan_ps_and_list_with_an_external_server(tmp_path: Path) -> None:
    with fake_server(OPENAI_LIKE) as url:
        manifest = write_manifest(tmp_path, url)
        code, out, err = cli("ps", "-f", str(manifest), "--json")
        assert code == 0, err
        [row] = json.loads(out)
        assert (row["name"], row["backend"], row["state"], row["url"]) == (
            "far",
            "external",
            "answering",
            url,
        )
        assert (row["pid"], row["uptime"], row["memory"]) == (None, None, None)
        assert cli("plan", "-f", str(manifest), "--detailed-exitcode") == (0, "No changes.\n", "")
        code, out, err = cli("list", "-f", str(manifest))
        assert (code, err) == (0, "")
        assert out.splitlines()[1].split() == ["far", "-", "-", "-", "external"]

    # The server is gone: plan still has nothing to do, but says so on stderr.
    code, out, err = cli("plan", "-f", str(manifest), "--detailed-exitcode")
    assert (code, out) == (0, "No changes.\n")
    assert err == f"warning: external server 'far' at {url} is not answering: connection refused\n"
    code, out, _ = cli("ps", "-f", str(manifest))
    assert code == 0
    header, line = out.splitlines()
    assert header.split() == [
        "NAME", "PROJECT", "BACKEND", "PORT", "PID", "STATE", "UPTIME", "MEMORY", "ESTIMATE"
    ]  # fmt: skip
    port = url.rsplit(":", 1)[1]
    project = manifest.parent.name
    assert line.split() == [
        "far", project, "external", port, "-", "not", "answering", "-", "-", "-"
    ]  # fmt: skip


def test_ps_without_a_manifest_lists_no_externals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("ps", "--json")
    assert (code, json.loads(out), err) == (0, [], "")


def test_ps_with_a_broken_discovered_manifest_still_lists_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mlxlama.toml").write_text('version = 1\n[models.far]\nbackend = "external"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("ps", "--json")
    assert (code, json.loads(out)) == (0, [])
    assert err.startswith("warning: external servers not shown: ")
    assert "an external model needs a url" in err
    # Named with -f, the same manifest is an error.
    code, _, err = cli("ps", "-f", str(tmp_path / "mlxlama.toml"))
    assert code == 1 and "an external model needs a url" in err


@pytest.mark.server
def test_a_real_mlx_lm_server_as_an_external_backend(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    manifest = write_manifest(tmp_path, f"http://127.0.0.1:{port}")
    argv = mlx_lm_server_argv(tiny_model, port)
    with running_server(argv, port=port, log_path=tmp_path / "server.log"):
        code, out, err = cli("ps", "-f", str(manifest), "--json")
        assert code == 0, err
        [row] = json.loads(out)
        assert (row["name"], row["backend"], row["port"], row["state"]) == (
            "far",
            "external",
            port,
            "answering",
        )
        assert row["detail"].startswith("HTTP 200")
        assert cli("plan", "-f", str(manifest), "--detailed-exitcode") == (0, "No changes.\n", "")

    code, out, err = cli("plan", "-f", str(manifest), "--detailed-exitcode")
    assert (code, out) == (0, "No changes.\n")
    assert err == (
        f"warning: external server 'far' at http://127.0.0.1:{port} is not answering: "
        "connection refused\n"
    )
    [row] = json.loads(cli("ps", "-f", str(manifest), "--json")[1])
    assert (row["state"], row["detail"]) == ("not answering", "connection refused")
