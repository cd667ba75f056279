"""The compressor library: one registry-driven suite over every compressor and variant.

What each test guards:
- the wire format: decode(encode(p)) reproduces decompress(p) bit for bit, the message is
  exactly ceil(bits/8) bytes, and bits follows the documented formula;
- the declared constants: unbiasedness and E‖C(x) − x‖² ≤ ω‖x‖² (or (1 − δ)‖x‖²) by Monte
  Carlo on adversarial inputs, with tolerances derived below;
- edge cases: zero vectors, d = 1, NaN/inf, invalid hyper-parameters, dtype ranges;
- the special cases of docs/theory.md §1 as exact equalities from the same streams;
- per-worker streams: a worker's output does not depend on which other workers share the batch.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suite.compressors import REGISTRY, CompressorError, bitpack, build_compressor
from suite.compressors.elias import omega_decode, omega_encode, omega_length
from suite.compressors.randk import _first_k_distinct
from suite.compressors.ternary import ternary_bits
from suite.compressors.terngrad import clip_bound, terngrad_clip
from suite.rng import WorkerStreams

CONF = Path(__file__).resolve().parent.parent / "conf" / "compressor"
INF = float("inf")

# Every compressor with the hyper-parameter settings that change its code path.
VARIANTS = [
    ("identity", {}),
    ("identity", {"width": 16}),
    ("identity", {"width": 64}),
    ("qsgd", {"levels": 1}),
    ("qsgd", {"levels": 4}),
    ("qsgd", {"levels": 3, "bucket_size": 4}),
    ("qsgd", {"levels": 255}),
    ("terngrad", {}),
    ("terngrad", {"clip": 2.5}),
    ("quant_p", {"p": 1}),
    ("quant_p", {"p": 2}),
    ("quant_p", {"p": "inf"}),
    ("quant_p", {"p": 2, "block_size": 4}),
    ("quant_p", {"p": INF, "block_size": 3}),
    ("topk", {"k": 2, "ratio": None}),
    ("topk", {"k": None, "ratio": 0.3}),
    ("randk", {"k": 2, "ratio": None}),
    ("randk", {"k": None, "ratio": 0.3}),
    ("randk", {"k": None, "ratio": 0.3, "scaled": False}),
    ("randk", {"k": 1, "ratio": None, "scaled": False}),
    ("sign", {}),
    ("natural", {}),
]


def vid(v) -> str:
    name, hp = v
    return name + "".join(f"-{k}={val}" for k, val in hp.items())


def applicable(v, d: int) -> bool:
    """k-based variants need k <= d (larger k is refused, see test_k_exceeding_d_is_refused)."""
    return v[1].get("k") is None or v[1]["k"] <= d


def kept(hp: dict, d: int) -> int:
    return hp["k"] if hp.get("k") is not None else max(1, math.floor(hp["ratio"] * d + 0.5))


def expected_bits(name: str, hp: dict, d: int) -> int:
    """The documented size of one message, written out independently of the implementation."""
    log2d = math.ceil(math.log2(d)) if d > 1 else 0
    if name == "identity":
        return hp.get("width", 32) * d
    if name == "qsgd":
        b = hp.get("bucket_size") or d
        s = hp["levels"]
        return 32 * math.ceil(d / min(b, d)) + d * (1 + math.ceil(math.log2(s + 1)))
    if name == "terngrad":
        return 32 + 2 * d
    if name == "quant_p":
        b = hp.get("block_size") or d
        return 32 * math.ceil(d / min(b, d)) + 2 * d
    if name in ("topk", "randk"):
        return kept(hp, d) * (32 + log2d)
    if name == "sign":
        return 32 + d
    if name == "natural":
        return 9 * d
    raise AssertionError(name)


def wire_eps(name: str, hp: dict) -> float:
    """Relative rounding of the wire format (unit roundoff of its narrowest float), but at
    least 2^-40: float64 sums over N = 5000 draws carry ~N·2^-53 relative error."""
    return {16: 2.0**-11, 64: 2.0**-40}.get(hp.get("width"), 2.0**-24)


def target(name: str, hp: dict, x: torch.Tensor) -> torch.Tensor:
    """What the compressor is unbiased for / approximates: clip(x) for clipped TernGrad."""
    if name == "terngrad" and hp.get("clip") is not None:
        return terngrad_clip(x, hp["clip"])
    return x


def streams_for(w: int, seed: int = 0, ids=None) -> WorkerStreams:
    return WorkerStreams(seed, "compression", list(range(w)) if ids is None else ids)


def roundtrip(c, x, streams):
    p = c.compress(x, streams)
    return p, c.decompress(p)


def sample_input(w: int, d: int, dtype, seed: int, spread: float = 3.0) -> torch.Tensor:
    """Values over many magnitudes, signs and some exact zeros, within dtype's safe range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(w, d, generator=g, dtype=torch.float64)
    x *= torch.exp(spread * torch.randn(w, d, generator=g, dtype=torch.float64))
    x[torch.rand(w, d, generator=g) < 0.2] = 0.0
    if dtype == torch.float16:
        x = x.clamp(-1000, 1000)
    return x.to(dtype)


