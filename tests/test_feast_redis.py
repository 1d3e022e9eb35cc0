"""The same online-store contract as tests/test_feast_store.py, against a real Redis on loopback."""
import shutil
import socket
import subprocess
import time

import pytest
from test_feast_store import make_features, run_online_contract

from features.config import FeaturesConfig, RedisConfig
from features.store import LtrStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; `make redis` does it)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.terminate()
        pytest.fail("redis-server did not answer PING within 5 s")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_online_redis_roundtrip(tmp_path_factory, redis_port):
    _, feat, _ = make_features(tmp_path_factory, "redisfeat")
    a = LtrStore(feat, FeaturesConfig(online_store="redis", redis=RedisConfig(port=redis_port, db=0)),
                 store_dir=feat / "a").apply()
    b = LtrStore(feat, FeaturesConfig(online_store="redis", redis=RedisConfig(port=redis_port, db=1)),
                 store_dir=feat / "b").apply()
    run_online_contract(a, b)
    # byte-identical hashes (ValueProtos and Timestamp protos under Feast's field keys) to Feast's writer
    want = redis_contents(redis_port, 0)
    assert len(want) > 0
    assert redis_contents(redis_port, 1) == want
    b.bulk_materialize(progress=False)  # re-running is idempotent
    assert redis_contents(redis_port, 1) == want


def redis_contents(port: int, db: int) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    c = redis.Redis(host="127.0.0.1", port=port, db=db)
    return {k: c.hgetall(k) for k in c.scan_iter(count=1000)}
