"""revival="latent-pull": each rarely used code of a frozen codebook pulls its closest batch latent
towards itself (CVQ's revival mirrored), checked by hand and by what it is for: coverage."""
import math

import pytest
import torch

from lcgen.tokenizer.quantizers import build_quantizer


def frozen_lc(codes: torch.Tensor, **options):
    """An lc quantizer whose projected codes are exactly `codes` (K, d): identity projector, no bias."""
    k, d = codes.shape
    q = build_quantizer("lc", dim=d, codebook_size=k, code_dim=d, init_codebook=codes, **options)
    with torch.no_grad():
        q.codebook.projector.weight.copy_(torch.eye(d))
        q.codebook.projector.bias.zero_()
    return q


def as_latent(rows: torch.Tensor) -> torch.Tensor:
    """(N, d) rows -> a (1, d, 1, N) latent grid whose positions are those rows, in order."""
    return rows.t().reshape(1, rows.shape[1], 1, rows.shape[0])


def test_one_step_by_hand():
    gamma = 0.99
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [-4.0, 0.0]])
    rows = torch.tensor([[0.1, 0.0], [0.9, 0.1], [2.0, 2.0]])  # use codes 0, 1, 1
    q = frozen_lc(codes, revival="latent-pull", pull_weight=2.0)
    z = as_latent(rows).requires_grad_()
    out = q(z)
    assert out.indices.flatten().tolist() == [0, 1, 1]
    # running usage and CVQ's rate after this batch
    usage = (1 - gamma) * torch.tensor([1.0, 2.0, 0.0, 0.0]) / 3
    assert torch.allclose(q.puller.usage[0], usage)
    alpha = torch.exp(-usage * 4 * 10 / (1 - gamma) - 1e-3)
    assert q.puller.dead_fraction == 0.5  # codes 2 and 3, logged by the training loop
    # dead codes 2 and 3 pull their closest latents: (2, 2) and (0.1, 0); used ones (alpha ~ e^-13) pull nothing
    pull = alpha[2] * ((rows[2] - codes[2]) ** 2).sum() + alpha[3] * ((rows[0] - codes[3]) ** 2).sum()
    commit = ((rows - codes[[0, 1, 1]]) ** 2).mean()
    codebook = 0.33 * commit
    expected = commit + codebook + 2.0 * pull / (3 * 2)  # commitment_weight 1 x pull_weight 2, over N*d
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    out.loss.backward()
    grad = z.grad.reshape(2, 3).t()
    # the pulled latents move towards their dead codes: the gradient points away from the code
    expected_grad = 2 * (rows - codes[[0, 1, 1]]) / 6  # commitment (the codebook term has no latent gradient)
    expected_grad[2] += 2.0 * alpha[2] * 2 * (rows[2] - codes[2]) / 6
    expected_grad[0] += 2.0 * alpha[3] * 2 * (rows[0] - codes[3]) / 6
    assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_no_pull_in_eval_and_none_without_dead_codes():
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    q = frozen_lc(codes, revival="latent-pull")
    rows = torch.tensor([[0.1, 0.0], [0.9, 0.0]])
    plain = frozen_lc(codes)
    q.train(), plain.train()
    for _ in range(3):  # both codes in use: the pull adds nothing
        assert torch.allclose(q(as_latent(rows)).loss, plain(as_latent(rows)).loss)
    q.eval()
    usage = q.puller.usage.clone()
    far = torch.tensor([[0.1, 0.0], [0.2, 0.0]])  # code 1 unused, but eval mode: no pull, no usage update
    assert torch.allclose(q(as_latent(far)).loss, plain.eval()(as_latent(far)).loss)
    assert torch.equal(q.puller.usage, usage)


