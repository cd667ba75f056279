"""The quantizers' Bernoulli draws are exact, their norms do not overflow, and their kind
follows their hyper-parameters (docs/theory.md §1, §1a).

Why these tests: a float32 uniform has 24 random bits, and [u < p] fires with probability
⌈p·2^24⌉/2^24 for the one-sided test the kernel used to make, a bias of the same sign at every
coordinate and every step; a sum of squares overflows or underflows float32 long before the
norm does; and TernGrad with clipping is unbiased for clip(g), not for g.
"""

from __future__ import annotations

import math

import pytest
import torch

from suite.compressors import bernoulli, build_compressor
from suite.compressors.base import MessageRangeError
from suite.compressors.quantize import block_norms
from suite.rng import WorkerStreams, _fill_grid_row, grid_bits
from tests.conftest import make_cfg

# every compressor that draws through the shared exact kernel, with the settings that take
# each of its paths (s = 1 fused, s > 1, blocks, a shared max-norm scale)
KERNEL_VARIANTS = [
    ("qsgd", {"levels": 1}),
    ("qsgd", {"levels": 5}),
    ("qsgd", {"levels": 3, "bucket_size": 7}),
    ("quant_p", {"p": 2}),
    ("quant_p", {"p": "inf", "block_size": 5}),
    ("terngrad", {}),
]


def streams(w: int, seed: int = 0) -> WorkerStreams:
    return WorkerStreams(seed, "compression", list(range(w)))


def vid(v) -> str:
    return v[0] + "".join(f"-{k}={x}" for k, x in v[1].items())


@pytest.mark.slow
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive", "negative"])
def test_tiny_float32_coordinates_fire_as_rarely_as_their_probability(sign):
    """The reproduction of the defect: x = [1, ±1e-10 × 99,999] in float32, 2,000 draws of
    QSGD s = 1 (200 workers' streams × 10 rounds).

    Each tiny coordinate has p = 1e-10 (the norm is 1 up to 1e-15), so the expected number
    of non-zero tiny coordinates over all draws is 2000·99,999·1e-10 ≈ 0.02 and the count is
    Poisson: P(count ≥ 3) ≈ 0.02³/6 ≈ 1.3e-6, the tolerance. The one-sided 24-bit test
    fired with probability 2^-24 instead, an expected 11.9 (it gave 19 here). The kernel is
    shared by Quant_p and TernGrad (tested equal from equal streams); the cell test below
    checks both signs and both precisions far more sharply."""
    c = build_compressor("qsgd", levels=1)
    x = torch.full((1, 100_000), sign * 1e-10, dtype=torch.float32)
    x[0, 0] = 1.0
    batch = x.expand(200, -1)
    s = streams(200, seed=5)
    fired = 0
    for _ in range(10):
        y = c.decompress(c.compress(batch, s))
        fired += int(torch.count_nonzero(y[:, 1:]))
        assert bool((y[:, 0] == 1.0).all())  # p = 1 for the largest coordinate: always sent
    assert fired <= 2


class ZeroBulk:
    """WorkerStreams whose bulk uniforms are all 0 (U = 0: the first cell of every coordinate
    with p < 2^-G), and whose refinement draws are the real streams' (after `zero_rounds`
    rounds of zeros as well)."""

    def __init__(self, w: int, zero_rounds: int = 0):
        self.real, self.zero_rounds = streams(w, seed=11), zero_rounds

    def __len__(self) -> int:
        return len(self.real)

    def fill_grid(self, out):
        return out.zero_()

    def grid_uniform_each(self, counts, dtype=torch.float32):
        if self.zero_rounds:
            self.zero_rounds -= 1
            return torch.zeros(sum(counts), dtype=dtype)
        return self.real.grid_uniform_each(counts, dtype)


