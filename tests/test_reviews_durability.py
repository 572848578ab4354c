"""Verdicts on SQLite survive a killed writer process, and concurrent writer processes lose nothing."""
from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from covid_models.imaging.io import content_hash
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import NewItem
from covid_models.reviews.store import ReviewStore

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name("_review_writer.py")
PROCESS_TIMEOUT_S = 120  # a guard against a hung writer, not a performance expectation


def start_writer(url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, str(WRITER), url, *args],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def read_lines(process: subprocess.Popen[bytes], count: int) -> bytes:
    """Block until the writer has reported `count` commits (or fail if it dies or hangs)."""
    assert process.stdout is not None
    received = b""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while received.count(b"\n") < count:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            process.kill()
            _, stderr = process.communicate()
            reported = received.count(b"\n")
            raise AssertionError(f"writer stopped after {reported} commits: {stderr.decode()[-2000:]}")
        received += chunk
    return received


def parse_commits(output: bytes) -> list[tuple[int, int, int]]:
    """(write index, session id, position) of every complete line the writer printed."""
    lines = output.decode().split("\n")[:-1]  # a line cut by the kill has no newline: not reported
    return [tuple(int(field) for field in line.split()) for line in lines]  # type: ignore[misc]


def assert_sqlite_file_is_sound(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def test_every_verdict_reported_committed_survives_the_writer_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "reviews.sqlite3"
    url = f"sqlite:///{path}"
    n_items = 12
    with ReviewStore(url) as store:
        items = [NewItem(content_hash(bytes([i])), f"{i}.png", "covid", 0.6, 0.5) for i in range(n_items)]
        session_id = store.start_session(Reviewer("name:dr kim", "Dr Kim"), "m", "xray", items)

    writer = start_writer(url, "--session", str(session_id), "--forever")
    seen = read_lines(writer, 150)  # well over one pass: later writes replace earlier ones
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate(timeout=PROCESS_TIMEOUT_S)
    assert writer.returncode == -signal.SIGKILL

    commits = parse_commits(seen + rest)
    assert [index for index, _, _ in commits] == list(range(len(commits)))
    last_reported = {position: index for index, _, position in commits}
    assert set(last_reported) == set(range(n_items))
    # At most one write can have committed without being reported: the one in flight at the kill.
    in_flight = len(commits)

    assert_sqlite_file_is_sound(path)
    with ReviewStore(url) as reopened:
        for item in reopened.items(session_id):
            stored_index = int(item.note.removeprefix("write "))
            allowed = {last_reported[item.position]} | ({in_flight} if in_flight % n_items == item.position else set())
            assert stored_index in allowed, f"position {item.position}: stored write {stored_index}, expected {allowed}"
            assert item.verdict == ("agree", "unsure")[stored_index % 2]
        reopened.record_verdict(session_id, 0, "disagree", note="after the crash")
        assert reopened.items(session_id)[0].note == "after the crash"


def test_concurrent_writer_processes_on_one_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "reviews.sqlite3"  # not created yet: the writers also race to create the schema
    url = f"sqlite:///{path}"
    n_writers, n_items = 4, 30

    writers = [start_writer(url, "--new-session", f"writer-{k}", "--items", str(n_items)) for k in range(n_writers)]
    outputs = [writer.communicate(timeout=PROCESS_TIMEOUT_S) for writer in writers]
    for writer, (_, stderr) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, stderr.decode()[-2000:]

    assert_sqlite_file_is_sound(path)
    with ReviewStore(url) as store:
        sessions = {info.reviewer: info for info in store.sessions()}
        assert sorted(sessions) == [f"writer-{k}" for k in range(n_writers)]
        for (stdout, _), k in zip(outputs, range(n_writers), strict=True):
            info = sessions[f"writer-{k}"]
            reported = [(session_id, position) for _, session_id, position in parse_commits(stdout)]
            assert reported == [(info.id, position) for position in range(n_items)]
            assert (info.n_items, info.n_reviewed) == (n_items, n_items)
            notes = [item.note for item in store.items(info.id)]
            assert notes == [f"write {position}" for position in range(n_items)]
