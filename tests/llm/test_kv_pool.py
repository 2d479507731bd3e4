"""The decoder's KV memory, kept from call to call: reused while it fits, never shared by two calls."""
import torch

from recdemo.llm.kv_pool import KVPool, fresh


def test_calls_that_fit_reuse_the_same_memory_whatever_their_shape():
    pool = KVPool(max_bytes=64 * 1024)
    with pool.borrow() as take:
        a = take(4, (2, 3, 10, 8), torch.bfloat16, "cpu")
    with pool.borrow() as take:
        b = take(6, (3, 3, 7, 8), torch.bfloat16, "cpu")
    assert a[0].data_ptr() == b[0].data_ptr()  # the same kept memory
    assert [t.shape for t in b] == [(3, 3, 7, 8)] * 6 and all(t.is_contiguous() for t in b)
    ends = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in b)
    assert all(end <= start for (_, end), (start, _) in zip(ends, ends[1:]))  # no two overlap


def test_a_call_over_the_budget_gets_fresh_memory_that_is_not_kept():
    pool = KVPool(max_bytes=1024)
    with pool.borrow() as take:
        big = take(2, (4, 64), torch.float32, "cpu")  # 2 KB
        small = take(2, (4, 8), torch.float32, "cpu")
    assert pool._flat is not None and pool._flat.numel() * 4 <= 1024
    assert not (small[0].data_ptr() <= big[0].data_ptr() < small[0].data_ptr() + 1024)
    assert KVPool(max_bytes=0).take(1, (2,), torch.float32, "cpu")[0].shape == (2,)


def test_memory_lent_to_one_call_is_not_lent_to_another():
    pool = KVPool(max_bytes=64 * 1024)
    with pool.borrow() as first:
        with pool.borrow() as second:
            assert first == pool.take and second is fresh  # the second call allocates its own
            mine = first(1, (4,), torch.float32, "cpu")[0]
            theirs = second(1, (4,), torch.float32, "cpu")[0]
            assert mine.data_ptr() == pool._flat.data_ptr() != theirs.data_ptr()
    with pool.borrow() as again:
        assert again == pool.take  # given back
