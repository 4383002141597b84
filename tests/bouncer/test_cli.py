"""``python -m continuation bouncer``: secrets from files, one-line errors, uvicorn config; and
``serve`` putting the wake endpoint in front of a system with a ``BouncerTimer``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from continuation import ActorSystem, BouncerTimer
from continuation._cli import main
from continuation.bouncer._command import read_secret, read_tokens

from .conftest import KEY, TOKEN


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    tokens, key = tmp_path / "tokens", tmp_path / "key"
    tokens.write_text(f"\n# rotated in May\n  {TOKEN}  \nsecond-token-0123456789\n")
    key.write_bytes(KEY + b"\n")
    return tokens, key


def _argv(tmp_path: Path, tokens: Path, key: Path, *extra: str) -> list[str]:
    db = str(tmp_path / "w.db")
    return [
        "bouncer",
        "--db",
        db,
        "--token-file",
        str(tokens),
        "--signing-key-file",
        str(key),
        *extra,
    ]


def test_secrets_are_read_from_files(secrets: tuple[Path, Path]) -> None:
    tokens, key = secrets
    assert read_tokens(str(tokens)) == [TOKEN, "second-token-0123456789"]
    assert read_secret(str(key)) == KEY


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokens": None}, "cannot read the token file"),
        ({"tokens": "# nothing here\n\n"}, "holds no token"),
        ({"tokens": "short\n"}, "at least 16 printable"),
        ({"key": b"short"}, "at least 16 bytes"),
        ({"key": b"\xff" * 20}, "cannot read the signing key file"),
        ({"extra": ["--min-delay", "100", "--max-delay", "50"]}, "greater than max_delay"),
        ({"extra": ["--give-up-after", "-1"]}, "give_up_after must be"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_1(
    tmp_path: Path,
    secrets: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    message: str,
) -> None:
    tokens, key = secrets
    if "tokens" in change:
        if change["tokens"] is None:
            tokens = tmp_path / "missing"
        else:
            tokens.write_text(change["tokens"])
    if "key" in change:
        key.write_bytes(change["key"])
    assert main(_argv(tmp_path, tokens, key, *change.get("extra", []))) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m continuation: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bouncer", "--db", "x.db"]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_the_bouncer_runs_under_uvicorn_with_the_options_given(
    tmp_path: Path, secrets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[uvicorn.Config] = []

    async def serve(self: uvicorn.Server) -> None:
        seen.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    argv = _argv(tmp_path, *secrets, "--host", "0.0.0.0", "--port", "9999", "--min-delay", "5")
    assert main(argv) == 0
    (config,) = seen
    assert (config.host, config.port, config.lifespan) == ("0.0.0.0", 9999, "on")
    assert config.app.state.bouncer.min_delay == 5


async def test_serve_puts_the_wake_endpoint_in_front_of_a_system_with_a_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from continuation._serve import serve

    seen: list[Any] = []

    async def fake_serve(self: uvicorn.Server) -> None:
        seen.append(self.config.app)

    monkeypatch.setattr(uvicorn.Server, "serve", fake_serve)
    timer = BouncerTimer(
        "http://127.0.0.1:1", token=TOKEN, callback_url="http://h/bouncer/wake", signing_key=KEY
    )
    for system in (ActorSystem(), ActorSystem(timer=timer)):
        await serve(system, host="127.0.0.1", port=1, prefix="/rpc", log_level="warning")
    plain, woken = seen
    for app, expected in ((plain, 404), (woken, 401)):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app._app), base_url="http://h"
        ) as client:
            response = await client.post("/bouncer/wake", content=b"{}")
            assert response.status_code == expected
