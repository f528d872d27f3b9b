"""The operator's first hour (issue 19, item 10): `kinwire serve` run as a real process by
someone who got something wrong. Each mistake gives one line on standard error that says what
failed, why and what to do, exit status 1 and no traceback; the start-up banner appears only
once the port is really bound; a misspelt KINWIRE_* variable is named with the setting it
resembles; logs are text at a terminal (a real pseudo-terminal here) and JSON into a pipe; and
`--help` describes every command and option.

Adversaries: a database and a Redis that nothing listens for (a port bound, then closed: a
refused connection is immediate and certain), a port another program holds, a password in the
URL that must not be printed, and an operator who types KINWIRE_VISIT_MINUTES."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from server.cli import parser
from server.settings import OTHER_PREFIXES, OTHER_VARIABLES, describe
from tests.support.processes import cli_env, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "server", "serve"]


def closed_port() -> int:
    """A loopback port nothing listens on: refused at once."""
    return free_port()


def serve_fails(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*SERVE, "--port", str(free_port()), *args],
                          env=cli_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert "Kinwire on" not in done.stdout, "no banner for a server that is not there"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"one line, not {len(lines)}: {done.stderr}"
    return done


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    done = serve_fails(tmp_path,
                       DATABASE_URL=f"postgresql://kinwire:s3cret-pw@127.0.0.1:{port}/kinwire")
    assert done.stderr.startswith(
        f"kinwire: cannot reach the database at postgresql://kinwire:***@127.0.0.1:{port}/"
        "kinwire (connection refused: nothing listens there). Start PostgreSQL there, or set "
        "DATABASE_URL to where it runs;"), done.stderr
    assert "s3cret-pw" not in done.stderr


def test_a_missing_postgresql_database_says_create_it(tmp_path: Path, pg_url: str) -> None:
    missing = pg_url.rsplit("/", 1)[0] + "/kinwire_no_such_database"
    done = serve_fails(tmp_path, DATABASE_URL=missing)
    assert "(that database does not exist). Create it (`createdb`)" in done.stderr, done.stderr


def test_an_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    done = serve_fails(tmp_path, REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0")
    assert done.stderr.startswith(
        f"kinwire: cannot reach Redis at redis://:***@127.0.0.1:{port}/0 (connection refused: "
        "nothing listens there). Start Redis there or fix REDIS_URL"), done.stderr
    assert "hunter2" not in done.stderr


def test_an_unwritable_data_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = serve_fails(tmp_path, DATABASE_URL=f"sqlite:///{blocker}/data/kinwire.db")
    assert done.stderr.startswith(
        f"kinwire: cannot open the SQLite database {blocker}/data/kinwire.db ("), done.stderr
    assert "Make KINWIRE_DATA_DIR (or DATABASE_URL) name a folder" in done.stderr


def test_a_port_in_use_is_one_line_and_no_banner(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([*SERVE, "--port", str(port)], env=cli_env(tmp_path),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stdout == "", "the banner is printed only once listening"
    assert done.stderr.strip() == (
        f"kinwire: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
        "Kinwire or another program holds it). Stop that process, or choose another port with "
        "--port or KINWIRE_PORT.")


def _read_until(fd: int, pattern: str, timeout_s: float = 30) -> str:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while re.search(pattern, seen.decode(errors="replace")) is None:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {pattern!r} in {seen.decode(errors='replace')!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the pty closed: the process is gone
                chunk = b""
            assert chunk, f"ended before {pattern!r}: {seen.decode(errors='replace')!r}"
            seen += chunk
    return seen.decode(errors="replace")


def _serve_at_a_terminal(tmp_path: Path, **env: str) -> str:
    """Run `kinwire serve` with both output streams on a pseudo-terminal; once its banner
    shows, the port must already accept connections; one request, then SIGTERM. All it
    wrote."""
    port = free_port()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*SERVE, "--port", str(port)], env=cli_env(tmp_path, **env),
                            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
    os.close(secondary)
    try:
        out = _read_until(primary, r"Kinwire on http://127\.0\.0\.1:\d+/.*\n")
        # The banner means listening: a connection now is accepted, not refused.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
        out += _read_until(primary, r"GET /healthz 200")
        proc.send_signal(signal.SIGTERM)
        out += _read_until(primary, r"drained in")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    return out


def test_a_misspelt_variable_is_named_with_the_setting_it_resembles(tmp_path: Path) -> None:
    out = _serve_at_a_terminal(tmp_path, KINWIRE_VISIT_MINUTES="2", KINWIRE_TOKEN="for-the-"
                               "visit-client", KINWIRE_BENCH_PG="read by the benchmarks")
    warnings = [line for line in out.splitlines() if "warning" in line]
    assert warnings == ["kinwire: warning: KINWIRE_VISIT_MINUTES is not a Kinwire setting and "
                        "is ignored (did you mean KINWIRE_VISIT_MINUTE_S?)"], out


def test_logs_are_text_at_a_terminal_and_json_in_a_pipe(tmp_path: Path) -> None:
    at_terminal = _serve_at_a_terminal(tmp_path)
    access = next(line for line in at_terminal.splitlines() if "GET /healthz 200" in line)
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO aiohttp\.access \[req [0-9a-f]{16}\] "
                        r"GET /healthz 200 \d+\.\d{3}s", access), access
    assert not any(line.startswith("{") for line in at_terminal.splitlines()), at_terminal

    forced = _serve_at_a_terminal(tmp_path, KINWIRE_LOG_FORMAT="json")
    access = next(line for line in forced.splitlines() if "GET /healthz 200" in line)
    assert json.loads(access)["logger"] == "aiohttp.access"

    port = free_port()
    proc = subprocess.Popen([*SERVE, "--port", str(port)], env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        assert banner.startswith(f"Kinwire on http://127.0.0.1:{port}/"), banner
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.strip().splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines), err


def test_help_describes_every_command_and_option() -> None:
    top = parser()
    commands = top._subparsers._group_actions[0]
    named = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(named) == set(commands.choices) == {
        "serve", "migrate", "create-admin", "seed-demo", "facility", "settings", "doctor",
        "backup", "restore", "blobs", "visit-client"}
    assert all(named.values()), named
    for name, sub in commands.choices.items():
        assert sub.description, f"`kinwire {name} --help` has no description"
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"kinwire {name}: {action.option_strings or action.dest}"
    for argv in ([sys.executable, "-m", "server", "--help"], ["kinwire", "--help"]):
        argv[0] = argv[0] if argv[0] != "kinwire" else str(Path(sys.executable).parent
                                                           / "kinwire")
        shown = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        for name in named:
            assert f"    {name}" in shown.stdout, (argv, name, shown.stdout)
    visit = subprocess.run([sys.executable, "-m", "server", "visit-client", "--help"],
                           capture_output=True, text=True, timeout=30).stdout
    assert "--loopback-only" in visit and "KINWIRE_TOKEN" in visit


def test_every_kinwire_variable_the_project_reads_is_known() -> None:
    """The list of non-setting KINWIRE_* variables (server/settings.py) matches the code, so
    that the start-up warning never flags a variable Kinwire's own tools read."""
    settings = {env for env, _, _ in describe()}
    found = set()
    for folder in ("server", "billing", "signalling", "bench", "scripts", "deploy", "tests"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".sh", ".example", ".service", ""} \
                    and path.name != Path(__file__).name:
                found |= set(re.findall(r"\bKINWIRE_[A-Z0-9_]*[A-Z0-9]\b",
                                        path.read_text(errors="replace")))
    unknown = {name for name in found - settings - OTHER_VARIABLES
               if not name.startswith(OTHER_PREFIXES)}
    assert unknown == set(), f"add to OTHER_VARIABLES in server/settings.py: {unknown}"


def test_text_lines_are_masked_like_json_ones() -> None:
    """A token or card number that slipped into a message is masked in text logs too."""
    import logging

    from common.logs import REQUEST_ID, TextFormatter

    record = logging.LogRecord("kinwire.test", logging.WARNING, __file__, 1,
                               "client sent Authorization: Bearer %s with card %s",
                               ("tok.en-secret", "4242 4242 4242 4242"), None)
    token = REQUEST_ID.set("abc123")
    try:
        line = TextFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING kinwire\.test \[req abc123\] client sent "
                        r"Authorization: Bearer \[redacted\] with card \[redacted\]", line), line
