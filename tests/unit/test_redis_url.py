"""REDIS_URL forms (server/broker/redis_url.py). Adversary: an operator's typo, which must be
refused at start with what is wrong, not taken for another deployment."""

from __future__ import annotations

import pytest

from server.broker.redis_url import parse
from server.settings import Settings, SettingsError


def test_single_sentinel_and_cluster_forms() -> None:
    assert parse("redis://h:6379/0").kind == "single"
    assert parse("rediss://:pw@h:6380/1").kind == "single"
    assert parse("unix:///run/redis.sock").kind == "single"
    sentinel = parse("rediss+sentinel://u:p%40ss@s1:26379,s2:26379,[::1]:26380/mymaster/2"
                     "?sentinel_password=sp&ca_certs=/etc/ca.pem")
    assert (sentinel.kind, sentinel.service, sentinel.db, sentinel.tls) == \
        ("sentinel", "mymaster", 2, True)
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (sentinel.username, sentinel.password, sentinel.sentinel_password) == \
        ("u", "p@ss", "sp")
    assert sentinel.ca_certs == "/etc/ca.pem"
    assert "p@ss" not in sentinel.where
    cluster = parse("redis+cluster://n1:7000,n2:7001")
    assert (cluster.kind, cluster.hosts, cluster.tls) == \
        ("cluster", (("n1", 7000), ("n2", 7001)), False)
    assert parse("rediss+cluster://n1:7000/").tls


@pytest.mark.parametrize("url", [
    "http://h:6379", "redis+sentinel://s1:26379", "redis+sentinel://s1/mymaster",
    "redis+sentinel://s1:26379/mymaster/x", "redis+cluster://n1:7000/3",
    "redis+cluster://n1:7000,n2"])
def test_malformed_forms_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse(url)
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings(redis_url=url).validate()
