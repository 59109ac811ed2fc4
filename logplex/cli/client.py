"""The admin API as the CLI sees it: where it is, the key, requests and error messages.

DESIGN sections 2 and 3. The API is ``--api URL`` / ``LOGPLEX_API_URL`` (default
``http://127.0.0.1:8001``); the key is ``--auth-key`` / ``LOGPLEX_AUTH_KEY``, else the local
router's ``DATA_DIR/auth-key`` (DATA_DIR from ``--data-dir`` / ``LOGPLEX_DATA_DIR``, default
``./.logplex``). Every failure becomes a ``CliError`` whose message says what went wrong and
what to do; the commands (``logplex.cli.admin``) and ``logplex tail`` (``logplex.cli.tail``)
print it and exit 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import httpx

DEFAULT_API_URL: Final = "http://127.0.0.1:8001"
DEFAULT_DATA_DIR: Final = "./.logplex"
REQUEST_TIMEOUT_S: Final = 30.0


class CliError(Exception):
    """Printed as ``logplex: error: MESSAGE``; exit status 1."""


def resolve_api_url(args: argparse.Namespace, environ: dict[str, str]) -> str:
    url: str = args.api or environ.get("LOGPLEX_API_URL") or DEFAULT_API_URL
    return url.rstrip("/")


def resolve_auth_key(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """``--auth-key``, else ``LOGPLEX_AUTH_KEY``, else the data dir's ``auth-key`` file."""
    if args.auth_key:
        return str(args.auth_key)
    if environ.get("LOGPLEX_AUTH_KEY"):
        return environ["LOGPLEX_AUTH_KEY"]
    data_dir = Path(args.data_dir or environ.get("LOGPLEX_DATA_DIR") or DEFAULT_DATA_DIR)
    key_file = data_dir / "auth-key"
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CliError(
            f"no API key: pass --auth-key or set LOGPLEX_AUTH_KEY, or run where the router's "
            f"data dir is ({key_file} does not exist; set --data-dir or LOGPLEX_DATA_DIR)"
        ) from None
    except OSError as error:
        raise CliError(f"cannot read the API key from {key_file}: {error.strerror}") from None
    if not key:
        raise CliError(f"the API key file {key_file} is empty")
    return key


class ApiClient:
    """Small synchronous client of the router API; every failure becomes a ``CliError``."""

    def __init__(self, base_url: str, auth_key: str) -> None:
        self.base_url = base_url
        self._client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {auth_key}"},
            timeout=REQUEST_TIMEOUT_S,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self, method: str, path: str, *, json_body: object = None, expect: Sequence[int] = (200,)
    ) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=json_body)
        except httpx.HTTPError as error:
            raise connection_error(self.base_url, error) from None
        if response.status_code not in expect:
            raise CliError(api_error_message(response))
        return response


def connection_error(base_url: str, error: httpx.HTTPError) -> CliError:
    if isinstance(error, httpx.ConnectError):
        return CliError(
            f"cannot connect to the logplex API at {base_url} ({error}); the router may not "
            "be running: start it with `logplex serve`, or point --api / LOGPLEX_API_URL at it"
        )
    if isinstance(error, httpx.TimeoutException):
        return CliError(f"the logplex API at {base_url} did not answer in time ({error!r})")
    return CliError(f"talking to the logplex API at {base_url} failed: {error}")


def api_error_message(response: httpx.Response) -> str:
    try:
        reason = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        reason = response.text.strip() or response.reason_phrase
    hint = ""
    if response.status_code == 401:
        hint = " (check --auth-key / LOGPLEX_AUTH_KEY or the data dir's auth-key)"
    request = response.request
    return f"{request.method} {request.url.path}: {response.status_code} {reason}{hint}"
