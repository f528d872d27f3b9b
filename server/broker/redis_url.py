"""REDIS_URL: the forms of Redis deployment Kinwire runs on, and the clients for each.

- One server: `redis://[user:password@]host:port/db`, TLS `rediss://...`, or `unix:///path`.
- Sentinel: `redis+sentinel://[user:password@]s1:26379,s2:26379,s3:26379/service[/db]`
  (TLS to the master and the sentinels: `rediss+sentinel://`). Clients ask the sentinels which
  server is the master on every new connection, so after a failover they find the new one.
  The password is the master's; sentinels that ask for one too take `?sentinel_password=`.
- Cluster: `redis+cluster://[user:password@]n1:6379,n2:6379,...` (TLS: `rediss+cluster://`),
  any reachable nodes as seeds. Pub/sub is sharded there (SPUBLISH/SSUBSCRIBE, Redis 7).

`ca_certs=/path` in the query names the CA file for rediss forms (else the system's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = SINGLE_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # "single" | "sentinel" | "cluster"
    url: str  # as given (single: handed to redis-py as it is)
    hosts: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seeds
    service: str = ""  # sentinel: the master's service name
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ca_certs: str | None = None

    @property
    def where(self) -> str:
        """For messages: where it points, without any password."""
        if self.kind == "single":
            parts = urlsplit(self.url)
            return parts.path if parts.scheme == "unix" else \
                f"{parts.hostname}:{parts.port or 6379}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        return f"sentinels {hosts} service {self.service}" if self.kind == "sentinel" \
            else f"cluster seeds {hosts}"

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.tls:
            kwargs["ssl"] = True
            if self.ca_certs:
                kwargs["ssl_ca_certs"] = self.ca_certs
        return kwargs


def parse(url: str) -> RedisTarget:
    """The target REDIS_URL names; ValueError (said for an operator) when it is malformed."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError("must start with redis://, rediss://, unix://, redis+sentinel://, "
                         "rediss+sentinel://, redis+cluster:// or rediss+cluster://")
    if scheme in SINGLE_SCHEMES:
        return RedisTarget("single", url)
    rest = url.split("://", 1)[1]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, secret = auth.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{part!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    common = {"hosts": tuple(hosts), "tls": scheme.startswith("rediss"), "username": username,
              "password": password, "ca_certs": options.get("ca_certs")}
    segments = [s for s in path.split("/") if s]
    if scheme in SENTINEL_SCHEMES:
        if not segments or len(segments) > 2:
            raise ValueError("redis+sentinel:// needs the service name: "
                             "redis+sentinel://s1:26379,s2:26379/mymaster[/db]")
        db = segments[1] if len(segments) == 2 else "0"
        if not db.isdigit():
            raise ValueError(f"database {db!r} is not a number")
        return RedisTarget("sentinel", url, service=segments[0], db=int(db),
                           sentinel_password=options.get("sentinel_password"), **common)
    if segments and segments != ["0"]:
        raise ValueError("Redis Cluster has one database: give no /db (or /0)")
    return RedisTarget("cluster", url, **common)


def command_client(target: RedisTarget, *, pool_max: int, pool_wait_s: float,
                   **kwargs: Any) -> Any:
    """A redis.asyncio client for commands (Redis, or RedisCluster on a cluster); kwargs are
    connection options (timeouts, retry...). On a single server a caller waits up to
    pool_wait_s for one of pool_max connections; Sentinel's pool is not a blocking one (it
    re-points at the master), nor a cluster's (a pool per node, of pool_max each)."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    if target.kind == "single":
        pool = BlockingConnectionPool.from_url(target.url, max_connections=pool_max,
                                               timeout=pool_wait_s, **kwargs)
        return Redis.from_pool(pool)
    if target.kind == "sentinel":
        return sentinel_manager(target, **kwargs).master_for(
            target.service, db=target.db, **target.client_kwargs())
    kwargs.pop("protocol", None)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                        max_connections=pool_max, **target.client_kwargs(), **kwargs)


def connection_factory(target: RedisTarget, **kwargs: Any) -> Callable[[], Any]:
    """New unpooled connections to the server (single) or the current master (Sentinel: it is
    looked up on each connect), for a connection owned outright (the pub/sub reader)."""
    from redis.asyncio import ConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool

    if target.kind == "single":
        return ConnectionPool.from_url(target.url, **kwargs).make_connection
    if target.kind == "sentinel":
        pool = SentinelConnectionPool(target.service, sentinel_manager(target, **kwargs),
                                      db=target.db, **target.client_kwargs(), **kwargs)
        return pool.make_connection  # the bound method keeps the pool alive (close_sentinels)
    raise ValueError("a cluster has a connection per node: see node_connection")


def node_connection(target: RedisTarget, host: str, port: int, **kwargs: Any) -> Any:
    """A new unpooled connection to one cluster node."""
    from redis.asyncio.connection import Connection, SSLConnection

    options = target.client_kwargs()
    if options.pop("ssl", False):
        cls: Any = SSLConnection
    else:
        cls = Connection
    return cls(host=host, port=port, **options, **kwargs)


def sentinel_manager(target: RedisTarget, **kwargs: Any) -> Any:
    from redis.asyncio.sentinel import Sentinel

    sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.tls:
        sentinel_kwargs["ssl"] = True
        if target.ca_certs:
            sentinel_kwargs["ssl_ca_certs"] = target.ca_certs
    return Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs)


async def close(client: Any) -> None:
    """Close a command client, and on Sentinel its connections to the sentinels too."""
    await client.aclose()
    await close_sentinels(getattr(client, "connection_pool", None))


async def close_sentinels(pool: Any) -> None:
    """Close the sentinel clients behind a SentinelConnectionPool (a no-op for other pools)."""
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


async def ping(url: str, timeout_s: float) -> dict[str, Any]:
    """PING the deployment REDIS_URL names, within timeout_s; returns the server's INFO
    `cluster` section (a plain redis:// URL pointing at a cluster node is refused by the caller).
    Raises what redis-py raises."""
    import asyncio

    target = parse(url)
    client = command_client(target, pool_max=2, pool_wait_s=timeout_s,
                            socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
            if target.kind == "cluster":
                return {"cluster_enabled": 1}
            return await client.info("cluster")
    finally:
        await close(client)
