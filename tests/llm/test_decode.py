"""llm/decode.py: the greedy decoder gives model.generate's tokens for every prompt alone, while computing
shared and cached prompt prefixes once."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_adapter

from recdemo.llm.decode import FORWARD_COST_POSITIONS, Decoder, PrefixCache, _buckets, adapter_key, select_backend

HEADER = "A user watched these movies, oldest first: Toy Story, Heat, Casino, Alien, Brazil and Fargo."
TAILS = [" Comedy", " Summary of it all and more again", " X", " The user likes long films"]


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def alone(llm, ids, n):
    """model.generate, greedy, on one prompt: the reference every decoder answer must equal."""
    with torch.inference_mode():
        t = torch.tensor([ids])
        out = llm.model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n, do_sample=False,
                                 pad_token_id=llm.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def shared_rows(tok):
    return [ids_of(tok, HEADER + t) for t in TAILS]


def bucketed(suffixes, eager=True):
    """Positions the eager decoder prefills for these suffix lengths: each length bucket padded to its
    longest (one padded batch for the static backends)."""
    batches = _buckets(suffixes, FORWARD_COST_POSITIONS) if eager else [list(range(len(suffixes)))]
    return sum(len(b) * max(suffixes[i] for i in b) for b in batches)


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_rows_of_different_lengths_equal_each_prompt_alone(tiny_llm, backend):
    tok = tiny_llm.tokenizer
    rows = [ids_of(tok, t) for t in ["Keywords: Comedy", "Castle", "A user watched these movies, oldest first"]]
    dec = Decoder(backend)
    assert dec.generate(tiny_llm, rows, 9) == [alone(tiny_llm, r, 9) for r in rows]
    assert dec.stats.prefill_tokens == len(rows) * max(map(len, rows))  # nothing shared: one padded batch


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_a_shared_prefix_is_computed_once(tiny_llm, backend):
    rows = shared_rows(tiny_llm.tokenizer)
    dec = Decoder(backend, min_prefix_tokens=4)
    assert dec.generate(tiny_llm, rows, 10) == [alone(tiny_llm, r, 10) for r in rows]
    shared = next(i for i in range(len(rows[0])) if len({r[i] for r in rows}) > 1)
    assert shared >= len(ids_of(tiny_llm.tokenizer, HEADER)) - 1
    stats = dec.stats
    assert stats.shared_tokens == (len(rows) - 1) * shared
    suffixes = [len(r) - shared for r in rows]  # once, then the padded suffixes (eager: in length buckets)
    assert stats.prefill_tokens == shared + bucketed(suffixes, eager=backend == "eager")
    assert stats.prefill_tokens < 0.6 * sum(map(len, rows))


def test_a_second_call_reuses_the_cached_prefix(tiny_llm):
    rows = shared_rows(tiny_llm.tokenizer)
    dec = Decoder("eager", min_prefix_tokens=4)
    first = dec.generate(tiny_llm, rows[:2], 8)
    computed = dec.stats.prefill_tokens
    again = dec.generate(tiny_llm, rows[2:], 8)  # other rows, the same header
    assert first + again == [alone(tiny_llm, r, 8) for r in rows]
    shared = len(ids_of(tiny_llm.tokenizer, HEADER))
    per_row = dec.stats.cached_tokens // 2
    assert per_row >= shared - 1
    assert dec.stats.prefill_tokens - computed == 2 * (max(len(r) for r in rows[2:]) - per_row)
    assert dec.cache.hits >= 1


def test_a_single_prompt_is_continued_from_the_cache(tiny_llm):
    """The profile's second pass: the first prompt plus more text prefills only the added tokens."""
    tok = tiny_llm.tokenizer
    prompt = ids_of(tok, HEADER)
    longer = prompt + ids_of(tok, " Summary: The user")
    dec = Decoder("eager")
    dec.generate(tiny_llm, [prompt], 4)
    before = dec.stats.prefill_tokens
    assert dec.generate(tiny_llm, [longer], 6) == [alone(tiny_llm, longer, 6)]
    assert dec.stats.prefill_tokens - before == len(longer) - len(prompt)


