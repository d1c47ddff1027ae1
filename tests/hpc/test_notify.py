"""The agents' wake-up datagrams: signed, fresh, for a known submission — or dropped."""

from __future__ import annotations

import select
import time

from hpc import notify
from hpc.notify import NotifyListener, NotifySender, NotifyTarget


def _wait(listener: NotifyListener) -> list[notify.Notice]:
    select.select([listener], [], [], 5)
    return listener.drain()


def test_a_signed_notice_reaches_the_listener() -> None:
    listener = NotifyListener()
    key = notify.new_key()
    listener.add("sub-1", key)
    sender = NotifySender(NotifyTarget("127.0.0.1", listener.port, "sub-1", key))
    sender.send(notify.ENDED, [11, 12])
    got = _wait(listener)
    assert got == [notify.Notice("sub-1", "E", (11, 12))]
    sender.close()
    listener.close()


def test_long_id_lists_are_split_and_each_part_verifies() -> None:
    key = notify.new_key()
    ids = list(range(10**9, 10**9 + 512))
    datagrams = notify.encode("sub-1", key, notify.STARTED, ids)
    assert len(datagrams) > 1 and all(len(d) <= notify.MAX_DATAGRAM for d in datagrams)
    decoded = [notify.decode(d, {"sub-1": key}) for d in datagrams]
    assert [i for n in decoded if n for i in n.panda_ids] == ids


def test_forged_stale_and_unknown_notices_are_dropped() -> None:
    key, other = notify.new_key(), notify.new_key()
    keys = {"sub-1": key}
    good = notify.encode("sub-1", key, notify.ENDED, [5])[0]
    assert notify.decode(good, keys) is not None
    assert notify.decode(notify.encode("sub-1", other, notify.ENDED, [5])[0], keys) is None  # wrong key
    assert notify.decode(notify.encode("sub-2", key, notify.ENDED, [5])[0], keys) is None  # unknown submission
    stale = notify.encode("sub-1", key, notify.ENDED, [5], now=time.time() - notify.MAX_AGE - 10)[0]
    assert notify.decode(stale, keys) is None
    tampered = good.replace(b" 5 ", b" 6 ")
    assert tampered != good and notify.decode(tampered, keys) is None
    for junk in (b"", b"\xff\xfe", b"cpn1 sub-1 E 5", b"cpn1 sub-1 X 5 1 ab", good + b" extra"):
        assert notify.decode(junk, keys) is None
    listener = NotifyListener()
    listener.add("sub-1", key)
    sender = NotifySender(NotifyTarget("127.0.0.1", listener.port, "sub-1", other))
    sender.send(notify.ENDED, [5])
    select.select([listener], [], [], 2)
    assert listener.drain() == [] and listener.rejected == 1
    listener.close()


def test_a_dead_daemon_does_not_hurt_the_sender() -> None:
    listener = NotifyListener()
    port = listener.port
    listener.close()  # nobody listens: ICMP port unreachable comes back as an error on a later send
    sender = NotifySender(NotifyTarget("127.0.0.1", port, "sub-1", notify.new_key()))
    for _ in range(3):
        sender.send(notify.ENDED, [1])
    assert sender.sent + sender.failed == 3
    unresolvable = NotifySender(NotifyTarget("no-such-host.invalid", port, "sub-1", notify.new_key()))
    unresolvable.send(notify.ENDED, [1])  # logged once at construction, then silent
    assert unresolvable.sent == 0


def test_target_from_a_job_set_rejects_unusable_values() -> None:
    key = notify.new_key()
    good = {"host": "mom1", "port": 4000, "sub_id": "s", "key": key}
    assert NotifyTarget.from_dict(good) == NotifyTarget("mom1", 4000, "s", key)
    assert NotifyTarget.from_dict({}) is None
    for bad in ({"port": 0}, {"port": "4000"}, {"key": "zz"}, {"key": "ab"}, {"sub_id": "a b"}, {"host": ""}):
        assert NotifyTarget.from_dict({**good, **bad}) is None