# ---------------------------------------------------------------- wire format


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
def test_decode_encode_reproduces_decompress_exactly(variant, dtype):
    name, hp = variant
    c = build_compressor(name, **hp)
    w, d = 4, 37
    x = sample_input(w, d, dtype, seed=7)
    p, y = roundtrip(c, x, streams_for(w))
    msgs = c.encode(p)
    y2 = c.decompress(c.decode(msgs, d, dtype))
    assert y.dtype == dtype and y.shape == (w, d)
    assert torch.equal(y, y2)
    bits = c.bits(p)
    assert bits.dtype == torch.int64 and bits.shape == (w,)
    assert [len(m) for m in msgs] == [math.ceil(int(b) / 8) for b in bits]
    assert bits.tolist() == [expected_bits(name, hp, d)] * w


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v=st.sampled_from(VARIANTS),
    w=st.integers(1, 3),
    d=st.integers(1, 70),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**31),
    spread=st.floats(0.0, 6.0),
)
def test_round_trip_and_bits_property(v, w, d, dtype, seed, spread):
    name, hp = v
    if not applicable(v, d):
        return
    c = build_compressor(name, **hp)
    x = sample_input(w, d, dtype, seed, spread)
    if hp.get("width") == 16:
        x = x.clamp(-6e4, 6e4)  # float16's range; beyond it identity refuses (tested below)
    p, y = roundtrip(c, x, streams_for(w, seed))
    msgs = c.encode(p)
    assert torch.equal(c.decompress(c.decode(msgs, d, dtype)), y)
    assert torch.isfinite(y).all()
    assert [len(m) for m in msgs] == [math.ceil(expected_bits(name, hp, d) / 8)] * w
    assert c.bits(p).tolist() == [expected_bits(name, hp, d)] * w


def _ref_bits(values, width: int) -> bytes:
    s = "".join(format(int(v), f"0{width}b") for v in values) if width else ""
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i : i + 8], 2) for i in range(0, len(s), 8))


@settings(max_examples=150, deadline=None)
@given(width=st.integers(0, 63), n=st.integers(0, 40), w=st.integers(1, 3), data=st.data())
def test_bitpack_matches_reference_and_round_trips(width, n, w, data):
    values = np.array(
        [[data.draw(st.integers(0, 2**width - 1)) for _ in range(n)] for _ in range(w)],
        dtype=np.uint64,
    ).reshape(w, n)
    packed = bitpack.pack_fields(values, width)
    assert packed.shape == (w, bitpack.packed_nbytes(n, width))
    for row, ref in zip(packed, values, strict=True):
        assert row.tobytes() == _ref_bits(ref, width)
    assert np.array_equal(bitpack.unpack_fields(packed, n, width).astype(np.uint64), values)


def test_decode_refuses_a_message_of_the_wrong_length():
    c = build_compressor("qsgd", levels=4)
    p = c.compress(torch.randn(2, 10), streams_for(2))
    msgs = c.encode(p)
    with pytest.raises(CompressorError, match="bytes"):
        c.decode([msgs[0] + b"\0", msgs[1]], 10, torch.float32)


# ---------------------------------------------------------------- Monte Carlo

# N draws per input, all on the worker axis: 4 inputs x N copies = one [4N, d] batch compressed by
# 4N worker streams in a single call. The streams are created once and reset to the same state
# before every test, so every test sees the same draws whatever else runs (and in any order).
N = 5000


@pytest.fixture(scope="module")
def mc_streams():
    s = streams_for(4 * N, seed=2024)
    return s, s.get_state()