def test_the_common_start_of_two_prompts_becomes_an_entry(tiny_llm):
    """Nobody declares a template's constant part: after two prompts that start alike, that start is cached."""
    tok = tiny_llm.tokenizer
    a, b, c = (ids_of(tok, HEADER + t) for t in TAILS[1:])
    dec = Decoder("eager", cache_entries=8, min_prefix_tokens=4)
    dec.generate(tiny_llm, [a], 3)
    dec.generate(tiny_llm, [b], 3)
    n = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
    keys = [len(key[1]) for key in dec.cache._entries]
    assert n in keys  # the compact entry: just the common start
    before = dec.stats.cached_tokens
    assert dec.generate(tiny_llm, [c], 5) == [alone(tiny_llm, c, 5)]
    assert dec.stats.cached_tokens - before >= n - 1


def test_an_adapter_never_reuses_the_base_models_kv(tiny_service, tmp_path):
    make_tiny_adapter(tiny_service.llm, tmp_path / "adapters" / "toy")
    prompt = HEADER + " Keywords:"
    base = tiny_service.generate([prompt], max_new_tokens=8)
    stats = tiny_service.decoder.stats
    cached = stats.cached_tokens
    tuned = tiny_service.generate([prompt], max_new_tokens=8, adapter="toy")
    assert stats.cached_tokens == cached  # the base model's KV of the same prompt was not used
    with tiny_service.use_adapter("toy") as llm:
        assert adapter_key(llm.model) is not None
        reference = llm.tokenizer.decode(alone(llm, ids_of(llm.tokenizer, prompt), 8), skip_special_tokens=True)
    assert tuned == [reference] and tuned != base
    assert adapter_key(tiny_service.llm.model) is None  # the adapter is off again
    assert tiny_service.generate([prompt], max_new_tokens=8) == base
    assert stats.cached_tokens > cached  # the base model's own entry was


def test_re_registering_or_unloading_an_adapter_drops_its_entries(tiny_service, tmp_path):
    folder = make_tiny_adapter(tiny_service.llm, tmp_path / "out" / "mine")
    tiny_service.register_adapter(folder)
    prompt = HEADER + " Keywords:"
    tiny_service.generate([prompt], max_new_tokens=4, adapter="mine")
    tiny_service.generate([prompt], max_new_tokens=4)
    scopes = {key[0][1] for key in tiny_service.decoder.cache._entries}
    assert None in scopes and len(scopes) == 2
    make_tiny_adapter(tiny_service.llm, folder, seed=7)  # re-trained under the same name
    tiny_service.register_adapter(folder)
    assert {key[0][1] for key in tiny_service.decoder.cache._entries} == {None}
    with tiny_service.use_adapter("mine") as llm:
        retrained = llm.tokenizer.decode(alone(llm, ids_of(llm.tokenizer, prompt), 6), skip_special_tokens=True)
    assert tiny_service.generate([prompt], max_new_tokens=6, adapter="mine") == [retrained]
    assert tiny_service.unload_adapter("mine")
    assert {key[0][1] for key in tiny_service.decoder.cache._entries} == {None}


def test_stops_end_each_row_on_its_own(tiny_llm):
    tok = tiny_llm.tokenizer
    rows = shared_rows(tok)
    full = [alone(tiny_llm, r, 12) for r in rows]
    texts = [tok.decode(f, skip_special_tokens=True) for f in full]
    dec = Decoder("eager", min_prefix_tokens=4)

    def cut_when(pred, tokens):  # the reference: the first prefix of the answer the predicate accepts
        return next((tokens[:i] for i in range(1, len(tokens) + 1)
                     if pred(tok.decode(tokens[:i], skip_special_tokens=True))), tokens)

    def long(text):
        return len(text) > 12
    assert dec.generate(tiny_llm, rows, 12, stop_when=long) == [cut_when(long, f) for f in full]
    stop = next(ch for ch in texts[0][3:] if ch.strip())  # a character the first answer writes
    got = dec.generate(tiny_llm, rows, 12, stop_strings=[stop])
    assert got == [cut_when(lambda t: stop in t, f) for f in full]
    assert dec.generate(tiny_llm, rows, 3) == [f[:3] for f in full]  # max_new_tokens


