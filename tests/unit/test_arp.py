from tcpstack.arp import MAX_PENDING_FRAMES, REQUEST_INTERVAL, REQUEST_TRIES, ArpCache

MAC = b"\x02\x00\x00\x00\x00\x01"


def test_learnt_entries_expire() -> None:
    cache: ArpCache[bytes] = ArpCache(lifetime=60.0)
    cache.learn("198.18.0.1", MAC, now=0.0)
    assert cache.lookup("198.18.0.1", 59.9) == MAC
    assert cache.lookup("198.18.0.1", 60.0) is None
    assert cache.lookup("198.18.0.1", 0.0) is None  # expired entries are gone


def test_frames_wait_for_the_reply_and_flush_in_order() -> None:
    cache: ArpCache[bytes] = ArpCache()
    assert cache.enqueue("198.18.0.1", b"first", 0.0) is True  # ask now
    assert cache.enqueue("198.18.0.1", b"second", 0.1) is False  # already asked
    assert cache.learn("198.18.0.1", MAC, 0.2) == [b"first", b"second"]
    assert cache.next_deadline() is None


def test_requests_repeat_then_give_up() -> None:
    cache: ArpCache[bytes] = ArpCache()
    cache.enqueue("198.18.0.9", b"x", 0.0)
    asked = []
    now = 0.0
    for _ in range(REQUEST_TRIES):  # the first request went out with enqueue()
        deadline = cache.next_deadline()
        assert deadline is not None
        now = deadline
        asked += cache.due_requests(now)
    assert asked == ["198.18.0.9"] * (REQUEST_TRIES - 1)
    assert cache.next_deadline() is None
    assert cache.dropped_frames == 1
    assert now == REQUEST_INTERVAL * REQUEST_TRIES


def test_pending_queue_is_bounded() -> None:
    cache: ArpCache[int] = ArpCache()
    for i in range(MAX_PENDING_FRAMES + 10):
        cache.enqueue("198.18.0.1", i, 0.0)
    flushed = cache.learn("198.18.0.1", MAC, 0.0)
    assert len(flushed) == MAX_PENDING_FRAMES and flushed[-1] == MAX_PENDING_FRAMES + 9
    assert cache.dropped_frames == 10


def test_cache_is_bounded() -> None:
    cache: ArpCache[bytes] = ArpCache(max_entries=3)
    for i in range(5):
        cache.learn(f"198.18.0.{i}", MAC, 0.0)
    assert sorted(cache.entries(0.0)) == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]


def test_addresses_being_resolved_are_bounded() -> None:
    cache: ArpCache[int] = ArpCache(max_pending=2)
    assert cache.enqueue("198.18.0.1", 1, 0.0) and cache.enqueue("198.18.0.2", 2, 0.0)
    assert cache.enqueue("198.18.0.3", 3, 0.0) is False
    assert cache.dropped_frames == 1 and cache.learn("198.18.0.3", MAC, 0.0) == []