def adversarial_inputs(d: int) -> torch.Tensor:
    """[4, d] float64: one-hot, constant 4/3 (natural's worst case: q = 1/3), Gaussian, Cauchy."""
    g = torch.Generator().manual_seed(100 + d)
    onehot = torch.zeros(d, dtype=torch.float64)
    onehot[d // 2] = -3.0
    const = torch.full((d,), 4.0 / 3.0, dtype=torch.float64)
    gauss = torch.randn(d, generator=g, dtype=torch.float64)
    cauchy = torch.tan(math.pi * (torch.rand(d, generator=g, dtype=torch.float64) - 0.5))
    return torch.stack([onehot, const, gauss, cauchy])


MC_SIZES = [(1, torch.float64, "d1"), (16, torch.float64, "d16"), (5, torch.float32, "d5-float32")]


@pytest.mark.parametrize(
    "variant,d,dtype",
    [pytest.param(v, d, dt, id=f"{vid(v)}-{label}")
     for v in VARIANTS for d, dt, label in MC_SIZES if applicable(v, d)],
)
def test_declared_constants_hold_by_monte_carlo(variant, d, dtype, mc_streams):
    """Unbiasedness and the declared variance / contraction, on adversarial inputs.

    Unbiasedness: the mean m of N independent draws has E‖m − x‖² = Var/N ≤ ω‖x‖²/N, so by
    Markov's inequality ‖m − x‖² > 10·ω‖x‖²/N has probability ≤ 1/10 even at the worst case;
    the streams are seeded, so the test is deterministic: it passed for these fixed draws, and
    a biased implementation (bias b) fails once ‖b‖² exceeds ~10·ω‖x‖²/N, i.e. a relative bias
    of ~4.5% of ‖x‖·√ω at N = 5000, for every seed.
    Variance: the sample mean of ‖C(x) − x‖² is compared with the declared bound plus 5 standard
    errors (one-sided z = 5: a false alarm probability ~3e-7 under the CLT, at the bound).
    Several inputs sit exactly at their bound (Quant_2 / QSGD(1) on the constant vector, top-k
    and sign on the one-hot, natural on 4/3), so 5 SE is the only slack there.
    Both checks also allow the float rounding of the wire: relative eps per coordinate.
    float32 inputs take other code paths (natural's bit arithmetic, float32 probabilities), so
    one size runs in float32 too; statistics are accumulated in float64 either way.
    """
    name, hp = variant
    streams, state = mc_streams
    streams.set_state(state)
    c = build_compressor(name, **hp)
    xs = adversarial_inputs(d).to(dtype)
    batch = xs.repeat_interleave(N, dim=0)  # [4N, d]
    _, y = roundtrip(c, batch, streams)
    y = y.view(4, N, d).double()
    xs = xs.double()
    eps = wire_eps(name, hp)
    for x, draws in zip(xs, y, strict=True):
        t = target(name, hp, x.unsqueeze(0)).squeeze(0)
        t_sq = float(t.square().sum())
        err = (draws - t).square().sum(dim=1)
        mean_err, se = float(err.mean()), float(err.std()) / math.sqrt(N)
        slack = 3 * eps * (float(draws.square().sum(dim=1).mean()) + t_sq) + 1e-300
        if c.omega is not None:  # unbiased for its target (x; clip(x) for TernGrad's clip)
            omega = c.omega(d)
            bias_sq = float((draws.mean(dim=0) - t).square().sum())
            assert bias_sq <= 10 * omega * t_sq / N + 4 * eps**2 * t_sq + 1e-300, (x, bias_sq)
            bound = omega * t_sq
        else:
            bound = (1 - c.delta(d)) * t_sq
        assert mean_err <= bound + 5 * se + slack, (x, mean_err, bound, se)


def test_float32_uniforms_are_multiples_of_2_pow_minus_24():
    """natural's float32 path turns ⌊u·2^23⌋ into a uniform integer on [0, 2^23); that needs
    torch's float32 uniforms to be k·2^-24 for k uniform on [0, 2^24), as they are."""
    u = streams_for(4, seed=1).uniform(250_000).double() * 2.0**24
    assert torch.equal(u, u.floor())
    assert u.min() >= 0 and u.max() < 2**24
    assert abs(float((u.floor().remainder(2) == 1).double().mean()) - 0.5) < 0.005


def test_topk_sampled_threshold_path_is_exact():
    """Large d and small k take the sampled-threshold path; it must select a true top-k (the
    same multiset of magnitudes as torch.topk) on benign and adversarial rows."""
    d = 300_000
    g = torch.Generator().manual_seed(3)
    periodic = torch.zeros(d)
    periodic[::4] = 5.0  # aligned with the sampling stride
    offset = torch.zeros(d)
    offset[1::4] = torch.rand(d // 4, generator=g) + 1  # invisible to the sample
    sparse = torch.zeros(d)
    sparse[[5, 77, 9000]] = torch.tensor([1.0, -3.0, 2.0])
    rows = [torch.randn(d, generator=g), periodic, offset, sparse, torch.ones(d)]
    for k in (1, 3, 60, 4000):
        c = build_compressor("topk", k=k, ratio=None)
        x = torch.stack(rows)
        p = c.compress(x, None)
        got = x.gather(1, p.indices).abs().sort(dim=1, descending=True).values
        assert torch.equal(got, torch.topk(x.abs(), k, dim=1).values)
        assert all(len(set(r)) == k for r in p.indices.tolist())


class GridStreams:
    """A stand-in for WorkerStreams whose row i is the constant (i + 1/2)/M: M stratified
    uniforms. Averaging a compressor's output over the M rows is then its expectation up to a
    grid error: a coordinate rounded between two values a < b with probability p lands on b in
    a fraction of rows within 1/M of p, so the mean is within (b − a)/M of the truth."""

    def __init__(self, m: int):
        self.m, self.device = m, torch.device("cpu")

    def __len__(self) -> int:
        return self.m

    def uniform(self, *shape, dtype=torch.float32):
        u = (torch.arange(self.m, dtype=torch.float64) + 0.5) / self.m
        return u.to(dtype).view(-1, *([1] * len(shape))).expand(self.m, *shape).contiguous()

    # the grid-uniform interface of WorkerStreams (the quantizers' exact Bernoulli draws):
    # (i + 1/2)/M is on the 2^-24 grid for M = 4096
    def fill_grid(self, out):
        return out.copy_(self.uniform(out.shape[1], dtype=out.dtype))

    def grid_uniform_each(self, counts, dtype=torch.float32):
        # a refined draw happens only where u_i is within 2^-24 of a probability; the one
        # value 1/2 keeps it deterministic
        return torch.full((sum(counts),), 0.5, dtype=dtype)


def rounding_step(name: str, hp: dict, p, x: torch.Tensor) -> torch.Tensor:
    """b − a per coordinate: the distance between the two values a coordinate rounds between
    (the wire scale over s for QSGD, the scale for ternary, 2^⌊log₂|x|⌋ for natural)."""
    d = x.shape[0]
    if name == "natural":
        return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=2.0**-126))))
    scales = (p.norms / hp["levels"]) if name == "qsgd" else p.scales
    block = hp.get("bucket_size") or hp.get("block_size") or d
    return scales[0].double().repeat_interleave(min(block, d))[:d]


