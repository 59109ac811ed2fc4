"""Secrets at start-up: ``--auth-key-file``, the argv warning, and the refusal of a data dir
or key file that other users of the machine can access (docs/security.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from spool.conftest import child_env, free_port

from logplex.serve.secrets import check_private, exposure, key_given_in_argv, read_key_file
from logplex.serve.settings import ServeConfigError

LOGPLEX = str(Path(sys.executable).parent / "logplex")


@pytest.mark.parametrize(
    ("mode", "directory", "exposed"),
    [
        (0o700, True, False),
        (0o750, True, True),
        (0o701, True, True),
        (0o777, True, True),
        (0o600, False, False),
        (0o400, False, False),
        (0o640, False, True),
        (0o604, False, True),
        (0o644, False, True),
    ],
)
def test_any_group_or_other_bit_is_an_exposure(
    tmp_path: Path, mode: int, directory: bool, exposed: bool
) -> None:
    path = tmp_path / "x"
    if directory:
        path.mkdir()
    else:
        path.write_text("k\n")
    path.chmod(mode)
    found = exposure(path, "thing")
    assert (found is not None) == exposed
    if found is not None:
        assert found.mode == mode
        assert found.fix() == f"chmod {'700' if directory else '600'} {path}"


def test_check_private_refuses_with_every_path_and_its_fix(tmp_path: Path) -> None:
    data, key = tmp_path / "data", tmp_path / "key"
    data.mkdir(mode=0o700)
    data.chmod(0o755)
    key.write_text("k\n")
    key.chmod(0o644)
    paths = [(data, "the data dir"), (key, "--auth-key-file"), (tmp_path / "absent", "x")]
    with pytest.raises(ServeConfigError) as refused:
        check_private(paths, allow_insecure=False)
    text = str(refused.value)
    assert f"the data dir {data} has mode 0755" in text
    assert f"chmod 700 {data}" in text
    assert f"--auth-key-file {key} has mode 0644" in text
    assert f"chmod 600 {key}" in text
    assert "--allow-insecure-permissions" in text
    warnings = check_private(paths, allow_insecure=True)
    assert len(warnings) == 2
    assert all("started anyway" in w for w in warnings)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"one\ntwo\n", "more than one line"),
        (b"\xff\xfe", "not UTF-8"),
        (b"k" * 5000, "larger than 4096 bytes"),
    ],
)
def test_bad_key_files_are_refused(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(ServeConfigError, match=error):
        read_key_file(path)


def test_key_file_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("  s3cret-key \n")
    assert read_key_file(path) == "s3cret-key"
    with pytest.raises(ServeConfigError, match="cannot read --auth-key-file"):
        read_key_file(tmp_path / "missing")


@pytest.mark.parametrize(
    ("argv", "given"),
    [
        (["serve", "--auth-key", "k"], True),
        (["serve", "--auth-key=k"], True),
        (["serve", "--auth-key-file", "f"], False),
        (["serve", "--auth-key-file=f"], False),
        (["serve"], False),
    ],
)
def test_key_in_argv_is_recognised(argv: list[str], given: bool) -> None:
    assert key_given_in_argv(argv) is given


def _serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            LOGPLEX,
            "serve",
            *("--http", "127.0.0.1:0", "--shim", "127.0.0.1:0"),
            "--syslog",
            "127.0.0.1:0",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env or child_env(),
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_a_world_accessible_data_dir_refuses_the_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    result = _serve(tmp_path, "--data-dir", str(data))
    assert result.returncode == 2
    assert f"the data dir {data} has mode 0777" in result.stderr
    assert f"chmod 700 {data}" in result.stderr
    assert not (data / "config.sqlite3").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_readable_key_file_refuses_the_start(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("file-key\n")
    key.chmod(0o644)
    result = _serve(tmp_path, "--data-dir", str(tmp_path / "d"), "--auth-key-file", str(key))
    assert result.returncode == 2
    assert f"--auth-key-file {key} has mode 0644" in result.stderr
    assert "file-key" not in result.stderr


@pytest.mark.slow
def test_both_key_flags_contradict(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("file-key\n")
    result = _serve(
        tmp_path, "--data-dir", str(tmp_path / "d"), "--auth-key", "a", "--auth-key-file", str(key)
    )
    assert result.returncode == 2
    assert "--auth-key and --auth-key-file contradict" in result.stderr


@pytest.mark.slow
def test_auth_key_file_keeps_the_key_out_of_argv_and_serves_with_it(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("file-key-123\n")
    key.chmod(0o600)
    http_port = free_port()
    env = child_env()  # the key file through the environment twin
    env["LOGPLEX_AUTH_KEY_FILE"] = str(key)
    process = subprocess.Popen(
        [
            LOGPLEX,
            "serve",
            *("--data-dir", str(tmp_path / "d")),
            *("--http", f"127.0.0.1:{http_port}"),
            *("--shim", "127.0.0.1:0", "--syslog", "127.0.0.1:0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        for _ in range(3):
            assert process.stdout.readline().startswith(b"listening ")
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"file-key-123" not in cmdline
        api = f"http://127.0.0.1:{http_port}"
        good = httpx.get(f"{api}/v3/channels", headers={"Authorization": "Bearer file-key-123"})
        assert good.status_code == 200
        bad = httpx.get(f"{api}/v3/channels", headers={"Authorization": "Bearer other"})
        assert bad.status_code == 401
        assert not (tmp_path / "d" / "auth-key").exists()  # no key generated beside it
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert b"file-key-123" not in stderr
    assert b"visible to every local user" not in stderr


@pytest.mark.slow
def test_auth_key_in_argv_and_insecure_override_start_with_warnings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    env = child_env()
    process = subprocess.Popen(
        [
            LOGPLEX,
            "serve",
            *("--data-dir", str(data), "--auth-key", "argv-key", "--allow-insecure-permissions"),
            *("--http", "127.0.0.1:0", "--shim", "127.0.0.1:0", "--syslog", "127.0.0.1:0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    for _ in range(3):
        assert process.stdout.readline().startswith(b"listening ")
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0
    text = stderr.decode()
    assert "--auth-key on the command line is visible to every local user" in text
    assert f"the data dir {data} has mode 0755" in text
    assert "started anyway (--allow-insecure-permissions)" in text
    assert "argv-key" not in text
    os.chmod(data, 0o700)