def test_eos_ends_a_row(tiny_llm):
    tok = tiny_llm.tokenizer
    rows = shared_rows(tok)
    eos = tok.eos_token_id
    tiny_llm.model.generation_config.eos_token_id = None
    full = [alone(tiny_llm, r, 10) for r in rows]
    # make a token of the first row (the first one after its first that it has not produced before) the
    # end of sequence: that row stops there, the others go on
    at = next(j for j in range(1, len(full[0])) if full[0][j] not in full[0][:j])
    stop = full[0][at]
    tiny_llm.model.generation_config.eos_token_id = stop
    try:
        got = Decoder("eager", min_prefix_tokens=4).generate(tiny_llm, rows, 10)
        want = [alone(tiny_llm, r, 10) for r in rows]
        want = [w[:w.index(stop) + 1] if stop in w else w for w in want]
    finally:
        tiny_llm.model.generation_config.eos_token_id = eos
    assert got == want and len(got[0]) == at + 1 and any(len(g) > at + 1 for g in got)


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_finished_rows_leave_the_eager_batch(tiny_llm, backend):
    tok = tiny_llm.tokenizer
    rows = shared_rows(tok)
    first = tok.decode(alone(tiny_llm, rows[0], 1), skip_special_tokens=True)
    dec = Decoder(backend, min_prefix_tokens=4)
    got = dec.generate(tiny_llm, rows, 8, stop_when=lambda text: text == first)  # row 0 is done at once
    assert len(got[0]) == 1 and any(len(g) > 1 for g in got[1:])
    steps = dec.stats.decode_steps
    if backend == "eager":
        assert dec.stats.decode_rows <= steps * (len(rows) - 1)  # row 0 cost no decode step
    else:
        assert dec.stats.decode_rows == steps * len(rows)  # a static batch keeps its shape


def test_the_cache_is_bounded():
    cache = PrefixCache(max_entries=2, max_tokens=10, min_tokens=2)
    kv = [(torch.zeros(1, 1, 12, 2), torch.zeros(1, 1, 12, 2))]
    for start in (0, 100, 200):
        cache.remember("s", torch.arange(start, start + 4), kv)
    assert len(cache) == 2 and cache.longest("s", torch.arange(0, 4), 4)[0] == 0  # the oldest went
    cache.remember("s", torch.arange(300, 312), kv)  # longer than the whole budget: not kept
    assert cache.tokens <= 10 and cache.longest("s", torch.arange(300, 312), 12)[0] == 0
    cache.remember("s", torch.arange(400, 403), kv)
    assert cache.tokens <= 10 and len(cache) <= 2
    n, got = cache.longest("s", torch.tensor([400, 401, 7]), 3)
    assert n == 2 and got[0][0].shape[2] == 2  # a partial match gives the common start's KV
    assert cache.longest("other", torch.arange(400, 403), 3)[0] == 0  # another model/adapter: nothing


def test_backend_selection():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert select_backend("auto", cpu) == "eager" and select_backend("auto", cuda) == "graphs"
    assert select_backend("graphs", cpu) == "static"  # CUDA graphs need CUDA: the same static cache
    assert select_backend("static", cuda) == "static" and select_backend("eager", cuda) == "eager"
    with pytest.raises(ValueError, match="decode backend"):
        select_backend("fast", cpu)
    with pytest.raises(ValueError):
        Decoder("fast")


def test_graphs_on_cpu_decode_like_eager(tiny_llm):
    rows = shared_rows(tiny_llm.tokenizer)
    dec = Decoder("graphs", min_prefix_tokens=4)
    assert dec.generate(tiny_llm, rows, 6) == Decoder("eager").generate(tiny_llm, rows, 6)
    assert not dec._compiled  # nothing compiled without CUDA


