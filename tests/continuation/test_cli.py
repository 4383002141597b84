"""``python -m continuation``: ls, show, cancel and retry against a real database, an SQLite
file or a PostgreSQL schema (``seeded`` is parametrized through ``db_path``)."""

from __future__ import annotations

import asyncio
import json
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from continuation import (
    Actor,
    ActorSystem,
    AlarmInfo,
    Continuation,
    ContinuationStatus,
    ManualClock,
)
from continuation._cli import main
from tests.postgres import execute_behind

REPO_ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
# Looks like rich markup and an emoji code; the CLI must print it as it is.
# Short enough that the chain renderer keeps it whole, long enough for ``ls`` to truncate.
BOOM = "RuntimeError: boom: the handler always fails"
TRICKY_LABEL = "[bold]x[/bold] :smile: " + "y" * 30


class Tasks(Actor):
    def plan(self, label: str, delay: float) -> str:
        c = Continuation(self)
        return self.continue_(c.handle(label, c.result), strategy="alarm", delay=delay)

    def plan_guarded(self, delay: float) -> str:
        c = Continuation(self)
        return self.continue_(
            c.handle("guarded", c.result), c.recover(c.error), strategy="alarm", delay=delay
        )

    def plan_doomed(self) -> str:
        c = Continuation(self)
        return self.continue_(c.explode(c.result), strategy="alarm", delay=5, retry=1)

    def handle(self, label: str, fired: AlarmInfo) -> None:
        self.storage.put(label, fired.attempt)

    def recover(self, error: Exception) -> None:
        self.storage.put("recovered", str(error))

    def explode(self, fired: AlarmInfo) -> None:
        raise RuntimeError(BOOM.removeprefix("RuntimeError: "))


class Mailer(Tasks):
    binding = "mailer"


@dataclass(frozen=True)
class Seeded:
    db: str
    done: str
    tricky: str
    guarded: str
    dead: str
    other_instance: str
    mail: str


async def _seed(db: str) -> Seeded:
    async with ActorSystem(db, actors=[Tasks, Mailer], clock=ManualClock(start=START)) as system:
        tasks = system.get(Tasks, "t-1")
        seeded = Seeded(
            db=db,
            done=await tasks.plan("done", 10),
            tricky=await tasks.plan(TRICKY_LABEL, 3600),
            guarded=await tasks.plan_guarded(3600),
            dead=await tasks.plan_doomed(),
            other_instance=await system.get(Tasks, "t-2").plan("elsewhere", 7200),
            mail=await system.get(Mailer, "m-1").plan("send", 7200),
        )
        await system.advance(60)
        assert (await system.continuation(seeded.dead)).status == ContinuationStatus.DEAD
    return seeded


@pytest.fixture(autouse=True)
def wide_plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads these: a wide terminal, so tables are not cut unpredictably, and no colour."""
    monkeypatch.setenv("COLUMNS", "250")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def seeded(db_path: str) -> Seeded:
    # Synchronous on purpose: main() runs its own event loop, so tests that call it are sync.
    return asyncio.run(_seed(db_path))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _row_of(output: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is ``first_cell``."""
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]
    [row] = [row for row in rows if row[0] == first_cell]
    return row


def _assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith("python -m continuation: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


# -- ls ------------------------------------------------------------------------------------


def test_ls_lists_every_continuation_with_actor_status_and_due_time(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "ls", "--db", seeded.db)
    assert code == 0
    assert err == ""
    [header] = [line for line in out.splitlines() if line.startswith("┃")]
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "id",
        "actor",
        "status",
        "due (UTC)",
        "attempts",
        "chain",
        "last error",
    ]
    assert _row_of(out, seeded.done)[1:] == [
        "Tasks/t-1",
        "completed",
        "-",
        "1",
        "handle('done', <result>)",
        "-",
    ]
    assert _row_of(out, seeded.guarded)[1:] == [
        "Tasks/t-1",
        "pending",
        "2026-01-01T13:00:00Z",
        "0",
        "handle('guarded', <result>)",
        "-",
    ]
    assert _row_of(out, seeded.dead)[1:] == [
        "Tasks/t-1",
        "dead",
        "-",
        "1",
        "explode(<result>)",
        BOOM,
    ]
    assert _row_of(out, seeded.mail)[1:3] == ["mailer/m-1", "pending"]
    assert _row_of(out, seeded.other_instance)[1:4] == [
        "Tasks/t-2",
        "pending",
        "2026-01-01T14:00:00Z",
    ]


def test_ls_prints_user_text_literally_and_truncates_long_chains(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "ls", "--db", seeded.db)
    assert code == 0
    chain = _row_of(out, seeded.tricky)[5]
    assert chain == f"handle({TRICKY_LABEL!r}, <result>)"[:47] + "…"
    assert chain.startswith("handle('[bold]x[/bold] :smile: yyy")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--status", "dead"], {"dead"}),
        (["--status", "dead", "--status", "completed"], {"dead", "done"}),
        (["--binding", "mailer"], {"mail"}),
        (["--instance", "t-2"], {"other_instance"}),
        (["--binding", "Tasks", "--status", "pending"], {"tricky", "guarded", "other_instance"}),
    ],
)
def test_ls_filters(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], filters: list[str], expected: set[str]
) -> None:
    code, out, _ = _run(capsys, "ls", "--db", seeded.db, *filters)
    assert code == 0
    everything = {"done", "tricky", "guarded", "dead", "other_instance", "mail"}
    assert {name for name in everything if getattr(seeded, name) in out} == expected


