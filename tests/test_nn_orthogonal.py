"""Tests of difflinalg.nn.orthogonal and the HouseholderOrthogonal parametrization."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils import parametrize

from difflinalg.nn import HouseholderOrthogonal, orthogonal
from difflinalg.testing import orthogonality_error

f32, f64 = torch.float32, torch.float64
# orthogonality of the weight / agreement of a round trip, per dtype
ORTH_TOL = {f32: 1e-6, f64: 1e-12}
TOL = {f32: dict(rtol=1e-5, atol=1e-5), f64: dict(rtol=1e-12, atol=1e-12)}


def _frame(W: torch.Tensor) -> torch.Tensor:
    """The matrix view of a weight, transposed to be tall: orthonormal columns expected."""
    M = W.flatten(1) if W.dim() > 2 else W
    return M if M.shape[-2] >= M.shape[-1] else M.mT


def _random_frame(*shape: int, dtype=f64) -> torch.Tensor:
    """A random matrix (batch) with orthonormal columns if tall, rows if wide."""
    n, k = shape[-2], shape[-1]
    Q = torch.linalg.qr(torch.randn(*shape[:-2], max(n, k), min(n, k), dtype=dtype)).Q
    return Q if n >= k else Q.mT


def _q_factor(M: torch.Tensor) -> torch.Tensor:
    """Q factor of M with non-negative diag(R), by torch.linalg.qr."""
    Q, R = torch.linalg.qr(M)
    return Q * torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(M.dtype).unsqueeze(-2)


def _input_for(module: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(module, torch.nn.Linear):
        return torch.randn(2, module.in_features, dtype=dtype)
    spatial = (5,) * (module.weight.dim() - 2)
    return torch.randn(2, module.in_channels, *spatial, dtype=dtype)


def _parametrization(module: torch.nn.Module, name: str = "weight") -> HouseholderOrthogonal:
    return module.parametrizations[name][0]


MODULES = {
    "linear_tall": lambda dtype: torch.nn.Linear(5, 9, dtype=dtype),
    "linear_square": lambda dtype: torch.nn.Linear(7, 7, dtype=dtype),
    "linear_wide": lambda dtype: torch.nn.Linear(9, 4, dtype=dtype),
    "conv2d_wide": lambda dtype: torch.nn.Conv2d(3, 8, 3, dtype=dtype),
    "conv2d_tall": lambda dtype: torch.nn.Conv2d(2, 24, (2, 3), dtype=dtype),
    "conv1d": lambda dtype: torch.nn.Conv1d(4, 6, 2, dtype=dtype),
    "conv_transpose2d": lambda dtype: torch.nn.ConvTranspose2d(6, 2, 2, dtype=dtype),
}


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("initialize", ["qr", "identity"])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_registered_weight_is_orthogonal(kind, initialize, dtype):
    module = MODULES[kind](dtype)
    shape = module.weight.shape
    orthogonal(module, initialize=initialize)
    W = module.weight
    assert W.shape == shape and W.dtype == dtype
    assert orthogonality_error(_frame(W)).item() < ORTH_TOL[dtype]
    assert torch.isfinite(module(_input_for(module, dtype))).all()


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_parameter_shape_and_no_square_base(kind):
    module = MODULES[kind](f64)
    M = _frame(module.weight.detach())
    d, r = M.shape
    orthogonal(module)
    P = _parametrization(module)
    assert module.parametrizations.weight.original.shape == (d, r) == P.parameter_shape
    assert P.signs.shape == (r,)
    assert P.flatten == isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d,
                                             torch.nn.ConvTranspose2d))
    state = list(itertools.chain(P.parameters(), P.buffers()))
    assert [tuple(t.shape) for t in state] == [(r,)]


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_qr_initialization_is_the_q_factor_of_the_old_weight(kind):
    module = MODULES[kind](f64)
    old = module.weight.detach().clone()
    orthogonal(module)
    M = old.flatten(1)
    expected = _q_factor(M) if M.shape[0] >= M.shape[1] else _q_factor(M.mT).mT
    torch.testing.assert_close(module.weight.detach().flatten(1), expected, **TOL[f64])


@pytest.mark.parametrize("batch", [(), (3,), (2, 1)])
@pytest.mark.parametrize("n,k", [(5, 3), (3, 5), (4, 4), (1, 1), (6, 1), (1, 6)])
def test_zero_parameters_give_the_identity_frame(batch, n, k):
    P = HouseholderOrthogonal((*batch, n, k), dtype=f64)
    W = P(torch.zeros(P.parameter_shape, dtype=f64))
    assert torch.equal(W, torch.eye(n, k, dtype=f64).expand(*batch, n, k))


def test_initialize_identity_sets_zero_parameters():
    module = orthogonal(torch.nn.Conv2d(3, 5, 3, dtype=f64), initialize="identity")
    original = module.parametrizations.weight.original
    assert torch.equal(original, torch.zeros_like(original))
    assert torch.equal(_parametrization(module).signs, -torch.ones(5, dtype=f64))
    torch.testing.assert_close(module.weight.flatten(1), torch.eye(5, 27, dtype=f64), rtol=0,
                               atol=0)


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("batch", [(), (3,), (2, 1), (0,)])
@pytest.mark.parametrize("n,k", [(6, 4), (4, 6), (5, 5), (8, 1), (1, 8), (1, 1)])
def test_round_trip_random_frames(batch, n, k, dtype):
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(*batch, n, k, dtype=dtype))
    orthogonal(module)
    Q = _random_frame(*batch, n, k, dtype=dtype)
    module.weight = Q
    torch.testing.assert_close(module.weight.detach(), Q, **TOL[dtype])


def _tau_zero_frames() -> list[torch.Tensor]:
    """Orthogonal matrices whose Householder QR skips reflectors (tau_j = 0)."""
    eye = torch.eye(5, dtype=f64)
    rot = _random_frame(2, 2)
    block = torch.block_diag(rot, torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=f64)))
    frames = [eye, -eye, eye[:, :3], -eye[:, :3], block, block[:, [0, 1, 3]]]
    signs = itertools.product((1.0, -1.0), repeat=3)
    frames += [torch.diag(torch.tensor(s, dtype=f64)) for s in signs]
    frames += [torch.eye(4, dtype=f64)[list(p)] for p in itertools.permutations(range(4))]
    frames += [torch.eye(6, dtype=f64)[[2, 0, 5, 1, 3, 4]][:, :4], torch.eye(3, 6, dtype=f64)]
    return frames


@pytest.mark.parametrize("Q", _tau_zero_frames(), ids=lambda Q: f"{tuple(Q.shape)}")
def test_round_trip_frames_with_skipped_reflectors(Q):
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(Q.shape, dtype=f64))
    orthogonal(module)
    module.weight = Q
    torch.testing.assert_close(module.weight.detach(), Q, **TOL[f64])


@pytest.mark.parametrize("d", [1, 2, 3, 6])
def test_both_determinants_are_reached(d):
    module = orthogonal(torch.nn.Linear(d, d, dtype=f64))
    P = _parametrization(module)
    for det in (1.0, -1.0):
        Q = _random_frame(d, d)
        if torch.linalg.det(Q).item() * det < 0:
            Q[:, 0] = -Q[:, 0]
        module.weight = Q
        torch.testing.assert_close(module.weight.detach(), Q, **TOL[f64])
        assert torch.linalg.det(module.weight).item() == pytest.approx(det, abs=1e-12)
        # with the signs fixed, the determinant is (-1)^d prod(s) for any parameter: the signs
        # are what makes both components of O(d) reachable
        A = torch.randn(d, d, dtype=f64)
        expected = (-1.0) ** d * P.signs.prod().item()
        assert torch.linalg.det(P(A)).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n,k", [(7, 4), (4, 7), (5, 5)])
def test_right_inverse_of_a_general_matrix_is_its_q_factor(n, k):
    P = HouseholderOrthogonal((n, k), dtype=f64)
    M = torch.randn(n, k, dtype=f64)
    W = P(P.right_inverse(M))
    expected = _q_factor(M) if n >= k else _q_factor(M.mT).mT
    torch.testing.assert_close(W, expected, **TOL[f64])


def test_right_inverse_of_a_rank_deficient_matrix_is_orthonormal():
    P = HouseholderOrthogonal((6, 4), dtype=f64)
    M = torch.randn(6, 4, dtype=f64)
    M[:, 2] = 0.0
    M[:, 3] = M[:, 0]
    assert orthogonality_error(P(P.right_inverse(M))).item() < ORTH_TOL[f64]


def test_right_inverse_reflectors_are_bounded_and_strictly_lower():
    P = HouseholderOrthogonal((40, 12), dtype=f64)
    A = P.right_inverse(_random_frame(40, 12))
    assert torch.equal(A, A.tril(-1))
    assert torch.linalg.vector_norm(A, dim=-2).max().item() <= 1 + 1e-12


def test_reassigning_the_weight_recentres_the_parameters():
    module = orthogonal(torch.nn.Linear(3, 8, dtype=f64))
    with torch.no_grad():
        module.parametrizations.weight.original.mul_(50.0)
    W = module.weight.detach().clone()
    module.weight = W
    torch.testing.assert_close(module.weight.detach(), W, **TOL[f64])
    A = module.parametrizations.weight.original
    assert torch.linalg.vector_norm(A, dim=-2).max().item() <= 1 + 1e-12


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 7), k=st.integers(1, 7), batch=st.integers(0, 2),
       signs=st.lists(st.sampled_from([1.0, -1.0]), min_size=7, max_size=7),
       seed=st.integers(0, 2**16))
def test_round_trip_property(n, k, batch, signs, seed):
    torch.manual_seed(seed)
    P = HouseholderOrthogonal((batch, n, k), dtype=f64)
    Q = _random_frame(batch, n, k)
    # sign flips of the frame's vectors: a frame again
    s = torch.tensor(signs[: min(n, k)], dtype=f64)
    Q = Q * s.unsqueeze(-2) if n >= k else Q * s.unsqueeze(-1)
    W = P(P.right_inverse(Q))
    tol = 1e-13 * max(n, k)
    torch.testing.assert_close(W, Q, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("shape,flatten", [((6, 3), False), ((3, 6), False), ((4, 4), False),
                                           ((2, 5, 3), False), ((2, 3, 2, 2), True)])
def test_gradcheck(shape, flatten):
    P = HouseholderOrthogonal(shape, flatten=flatten, dtype=f64)
    r = P.signs.shape[-1]
    P.signs.copy_(torch.tensor([1.0, -1.0], dtype=f64).repeat(r)[:r])
    A = torch.randn(P.parameter_shape, dtype=f64, requires_grad=True)
    assert gradcheck(P, (A,), check_forward_ad=True, check_batched_grad=True, fast_mode=True)


def test_gradcheck_full_jacobian():
    P = HouseholderOrthogonal((3, 5), dtype=f64)
    A = torch.randn(P.parameter_shape, dtype=f64, requires_grad=True)
    assert gradcheck(P, (A,))


def test_gradgradcheck():
    P = HouseholderOrthogonal((5, 3), dtype=f64)
    A = torch.randn(P.parameter_shape, dtype=f64, requires_grad=True)
    assert gradgradcheck(P, (A,), fast_mode=True)


def test_sgd_steps_decrease_the_loss_and_stay_orthogonal():
    teacher = _random_frame(12, 5)
    x = torch.randn(64, 5, dtype=f64)
    y = x @ teacher.T
    model = torch.nn.Linear(5, 12, bias=False, dtype=f64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # built before registration
    orthogonal(model)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (model(x) - y).pow(2).sum(-1).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert orthogonality_error(model.weight.detach()).item() < ORTH_TOL[f64]
    assert losses[-1] < 0.2 * losses[0]


# ----------------------------------------------------------------------------- vs torch, state


def test_against_torch_orthogonal_on_a_frame():
    ours = orthogonal(torch.nn.Linear(8, 200, dtype=f64))
    theirs = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(8, 200, dtype=f64))
    for module in (ours, theirs):
        assert orthogonality_error(module.weight.detach()).item() < ORTH_TOL[f64]
    ours_state = dict(ours.parametrizations.weight.named_parameters())
    ours_state.update(ours.parametrizations.weight.named_buffers())
    assert {k: tuple(v.shape) for k, v in ours_state.items()} == {
        "original": (200, 8), "0.signs": (8,)}
    theirs_state = dict(theirs.parametrizations.weight.named_buffers())
    assert tuple(theirs_state["0.base"].shape) == (200, 200)  # the d x d matrix we do not keep
    # same frame when given the same orthonormal weight
    Q = _random_frame(200, 8)
    ours.weight = Q
    theirs.weight = Q
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-10, atol=1e-10)


def test_state_dict_round_trip():
    source = orthogonal(torch.nn.Conv2d(2, 3, 3, dtype=f64))
    source.weight = _random_frame(3, 18).reshape(3, 2, 3, 3)
    with torch.no_grad():
        source.parametrizations.weight.original.add_(0.1 * torch.randn(18, 3, dtype=f64))
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target = orthogonal(torch.nn.Conv2d(2, 3, 3, dtype=f64), initialize="identity")
    target.load_state_dict(torch.load(buffer))
    assert set(target.state_dict()) == {"bias", "parametrizations.weight.original",
                                        "parametrizations.weight.0.signs"}
    assert torch.equal(target.weight, source.weight)
    x = torch.randn(1, 2, 5, 5, dtype=f64)
    assert torch.equal(target(x), source(x))


def test_dtype_conversion_after_registration():
    module = orthogonal(torch.nn.Linear(4, 6)).double()
    assert module.weight.dtype == f64 and _parametrization(module).signs.dtype == f64
    assert orthogonality_error(module.weight.detach()).item() < 1e-6


def test_remove_parametrization_keeps_the_orthogonal_weight():
    module = orthogonal(torch.nn.Linear(4, 6, dtype=f64))
    W = module.weight.detach().clone()
    parametrize.remove_parametrizations(module, "weight")
    assert isinstance(module.weight, torch.nn.Parameter)
    torch.testing.assert_close(module.weight.detach(), W, rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_op():
    linear = torch.nn.Linear(3, 4)
    with pytest.raises(TypeError, match=r"^orthogonal: expected module to be a torch.nn.Module"):
        orthogonal(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"^orthogonal: expected a parameter or buffer "
                                         r"module.kernel"):
        orthogonal(linear, "kernel")
    linear.scale = 3.0
    with pytest.raises(TypeError, match=r"^orthogonal: expected module.scale to be a torch"):
        orthogonal(linear, "scale")
    with pytest.raises(ValueError, match=r"^orthogonal: .*bias.shape=\(4,\)"):
        orthogonal(linear, "bias")
    linear.register_buffer("counts", torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^orthogonal: expected a real floating dtype.*int64"):
        orthogonal(linear, "counts")
    with pytest.raises(ValueError, match=r"^orthogonal: expected initialize to be one of "
                                         r"'qr', 'identity', but got 'haar'"):
        orthogonal(linear, initialize="haar")
    with pytest.raises(ValueError, match=r"^orthogonal: expected an initialised tensor"):
        orthogonal(torch.nn.LazyLinear(4))
    assert not parametrize.is_parametrized(linear)


def test_right_inverse_errors():
    module = orthogonal(torch.nn.Linear(3, 4))
    P = _parametrization(module)
    signs = P.signs.clone()
    with pytest.raises(ValueError, match=r"^HouseholderOrthogonal.right_inverse: expected W of "
                                         r"the parametrized shape \(4, 3\), but got W.shape"):
        module.weight = torch.randn(3, 4)
    with pytest.raises(TypeError, match=r"^HouseholderOrthogonal.right_inverse: .*dtype=float64"):
        module.weight = torch.randn(4, 3, dtype=f64)
    with pytest.raises(TypeError, match=r"^HouseholderOrthogonal.right_inverse: expected W to be"):
        P.right_inverse([[1.0]])
    assert torch.equal(P.signs, signs)  # failed assignments leave the state alone


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"^HouseholderOrthogonal: .*shape=\(5,\)"):
        HouseholderOrthogonal((5,))
    with pytest.raises(TypeError, match=r"^HouseholderOrthogonal: .*float16"):
        HouseholderOrthogonal((5, 3), dtype=torch.float16)