# -- per-row stops and groups (issue 17: the profile's keyword line shares the explanations' call) --
def test_rows_with_their_own_stops_each_get_what_they_get_alone(tiny_llm):
    from recdemo.llm.decode import RowStop

    tok = tiny_llm.tokenizer
    rows = shared_rows(tok) + [ids_of(tok, "Keywords: Comedy, Drama")]
    text = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    first = text(alone(tiny_llm, rows[1], 12))
    cut = next((c for c in first[2:] if c.strip()), None)  # a character the second row writes early on
    stops = [RowStop(10), RowStop(12, (cut,) if cut else None), RowStop(3), RowStop(12, None, lambda t: len(t) >= 4),
             RowStop(7)]
    want = [Decoder("eager").generate(tiny_llm, [r], stops=[s])[0] for r, s in zip(rows, stops)]
    assert want[2] == alone(tiny_llm, rows[2], 3) and want[0] == alone(tiny_llm, rows[0], 10)
    for backend in ("eager", "static"):
        dec, seen = Decoder(backend, min_prefix_tokens=4), []
        got = dec.generate(tiny_llm, rows, stops=stops, on_row=lambda row, new: seen.append((row, list(new))))
        assert got == want
        assert sorted(seen) == sorted(enumerate(want))  # each row reported once, with its tokens
        lengths = [len(new) for _, new in seen]
        assert lengths == sorted(lengths)  # reported the step it finishes: shorter rows first


def test_rows_are_grouped_by_common_start_each_prefix_prefilled_once(tiny_llm):
    """One user's explanation rows keep their long shared prefix when an unrelated long prompt joins them."""
    tok = tiny_llm.tokenizer
    rows = shared_rows(tok)
    other = ids_of(tok, "Zebra crossing notes: " + "quiet rivers and old bridges, " * 3)
    dec = Decoder("eager", min_prefix_tokens=4)
    got = dec.generate(tiny_llm, rows + [other], 6)
    assert got == [alone(tiny_llm, r, 6) for r in rows + [other]]
    shared = next(i for i in range(len(rows[0])) if len({r[i] for r in rows}) > 1)
    stats = dec.stats
    assert stats.shared_tokens == (len(rows) - 1) * shared  # the explanation rows' prefix, once
    suffixes = [len(r) - shared for r in rows] + [1]  # `other` is a group of its own: its last token
    padded = bucketed(suffixes)
    assert padded <= len(suffixes) * max(suffixes)
    assert stats.prefill_tokens == shared + (len(other) - 1) + padded
    before = dec.stats.prefill_tokens
    assert dec.generate(tiny_llm, [other + ids_of(tok, " Summary:")], 4)  # the profile's second pass
    assert dec.stats.prefill_tokens - before == len(ids_of(tok, " Summary:")) + 1  # its prompt's KV was cached


def test_a_zero_budget_row_is_reported_empty(tiny_llm):
    from recdemo.llm.decode import RowStop

    tok = tiny_llm.tokenizer
    rows = [ids_of(tok, "Castle"), ids_of(tok, "Keywords: Comedy")]
    seen = []
    got = Decoder("eager").generate(tiny_llm, rows, stops=[RowStop(0), RowStop(3)], on_row=lambda r, n: seen.append(r))
    assert got == [[], alone(tiny_llm, rows[1], 3)] and seen == [0, 1]


def test_a_decode_step_writes_into_reserved_room_and_rows_leave_intact():
    """The eager cache keeps room past its tokens: a step writes in place (no copy of the KV), rows
    that leave take their own KV with them, and running out of room moves the KV once, intact."""
    from recdemo.llm.decode import _growing_layer

    layer = _growing_layer(room=3)
    first = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).view(2, 1, 2, 4)
    layer.update(first, -first)
    buffer = layer._buffers[0].data_ptr()
    step = torch.full((2, 1, 1, 4), 7.0)
    keys, values = layer.update(step, -step)
    assert layer._buffers[0].data_ptr() == buffer and keys.shape == (2, 1, 3, 4)
    assert torch.equal(keys[:, :, :2], first) and torch.equal(values[:, :, 2:], -step)
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, torch.cat([first, step], dim=2)[1:])
    for _ in range(3):  # past the room: a bigger buffer, the tokens kept
        layer.update(step[:1], -step[:1])
    assert layer.get_seq_length() == 6 and torch.equal(layer.keys[0, :, :2], first[1])