def test_ls_says_when_nothing_matches(seeded: Seeded, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "ls", "--db", seeded.db, "--status", "cancelled")
    assert (code, out, err) == (0, "no continuations match\n", "")


def test_ls_limit_shows_the_oldest_and_says_there_may_be_more(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "ls", "--db", seeded.db, "--limit", "2", "--json")
    assert code == 0
    assert len(out.splitlines()) == 2
    assert err == "showing the first 2; raise --limit to see more\n"


def test_ls_json_prints_one_object_per_continuation(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "ls", "--db", seeded.db, "--json")
    assert code == 0
    rows = {row["id"]: row for row in map(json.loads, out.splitlines())}
    assert len(rows) == 6
    dead = rows[seeded.dead]
    assert dead["status"] == "dead"
    assert dead["binding"] == "Tasks"
    assert dead["instance"] == "t-1"
    assert dead["attempts"] == 1
    assert dead["due_at"] is None
    assert dead["last_error"] == BOOM
    assert "audit" not in dead
    tricky = rows[seeded.tricky]
    assert tricky["chain"] == f"handle({TRICKY_LABEL!r}, <result>)"
    assert datetime.fromisoformat(tricky["due_at"]) == datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
    assert rows[seeded.guarded]["error_chain"] == "recover(<error>)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ls", "--db", "x.db", "--status", "sleeping"], "invalid choice: 'sleeping'"),
        (["ls", "--db", "x.db", "--limit", "0"], "must be a positive integer, not '0'"),
        (["ls", "--db", "x.db", "--limit", "many"], "must be a positive integer, not 'many'"),
        (["ls"], "the following arguments are required: --db"),
        (["show", "--db", "x.db"], "the following arguments are required: CID"),
        ([], "the following arguments are required: COMMAND"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_usage_errors_exit_with_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err


def test_help_exits_with_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for command in ("ls", "show", "cancel", "retry"):
        assert command in out


# -- show ----------------------------------------------------------------------------------


def test_show_prints_every_field_the_audit_trail_and_the_traceback(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "show", "--db", seeded.db, seeded.dead)
    assert code == 0
    assert err == ""
    fields = (
        "binding",
        "instance",
        "strategy",
        "status",
        "chain",
        "error_chain",
        "due_at",
        "scheduled_at",
        "attempts",
        "last_error",
        "created_at",
        "updated_at",
        "finished_at",
        "key",
        "cron",
        "version",
        "cancel_requested",
    )
    for field in fields:
        assert _row_of(out, field), field
    assert f"continuation {seeded.dead}" in out
    assert _row_of(out, "id") == ["id", seeded.dead]
    assert _row_of(out, "strategy") == ["strategy", "alarm"]
    assert _row_of(out, "status") == ["status", "dead"]
    assert _row_of(out, "chain") == ["chain", "explode(<result>)"]
    assert _row_of(out, "error_chain") == ["error_chain", "-"]
    assert _row_of(out, "created_at") == ["created_at", "2026-01-01T12:00:00Z"]
    assert _row_of(out, "finished_at") == ["finished_at", "2026-01-01T12:00:05Z"]
    assert _row_of(out, "cancel_requested") == ["cancel_requested", "no"]
    assert "audit trail" in out
    audit = [line for line in out.splitlines() if "2026-01-01T12:00:0" in line]
    assert [[cell.strip() for cell in line.split("│")[1:4]] for line in audit[-3:]] == [
        ["2026-01-01T12:00:00Z", "scheduled", "-"],
        ["2026-01-01T12:00:05Z", "attempt failed", f"attempt 1: {BOOM}"],
        ["2026-01-01T12:00:05Z", "dead", "after 1 attempts"],
    ]
    assert "Traceback of the last failure:" in out
    assert ", in explode\n" in out
    assert out.rstrip().endswith(BOOM)


def test_show_prints_the_whole_chain_literally(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "show", "--db", seeded.db, seeded.tricky)
    assert code == 0
    assert _row_of(out, "chain") == ["chain", f"handle({TRICKY_LABEL!r}, <result>)"]
    assert "Traceback" not in out


def test_show_json_includes_the_audit_trail(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "show", "--db", seeded.db, seeded.dead, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["id"] == seeded.dead
    assert data["status"] == "dead"
    assert data["cancel_requested"] is False
    assert data["last_traceback"].rstrip().endswith(BOOM)
    assert [event["event"] for event in data["audit"]] == ["scheduled", "attempt failed", "dead"]
    assert data["audit"][-1]["detail"] == "after 1 attempts"
    assert datetime.fromisoformat(data["audit"][0]["at"]) == START


# -- cancel and retry ----------------------------------------------------------------------


def test_cancel_cancels_a_pending_continuation(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "cancel", "--db", seeded.db, seeded.tricky)
    assert (code, out, err) == (0, f"{seeded.tricky}: cancelled\n", "")
    _, shown, _ = _run(capsys, "show", "--db", seeded.db, seeded.tricky, "--json")
    data = json.loads(shown)
    assert data["status"] == "cancelled"
    assert data["audit"][-1]["event"] == "cancelled"


def test_cancel_with_an_error_chain_leaves_it_to_receive_the_cancellation(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "cancel", "--db", seeded.db, seeded.guarded)
    assert (code, out) == (0, f"{seeded.guarded}: pending (cancel requested)\n")
    _, listing, _ = _run(capsys, "ls", "--db", seeded.db, "--status", "pending")
    assert _row_of(listing, seeded.guarded)[2] == "pending (cancel requested)"


def test_retry_requeues_a_dead_continuation(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "retry", "--db", seeded.db, seeded.dead)
    assert (code, out, err) == (0, f"{seeded.dead}: pending\n", "")
    _, shown, _ = _run(capsys, "show", "--db", seeded.db, seeded.dead, "--json")
    data = json.loads(shown)
    assert data["status"] == "pending"
    assert data["attempts"] == 0
    assert (data["audit"][-1]["event"], data["audit"][-1]["detail"]) == ("retried", "was dead")


@pytest.mark.parametrize(
    ("command", "target", "message"),
    [
        ("cancel", "dead", "cannot cancel continuation {cid}: it is dead"),
        ("cancel", "done", "cannot cancel continuation {cid}: it is completed"),
        ("retry", "tricky", "cannot retry continuation {cid}: it is pending"),
        ("retry", "done", "cannot retry continuation {cid}: it is completed"),
    ],
)
def test_cancel_and_retry_refuse_the_wrong_status(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], command: str, target: str, message: str
) -> None:
    cid = getattr(seeded, target)
    code, out, err = _run(capsys, command, "--db", seeded.db, cid)
    assert (code, out) == (1, "")
    _assert_one_line_error(err, message.format(cid=cid))


@pytest.mark.parametrize("command", ["show", "cancel", "retry"])
def test_unknown_id_is_an_error(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = _run(capsys, command, "--db", seeded.db, "no-such-id")
    assert (code, out) == (1, "")
    _assert_one_line_error(err, "no continuation has the id 'no-such-id'")


# -- the database ----------------------------------------------------------------------------
# A file that is missing, a directory, or not SQLite: about SQLite files only.


@pytest.mark.parametrize("argv", [["ls"], ["show", "x"], ["cancel", "x"], ["retry", "x"]])
def test_missing_database_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = tmp_path / "missing.db"
    code, out, err = _run(capsys, *argv, "--db", str(missing))
    assert (code, out) == (1, "")
    _assert_one_line_error(err, f"no database at {str(missing)!r}: the file does not exist")
    assert list(tmp_path.iterdir()) == []


def test_directory_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "ls", "--db", str(tmp_path))
    assert code == 1
    _assert_one_line_error(err, f"{str(tmp_path)!r} is not a database file")


def test_file_that_is_not_sqlite_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"this is not a database\n" * 100)
    code, _, err = _run(capsys, "ls", "--db", str(junk))
    assert code == 1
    _assert_one_line_error(err, "cannot open the database", "file is not a database")
    assert junk.read_bytes() == b"this is not a database\n" * 100


