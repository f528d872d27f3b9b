"""`kinwire doctor` as an operator runs it: a real process against the run's PostgreSQL, a private
Redis and a private coturn; then with one piece broken at a time, each named by its line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from server.cli import main
from server.doctor import argon2, blob_store, janus_fleet, parse_ice_url, report, run, urls
from server.settings import Settings, from_env
from tests.support.janus import fresh_secrets, running_janus
from tests.support.nodes import RedisServer
from tests.support.processes import cli_env, free_port
from tests.support.seaweed import BUCKET, Seaweed
from tests.support.turn_server import private_coturn


async def doctor(env: dict[str, str]) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "doctor", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode().splitlines()


async def doctor_here(env: dict[str, str]) -> tuple[int, list[str]]:
    """The same checks in this process (a process start costs seconds on a loaded machine)."""
    lines: list[str] = []
    code = report(await run(from_env(env)), out=lines.append)
    return code, lines


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("fail")]


async def test_doctor_passes_a_healthy_deployment_and_names_each_broken_piece(
        pg_db: str, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with private_coturn() as turn:
            tcp_url = f"turn:{turn.host}:{turn.port}?transport=tcp"
            healthy = cli_env(tmp_path)
            healthy.update(
                DATABASE_URL=pg_db, REDIS_URL=redis.url,
                KINWIRE_TURN_SECRET=turn.secret, KINWIRE_TURN_URLS=f"{turn.url},{tcp_url}",
                KINWIRE_STUN_URLS=f"stun:{turn.host}:{turn.port}",
                KINWIRE_PUBLIC_URL="https://kinwire.example",
                KINWIRE_ALLOWED_ORIGINS="https://kinwire.example",
                KINWIRE_TRUSTED_PROXIES="127.0.0.1",
                KINWIRE_ARGON2_TIME_COST="2", KINWIRE_ARGON2_MEMORY_KIB="19456")
            not_a_folder = tmp_path / "a-file"
            not_a_folder.write_text("not a folder")
            db_port = pg_db.replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
            wrong_port = f"turn:{turn.host}:{free_port()}?transport=tcp"
            broken = {
                "database": {"DATABASE_URL": db_port},
                "redis": {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                f"turn {turn.url}": {"KINWIRE_TURN_SECRET": "not coturn's secret",
                                     "KINWIRE_TURN_URLS": turn.url},
                f"turn {wrong_port}": {"KINWIRE_TURN_URLS": wrong_port},
                "blob dir": {"KINWIRE_BLOB_DIR": str(not_a_folder / "blobs")},
            }
            runs = await asyncio.gather(doctor(healthy), *(
                doctor_here({**healthy, **change}) for change in broken.values()))
    finally:
        redis.stop()
    code, lines = runs[0]
    print("\n".join(lines))
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ok   settings", "ok   database", "ok   redis", "ok   turn turn",
        "ok   turn turn", "ok   stun stun", "ok   blob dir", "ok   recordings dir",
        "ok   public url", "ok   allowed origins", "ok   trusted proxies", "ok   argon2"], lines
    assert "allocated a relay" in lines[3] and "over tcp" in lines[4]
    for name, (code, lines) in zip(broken, runs[1:], strict=True):
        assert code == 1, (name, lines)
        assert [line.split(": ")[0] for line in failed(lines)] == [f"fail {name}"], (name, lines)
    assert "static-auth-secret" in failed(runs[3][1])[0] and "401" in failed(runs[3][1])[0]


def test_doctor_fails_an_invalid_setting_with_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("KINWIRE_ARGON2_TIME_COST", "0")
    assert main(["doctor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fail settings: KINWIRE_ARGON2_TIME_COST=0 is outside 1..20"


def test_doctor_reads_ice_urls_and_judges_urls_and_password_cost() -> None:
    assert parse_ice_url("turn:turn.example:3478?transport=tcp").transport == "tcp"
    assert parse_ice_url("turns:[2001:db8::1]").port == 5349
    assert parse_ice_url("stun:stun.example").port == 3478
    plain = urls(Settings(public_url="http://kinwire.example"))
    assert plain[0].status == "warn" and "plain http" in plain[0].detail
    assert urls(Settings(public_url="http://127.0.0.1:8080"))[0].status == "ok"
    behind = urls(Settings(public_url="https://kinwire.example"))
    assert [c.status for c in behind] == ["ok", "warn", "warn"], behind
    trusted = urls(Settings(public_url="https://kinwire.example", trusted_proxies=("::1",)))
    assert [c.status for c in trusted] == ["ok", "ok", "ok"], trusted
    assert argon2(Settings(argon2_time_cost=2, argon2_memory_kib=19_455)).status == "fail"
    assert argon2(Settings(argon2_time_cost=1, argon2_memory_kib=47_104)).status == "ok"


async def test_doctor_checks_the_s3_store_takes_and_returns_a_blob(
        seaweed: Seaweed, tmp_path: Path) -> None:
    """Adversaries: a wrong secret, a store that is not there. (A missing bucket is not tried:
    SeaweedFS creates one on a first PUT by an admin identity, as the tests' key is.)"""
    base = Settings(data_dir=str(tmp_path), blob_url=f"s3://{BUCKET}/doctor",
                    s3_endpoint_url=seaweed.endpoint, s3_region="us-east-1",
                    s3_access_key_id=seaweed.access_key_id,
                    s3_secret_access_key=seaweed.secret_access_key)
    [good] = await blob_store(base)
    assert good.status == "ok" and "probe" in good.detail, good
    assert await blob_store(Settings(data_dir=str(tmp_path))) == []  # folders: checked above
    wrong = "wrong-" + seaweed.secret_access_key
    broken = [base.replace(s3_secret_access_key=wrong),
              base.replace(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")]
    for settings in broken:
        [check] = await blob_store(settings)
        assert check.status == "fail" and "not reachable or not writable" in check.detail, check
        assert wrong not in check.line()
    assert wrong not in repr(broken[0])


async def test_doctor_checks_each_janus_server_and_what_converts_its_recordings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Janus from deploy/janus/. Adversaries: a second server that is not there, a wrong
    admin secret, the recordings folder unset or not writable, janus-pp-rec not installed."""
    keys = fresh_secrets()
    events_url = f"http://127.0.0.1:{free_port()}/internal/janus/events"  # nobody listens
    async with running_janus(tmp_path / "janus", events_url=events_url,
                             janus_secrets=keys) as janus:
        base = Settings(data_dir=str(tmp_path), media_engine="janus",
                        janus_urls=(janus.api_url,), janus_admin_urls=(janus.admin_url,),
                        janus_api_secret=keys.api_secret, janus_admin_secret=keys.admin_secret,
                        janus_token_secret=keys.token_secret,
                        janus_room_admin_key=keys.room_admin_key,
                        janus_events_password=keys.events_password,
                        janus_recordings_dir=str(tmp_path / "recordings")).validate()
        server, folder, converter = await janus_fleet(base)
        assert server.status == "ok" and "VideoRoom" in server.detail, server
        assert folder.status == "ok" and converter.status == "ok", (folder, converter)
        assert await janus_fleet(Settings(data_dir=str(tmp_path))) == []  # the embedded engine

        gone = f"http://127.0.0.1:{free_port()}/janus"
        two = base.replace(janus_urls=(janus.api_url, gone),
                           janus_admin_urls=(janus.admin_url, janus.admin_url))
        first, second, *_ = await janus_fleet(two)
        assert first.status == "ok" and second.status == "fail", (first, second)
        assert second.name == f"janus {gone}" and "does not answer" in second.detail

        wrong = "wrong-" + keys.admin_secret
        [refused, *_] = await janus_fleet(base.replace(janus_admin_secret=wrong))
        assert refused.status == "fail" and "refused the admin secret" in refused.detail
        assert wrong not in refused.line() and keys.api_secret not in refused.line()

        [_, unset] = await janus_fleet(base.replace(janus_recordings_dir=""))
        assert unset.status == "warn" and "no Janus-carried visit's recording" in unset.detail
        a_file = tmp_path / "a-file"
        a_file.write_text("not a folder")
        [_, not_writable, _] = await janus_fleet(base.replace(janus_recordings_dir=str(a_file)))
        assert not_writable.status == "fail", not_writable
        monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
        [_, _, missing] = await janus_fleet(base)
        assert missing.status == "fail" and "janus-tools" in missing.detail, missing