def test_static_cache_fits_groups_whose_prefix_and_suffix_come_from_different_rows(tiny_llm):
    """The batch's KV is the longest prefix (one group's) plus the longest suffix (another's): wider
    than any prompt; a static cache sized from the longest prompt overflowed (profile + explanation rows)."""
    tok = tiny_llm.tokenizer
    long_start = "Zebra crossing notes: " + "quiet rivers and old bridges, " * 6
    a = [ids_of(tok, long_start + t) for t in (" A", " B")]  # long shared prefix, 1-2 token suffixes
    b = [ids_of(tok, "A user watched: " + t * 12) for t in ("red hills ", "blue lakes ")]  # short prefix, long suffixes
    rows = a + b
    kv = (len(a[0]) - 1) + (max(len(r) for r in b) - 4)  # group a's prefix + group b's longest suffix
    assert kv > -(-(max(len(r) for r in rows) + 4) // 64) * 64  # past a cache sized from the longest prompt
    got = Decoder("static", min_prefix_tokens=4).generate(tiny_llm, rows, 4)
    assert got == [alone(tiny_llm, r, 4) for r in rows]


def test_groups_in_separate_buckets_share_one_kv_allocation_whatever_memory_it_held(tiny_llm, monkeypatch):
    """Two prompt groups (a long shared start with short suffixes; another start with long suffixes)
    prefill in separate buckets straight into the call's one KV allocation, each right-aligned to the
    widest: every row still decodes like its prompt alone, even when the allocation starts as NaN
    (the pads before a shorter bucket and before a shorter prefix must be zeroed, not left as found)."""
    from recdemo.llm import decode

    allocations = []

    def poisoned(*args):
        kv = real(*args)
        for pair in kv:
            for buffer in pair:
                buffer.fill_(float("nan"))
        allocations.append(kv)
        return kv

    real, prefill = decode._call_kv, decode._prefill_suffixes
    batches = []
    monkeypatch.setattr(decode, "_call_kv", poisoned)
    monkeypatch.setattr(decode, "_prefill_suffixes", lambda *a, **k: batches.append(a[1]) or prefill(*a, **k))
    tok = tiny_llm.tokenizer
    start = "Zebra crossing notes: " + "quiet rivers and old bridges, " * 4
    short = [ids_of(tok, start + t) for t in (" A", " B red")]
    long = [ids_of(tok, "A user watched: " + t * 10) for t in ("red hills ", "blue lakes ")]
    rows = [long[0], short[0], long[1], short[1]]
    dec = Decoder("eager", min_prefix_tokens=4)
    assert dec.generate(tiny_llm, rows, 6) == [alone(tiny_llm, r, 6) for r in rows]
    assert len(allocations) == 1 and allocations[0][0][0].shape[0] == len(rows)  # one allocation, every row
    assert sorted(map(len, batches)) == [2, 2]  # really two buckets, of one group each


def test_buckets_cut_where_the_padding_saved_pays_for_a_forward():
    # one batch: 4 rows x 80 + 32 = 352; apart: 2 x 10 + 32 + 2 x 80 + 32 = 244
    assert _buckets([80, 10, 75, 12], 32) == [[1, 3], [2, 0]]
    # saving 2 x 4 positions does not pay for a forward of 32
    assert _buckets([80, 76, 80, 78], 32) == [[1, 3, 0, 2]]
    assert _buckets([5], 32) == [[0]]


def test_rows_prefilled_in_separate_batches_decode_like_each_prompt_alone(tiny_llm):
    """Long and short suffixes prefill apart (no short row padded to the long ones), then decode in one
    batch whose KV is right-aligned: every row still gets what it gets alone."""
    tok = tiny_llm.tokenizer
    long_rows = [ids_of(tok, "The user watched " + "a long film about rivers and bridges, " * k) for k in (4, 5)]
    short_rows = [ids_of(tok, w) for w in ("Castle", "Keywords: Comedy")]
    rows = [long_rows[0], short_rows[0], long_rows[1], short_rows[1]]
    dec = Decoder("eager", min_prefix_tokens=1000)  # nothing shared: the buckets alone
    assert dec.generate(tiny_llm, rows, 8) == [alone(tiny_llm, r, 8) for r in rows]
    assert dec.stats.prefill_tokens < len(rows) * max(map(len, rows)) - FORWARD_COST_POSITIONS


def test_rows_that_finish_mid_batch_leave_and_the_rows_moved_into_their_places_keep_their_kv(tiny_llm):
    """Rows 1 and 3 finish first: the last running rows move into their places (no copy of the
    others); every row still gets what it gets alone, and is reported as it finishes."""
    from recdemo.llm.decode import RowStop

    tok = tiny_llm.tokenizer
    rows = shared_rows(tok) + [ids_of(tok, "Keywords: Comedy, Drama"), ids_of(tok, "Castle of the north")]
    budgets = [9, 2, 9, 3, 9, 5]
    dec, seen = Decoder("eager", min_prefix_tokens=4), []
    got = dec.generate(tiny_llm, rows, stops=[RowStop(b) for b in budgets], on_row=lambda r, new: seen.append(r))
    assert got == [alone(tiny_llm, r, b) for r, b in zip(rows, budgets)]
    assert seen[:3] == [1, 3, 5]
    assert dec.stats.decode_rows < max(budgets) * len(rows) - 10  # the finished rows cost no more steps


def test_a_row_moved_into_a_finished_rows_place_carries_its_tokens():
    from recdemo.llm.decode import _growing_layer

    layer = _growing_layer(room=2)
    kv = torch.arange(4 * 1 * 3 * 2, dtype=torch.float32).view(4, 1, 3, 2)
    layer.update(kv, -kv)
    memory = layer._buffers[0].data_ptr()
    layer.keep_first(3, [(3, 1)])  # row 1 finished; row 3 takes its place; rows 0 and 2 stay put
    assert layer._buffers[0].data_ptr() == memory  # in place
    assert torch.equal(layer.keys, kv[[0, 3, 2]]) and torch.equal(layer.values, -kv[[0, 3, 2]])
    step = torch.full((3, 1, 1, 2), 5.0)
    keys, _ = layer.update(step, -step)  # the next step writes after each row's own tokens
    assert torch.equal(keys, torch.cat([kv[[0, 3, 2]], step], dim=2))


def test_calls_reuse_the_kept_kv_memory_whatever_it_holds(tiny_llm):
    """A decoder with a KV budget lays every call out in the same memory; what an earlier call (or
    anything) left there never reaches a row: the answers equal each prompt alone."""
    tok = tiny_llm.tokenizer
    dec = Decoder("eager", min_prefix_tokens=4, kv_pool_bytes=4 << 20)
    used = []
    first = shared_rows(tok)
    assert dec.generate(tiny_llm, first, 7) == [alone(tiny_llm, r, 7) for r in first]
    used.append(dec.kv_pool._flat.data_ptr())
    with torch.inference_mode():  # the memory was made in the decoder's inference mode
        dec.kv_pool._flat.fill_(float("nan"))  # stale, and poisonous if read
    second = [ids_of(tok, t) for t in ("Castle", "A user watched: red hills red hills", "Keywords: Comedy")]
    assert dec.generate(tiny_llm, second, 9) == [alone(tiny_llm, r, 9) for r in second]
    used.append(dec.kv_pool._flat.data_ptr())
    assert used[0] == used[1]


# -- prompt-lookup drafts (llm/lookup.py) checked in the decode step --
def drafting_decoder(**kw):
    from recdemo.llm.lookup import Lookup

    return Decoder("eager", min_prefix_tokens=4, lookup=Lookup(tokens=3, ngram=3, positions=64), **kw)


def test_drafted_steps_give_each_prompt_alone_in_fewer_row_steps(tiny_tokenizer):
    """Rows that gain accepted drafts finish in fewer steps; every row still writes exactly what it
    writes alone, also where a checked step's tokens run past the row's budget."""
    from conftest import make_tiny_llm

    from recdemo.llm.decode import RowStop

    llm = make_tiny_llm(tiny_tokenizer, seed=0)  # a seed whose answers repeat themselves: drafts hit
    rows = shared_rows(tiny_tokenizer) + [ids_of(tiny_tokenizer, "Castle of the north")]
    budgets = [24, 9, 24, 17, 24]
    want = [alone(llm, r, b) for r, b in zip(rows, budgets)]
    plain, drafting = Decoder("eager", min_prefix_tokens=4), drafting_decoder()
    assert plain.generate(llm, rows, stops=[RowStop(b) for b in budgets]) == want
    assert drafting.generate(llm, rows, stops=[RowStop(b) for b in budgets]) == want
    assert plain.stats.drafted_tokens == 0 and drafting.stats.accepted_tokens > 0
    assert drafting.stats.decode_rows < plain.stats.decode_rows


def test_a_stop_inside_a_checked_steps_tokens_ends_the_row_there(tiny_tokenizer):
    from conftest import make_tiny_llm

    llm = make_tiny_llm(tiny_tokenizer, seed=0)
    tok = tiny_tokenizer
    rows = shared_rows(tok)
    full = [alone(llm, r, 24) for r in rows]
    for cut in (5, 11, 17):  # stop after the row's text reaches the length of its first `cut` tokens
        def long(text, cut=cut):
            return len(text) >= min(len(tok.decode(f[:cut], skip_special_tokens=True)) for f in full)
        want = [next((f[:i] for i in range(1, 25) if long(tok.decode(f[:i], skip_special_tokens=True))), f)
                for f in full]
        dec = drafting_decoder()
        assert dec.generate(llm, rows, 24, stop_when=long) == want
        assert dec.stats.drafted_tokens > 0


def test_drafted_steps_that_outgrow_the_kept_kv_memory_move_and_stay_exact(tiny_tokenizer, monkeypatch):
    """Refused drafts leave masked positions behind: a call can need more KV than it reserved (its
    prompts and its token budget), and then moves to new memory, with what it held, and goes on."""
    from conftest import make_tiny_llm

    from recdemo.llm import decode

    llm = make_tiny_llm(tiny_tokenizer, seed=3)
    rows = shared_rows(tiny_tokenizer)
    made = []

    def prefill(*args, **kwargs):
        made.append(real(*args, **kwargs))
        made.append(made[-1].length)  # the prompts' width: the call reserved it + 24 positions
        return made[-2]
    real = decode._prefill_in_buckets
    monkeypatch.setattr(decode, "_prefill_in_buckets", prefill)
    dec = drafting_decoder(kv_pool_bytes=4 << 20)
    assert dec.generate(llm, rows, 24) == [alone(llm, r, 24) for r in rows]
    batch, width = made
    assert batch.length > width + 24 and dec.stats.drafted_tokens > dec.stats.accepted_tokens


def test_a_bfloat16_model_decodes_without_drafts(tiny_tokenizer):
    """In bfloat16 a several-token forward rounds differently from one-token steps: no exactness, no drafts."""
    from conftest import make_tiny_llm

    llm = make_tiny_llm(tiny_tokenizer, seed=0)
    llm.model.to(torch.bfloat16)
    rows = shared_rows(tiny_tokenizer)
    dec = drafting_decoder()
    assert dec.generate(llm, rows, 24) == [alone(llm, r, 24) for r in rows]
    assert dec.stats.drafted_tokens == 0