def test_unreachable_postgresql_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://app:secret@127.0.0.1:1/app"
    code, out, err = _run(capsys, "ls", "--db", url)
    assert (code, out) == (1, "")
    _assert_one_line_error(err, "cannot open the database 'postgresql://app:***@127.0.0.1:1/app'")
    assert "secret" not in err


def test_database_of_a_newer_schema_is_refused(
    seeded: Seeded, capsys: pytest.CaptureFixture[str]
) -> None:
    execute_behind(seeded.db, "INSERT INTO schema_version (version) VALUES (99)")
    code, out, err = _run(capsys, "ls", "--db", seeded.db)
    assert (code, out) == (1, "")
    _assert_one_line_error(err, "schema version 99", "upgrade the library")


# -- python -m continuation ----------------------------------------------------------------


def test_python_dash_m_runs_the_cli(seeded: Seeded) -> None:
    env = {**os.environ, "COLUMNS": "250", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, "-m", "continuation", "ls", "--db", seeded.db, "--status", "dead"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert seeded.dead in done.stdout
    assert _row_of(done.stdout, seeded.dead)[2] == ContinuationStatus.DEAD.value
    assert seeded.done not in done.stdout


def test_python_dash_m_reports_a_missing_database_in_one_line(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "continuation", "show", "x", "--db", str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", "PYTHONIOENCODING": "utf-8"},
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert "no database at" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_main_module_exits_with_the_code_of_main(
    seeded: Seeded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["continuation", "show", "--db", seeded.db, seeded.dead])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("continuation", run_name="__main__")
    assert exit_.value.code == 0
    assert _row_of(capsys.readouterr().out, "status") == ["status", "dead"]
