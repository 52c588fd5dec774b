"""The log line for "no sentinel names a master" (store/redis.py ``_WatchedSentinel``)
names the sentinels it asked by address, not with redis-py's error text, which held
each sentinel client's full repr (about 1.5 KB per sentinel, its connection pool and
keyword arguments) on every failover logged."""

from __future__ import annotations

import logging

import pytest
import yaml

from davserver.config import load_config
from davserver.store import StoreUnavailable, open_store
from tests.conftest import Instance, free_port


def test_the_no_master_log_line_names_the_sentinel_addresses_only(
    inst: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    dead = [free_port(), free_port()]
    raw = yaml.safe_load(inst.home.config_file.read_text())
    raw["state"] = {"backend": "redis", "url": "redis://ignored/2", "sentinel_service": "files",
                    "sentinels": [f"127.0.0.1:{p}" for p in dead]}
    inst.home.config_file.write_text(yaml.safe_dump(raw))
    store = open_store(load_config(inst.home).state)
    caplog.set_level(logging.ERROR, logger="davserver.store.redis")
    try:
        with pytest.raises(StoreUnavailable):
            store.ping()
    finally:
        store.close()
    lines = [r.getMessage() for r in caplog.records if "no sentinel names a master" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert f"(asked 127.0.0.1:{dead[0]}, 127.0.0.1:{dead[1]})" in lines[0]
    assert "ConnectionPool" not in lines[0] and "Redis<" not in lines[0], lines[0]
    assert len(lines[0]) < 300, len(lines[0])
