"""Private Redis deployments for tests: a Cluster of masters, and a Sentinel-watched master with
a replica. Each runs Debian's redis-server (7.0) on free loopback ports, in a directory of the
test's own, started with a deadline and killed (every process) at the end."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.support.processes import free_port

START_S = 20.0  # bound on starting one deployment (a loaded machine: a few seconds usually)
_taken: set[int] = set()  # ports handed out here: a probe may return one twice


def port() -> int:
    while True:
        candidate = free_port()
        if candidate not in _taken:
            _taken.add(candidate)
            return candidate


def _wait(check, what: str, timeout_s: float = START_S) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except AssertionError:
            raise
        except Exception as error:  # not up yet
            last = error
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout_s} s (last error: {last!r})")


class Server:
    """One redis-server; `args` are its extra options."""

    def __init__(self, directory: Path, args: list[str], *, sentinel: bool = False) -> None:
        self.port = port()
        self.directory = directory
        self.args = args
        self.sentinel = sentinel
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        binary = shutil.which("redis-sentinel") if self.sentinel else None
        command = [binary or shutil.which("redis-server") or "redis-server"]
        if self.sentinel:
            conf = self.directory / "sentinel.conf"
            conf.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1",
                                       f"dir {self.directory}", *self.args]) + "\n")
            command += [str(conf)] + ([] if binary else ["--sentinel"])
        else:
            command += ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(self.directory), *self.args]
        log = self.directory / "redis.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis on {self.port} exited: {log.read_text()[-2000:]}")
            return bool(self.client().ping())

        _wait(up, f"redis on {self.port} answers")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class Cluster:
    """`masters` masters (each with `replicas` replicas), all slots assigned, state ok."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000) -> None:
        self.servers: list[Server] = []
        for i in range(masters * (1 + replicas)):
            bus = port()
            self.servers.append(Server(directory / f"node{i}", [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus),
                # a replica is promoted whatever its lag: tests measure the failover
                "--cluster-replica-validity-factor", "0"]))
        self.replicas = replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for server in self.servers:
            server.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{s.port}" for s in self.servers),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=START_S)
        _wait(self.healthy, "the cluster reports state ok")

    def healthy(self) -> bool:
        for server in self.servers:
            if server.proc is None:
                continue
            info = server.client().cluster("info")
            if info["cluster_state"] != "ok" \
                    or int(info["cluster_known_nodes"]) < len(self.servers):
                return False
        return True

    def masters(self) -> list[Server]:
        return [s for s in self.servers if s.proc is not None
                and s.client().info("replication")["role"] == "master"]

    def bus_messages(self) -> int:
        """Cluster-bus messages sent by all running nodes so far."""
        total = 0
        for server in self.servers:
            if server.proc is not None:
                total += int(server.client().cluster("info")["cluster_stats_messages_sent"])
        return total

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


class Sentinels:
    """A master, `replicas` replicas and `count` sentinels watching them (quorum 2)."""

    SERVICE = "kinwire"

    def __init__(self, directory: Path, replicas: int = 1, count: int = 3,
                 down_after_ms: int = 1000) -> None:
        self.master = Server(directory / "master", [])
        self.replicas = [Server(directory / f"replica{i}", []) for i in range(replicas)]
        self.sentinels = [Server(directory / f"sentinel{i}", [], sentinel=True)
                          for i in range(count)]
        self.down_after_ms = down_after_ms

    @property
    def servers(self) -> list[Server]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.master.start()
        for replica in self.replicas:
            replica.args = ["--replicaof", "127.0.0.1", str(self.master.port)]
            replica.start()
        for sentinel in self.sentinels:
            sentinel.args = [
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {self.SERVICE} 5000",
                f"sentinel parallel-syncs {self.SERVICE} 1"]
            sentinel.start()
        _wait(self._watching, "the sentinels see the master, its replicas and each other")

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(self.SERVICE)
            if int(state["num-slaves"]) < len(self.replicas) \
                    or int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
        return True

    def whole(self) -> bool:
        """Every sentinel sees as many healthy replicas as were started (a failover needs one:
        the sentinels learn of a replica from the master's INFO, every 10 s)."""
        for sentinel in self.sentinels:
            healthy = [r for r in sentinel.client().sentinel_slaves(self.SERVICE)
                       if not (r.get("is_sdown") or r.get("is_odown")
                               or r.get("is_disconnected"))
                       and r.get("master-link-status") == "ok"]
            if len(healthy) < len(self.replicas):
                return False
        return True

    def current_master_port(self) -> int:
        _host, port = self.sentinels[0].client().execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return int(port)

    def server_on(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.kill()
