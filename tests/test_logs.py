"""``mlx-lama logs``: the last lines of a log, ``--follow`` like ``tail -f``, and
which file a name means (a model, an alias, the daemon's own).

The file-reading pieces run on files written here; ``--follow`` runs as a real
subprocess against a daemon serving the tiny model, and must show what the
model's server writes after it started following.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlx_lama import paths
from mlx_lama.cli.logs import follow_file, last_lines
from tests.fixtures.cli import cli
from tests.fixtures.gateway import gateway_process, wait_for

DEADLINE = 120.0  # s; only how long a hung test waits, never a performance bound


def _last(path: Path, count: int) -> bytes:
    with path.open("rb") as handle:
        data = last_lines(handle, count)
        assert handle.tell() == path.stat().st_size  # left at the end, ready to follow
        return data


def test_last_lines_are_the_tail_of_the_file(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    assert _last(log, 2) == b"two\nthree\n"
    assert _last(log, 10) == b"one\ntwo\nthree\n"
    assert _last(log, 0) == b""
    log.write_bytes(b"one\ntwo\npartial")  # a line still being written counts as the last
    assert _last(log, 2) == b"two\npartial"
    log.write_bytes(b"")
    assert _last(log, 5) == b""


def test_last_lines_of_a_log_larger_than_one_read(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    rows = [f"line {i:06d} {'x' * 60}\n".encode() for i in range(5000)]  # ~350 KB
    log.write_bytes(b"".join(rows))
    assert _last(log, 3) == b"".join(rows[-3:])
    assert _last(log, 2000) == b"".join(rows[-2000:])


def _follow(path: Path, until: bytes, act: threading.Thread) -> bytes:
    """Follow ``path`` from its end while ``act`` writes, until ``until`` was seen."""
    seen = bytearray()
    deadline = time.monotonic() + DEADLINE
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        act.start()
        follow_file(
            path,
            handle,
            seen.extend,
            lambda: None,
            poll=0.02,
            keep_going=lambda: until not in seen and time.monotonic() < deadline,
        )
    act.join()
    return bytes(seen)


def test_follow_prints_appended_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"old\n")

    def append() -> None:
        for word in (b"new1\n", b"new2\n", b"end\n"):
            time.sleep(0.05)
            with log.open("ab") as handle:
                handle.write(word)

    assert _follow(log, b"end\n", threading.Thread(target=append)) == b"new1\nnew2\nend\n"


def test_follow_starts_over_after_truncation_and_reopens_a_replaced_file(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"a long first life of the log\n")

    def rewrite() -> None:
        time.sleep(0.1)
        log.write_bytes(b"short\n")  # truncated in place: same file, smaller
        time.sleep(0.2)
        fresh = tmp_path / "fresh.log"
        fresh.write_bytes(b"replaced\n")
        fresh.replace(log)  # a new file under the same name (a rotated log)

    seen = _follow(log, b"replaced\n", threading.Thread(target=rewrite))
    assert seen == b"short\nreplaced\n"


def test_logs_names_the_file_it_lacks_and_refuses_bad_names(tmp_path: Path) -> None:
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(
        f'version = 1\n\n[aliases]\nmini = "tiny"\n\n[models.tiny]\npath = "{tmp_path}"\n'
    )
    code, out, err = cli("logs", "-f", str(manifest))
    assert code == 1 and out == ""
    assert "no daemon log yet" in err and "mlx-lama serve" in err
    code, _, err = cli("logs", "-f", str(manifest), "mini")
    assert code == 1 and "no log for 'mini'" in err and "tiny.log" in err  # the alias's model
    code, _, err = cli("logs", "-f", str(manifest), "../../etc/passwd")
    assert code == 1 and "invalid model name" in err and "Traceback" not in err

    (paths.logs_dir()).mkdir(parents=True)
    (paths.logs_dir() / "tiny.log").write_text("first\nsecond\nthird\n")
    code, out, _ = cli("logs", "-f", str(manifest), "tiny:latest", "-n", "2")
    assert (code, out) == (0, "second\nthird\n")


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.server
def test_follow_shows_what_a_server_writes_after_it_started(
    tmp_path: Path, tiny_model: Path
) -> None:
    model = tmp_path / "tiny"
    shutil.copytree(tiny_model, model)
    manifest = tmp_path / "mlxlama.toml"
    manifest.write_text(f'version = 1\n\n[models.tiny]\npath = "{model}"\nserve = "always"\n')
    with gateway_process(manifest, log_path=tmp_path / "serve.log") as gateway:
        wait_for(
            lambda: gateway.health()["models"]["tiny"]["state"] == "ready",  # type: ignore[index]
            DEADLINE,
            "tiny to be ready",
        )
        code, out, _ = cli("logs", "-f", str(manifest))  # the daemon's own log
        assert code == 0 and "mlx_lama" in out
        argv = [sys.executable, "-m", "mlx_lama", "logs", "tiny", "--follow", "-n", "0"]
        argv += ["-f", str(manifest)]
        follower = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert follower.stdout is not None
            shown = b""
            deadline = time.monotonic() + DEADLINE
            # A request a second until the server's own access line shows: the first
            # ones may be written before the follower has read to the end and waits.
            while b"POST /v1/chat/completions" not in shown:
                assert time.monotonic() < deadline, f"--follow showed only {shown!r}"
                assert follower.poll() is None
                reply = httpx.post(
                    gateway.url + "/v1/chat/completions",
                    json={"model": "tiny", "messages": USER, "max_tokens": 2},
                    timeout=DEADLINE,
                )
                assert reply.status_code == 200
                if select.select([follower.stdout], [], [], 1.0)[0]:
                    shown += os.read(follower.stdout.fileno(), 65536)
        finally:
            follower.terminate()
            follower.communicate(timeout=30)
