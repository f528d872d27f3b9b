"""Server CPU per durable send at a fixed offered load below saturation, optionally profiled.

    PYTHONPATH=. .venv/bin/python -m bench.profile_sends --kind sqlite --rate 150 --seconds 8 \
        [--thread] [--pyspy /tmp/sends.svg | /tmp/sends.txt]
    PYTHONPATH=. .venv/bin/python -m bench.profile_sends --waves 20 --callgrind /tmp/cg.out

Opens the sends scenario's sockets (bench/scenarios/sends.py), sends `rate` message.send a second
for `seconds` after a short warm-up, and prints the server's CPU ms per acked send, ack p50/p99
and the load average. With --pyspy, `py-spy record` samples the server during the measured part
(its own overhead is in another process, but it does stop the server briefly per sample: the CPU
figure of a profiled run is a little high). Method: docs/BENCHMARKS.md, "Durable sends".

--waves N sends in closed loop instead: every sender socket sends one message at once, then
all are awaited (acked and pushed), N times (50 pairs: batches of up to 50 sends, as at a high
rate). --callgrind OUT runs the server under valgrind's callgrind with its counting switched on
only for the measured part, and prints the instructions executed a send (`ir_per_send`, user
space, every thread): a figure that a machine shared with other work leaves nearly unchanged,
unlike CPU time, so that two trees can be compared on a busy host ("Sends after the merges").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import time

import aiohttp

from bench import common
from bench.scenarios import sends


async def waves(targets: list, tally: sends.Tally, n: int, first: int, run_key: str) -> int:
    """n rounds of one send per sender, each round awaited (acked and pushed) before the next."""
    nxt = first
    for _ in range(n):
        for ws, to in targets:
            tally.scheduled[nxt] = time.perf_counter()
            await ws.send_str(json.dumps({"id": nxt, "op": "message.send", "args": {
                "to": to, "body": f"{nxt} {sends.BODY}", "key": f"{run_key}-{nxt}"}}))
            nxt += 1
        await sends.drain(tally, range(first, nxt), 600)
    return nxt


def callgrind(action: str, pid: int) -> None:
    subprocess.run(["callgrind_control", action, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def callgrind_total(out: str) -> int:
    """Instructions in the dumps of `out` (callgrind_control --dump writes OUT.N files)."""
    import glob

    total = 0
    for path in glob.glob(out + "*"):
        with open(path) as f:
            for line in f:
                if line.startswith("totals:"):  # (a dump's "summary:" line may read 0)
                    total += int(line.split()[1])
                    break
    return total


async def measure(kind: str, rate: int, seconds: float, inline: bool, pyspy: str | None,
                  pairs_n: int, wave_n: int = 0, cg_out: str | None = None) -> dict:
    with common.workdir(f"profsends-{kind}") as work:
        async with common.database(kind, work) as url:
            pairs = await sends.make_pairs(url, pairs_n, credits=100_000)
            wrap = () if not cg_out else (
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={cg_out}")
            # Under valgrind the server runs ~50x slower: it is not pinned (its CPU, not its
            # core, is measured) and its sockets' ping and auth deadlines are pushed out.
            slow = {"cpu": None, "ws_heartbeat_s": 3600, "ws_auth_timeout_s": 600} \
                if cg_out else {}
            async with common.kinwire(url, work / "data", ws_commands_per_s=100_000,
                                      wrap=wrap, ready_s=300 if cg_out else 30, **slow,
                                      ws_send_queue_max=100_000,
                                      db_group_commit_max=sends.BATCH,
                                      db_sqlite_inline_writes=inline) as server:
                tally = sends.Tally()
                run_key = secrets.token_hex(4)
                async with aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0)) as http:
                    senders = [await sends.open_socket(http, server.ws_url, p.family.token)
                               for p in pairs]
                    recipients = [await sends.open_socket(http, server.ws_url, p.person.token)
                                  for p in pairs]
                    readers = [asyncio.create_task(sends.read_sender(ws, tally))
                               for ws in senders]
                    readers += [asyncio.create_task(sends.read_recipient(ws, tally))
                                for ws in recipients]
                    targets = [(ws, p.person.account_id)
                               for ws, p in zip(senders, pairs, strict=True)]
                    if wave_n:  # warm-up
                        nxt = await waves(targets, tally, 3, 1, run_key)
                    else:
                        nxt = await sends.offer(targets, tally, rate, 1.0, 1, run_key)
                    await sends.drain(tally, range(1, nxt), 600 if cg_out else 10)
                    spy = None
                    pid = server.proc.pid
                    if pyspy:
                        fmt = "raw" if pyspy.endswith(".txt") else "flamegraph"
                        spy = subprocess.Popen(
                            [str(common.ROOT / ".venv/bin/py-spy"), "record", "-o", pyspy,
                             "--pid", str(pid), "-r", "200", "--format", fmt,
                             "-d", str(int(seconds) + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        await asyncio.sleep(1.0)
                    if cg_out:
                        callgrind("--instr=on", pid)
                    user0, sys0 = common.cpu_split(pid)
                    first = nxt
                    if wave_n:
                        nxt = await waves(targets, tally, wave_n, first, run_key)
                    else:
                        nxt = await sends.offer(targets, tally, rate, seconds, first, run_key)
                    ids = range(first, nxt)
                    await sends.drain(tally, ids, 20)
                    user1, sys1 = common.cpu_split(pid)
                    user, system = user1 - user0, sys1 - sys0
                    if cg_out:
                        callgrind("--instr=off", pid)
                        callgrind("--dump", pid)
                    if spy:
                        spy.wait(timeout=60)
                    acked = [tally.acks[i] for i in ids if i in tally.acks]
                    pushed = sum(1 for i in ids if i in tally.pushes)
                    for ws in senders + recipients:
                        await ws.close()
                    for task in readers:
                        task.cancel()
                    await asyncio.gather(*readers, return_exceptions=True)
    label = kind + ("" if inline or kind != "sqlite" else " thread")
    extra = {}
    if cg_out:
        extra["ir_per_send"] = round(callgrind_total(cg_out) / max(1, len(acked)))
    return {"kind": label, "rate": 0 if wave_n else rate, "waves": wave_n, **extra,
            "sends": len(ids),
            "acked": len(acked), "pushed": pushed, "errors": tally.errors,
            **common.summary_ms(acked),
            "cpu_ms_per_send": round(1000 * (user + system) / max(1, len(acked)), 3),
            "user_ms_per_send": round(1000 * user / max(1, len(acked)), 3),
            "sys_ms_per_send": round(1000 * system / max(1, len(acked)), 3),
            "loadavg": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--rate", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--thread", action="store_true",
                        help="SQLite writer on aiosqlite's thread (KINWIRE_DB_SQLITE_INLINE_WRITES"
                             "=false) instead of inline")
    parser.add_argument("--pyspy")
    parser.add_argument("--waves", type=int, default=0,
                        help="closed loop: this many rounds of one send per sender")
    parser.add_argument("--callgrind", metavar="OUT",
                        help="count the server's instructions (valgrind) into OUT*")
    a = parser.parse_args()
    common.pin_self()
    started = time.perf_counter()
    out = asyncio.run(measure(a.kind, a.rate, a.seconds, not a.thread, a.pyspy, a.pairs,
                              a.waves, a.callgrind))
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