def test_pull_revives_a_frozen_codebook_the_commitment_alone_leaves_dead():
    """A small encoder trained against a frozen codebook wider than its latents' start: with the
    commitment alone its latents collapse onto a code or two; with the pull most codes are used."""
    torch.manual_seed(0)
    codes = torch.randn(64, 2) * 3
    inputs = torch.randn(1024, 4)
    used = {}
    for revival in (None, "latent-pull"):
        torch.manual_seed(1)
        encoder = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        q = frozen_lc(codes, revival=revival)
        opt = torch.optim.Adam(encoder.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            q(as_latent(encoder(inputs[torch.randint(0, 1024, (256,))]))).loss.backward()
            opt.step()
        with torch.no_grad():
            used[revival] = q.eval()(as_latent(encoder(inputs))).indices.unique().numel()
    assert used[None] <= 4
    assert used["latent-pull"] >= 32


def test_options_and_state():
    codes = torch.randn(10, 4)
    q = build_quantizer("lc", dim=8, codebook_size=10, init_codebook=codes, revival="latent-pull")
    assert q.puller.usage.shape == (1, 10) and "puller.usage" in q.state_dict()
    with pytest.raises(ValueError, match="pull_weight"):
        build_quantizer("lc", dim=8, codebook_size=10, init_codebook=codes, revival="latent-pull", pull_weight=-1.0)
    with pytest.raises(ValueError, match="pull_weight"):
        build_quantizer("lc", dim=8, codebook_size=10, init_codebook=codes, revival="latent-pull",
                        pull_weight=math.nan)
    with pytest.raises(ValueError, match="frozen"):  # CVQ's revival moves codes: refused on a frozen table
        build_quantizer("lc", dim=8, codebook_size=10, init_codebook=codes, revival="cvq")


def test_code_pull_moves_the_projector_not_the_latents():
    """revival="code-pull": the same loss, its gradient on the codes (the projector), none on the latents."""
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    rows = torch.tensor([[0.1, 0.0], [0.9, 0.1]])
    pulled, plain = frozen_lc(codes, revival="code-pull", pull_weight=3.0), frozen_lc(codes)
    z1, z2 = as_latent(rows).requires_grad_(), as_latent(rows).requires_grad_()
    out, ref = pulled(z1), plain(z2)
    alpha = math.exp(-1e-3)  # code 2 never used
    gap = ((rows[1] - codes[2]) ** 2).sum()  # its closest latent is (0.9, 0.1)
    assert torch.allclose(out.loss, ref.loss + 3.0 * alpha * gap / (2 * 2), rtol=1e-5)
    (out.loss + ref.loss).backward()
    assert torch.allclose(z1.grad, z2.grad)  # the latents feel only the commitment
    extra = pulled.codebook.projector.weight.grad - plain.codebook.projector.weight.grad
    # d/dW of 3 * alpha * ||W e_2 + b - z||^2 / 4 with W = I, b = 0
    assert torch.allclose(extra, 3.0 * alpha * 2 * torch.outer(codes[2] - rows[1], codes[2]) / 4, rtol=1e-4)


def test_a_latent_answers_only_the_closest_dead_code_that_chose_it():
    """Dead codes 2 and 3 both have latent (1, 0) as their closest; only code 2, the nearer, pulls it
    (pulled towards both it would settle between them); a tie goes to the lower code index."""
    codes = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [3.0, 0.0], [1.0, 4.0], [1.0, -2.0]])
    rows = torch.tensor([[0.0, 0.1], [-1.0, 0.1], [1.0, 0.0]])  # codes 0, 1, 0 in use
    q, plain = frozen_lc(codes, revival="latent-pull"), frozen_lc(codes)
    out, ref = q(as_latent(rows)), plain(as_latent(rows))
    alpha = math.exp(-1e-3)
    # code 2: gap 4; code 3: gap 16; code 4: gap 4 to (1, 0) too -> tie with code 2, code 2 keeps the latent
    assert torch.allclose(out.loss, ref.loss + alpha * 4.0 / (3 * 2), rtol=1e-5)