@pytest.mark.parametrize("zero_rounds", [0, 1], ids=["one-refinement", "two-refinements"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive", "negative"])
def test_the_undecided_cell_is_drawn_again_with_its_exact_fraction(sign, dtype, zero_rounds):
    """With every bulk uniform U = 0, a coordinate with p = q·2^-G (q < 1) lands in the cell
    U = ⌊p·2^G⌋ = 0 and must fire with probability exactly q: the refined draw sees the whole
    fraction. (zero_rounds=1: the first refinement lands in the cell again, a second one
    decides.) The one-sided test fired always (x > 0) or never (x < 0).

    Quant_∞ with one block: the scale is max|x| = 1 exactly, so p_j = |x_j|. n = 200,000
    coordinates at q = 0.3: the fired fraction has standard deviation √(0.21/n) ≈ 0.001, and
    5 standard deviations (0.005, a false alarm probability ~6e-7) is the tolerance."""
    G = grid_bits(dtype)
    q = 0.3
    p = q * 2.0**-G * (2.0**-G if zero_rounds else 1.0)
    n = 200_000
    x = torch.full((1, n + 1), sign * p, dtype=dtype)
    x[0, 0] = 1.0
    c = build_compressor("quant_p", p="inf")
    trits = c.compress(x, ZeroBulk(1, zero_rounds)).trits[0, 1:]
    assert set(trits.unique().tolist()) <= {0, int(sign)}
    fired = float(torch.count_nonzero(trits)) / n
    assert abs(fired - q) <= 5 * math.sqrt(q * (1 - q) / n), fired


@pytest.mark.parametrize("variant", KERNEL_VARIANTS, ids=vid)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_chunking_and_worker_layout_do_not_change_a_single_draw(variant, dtype, monkeypatch):
    """The CPU kernel works on cache-sized chunks whose width depends on how many workers share
    the batch. Each worker's output must not depend on either: the same as one chunk, and the
    same whether its row is compressed alone or with the others (the distributed backend holds
    fewer rows than the simulated one). Tiny coordinates and a forced-cell stream make the
    refinement path run too."""
    name, hp = variant
    c = build_compressor(name, **hp)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1000, generator=g, dtype=torch.float64).to(dtype)
    x[:, ::7] *= 1e-9  # small probabilities: more of the refined path with real streams
    whole = c.decompress(c.compress(x, streams(4)))
    zero_whole = c.compress(x, ZeroBulk(4))
    for chunk in (64, 300, 1 << 12):
        monkeypatch.setattr(bernoulli, "CHUNK", chunk)
        assert torch.equal(c.decompress(c.compress(x, streams(4))), whole), chunk
        zero = c.compress(x, ZeroBulk(4))
        assert all(torch.equal(a, b) for a, b in zip(zero, zero_whole, strict=True)
                   if isinstance(a, torch.Tensor)), chunk
        for k in range(4):  # row k alone, from worker k's own stream
            alone = WorkerStreams(0, "compression", [k])
            assert torch.equal(c.decompress(c.compress(x[k:k + 1], alone))[0], whole[k])


def test_column_chunks_tile_the_columns_and_respect_blocks():
    for d, B, w in [(1000, 1000, 1), (1000, 7, 3), (1000, 300, 2), (10, 3, 1), (999, 1, 5)]:
        for chunk in (16, 100, 1 << 20):
            old, bernoulli.CHUNK = bernoulli.CHUNK, chunk
            try:
                chunks = bernoulli.column_chunks(d, B, w, torch.device("cpu"))
            finally:
                bernoulli.CHUNK = old
            assert chunks[0].c0 == 0 and chunks[-1].c1 == d
            assert all(a.c1 == b.c0 for a, b in zip(chunks, chunks[1:], strict=False))
            for ch in chunks:
                first, last = ch.c0 // B, (ch.c1 - 1) // B
                assert (ch.b0, ch.b1) == (first, last + 1)
                # either whole blocks from a block start, or a piece of one block
                assert (ch.block == B and ch.c0 % B == 0) or (first == last
                                                               and ch.block == ch.c1 - ch.c0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("integer", [False, True], ids=["cpu-uniform", "integer-draws"])
def test_grid_uniforms_are_exact_multiples_of_2_pow_minus_G(dtype, integer):
    """The exactness argument needs u = U·2^-G, U uniform on {0..2^G − 1}: torch's CPU
    uniforms are that; other devices build it from integer draws (forced here on the CPU).
    Uniformity: the lowest bit of U and the top bit are fair coins (5 standard deviations)."""
    G = grid_bits(dtype)
    row = torch.empty(200_000, dtype=dtype)
    _fill_grid_row(row, torch.Generator().manual_seed(1), integer=integer)
    U = row.double() * 2.0**G
    assert torch.equal(U, U.floor()) and U.min() >= 0 and U.max() < 2.0**G
    tol = 5 * 0.5 / math.sqrt(row.numel())
    low = torch.remainder(U, 2.0) if G == 24 else torch.remainder(U, 2.0**30).remainder(2.0)
    assert abs(float(low.mean()) - 0.5) < tol
    assert abs(float((U >= 2.0 ** (G - 1)).double().mean()) - 0.5) < tol


def test_fill_grid_in_pieces_draws_what_one_fill_draws():
    a = streams(3, seed=4).fill_grid(torch.empty(3, 1000))
    s = streams(3, seed=4)
    b = torch.cat([s.fill_grid(torch.empty(3, n)) for n in (1, 499, 500)], dim=1)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- norms (item: overflow)


@pytest.mark.parametrize("spec", [("qsgd", {"levels": 1}), ("qsgd", {"levels": 4}),
                                  ("quant_p", {"p": 1}), ("quant_p", {"p": 2})], ids=vid)
def test_float32_inputs_whose_squares_overflow_are_quantized(spec):
    """[[3e19, 4e19]]: Σ x² = 2.5e39 overflows float32, ‖x‖₂ = 5e19 does not. The wire norm
    is the true norm rounded up to float32, and the message decodes to values in
    {0, ±norm/s·k}: nothing refused, nothing infinite."""
    name, hp = spec
    c = build_compressor(name, **hp)
    x = torch.tensor([[3e19, 4e19]], dtype=torch.float32)
    p = c.compress(x, streams(1))
    norm = p.norms if name == "qsgd" else p.scales
    exact = (5e19 if hp.get("p", 2) == 2 else 7e19)
    assert norm.dtype == torch.float32 and float(norm) >= exact
    assert float(norm) == float(torch.tensor(exact, dtype=torch.float64).to(torch.float32)) or \
        float(torch.nextafter(norm, torch.zeros_like(norm))) < exact
    assert torch.isfinite(c.decompress(p)).all()


@pytest.mark.parametrize("name", ["qsgd", "quant_p"])
def test_float32_inputs_whose_squares_underflow_keep_their_norm(name):
    """[[1e-30, 1e-30]]: each square (1e-60) is below float32's range, so the unscaled sum is
    0 and the message would decode to 0: biased by the whole vector. With scaling the norm is
    √2·1e-30 and the mean over 4096 stratified draws is x to 1/4096 of a rounding step."""
    c = build_compressor(name, levels=1) if name == "qsgd" else build_compressor(name, p=2)
    x = torch.tensor([[1e-30, 1e-30]], dtype=torch.float32)
    m = 4096
    p = c.compress(x.expand(m, 2), _Stratified(m))
    norm = float((p.norms if name == "qsgd" else p.scales)[0, 0])
    assert norm == pytest.approx(math.sqrt(2) * 1e-30, rel=1e-6)
    mean = c.decompress(p).double().mean(0)
    assert torch.allclose(mean, x[0].double(), rtol=0, atol=norm / m + 1e-36)


class _Stratified:
    """Row i holds the uniform (i + 1/2)/M at every coordinate (M stratified draws)."""

    def __init__(self, m: int):
        self.m = m

    def __len__(self) -> int:
        return self.m

    def fill_grid(self, out):
        u = (torch.arange(self.m, dtype=torch.float64) + 0.5) / self.m
        return out.copy_(u.to(out.dtype).unsqueeze(1).expand_as(out))

    def grid_uniform_each(self, counts, dtype=torch.float32):
        return torch.full((sum(counts),), 0.5, dtype=dtype)


def test_block_norms_match_float64_on_hard_inputs():
    """Overflowing, underflowing and ordinary blocks side by side, and float64 beyond float32:
    every norm within 4 ulps of the float64 (or scaled) reference."""
    x = torch.tensor([[3e19, 4e19, 1e-30, 1e-30, 1.0, 2.0, 0.0, 0.0]], dtype=torch.float32)
    for p in (1.0, 2.0):
        got = block_norms(x, 2, p).double()
        ref = torch.linalg.vector_norm(x.double().view(1, 4, 2), ord=p, dim=2)
        assert torch.allclose(got, ref, rtol=5e-7, atol=0), (p, got, ref)
    big = torch.tensor([[1e200, 1e200]], dtype=torch.float64)
    assert float(block_norms(big, 2, 2.0)) == pytest.approx(math.sqrt(2) * 1e200, rel=1e-15)
    tiny = torch.tensor([[1e-200, 1e-200]], dtype=torch.float64)
    assert float(block_norms(tiny, 2, 2.0)) == pytest.approx(math.sqrt(2) * 1e-200, rel=1e-15)


def test_a_norm_beyond_float32_is_refused_with_its_real_value():
    c = build_compressor("qsgd", levels=2)
    with pytest.raises(MessageRangeError, match=r"1\.41421e\+200"):
        c.compress(torch.tensor([[1e200, 1e200]], dtype=torch.float64), streams(1))


def test_scaled_sign_and_terngrad_clip_see_the_true_size_of_large_inputs():
    """The same overflow in ‖x‖₁/d (scaled sign) and in TernGrad's clipping std."""
    sign = build_compressor("sign")
    x = torch.tensor([[3e38, 3e38, -3e38]], dtype=torch.float32)
    assert float(sign.compress(x, None).scales) == pytest.approx(3e38, rel=1e-6)
    t = build_compressor("terngrad", clip=1.0)
    g = torch.tensor([[3e19, -3e19, 1e19, 0.0]], dtype=torch.float32)
    sigma = float(g.double().std(correction=0))
    assert float(t.local_scale(g)) == pytest.approx(sigma, rel=1e-6)


# ---------------------------------------------------------------- kinds (item: terngrad clip)


def test_terngrad_declares_its_kind_from_clip():
    assert build_compressor("terngrad").kind == "unbiased"
    clipped = build_compressor("terngrad", clip=2.5)
    assert clipped.kind == "biased" and not clipped.unbiased and clipped.delta is None


def test_clipped_terngrad_is_measurably_biased():
    """E Q(g) = clip(g) ≠ g: the mean over 4096 stratified draws misses the outlier by far
    more than a rounding step over 4096."""
    c = build_compressor("terngrad", clip=1.0)
    g = torch.tensor([[6.0, -0.5, 0.5, 0.25, 0.0, -0.25, 0.1, 0.3]], dtype=torch.float64)
    m = 4096
    mean = c.decompress(c.compress(g.expand(m, 8), _Stratified(m))).mean(0)
    scale = float(c.local_scale(g))
    assert float(mean[0]) < 6.0 - 100 * scale / m


@pytest.mark.parametrize("algorithm", ["diana", "local_sgd", "delayed_sgd", "qsgd", "dqgd",
                                       "ef_sgd"])
def test_algorithms_that_need_an_unbiased_or_contractive_message_refuse_clipped_terngrad(
        algorithm, tmp_path, capsys):
    from suite.cli import run_job

    extra = ["batch_size=full"] if algorithm == "dqgd" else []
    cfg = make_cfg(f"algorithm={algorithm}", "compressor=terngrad", "compressor.clip=2.5",
                   "steps=2", "lr=0.1", *extra)
    code, _ = run_job(cfg, launch_dir=tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert "compressor=terngrad (clip=2.5) is biased" in err, err


@pytest.mark.parametrize("algorithm", ["sgd", "terngrad"])
def test_sgd_and_terngrad_run_clipped_terngrad_without_a_theorem(algorithm):
    from suite.runner import execute

    res = execute(make_cfg(f"algorithm={algorithm}", "compressor=terngrad",
                           "compressor.clip=2.5", "steps=5", "lr=0.1", "eval_every=5"))
    assert res.status == "FINISHED"
    with pytest.raises(Exception, match="no theorem"):
        execute(make_cfg(f"algorithm={algorithm}", "compressor=terngrad",
                         "compressor.clip=2.5", "steps=5", "lr=theory"))