STOCHASTIC = [v for v in VARIANTS if v[0] in ("qsgd", "terngrad", "quant_p", "natural")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("variant", STOCHASTIC, ids=vid)
def test_stratified_uniforms_make_the_mean_exact(variant, dtype):
    """Unbiasedness to within 1/M of a rounding step, deterministically: M = 4096 stratified
    uniforms instead of random ones (`GridStreams`). A rounding rule whose probability is off
    by δ shows up as a mean error of δ·(b − a), far above (b − a)/M for any δ > 1/M; Monte
    Carlo at N = 5000 could only see biases of several percent."""
    name, hp = variant
    m = 4096
    c = build_compressor(name, **hp)
    xs = torch.cat([adversarial_inputs(16), sample_input(4, 16, torch.float64, seed=21)]).to(dtype)
    for x in xs:
        p = c.compress(x.expand(m, 16), GridStreams(m))
        y = c.decompress(p).double()
        t = target(name, hp, x.double().unsqueeze(0)).squeeze(0)
        tol = rounding_step(name, hp, p, x.double()) / m + 4 * wire_eps(name, hp) * t.abs()
        assert bool(((y.mean(0) - t).abs() <= tol).all()), (x, y.mean(0) - t, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_terngrad_clips_with_its_own_and_with_a_shared_scale(dtype):
    """With its own scale, clipping is implicit (entries beyond clip·σ saturate); with a larger
    shared scale it is explicit. Either way the mean is clip(g), to the grid's resolution."""
    m = 4096
    c = build_compressor("terngrad", clip=1.0)
    g = torch.tensor([[6.0, -5.0, 0.5, -0.25, 0.0, 1.0, -1.5, 0.75]], dtype=dtype)
    t = terngrad_clip(g.double(), 1.0)[0]
    assert t.abs().max() < 6.0  # the outliers are clipped
    for scale in (None, 4 * c.local_scale(g)):
        p = c.compress(g.expand(m, 8), GridStreams(m), scale)
        s = float(p.scales[0, 0])
        assert s == pytest.approx(float(t.abs().max()) if scale is None else float(scale))
        mean = c.decompress(p).double().mean(0)
        assert bool(((mean - t).abs() <= s / m + 1e-6 * s).all()), (scale, mean - t)


def test_terngrad_shared_scale_variance_is_data_dependent(mc_streams):
    """With the scale s shared across workers (larger than this worker's max), Q stays unbiased
    and its variance is s‖g‖₁ − ‖g‖², which exceeds the per-worker ω‖g‖² here."""
    streams, state = mc_streams
    streams.set_state(state)
    c = build_compressor("terngrad")
    g = torch.tensor([1.0, -0.5, 0.25, 0.0, 0.5], dtype=torch.float64)
    other = torch.tensor([[8.0, 0, 0, 0, 0]], dtype=torch.float64)
    shared = torch.maximum(c.local_scale(g.unsqueeze(0)), c.local_scale(other)).max()
    y = c.decompress(c.compress(g.expand(4 * N, 5), streams, shared))
    err = (y - g).square().sum(dim=1)
    exact = float(shared) * float(g.abs().sum()) - float(g.square().sum())
    assert float((y.mean(0) - g).square().sum()) <= 10 * exact / (4 * N)
    assert abs(float(err.mean()) - exact) <= 5 * float(err.std()) / math.sqrt(4 * N)
    assert exact > c.omega(5) * float(g.square().sum())  # beyond the per-worker constant
    assert c.data_dependent and "shared" in c.data_dependent


def test_terngrad_refuses_a_shared_scale_below_its_own_max():
    c = build_compressor("terngrad")
    with pytest.raises(CompressorError, match="below this worker's max"):
        c.compress(torch.tensor([[1.0, -2.0]]), streams_for(1), torch.tensor(1.5))


def test_terngrad_clip_follows_the_reference_and_spares_constant_vectors():
    x = torch.tensor([[10.0, 1, -1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    sigma = float(x.std(correction=0))
    assert torch.allclose(terngrad_clip(x, 1.0)[0, 0], torch.tensor(sigma, dtype=torch.float64))
    const = torch.full((1, 6), 2.0)
    assert torch.equal(terngrad_clip(const, 2.5), const)  # σ = 0: clipping at 0 would erase it
    c = build_compressor("terngrad", clip=1.0)
    assert float(c.local_scale(x)) == pytest.approx(sigma, rel=1e-7)
    # a large mean over a small spread: E[g²] − E[g]² would cancel; σ must still be right
    g = 1000.0 + 0.01 * torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(clip_bound(g, 2.5), 2.5 * g.std(dim=1, correction=0), rtol=1e-3)


def test_sign_contraction_is_exactly_the_data_dependent_delta():
    c = build_compressor("sign")
    x = sample_input(5, 33, torch.float64, seed=3)
    x[0] = 0.0
    x[1, :] = 0.0
    x[1, 4] = 2.5  # one-hot: the worst case δ = 1/d
    y = c.decompress(c.compress(x, None))
    err = (y - x).square().sum(1)
    exact = x.square().sum(1) - x.abs().sum(1).square() / 33
    assert torch.allclose(err, exact, rtol=1e-6, atol=0)
    # sign(0) = +: zeros of x are sent as +a, which the identity above already accounts for
    zeros = x[2] == 0
    assert zeros.any() and bool((y[2][zeros] > 0).all())
    assert torch.allclose(err[1], (1 - c.delta(33)) * x[1].square().sum(), rtol=1e-6)


def test_natural_rounds_to_the_neighbouring_powers_of_two():
    c = build_compressor("natural")
    x = sample_input(3, 500, torch.float64, seed=5, spread=10.0)
    y = c.decompress(c.compress(x, streams_for(3)))
    nz = x != 0
    assert torch.equal(y[~nz], torch.zeros_like(y[~nz]))
    lo = torch.exp2(torch.floor(torch.log2(x[nz].abs())))
    assert torch.equal(torch.sign(y[nz]), torch.sign(x[nz]))
    assert bool(((y[nz].abs() == lo) | (y[nz].abs() == 2 * lo)).all())


def test_natural_below_float32_normal_range_is_unbiased_between_0_and_2_pow_minus_126():
    c = build_compressor("natural")
    t = 0.3 * 2.0**-126
    x = torch.full((4 * N, 1), t, dtype=torch.float64)
    y = c.decompress(c.compress(x, streams_for(4 * N, seed=9)))
    assert set(y.unique().tolist()) <= {0.0, 2.0**-126}
    freq = float((y > 0).double().mean())
    assert abs(freq - 0.3) <= 5 * math.sqrt(0.3 * 0.7 / (4 * N))
    assert "2^-126" in c.data_dependent


def test_natural_refuses_float16_inputs_that_could_round_past_its_range():
    c = build_compressor("natural")
    with pytest.raises(CompressorError, match="2\\^15"):
        c.compress(torch.tensor([[40000.0]], dtype=torch.float16), streams_for(1))


# ---------------------------------------------------------------- special cases (docs/theory.md §1)


@pytest.mark.parametrize("block", [None, 4])
def test_quant_2_is_qsgd_with_one_level(block):
    x = sample_input(6, 21, torch.float64, seed=11)
    q = build_compressor("quant_p", p=2, block_size=block)
    s = build_compressor("qsgd", levels=1, bucket_size=block)
    yq = q.decompress(q.compress(x, streams_for(6, seed=3)))
    ys = s.decompress(s.compress(x, streams_for(6, seed=3)))
    assert torch.equal(yq, ys)
    assert q.omega(21) == s.omega(21) == pytest.approx(math.sqrt(4 if block else 21) - 1)


def test_quant_inf_is_terngrad_without_clipping():
    x = sample_input(6, 21, torch.float32, seed=12)
    q = build_compressor("quant_p", p="inf")
    t = build_compressor("terngrad")
    pq = q.compress(x, streams_for(6, seed=4))
    pt = t.compress(x, streams_for(6, seed=4))
    assert torch.equal(q.decompress(pq), t.decompress(pt))
    assert q.encode(pq) == t.encode(pt)  # same wire format, byte for byte
    assert q.omega(21) == t.omega(21)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[0] != "identity"], ids=vid)
def test_a_workers_output_does_not_depend_on_its_batch(variant):
    """Worker k draws from its own stream, so compressing it alone (as a distributed rank holding
    only worker k would) gives exactly its row of the batched result."""
    name, hp = variant
    c = build_compressor(name, **hp)
    x = sample_input(5, 40, torch.float32, seed=13)
    full = c.decompress(c.compress(x, streams_for(5, seed=8)))
    for k in (0, 3):
        alone = c.decompress(c.compress(x[k : k + 1], streams_for(1, seed=8, ids=[k])))
        assert torch.equal(alone[0], full[k])


def test_streams_drive_the_randomness():
    c = build_compressor("qsgd", levels=2)
    x = torch.randn(1, 200).expand(2, 200)
    y = c.decompress(c.compress(x, streams_for(2)))
    assert not torch.equal(y[0], y[1])  # two workers, two streams
    assert torch.equal(y, c.decompress(c.compress(x, streams_for(2))))  # same seed, same draws


# ---------------------------------------------------------------- QSGD's Elias coding


def test_elias_omega_lengths_match_the_reference_code():
    n = torch.arange(1, 5001)
    lengths = omega_length(n).tolist()
    assert lengths[:8] == [1, 3, 3, 6, 6, 6, 6, 7]
    for k, length in zip(range(1, 5001), lengths, strict=True):
        code = omega_encode(k)
        assert len(code) == length and omega_decode(code) == (k, length)
    big = torch.tensor([2**40 + 3, 2**52 - 1])
    assert omega_length(big).tolist() == [len(omega_encode(int(v))) for v in big]


def _reference_qsgd_message(norm_count: int, levels: list[int]) -> str:
    """Alistarh et al.'s coding, written out: 32 bits per norm, then per nonzero the Elias code
    of its distance from the previous nonzero, a sign bit and the Elias code of its level."""
    out, prev = ["0" * 32 * norm_count], -1
    for j, lv in enumerate(levels):
        if lv:
            out += [omega_encode(j - prev), "1" if lv < 0 else "0", omega_encode(abs(lv))]
            prev = j
    return "".join(out)


def _decode_reference(msg: str, norm_count: int, d: int) -> list[int]:
    levels, pos, j = [0] * d, 32 * norm_count, -1
    while pos < len(msg):
        gap, pos = omega_decode(msg, pos)
        j += gap
        neg, pos = msg[pos] == "1", pos + 1
        lv, pos = omega_decode(msg, pos)
        levels[j] = -lv if neg else lv
    return levels


@pytest.mark.parametrize("levels,bucket", [(1, None), (3, None), (8, 16)])
def test_qsgd_entropy_bits_is_the_length_of_the_actual_elias_message(levels, bucket):
    c = build_compressor("qsgd", levels=levels, bucket_size=bucket)
    x = sample_input(4, 60, torch.float64, seed=17)
    p = c.compress(x, streams_for(4))
    m = p.norms.shape[1]
    for row, bits in zip(p.levels.tolist(), c.entropy_bits(p).tolist(), strict=True):
        msg = _reference_qsgd_message(m, row)
        assert len(msg) == bits
        assert _decode_reference(msg, m, 60) == row


def test_qsgd_elias_size_is_below_the_papers_bound_at_s_sqrt_d():
    """Alistarh et al. Corollary 3.3: at s = √d the expected coded length is <= 2.8d + 32.
    The bound is on the expectation, so it is checked on the mean over 16 messages (standard
    error ~0.3% of d, against a margin of ~0.7% for Gaussians)."""
    d = 4096
    c = build_compressor("qsgd", levels=64)
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(16, d, generator=g, dtype=torch.float64)
    student = torch.distributions.StudentT(3.0).sample((16, d)).to(torch.float64)
    for x in (gauss, student):
        p = c.compress(x, streams_for(16))
        bits = c.entropy_bits(p).double()
        assert float(bits.mean()) <= 2.8 * d + 32
        assert bool((bits < c.bits(p)).all())  # and beats the fixed-width code
    # Not for every input: a constant vector has every level 1, three bits per coordinate.
    const = torch.ones(1, d)
    assert c.entropy_bits(c.compress(const, streams_for(1))).item() == 3 * d + 32


def test_ternary_entropy_bits_is_exact_ceil_d_log2_3():
    for d in list(range(1, 300)) + [1000, 4096, 65537]:
        assert ternary_bits(d) == (3**d - 1).bit_length()
    c = build_compressor("quant_p", p=2, block_size=7)
    p = c.compress(torch.randn(2, 30), streams_for(2))
    assert c.entropy_bits(p).tolist() == [32 * 5 + (3**30 - 1).bit_length()] * 2
    t = build_compressor("terngrad")
    assert t.entropy_bits(t.compress(torch.randn(1, 5), streams_for(1))).tolist() == [32 + 8]


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "variant,d",
    [pytest.param(v, d, id=f"{vid(v)}-d{d}") for v in VARIANTS for d in (1, 7)
     if applicable(v, d)],  # k > d is refused: test_k_exceeding_d_is_refused
)
def test_zero_vector_compresses_to_exact_zero(variant, d, dtype):
    name, hp = variant
    c = build_compressor(name, **hp)
    x = torch.zeros(3, d, dtype=dtype)
    p, y = roundtrip(c, x, streams_for(3))
    assert torch.equal(y, torch.zeros_like(y)) and y.dtype == dtype
    assert torch.equal(c.decompress(c.decode(c.encode(p), d, dtype)), y)
    if c.needs_shared_scale:
        y0 = c.decompress(c.compress(x, streams_for(3), c.local_scale(x).max()))
        assert torch.equal(y0, torch.zeros_like(y0))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
def test_non_finite_input_is_refused(variant, bad):
    name, hp = variant
    c = build_compressor(name, **hp)
    x = torch.ones(2, 5)
    x[1, 2] = bad
    with pytest.raises(CompressorError, match="NaN or inf"):
        c.compress(x, streams_for(2))
    if c.needs_shared_scale:
        with pytest.raises(CompressorError, match="NaN or inf"):
            c.local_scale(x)


@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
def test_bad_shapes_and_dtypes_are_refused(variant):
    c = build_compressor(*variant[:1], **variant[1])
    with pytest.raises(CompressorError, match="batch"):
        c.compress(torch.ones(5), streams_for(1))
    with pytest.raises(CompressorError, match="floating-point"):
        c.compress(torch.ones(1, 5, dtype=torch.int64), streams_for(1))


def test_values_beyond_the_float32_wire_are_refused():
    huge = torch.tensor([[1e300, 1.0]], dtype=torch.float64)
    for name, hp in [("qsgd", {}), ("quant_p", {}), ("terngrad", {}), ("topk", {"ratio": 1.0}),
                     ("sign", {}), ("natural", {}), ("identity", {})]:
        with pytest.raises(CompressorError, match="range"):
            build_compressor(name, **hp).compress(huge, streams_for(1))
    with pytest.raises(CompressorError, match="16-bit wire"):
        build_compressor("identity", width=16).compress(torch.tensor([[7e4]]), None)


@pytest.mark.parametrize(
    "name,hp,pattern",
    [
        ("qsgd", {"levels": 0}, r"compressor\.levels=0: allowed an integer 1 <= levels <= 16777"),
        ("qsgd", {"levels": 2.5}, r"compressor\.levels=2\.5"),
        ("qsgd", {"levels": True}, r"compressor\.levels=True"),
        ("qsgd", {"bucket_size": 0}, r"compressor\.bucket_size=0: .*bucket_size >= 1"),
        ("quant_p", {"p": 3}, r"compressor\.p=3: allowed values are 1, 2, inf"),
        ("quant_p", {"p": "two"}, r"compressor\.p='two': allowed values are 1, 2, inf"),
        ("quant_p", {"block_size": -2}, r"compressor\.block_size=-2: .*block_size >= 1"),
        ("topk", {"k": None, "ratio": 0.0}, r"compressor\.ratio=0\.0: allowed 0 < ratio <= 1"),
        ("topk", {"k": None, "ratio": 1.5}, r"compressor\.ratio=1\.5: allowed 0 < ratio <= 1"),
        ("topk", {"k": 0, "ratio": None}, r"compressor\.k=0: allowed an integer 1 <= k"),
        ("topk", {"k": 5, "ratio": 0.1}, r"set exactly one of them"),
        ("randk", {"k": None, "ratio": None}, r"set exactly one of them"),
        ("randk", {"scaled": "yes"}, r"compressor\.scaled='yes': allowed true or false"),
        ("terngrad", {"clip": -1.0}, r"compressor\.clip=-1\.0: allowed null \(off\) or"),
        ("identity", {"width": 8}, r"compressor\.width=8"),
        ("nope", {}, r"compressor='nope' is not known"),
    ],
)
def test_invalid_hyperparameters_name_the_key_value_and_range(name, hp, pattern):
    with pytest.raises(CompressorError, match=pattern):
        build_compressor(name, **hp)


@pytest.mark.parametrize("name", ["topk", "randk"])
def test_k_exceeding_d_is_refused_by_check_dim_and_compress(name):
    c = build_compressor(name, k=500, ratio=None)
    message = "compressor.k=500 exceeds d=300; allowed 1 <= k <= d"
    with pytest.raises(CompressorError) as err:
        c.check_dim(300)
    assert str(err.value) == message
    with pytest.raises(CompressorError, match="exceeds d=300"):
        c.compress(torch.ones(1, 300), streams_for(1))
    c.check_dim(500)  # k = d is fine


def test_every_compressor_has_a_dimension_check():
    for name in REGISTRY:
        c = build_compressor(name)
        assert c.check_dim is not None
        with pytest.raises(CompressorError, match="d >= 1"):
            c.check_dim(0)


def test_quant_p_accepts_the_spellings_of_infinity():
    for p in ("inf", "INF", INF, float("inf")):
        assert build_compressor("quant_p", p=p).omega(25) == 2.0
    assert build_compressor("quant_p", p=1).omega(25) == 24.0
    assert build_compressor("quant_p", p=2.0).omega(25) == 4.0


def test_declared_constants_match_the_theory_table():
    d = 100
    assert build_compressor("qsgd", levels=2).omega(d) == min(d / 4, 10 / 2)
    assert build_compressor("qsgd", levels=20).omega(d) == min(d / 400, 10 / 20)
    assert build_compressor("qsgd", levels=2, bucket_size=16).omega(d) == min(16 / 4, 4 / 2)
    assert build_compressor("terngrad").omega(d) == 4.5
    assert build_compressor("quant_p", p=2, block_size=25).omega(d) == 4.0
    assert build_compressor("topk", k=7, ratio=None).delta(d) == 0.07
    assert build_compressor("topk", ratio=0.1).delta(30) == 0.1  # 3 kept, not 4
    assert build_compressor("randk", k=10, ratio=None).omega(d) == 9.0
    assert build_compressor("randk", k=10, ratio=None, scaled=False).delta(d) == 0.1
    assert build_compressor("sign").delta(d) == 0.01
    assert build_compressor("natural").omega(d) == 0.125
    kinds = {n: build_compressor(n).kind for n in REGISTRY}
    assert kinds == {"identity": "unbiased", "qsgd": "unbiased", "terngrad": "unbiased",
                     "quant_p": "unbiased", "topk": "contractive", "randk": "unbiased",
                     "sign": "contractive", "natural": "unbiased", "powersgd": "low_rank"}
    for n in REGISTRY:
        c = build_compressor(n)
        if c.kind not in ("unbiased", "contractive"):  # a kind of its own declares neither
            assert c.omega is None and c.delta is None, n
            continue
        assert (c.omega is None) == (c.kind == "contractive")
        assert (c.delta is None) == (c.kind == "unbiased")


def test_randk_first_k_distinct_keeps_draw_order():
    draws = torch.tensor([[5, 5, 2, 7, 2, 9], [1, 1, 1, 3, 3, 3]])
    assert _first_k_distinct(draws[:1], 3).tolist() == [[5, 2, 7]]
    assert _first_k_distinct(draws, 3) is None  # row 2 has only two distinct values
    c = build_compressor("randk", k=3, ratio=None)
    p = c.compress(torch.randn(64, 1000), streams_for(64))
    assert all(len(set(row)) == 3 for row in p.indices.tolist())


# ---------------------------------------------------------------- configs


def test_every_compressor_has_a_yaml_with_all_keys_and_defaults():
    files = {f.stem: yaml.safe_load(f.read_text()) for f in CONF.glob("*.yaml")}
    assert set(files) == set(REGISTRY)
    for stem, cfg in files.items():
        assert cfg["name"] == stem
        params = inspect.signature(REGISTRY[stem]).parameters
        keys = {k: v for k, v in cfg.items() if k != "name"}
        assert set(keys) == set(params), stem
        for k, v in keys.items():
            assert params[k].kind is inspect.Parameter.KEYWORD_ONLY
            assert params[k].default == v, (stem, k)
        build_compressor(stem, **keys).check_dim(300)
