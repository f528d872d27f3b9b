"""The broker: publish/subscribe, presence and leases between Kinwire processes. The port and
its contract are common/broker.py's (every layer that signals is given one); its two
implementations are here: `memory.MemoryBroker` (one process, the embedded default) and
`redis.RedisBroker` (several processes; chosen by REDIS_URL), with the Redis forms
(redis_url.py, redis_shards.py, redis_fanout.py) and this process's recent events (recent.py).
"""

from common.broker import Broker, BrokerUnavailable, Gap, Recent, Subscription

__all__ = ["Broker", "BrokerUnavailable", "Gap", "Recent", "Subscription"]
