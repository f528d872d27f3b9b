"""The command line as a user runs it: real processes, real files, real HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from server.settings import SettingsError, from_env
from tests.support.processes import cli_env, free_port, kinwire, wait_ready


async def test_demo_server_serves_signup_login_and_purchase(tmp_path: Path) -> None:
    port = free_port()
    # Popen only starts the server; nothing here waits on it while the loop runs.
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--demo"],
                            env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, proc)
        async with aiohttp.ClientSession(base_url=base) as http:
            body = {"email": "new@example.test", "password": "a long password", "name": "New"}
            async with http.post("/api/v1/auth/signup", json=body) as r:
                assert r.status == 201
            login = {"email": body["email"], "password": body["password"]}
            async with http.post("/api/v1/auth/login", json=login) as r:
                assert r.status == 200
                token = (await r.json())["token"]
            card = {"number": "4242424242424242", "exp_month": 1, "exp_year": 2035,
                    "cvc": "123", "name": "New"}
            async with http.post("/api/v1/purchases", json={"credits": 500, "card": card},
                                 headers={"Authorization": f"Bearer {token}",
                                          "Idempotency-Key": "k1"}) as r:
                assert r.status == 201
                bought = await r.json()
            assert bought["balance"] == 500
            assert bought["purchase"]["total_cents"] == 650
            async with http.post("/api/v1/auth/login", json={
                    "email": "family@demo.kinwire.test", "password": "family-demo-pass"}) as r:
                assert r.status == 200, "the demo family logs in"
            async with http.get("/") as r:
                assert r.status == 200 and "Kinwire" in await r.text()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in out
    assert "family@demo.kinwire.test" in out and "A1001" in out
    assert (tmp_path / "data" / "kinwire.db").exists()


def test_migrate_create_admin_and_seed_demo(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert kinwire("migrate", env=env).returncode == 0
    made = kinwire("create-admin", "--email", "Boss@Example.test", env=env,
                   stdin="a fine password\n")
    assert made.returncode == 0, made.stderr
    assert "boss@example.test" in made.stdout
    again = kinwire("create-admin", "--email", "boss@example.test", env=env,
                    stdin="a fine password\n")
    assert again.returncode == 1 and "exists" in again.stderr
    # The same spelling rules as sign-up: fullwidth letters are the same address, a zero-width
    # space is refused.
    wide = kinwire("create-admin", "--email", "\uff42oss@example.test", env=env,
                   stdin="a fine password\n")
    assert wide.returncode == 1 and "exists" in wide.stderr
    hidden = kinwire("create-admin", "--email", "boss\u200b@example.test", env=env,
                     stdin="a fine password\n")
    assert hidden.returncode == 2 and "not an email" in hidden.stderr
    short = kinwire("create-admin", "--email", "x@example.test", env=env, stdin="short\n")
    assert short.returncode == 2
    first = kinwire("seed-demo", env=env)
    second = kinwire("seed-demo", env=env)
    assert first.returncode == second.returncode == 0
    assert "created" in first.stdout and "already present" in second.stdout


def test_a_bad_setting_stops_the_process_with_its_name(tmp_path: Path) -> None:
    bad = kinwire("migrate", env=cli_env(tmp_path, KINWIRE_CREDIT_BLOCK="lots"))
    assert bad.returncode == 2
    assert "KINWIRE_CREDIT_BLOCK" in bad.stderr
    with pytest.raises(SettingsError, match="KINWIRE_PORT"):
        from_env({"KINWIRE_PORT": "70000"})
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        from_env({"DATABASE_URL": "mysql://x"})
    assert from_env({"KINWIRE_DEMO": "yes", "KINWIRE_ALLOWED_ORIGINS": "https://a.test, "
                     "https://b.test"}).allowed_origins == ("https://a.test", "https://b.test")


def test_facility_create_and_update_from_the_command_line(tmp_path: Path) -> None:
    import json

    env = cli_env(tmp_path)
    made = kinwire("facility", "create", "--name", "North Unit", "--timezone", "America/Denver",
                   "--settings", '{"visit_block_minutes": 15}', env=env)
    assert made.returncode == 0, made.stderr
    facility = json.loads(made.stdout)
    assert facility["settings"]["visit_block_minutes"] == 15
    assert facility["settings"]["review_mode"] == "instant"
    changed = kinwire("facility", "update", facility["id"], "--settings",
                      '{"review_mode": "hold", "prices": {"photo": 80}}', env=env)
    assert changed.returncode == 0, changed.stderr
    settings = json.loads(changed.stdout)["settings"]
    assert settings["review_mode"] == "hold" and settings["prices"]["photo"] == 80
    assert settings["prices"]["message"] == 50 and settings["visit_block_minutes"] == 15
    bad = kinwire("facility", "update", facility["id"], "--settings",
                  '{"visit_block_minutes": 20}', env=env)
    assert bad.returncode == 1 and "visit_block_minutes" in bad.stderr
    missing = kinwire("facility", "update", "fac_nope", "--settings", "{}", env=env)
    assert missing.returncode == 1


def test_the_readme_lists_every_setting_as_the_code_defines_it() -> None:
    from server.settings import describe

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for env, default, doc in describe():
        row = f"| `{env}` | `{default}` | {doc} |"
        assert row in readme, f"README's settings table is stale for {env}: `kinwire settings`"
