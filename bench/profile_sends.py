"""Server CPU per durable send at a fixed offered load below saturation, optionally profiled.

    PYTHONPATH=. .venv/bin/python -m bench.profile_sends --kind sqlite --rate 150 --seconds 8 \
        [--thread] [--pyspy /tmp/sends.svg | /tmp/sends.txt]

Opens the sends scenario's sockets (bench/scenarios/sends.py), sends `rate` message.send a second
for `seconds` after a short warm-up, and prints the server's CPU ms per acked send, ack p50/p99
and the load average. With --pyspy, `py-spy record` samples the server during the measured part
(its own overhead is in another process, but it does stop the server briefly per sample: the CPU
figure of a profiled run is a little high). Method: docs/BENCHMARKS.md, "Durable sends".
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


async def measure(kind: str, rate: int, seconds: float, inline: bool, pyspy: str | None,
                  pairs_n: int) -> dict:
    with common.workdir(f"profsends-{kind}") as work:
        async with common.database(kind, work) as url:
            pairs = await sends.make_pairs(url, pairs_n, credits=100_000)
            async with common.kinwire(url, work / "data", ws_commands_per_s=100_000,
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
                    nxt = await sends.offer(targets, tally, rate, 1.0, 1, run_key)  # warm-up
                    await sends.drain(tally, range(1, nxt), 10)
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
                    cpu0 = common.cpu_seconds(pid)
                    first = nxt
                    nxt = await sends.offer(targets, tally, rate, seconds, first, run_key)
                    ids = range(first, nxt)
                    await sends.drain(tally, ids, 20)
                    cpu = common.cpu_seconds(pid) - cpu0
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
    return {"kind": label, "rate": rate, "sends": len(ids),
            "acked": len(acked), "pushed": pushed, "errors": tally.errors,
            **common.summary_ms(acked),
            "cpu_ms_per_send": round(1000 * cpu / max(1, len(acked)), 2),
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
    a = parser.parse_args()
    common.pin_self()
    started = time.perf_counter()
    out = asyncio.run(measure(a.kind, a.rate, a.seconds, not a.thread, a.pyspy, a.pairs))
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
