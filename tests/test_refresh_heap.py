"""DueHeap: earliest live due time first, lazy deletion, bounded by the live tokens."""

from jupyter_offline_token.refresh.heap import DueHeap


def test_pops_in_due_order_and_replaces_a_tokens_earlier_due_time():
    heap = DueHeap()
    heap.push("a", 30.0)
    heap.push("b", 10.0)
    heap.push("c", 20.0)
    heap.push("b", 40.0)  # rescheduled: its item at 10 goes stale
    assert len(heap) == 3 and "b" in heap
    assert heap.peek() == (20.0, "c")
    assert [heap.pop(), heap.pop(), heap.pop(), heap.pop()] == [
        (20.0, "c"),
        (30.0, "a"),
        (40.0, "b"),
        None,
    ]
    assert len(heap) == 0 and heap.size == 0


def test_discard_unqueues_without_searching():
    heap = DueHeap()
    heap.push("a", 1.0)
    heap.discard("a")
    heap.discard("never-queued")
    assert "a" not in heap and len(heap) == 0
    assert heap.peek() is None


def test_compaction_bounds_stale_items():
    heap = DueHeap()
    heap.push("live", 5.0)
    assert not heap.compact_if_sparse()
    for i in range(10):
        heap.push("churn", float(i))
    heap.discard("churn")
    assert heap.size == 11
    assert heap.compact_if_sparse()
    assert heap.size == 1 and heap.pop() == (5.0, "live")
