"""GPTPrior: memory-aware loss == plain cross-entropy, KV-cache sampling == recomputing the whole
prefix, batched guidance == the formula on separate passes, logit filters == transformers' warpers."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from lcgen.priors.gpt import GPTPrior
from lcgen.priors.sampling import filter_logits, sample_tokens
from tiny import randomize


def make(m=1, k=17, classes=5, position_scheme="learned"):
    torch.manual_seed(0)
    return randomize(GPTPrior(codebook_size=k, grid_height=3, grid_width=4, tokens_per_position=m, num_classes=classes,
                              hidden_size=32, num_layers=2, num_heads=4, ffn_multiple_of=16,
                              position_scheme=position_scheme)).eval()


@pytest.mark.parametrize("m", [1, 3])
def test_chunked_loss_equals_cross_entropy(m):
    model = make(m)
    idx = torch.randint(17, (5, 3, 4, m) if m > 1 else (5, 3, 4))
    labels = torch.tensor([0, 1, 2, 3, 5])  # 5 = the null class
    logits = model(idx, labels)
    assert logits.shape == (5, 12, m, 17)
    ref = F.cross_entropy(logits.flatten(0, 2), idx.reshape(-1))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    loss = model(idx, labels, return_loss=True, loss_chunk_size=7)  # 60 positions in chunks of 7
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_uniform_at_init_loss_is_log_k():
    model = GPTPrior(codebook_size=100, grid_height=2, grid_width=2, num_classes=3, hidden_size=16, num_layers=1,
                     num_heads=2, ffn_multiple_of=8)
    loss = model(torch.randint(100, (4, 2, 2)), torch.tensor([0, 1, 2, 3]), return_loss=True)
    assert abs(loss.item() - torch.log(torch.tensor(100.0)).item()) < 1e-5  # zero-initialised head


def naive_generate(model, labels, scale):
    """Greedy decoding recomputing the full teacher-forced forward each step (no cache)."""
    b, m = len(labels), model.config.tokens_per_position
    out = torch.zeros(b, model.seq_len, m, dtype=torch.long)
    null = torch.full_like(labels, model.config.num_classes)
    for t in range(model.seq_len):
        grid = out.reshape(b, 3, 4, m) if m > 1 else out.reshape(b, 3, 4)
        cond = model(grid, labels)[:, t].float()
        logits = cond if scale == 1 else model(grid, null)[:, t].float() + scale * (cond - model(grid, null)[:, t].float())
        out[:, t] = logits.argmax(-1)
    return out.reshape(b, 3, 4, m) if m > 1 else out.reshape(b, 3, 4)


@pytest.mark.parametrize("m,scale,positions", [(1, 1.0, "learned"), (1, 3.0, "learned"), (3, 2.0, "learned"),
                                              (1, 3.0, "rope_2d"), (3, 1.0, "rope_2d")])
def test_kv_cache_generation_matches_full_recompute(m, scale, positions):
    model = make(m, position_scheme=positions)
    labels = torch.tensor([0, 4, 2])
    fast = model.generate(labels, guidance_scale=scale, temperature=0)
    torch.testing.assert_close(fast, naive_generate(model, labels, scale), rtol=0, atol=0)


@pytest.mark.parametrize("m,positions", [(1, "learned"), (3, "rope_2d")])
def test_fixed_shape_step_matches_teacher_forced_logits(m, positions):
    """The step compiled decoding traces (a (1,) position tensor, attention over the whole cache with
    the unwritten entries masked) gives, step by step, the teacher-forced forward's logits."""
    model = make(m, position_scheme=positions)
    labels = torch.tensor([0, 4, 5])
    idx = torch.randint(17, (3, 3, 4, m) if m > 1 else (3, 3, 4))
    reference = model(idx, labels).float()  # (B, L, m, K)
    tokens = idx.reshape(3, 12, m)
    caches = model.kv_caches(3)
    assert all(not t.any() for pair in caches for t in pair)  # zeroed: a NaN in a masked entry would leak
    for t in (t for pair in caches for t in pair):
        t.fill_(1e4)  # stale entries of an earlier call: masked, they must not move the logits
    x = model.class_embedding(labels)[:, None]
    with torch.no_grad():
        for t in range(12):
            logits = model.decode_step(x, torch.tensor([t]), caches)
            torch.testing.assert_close(logits, reference[:, t], rtol=1e-5, atol=1e-5)
            x = model._embed_tokens(tokens[:, t:t + 1])


@pytest.mark.slow
def test_compiled_generation_gives_the_eager_tokens():
    """generate(compile=True): the same tokens as eager for one generator, traced once per row count."""
    from lcgen.priors.gpt import compiled_decoding

    model = make(1, position_scheme="rope_2d")
    labels = torch.tensor([0, 4, 2])
    kwargs = dict(guidance_scale=2.0, top_k=9, top_p=0.95)
    eager = model.generate(labels, generator=torch.Generator().manual_seed(5), **kwargs)
    compiled = model.generate(labels, generator=torch.Generator().manual_seed(5), compile=True, **kwargs)
    step = compiled_decoding(model, 6)[0]
    again = model.generate(labels, generator=torch.Generator().manual_seed(5), compile=True, **kwargs)
    assert torch.equal(compiled, eager) and torch.equal(again, eager)
    assert compiled_decoding(model, 6)[0] is step  # reused, not traced again
    alive = weakref.ref(model)
    del model, step
    gc.collect()
    assert alive() is None  # the compiled step and its caches do not keep the model alive


def test_generation_is_deterministic_per_generator_and_in_range():
    model = make(3)
    a = model.generate(torch.tensor([1, 2]), 2.0, generator=torch.Generator().manual_seed(3), top_k=5, top_p=0.9)
    b = model.generate(torch.tensor([1, 2]), 2.0, generator=torch.Generator().manual_seed(3), top_k=5, top_p=0.9)
    c = model.generate(torch.tensor([1, 2]), 2.0, generator=torch.Generator().manual_seed(4), top_k=5, top_p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (2, 3, 4, 3) and a.min() >= 0 and a.max() < 17


def test_filters_match_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 50)
    ids = torch.zeros(6, 1, dtype=torch.long)
    for k in (1, 5, 49):
        torch.testing.assert_close(filter_logits(logits, top_k=k), TopKLogitsWarper(k)(ids, logits.clone()))
    for p in (0.1, 0.5, 0.9):
        torch.testing.assert_close(filter_logits(logits, top_p=p), TopPLogitsWarper(p)(ids, logits.clone()))


def test_filters_hand_case():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = ~torch.isinf(filter_logits(logits, top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]


def test_sampling_frequencies_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    draws = sample_tokens(probs.log().expand(20000, 3), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_bad_shapes_and_sizes():
    model = make(1)
    with pytest.raises(ValueError, match="indices must be"):
        model(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible"):
        GPTPrior(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="num_classes"):
        GPTPrior(num_classes=-1, hidden_size=32, num_heads=4, num_layers=1)
