r"""Differentiable batched Sylvester and Lyapunov solvers.

* :func:`solve_sylvester` - ``X`` with ``A X + X B = C``.
* :func:`solve_lyapunov` - ``X`` with ``S X + X S^T = C`` (Sylvester with ``B = S^T``, one
  decomposition or one iteration instead of two).

Both take any broadcastable batch dims, float32 and float64, and support reverse mode (with
double backward), forward mode (``torch.func.jvp``) and ``torch.func.vmap``. Three solvers:

* ``"eigh"`` - symmetric ``A`` and ``B``: ``X = U [(U^T C W) / (l_i + mu_j)] W^T``.
* ``"eig"`` - diagonalisable ``A`` and ``B``, any spectra with ``l_i + mu_j != 0``.
* ``"sign"`` - the Newton iteration for the matrix sign function of ``[[A, C], [0, -B]]``,
  for ``A`` and ``B`` both positive stable or both negative stable; only QR and triangular
  solves, robust to non-normal matrices.

The gradient of the solution map is itself one Sylvester solve with the transposed
coefficients; ``docs/derivations/lyapunov.md`` derives it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._autograd import apply_fastest, classic_twin, no_tf32
from ._checks import (
    check_choice,
    check_finite,
    check_real_floating,
    check_same_device_dtype,
    check_square,
    check_tensor,
)
from ._errors import ShapeError, describe

__all__ = ["solve_sylvester", "solve_lyapunov"]

_METHODS = ("auto", "eigh", "eig", "sign")
# Newton with determinant scaling reaches the rounding floor in about 10 steps for spectra
# spread over 1e8 (Higham 2008, sec. 5.5); 50 leaves room for non-normal matrices
_SIGN_MAX_ITER = 50
_SCALE_UNTIL = 1e-2  # determinant scaling only while the relative step is above this


# ----------------------------------------------------------------------------- helpers


def _physical(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under torch.func wrappers: under vmap, all the vmapped slices."""
    try:
        fc = torch._C._functorch
        while fc.is_functorch_wrapped_tensor(t):
            t = fc.get_unwrapped(t)
    except AttributeError:  # pragma: no cover - older torch
        pass
    return t


def _all(mask: torch.Tensor) -> bool:
    """``bool(mask.all())`` also inside vmap, where it decides for every vmapped slice at once
    (data-dependent control flow is otherwise an error there). A device sync on GPU."""
    return bool(_physical(mask).all())


def _worst(x: torch.Tensor) -> float:
    """max(x) over every batch element (and vmapped slice); NaN if any is NaN. One sync."""
    return float(_physical(x).max())


def _sum_to(grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Reduce a gradient over the batch dims that ``ref`` was broadcast along."""
    return grad if grad.shape == ref.shape else grad.sum_to_size(ref.shape)


def _inv_qr(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M^{-1}, R) from M = QR: M^{-1} = R^{-1} Q^H.

    QR rather than LU: batched LU on CPU returns wrong pivots for n >= 200 with some thread
    counts (pytorch/pytorch#142815), and |det M| = prod |R_ii| comes for free.
    """
    q, r = torch.linalg.qr(m)
    return torch.linalg.solve_triangular(r, q.mH, upper=True), r


def _sqnorm(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum((-2, -1))


def _names(b_is_at: bool) -> tuple[str, str]:
    return ("solve_lyapunov", "S") if b_is_at else ("solve_sylvester", "A and B")


def _shapes(A: torch.Tensor, B: torch.Tensor, b_is_at: bool) -> str:
    return describe("S", A) if b_is_at else f"{describe('A', A)}, {describe('B', B)}"


# ----------------------------------------------------------------------------- solvers


def _eig_factors(A: torch.Tensor, B: torch.Tensor, b_is_at: bool, symmetric: bool
                 ) -> tuple[torch.Tensor, ...]:
    """(l, U[, U^{-1}], mu, W[, W^{-1}]), only A's part when B = A^T."""
    if symmetric:
        lam, u = torch.linalg.eigh(A)
        return (lam, u) if b_is_at else (lam, u, *torch.linalg.eigh(B))
    lam, u = torch.linalg.eig(A)
    factors = (lam, u, _inv_qr(u)[0])
    if b_is_at:
        return factors
    mu, w = torch.linalg.eig(B)
    return (*factors, mu, w, _inv_qr(w)[0])


def _solve_factored(kernel: str, factors: tuple[torch.Tensor, ...], b_is_at: bool,
                    rhs: torch.Tensor, transpose: bool) -> torch.Tensor:
    """X = P [(P^{-1} R Q) / (l_i + mu_j)] Q^{-1} for A = P L P^{-1}, B = Q M Q^{-1}.

    ``transpose`` solves A^T X + X B^T = R from the same factors: A^T = U^{-T} L U^T.
    B = A^T gives W = U^{-T}, W^{-1} = U^T, mu = lam (W = U for eigh).
    """
    if kernel == "eigh":
        lam, u, mu, w = (*factors, *factors) if b_is_at else factors
        p, p_inv, q, q_inv = u, u.mT, w, w.mT  # symmetric: A^T = A, same formula
    else:
        if b_is_at:
            lam, u, u_inv = factors
            mu, w, w_inv = lam, u_inv.mT, u.mT
        else:
            lam, u, u_inv, mu, w, w_inv = factors
        if transpose:
            p, p_inv, q, q_inv = u_inv.mT, u.mT, w_inv.mT, w.mT
        else:
            p, p_inv, q, q_inv = u, u_inv, w, w_inv
        rhs = rhs.to(p.dtype)
    core = (p_inv @ rhs @ q) / (lam.unsqueeze(-1) + mu.unsqueeze(-2))
    x = p @ core @ q_inv
    return x.real.contiguous() if x.is_complex() else x


def _check_nonsingular(factors: tuple[torch.Tensor, ...], b_is_at: bool, n_max: int,
                       shapes: str) -> None:
    """Raise when some l_i + mu_j vanishes relative to the spectral scale (check=True)."""
    lam, mu = (factors[0], factors[0]) if b_is_at else (factors[0], factors[len(factors) // 2])
    eps = torch.finfo(lam.real.dtype).eps
    scale = lam.abs().amax(-1) + mu.abs().amax(-1)
    gap = (lam.unsqueeze(-1) + mu.unsqueeze(-2)).abs().amin((-2, -1))
    if not _all(gap > max(n_max, 10) * eps * scale):
        op, what = _names(b_is_at)
        pair = "l_i + l_j != 0 for the eigenvalues l of S" if b_is_at else (
            "l_i + mu_j != 0 for the eigenvalues l of A and mu of B")
        raise ShapeError(f"{op}: expected a nonsingular operator ({pair}), but got {what} "
                         f"with some |l_i + mu_j| <= {max(n_max, 10)} eps (max|l| + max|mu|) "
                         f"for {shapes}")


def _sign_solve(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, b_is_at: bool,
                steps: int | None = None) -> tuple[torch.Tensor | None, int]:
    r"""(X, number of steps) from sign([[A, C], [0, -B]]) = [[s I, 2 s X], [0, -s I]].

    With ``T = [[I, -X], [0, I]]``, ``Z = [[A, C], [0, -B]] = T diag(A, -B) T^{-1}`` exactly
    when ``A X + X B = C``; for A and B positive stable ``sign(Z) = T diag(I, -I) T^{-1}``
    (negative stable: ``s = -1``). Newton ``Z <- (mu Z + (mu Z)^{-1}) / 2`` keeps the block
    triangular form, so it runs on the blocks (Z^{-1} has C-block A^{-1} C B^{-1}):

        A <- (mu A + A^{-1}/mu)/2,  B <- (mu B + B^{-1}/mu)/2,  C <- (mu C + A^{-1} C B^{-1}/mu)/2

    with the determinant scaling ``mu = |det A det B|^{-1/(m+n)}`` (Byers 1987), one ``mu``
    per batch element, for the whole block matrix (scaling A and B differently would change
    the equation), while the element's relative step is above ``_SCALE_UNTIL``.

    Every iterate is ``Z_k = T diag(A_k, -B_k) T^{-1}``, whose C-block error is
    ``E_A X + X E_B`` (``E_A = A_k - s I``, ``E_B = B_k - s I``): C converges with A and B,
    whatever C is. So the test looks at A and B only - the relative step of every batch
    element below ``sqrt((m + n) eps)``, then one more (quadratic) step to the rounding floor
    (Higham 2008, sec. 5.8) - and the count depends on A and B alone. The adjoint and tangent
    solves rerun exactly that many steps (``steps``), with no data-dependent control flow;
    their A- and B-iterates are those of the forward, transposed for the adjoint.

    Adaptive (``steps=None``): ``(None, k)`` when the iteration does not converge within
    ``_SIGN_MAX_ITER`` steps, meets a singular iterate, or converges to ``sign(A) != +-I``
    (spectra not separated by the imaginary axis: ``sign(A) - I = -2 P_-`` has norm >= 2).
    """
    m, n = A.shape[-1], B.shape[-1]
    tol = math.sqrt((m + n) * torch.finfo(A.dtype).eps)
    a, b, c = A, B, C
    scale = None  # per-batch-element mask of the elements still scaled; None: all
    finishing = False
    k = 0
    for k in range(1, (_SIGN_MAX_ITER if steps is None else steps) + 1):
        a_inv, ra = _inv_qr(a)
        logdet = ra.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        if b_is_at:  # B_k = A_k^T throughout
            b_inv, logdet = a_inv.mT, 2.0 * logdet
        else:
            b_inv, rb = _inv_qr(b)
            logdet = logdet + rb.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        mu = torch.exp(logdet * (-1.0 / (m + n)))
        if scale is not None:
            mu = torch.where(scale, mu, torch.ones_like(mu))
        mu = mu[..., None, None]
        a_next = (mu * a + a_inv / mu) * 0.5
        c = (mu * c + (a_inv @ c @ b_inv) / mu) * 0.5
        step, size = _sqnorm(a_next - a), _sqnorm(a_next)
        if b_is_at:
            b_next = a_next.mT
        else:
            b_next = (mu * b + b_inv / mu) * 0.5
            step, size = step + _sqnorm(b_next - b), size + _sqnorm(b_next)
        a, b = a_next, b_next
        rel = (step / size).sqrt()
        scale = rel > _SCALE_UNTIL
        if steps is not None:
            continue
        if finishing:
            break
        worst = _worst(rel)
        if not math.isfinite(worst):
            return None, k  # a singular iterate: an eigenvalue on (or at) the imaginary axis
        finishing = worst <= tol
    else:
        if steps is None:
            return None, k
    eye_a = torch.eye(m, dtype=A.dtype, device=A.device)
    plus = _sqnorm(a - eye_a)
    if steps is None:
        eye_b = torch.eye(n, dtype=A.dtype, device=A.device)
        off_plus = torch.maximum(plus, _sqnorm(b - eye_b))
        off_minus = torch.maximum(_sqnorm(a + eye_a), _sqnorm(b + eye_b))
        if not _worst(torch.minimum(off_plus, off_minus)) < 0.25:
            return None, k
    s = torch.where(plus < _sqnorm(a + eye_a), 0.5, -0.5).to(A.dtype)
    return c * s[..., None, None], k


def _solve(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, method: str, b_is_at: bool,
           check: bool, steps: int | None = None
           ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(X, factors): for the eigen-solvers those of :func:`_eig_factors` (real for eigh,
    complex for eig); for the sign iteration its step count as a 0-d int64 tensor (run
    exactly ``steps`` steps if given); none for empty inputs."""
    m, n = A.shape[-1], B.shape[-1]
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2], C.shape[:-2])
    if m == 0 or n == 0 or math.prod(batch) == 0:
        return C.new_zeros(*batch, m, n), ()
    if method in ("sign", "sign_or_eig"):
        x, k = _sign_solve(A, B, C, b_is_at, steps)
        if x is not None:
            return x, (torch.tensor(k),)
        if method == "sign":
            op, what = _names(b_is_at)
            raise ShapeError(
                f"{op}: method='sign' expected {what} with every eigenvalue in the open right "
                f"half-plane (or every eigenvalue in the open left half-plane), but the sign "
                f"iteration did not converge to +-I within {_SIGN_MAX_ITER} steps for "
                f"{_shapes(A, B, b_is_at)}; method='eig' or 'auto' handles other spectra")
        method = "eig"
    factors = _eig_factors(A, B, b_is_at, symmetric=method == "eigh")
    if check:
        _check_nonsingular(factors, b_is_at, max(m, n), _shapes(A, B, b_is_at))
    return _solve_factored(method, factors, b_is_at, C, transpose=False), factors


def _kernel(factors: tuple[torch.Tensor, ...]) -> str:
    if not factors or not (factors[0].is_floating_point() or factors[0].is_complex()):
        return "sign"  # (no factors: empty input, any solver returns zeros)
    return "eig" if factors[0].is_complex() else "eigh"


# ----------------------------------------------------------------------------- autograd


class _Sylvester(torch.autograd.Function):
    """X with A X + X B = C; the factors of the eigen-solvers ride along as
    non-differentiable outputs so that backward and jvp reuse them. ``b_is_at``: the caller
    passes B = A.mT (Lyapunov); only A is decomposed or iterated, and autograd adds the
    gradients of both arguments into S through the transpose view."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, method: str,
                b_is_at: bool, check: bool, steps: int | None) -> tuple[torch.Tensor, ...]:
        with no_tf32(A):
            x, factors = _solve(A, B, C, method, b_is_at, check, steps)
        return (x, *factors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        A, B, C, _method, b_is_at, _check, _steps = inputs
        ctx.kernel, ctx.b_is_at = _kernel(output[1:]), b_is_at
        ctx.mark_non_differentiable(*output[1:])
        factors = output[1:]
        ctx.steps = 0
        if ctx.kernel == "sign":  # the step count: a CPU scalar, not a tensor to save
            ctx.steps = int(factors[0]) if factors else 0
            factors = ()
        # A, B, C are the caller's tensors (no copies): C only for its shape, A and B for
        # the sign iteration and for double backward
        ctx.save_for_backward(A, B, C, output[0], *factors)
        ctx.save_for_forward(A, B, output[0], *factors)
        ctx.n_outputs = len(output)

    # Reverse mode (Kao & Hennequin 2020; docs/derivations/lyapunov.md). Differentiating
    # A X + X B = C gives A dX + dX B = dC - dA X - X dB, i.e. dX = L^{-1}(dC - dA X - X dB)
    # with L(X) = A X + X B. For a cotangent G = dLoss/dX,
    #     <G, dX> = <L^{-T} G, dC - dA X - X dB>,   L^T(Y) = A^T Y + Y B^T,
    # so with Y solving A^T Y + Y B^T = G:
    #     dC = Y,   dA = -Y X^T,   dB = -X^T Y.
    # The adjoint solve reuses the forward's factors (A^T = U^{-T} L U^T) or reruns the sign
    # iteration on A^T, B^T for the forward's step count (its A- and B-iterates are the
    # transposes of the forward's, and the C-block error follows them: see _sign_solve).
    # Under create_graph it goes through this Function again, and X is the saved output, so
    # double backward is exact.
    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, *_unused: Any):
        A, B, C, X, *factors = ctx.saved_tensors
        need_a, need_b, need_c = ctx.needs_input_grad[:3]
        with no_tf32(A):
            if torch.is_grad_enabled():
                y = apply_fastest(_Sylvester, _SylvesterClassic, A.mT, B.mT, g, ctx.kernel,
                                  ctx.b_is_at, False, ctx.steps)[0]
            elif factors:
                y = _solve_factored(ctx.kernel, tuple(factors), ctx.b_is_at, g, transpose=True)
            else:
                y = _solve(A.mT, B.mT, g, "sign", ctx.b_is_at, False, ctx.steps)[0]
            ga = _sum_to(-(y @ X.mT), A) if need_a else None
            gb = _sum_to(-(X.mT @ y), B) if need_b else None
            gc = _sum_to(y, C) if need_c else None
        return ga, gb, gc, None, None, None, None

    # Forward mode: dX = L^{-1}(dC - dA X - X dB), one more solve with the same factors (for
    # the sign kernel, one more run of the forward's step count).
    @staticmethod
    def jvp(ctx: Any, dA: torch.Tensor | None, dB: torch.Tensor | None,
            dC: torch.Tensor | None, *_unused: Any):
        A, B, X, *factors = ctx.saved_tensors
        rhs = torch.zeros_like(X) if dC is None else torch.broadcast_to(dC, X.shape)
        if dA is not None:
            rhs = rhs - dA @ X
        if dB is not None:
            rhs = rhs - X @ dB
        with no_tf32(A):
            if factors:
                dx = _solve_factored(ctx.kernel, tuple(factors), ctx.b_is_at, rhs,
                                     transpose=False)
            else:
                dx = _solve(A, B, rhs, "sign", ctx.b_is_at, False, ctx.steps)[0]
        return (torch.broadcast_to(dx, X.shape), *(None for _ in range(ctx.n_outputs - 1)))


_SylvesterClassic = classic_twin(_Sylvester)


# ----------------------------------------------------------------------------- public API


def _check_rhs(op: str, ref_name: str, ref: torch.Tensor, C: object, m: int, n: int,
               layout: str, others: tuple[tuple[str, torch.Tensor], ...]) -> torch.Tensor:
    C = check_tensor(op, "C", C)
    check_real_floating(op, "C", C)
    for name, t in others:
        check_same_device_dtype(op, ref_name, ref, name, t)
    check_same_device_dtype(op, ref_name, ref, "C", C)
    if C.dim() < 2 or C.shape[-2:] != (m, n):
        raise ShapeError(f"{op}: expected C of shape {layout} = (*, {m}, {n}), "
                         f"but got {describe('C', C)}")
    try:
        torch.broadcast_shapes(ref.shape[:-2], *(t.shape[:-2] for _, t in others),
                               C.shape[:-2])
    except RuntimeError:
        shapes = ", ".join(f"{name}.shape={tuple(t.shape)}"
                           for name, t in ((ref_name, ref), *others, ("C", C)))
        raise ShapeError(f"{op}: expected batch dimensions that broadcast, but got "
                         f"{shapes}") from None
    return C


def _symmetric(x: torch.Tensor) -> bool:
    return _all(x == x.mT)


def _pick(op: str, method: str, pairs: tuple[tuple[str, torch.Tensor], ...],
          check: bool) -> str:
    check_choice(op, "method", method, _METHODS)
    if method == "auto":
        return "eigh" if all(_symmetric(t) for _, t in pairs) else "sign_or_eig"
    if method == "eigh" and check:
        for name, t in pairs:
            if not _symmetric(t):
                raise ShapeError(f"{op}: method='eigh' expected a symmetric {name}, but got "
                                 f"{describe(name, t)} with {name} != {name}^T")
    return method


_DOC_METHODS = """
    Methods:
        * ``"auto"`` (default): ``"eigh"`` when the coefficients are exactly symmetric
          (``torch.equal(A, A.mT)``, a device sync on GPU), else ``"sign"``, falling back to
          ``"eig"`` for the whole batch when the sign iteration does not converge.
        * ``"eigh"``: symmetric coefficients, ``X = U [(U^T C W) / (l_i + mu_j)] W^T`` from
          :func:`torch.linalg.eigh`, which reads the lower triangle only (``check=True``
          verifies symmetry). The fastest.
        * ``"eig"``: diagonalisable coefficients, ``X = U [(U^{-1} C W) / (l_i + mu_j)]
          W^{-1}`` from :func:`torch.linalg.eig` (complex arithmetic, real part returned).
          Any spectra with ``l_i + mu_j != 0``, but the error grows with the condition
          numbers of the eigenvector matrices ``U`` and ``W``: avoid it for strongly
          non-normal or nearly defective matrices.
        * ``"sign"``: Newton iteration for the matrix sign function of the block matrix
          ``[[A, C], [0, -B]]`` (Roberts 1980) with determinant scaling (Byers 1987), on the
          blocks, with QR-based inverses; about 3-4 ``n^3`` per step, typically 6-12 steps.
          Requires all eigenvalues of ``A`` and ``B`` in the open right half-plane (or all
          in the open left half-plane); raises ``ValueError`` when it does not converge
          within 50 steps. Accurate for non-normal matrices where ``"eig"`` is not.

    A singular operator (some ``l_i + mu_j = 0``) has no unique solution: ``"eig"``/``"eigh"``
    then return inf/NaN unless ``check=True``, which raises ``ValueError`` when
    ``|l_i + mu_j| <= max(n, 10) eps (max|l| + max|mu|)``; ``"sign"`` raises (it cannot
    converge). ``check=True`` also rejects non-finite inputs (a device sync on GPU).
"""


def solve_sylvester(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                    method: str = "auto", check: bool = False) -> torch.Tensor:
    r"""Solve the Sylvester equation :math:`AX + XB = C` for ``X``, differentiably.

    .. math::
        AX + XB = C,\qquad A \in \mathbb R^{m\times m},\ B \in \mathbb R^{n\times n},\
        C, X \in \mathbb R^{m\times n},

    which has a unique solution iff :math:`\lambda_i(A) + \mu_j(B) \neq 0` for all ``i, j``.

    Gradients (reverse mode, double backward, ``torch.func.jvp``/``vmap``/``jacrev``): with
    ``Y`` solving the adjoint equation :math:`A^T Y + Y B^T = \bar X`,

    .. math::
        \bar C = Y,\qquad \bar A = -Y X^T,\qquad \bar B = -X^T Y,

    the full (unstructured) gradient, whichever method computed ``X``; the adjoint solve
    reuses the forward's eigendecomposition (or reruns the sign iteration for the forward's
    step count). Forward mode solves :math:`A\,dX + dX\,B = dC - dA\,X - X\,dB` the same
    way. Saved for backward: ``X``, the caller's ``A``, ``B``, ``C`` (no copies) and the
    eigenvectors (``"eig"``: ``U, U^{-1}, W, W^{-1}``, complex).
<<methods>>
    Args:
        A: ``(*, m, m)``, float32 or float64.
        B: ``(*, n, n)``, same dtype and device.
        C: ``(*, m, n)``, same dtype and device; the batch dims of ``A``, ``B``, ``C``
            broadcast.
        method: ``"auto"``, ``"eigh"``, ``"eig"`` or ``"sign"``.
        check: raise on non-finite input, on a singular operator (eig/eigh) and on
            non-symmetric input to ``"eigh"`` (device syncs on GPU).

    Returns:
        ``X`` of shape ``(*, m, n)`` (broadcast batch dims), dtype of the inputs. Inputs are
        never modified.

    Raises:
        ValueError: (``ShapeError``) non-square ``A``/``B``, ``C`` of the wrong shape, batch
            dims that do not broadcast, an unknown method, a sign iteration that does not
            converge, and with ``check=True`` the conditions above.
        TypeError: (``DTypeError``) non-tensor, integer or complex input, or inputs that
            differ in dtype or device.

    References:
        R. H. Bartels, G. W. Stewart, "Solution of the matrix equation AX + XB = C",
        Comm. ACM 15(9), 1972. J. D. Roberts, "Linear model reduction and solution of the
        algebraic Riccati equation by use of the sign function", Int. J. Control 32(4),
        1980. R. Byers, "Solving the algebraic Riccati equation with the matrix sign
        function", Linear Algebra Appl. 85, 1987. N. J. Higham, *Functions of Matrices*,
        SIAM, 2008, ch. 5. P. Benner, E. S. Quintana-Orti, G. Quintana-Orti, "Solving stable
        Sylvester equations via rational iterative schemes", J. Sci. Comput. 28, 2006.
        T.-C. Kao, G. Hennequin, "Automatic differentiation of Sylvester, Lyapunov, and
        algebraic Riccati equations", arXiv:2011.11430, 2020.

    Example:
        >>> A = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
        >>> B = torch.tensor([[1.0]])
        >>> C = torch.tensor([[5.0], [3.0]])
        >>> X = solve_sylvester(A, B, C)
        >>> torch.allclose(A @ X + X @ B, C)
        True
    """
    op = "solve_sylvester"
    A = check_square(op, "A", A, "(*, m, m)")
    B = check_square(op, "B", B, "(*, n, n)")
    C = _check_rhs(op, "A", A, C, A.shape[-1], B.shape[-1], "(*, m, n)", (("B", B),))
    if check:
        for name, t in (("A", A), ("B", B), ("C", C)):
            check_finite(op, name, t)
    kernel = _pick(op, method, (("A", A), ("B", B)), check)
    return apply_fastest(_Sylvester, _SylvesterClassic, A, B, C, kernel, False, check, None)[0]


def solve_lyapunov(S: torch.Tensor, C: torch.Tensor, *, method: str = "auto",
                   check: bool = False) -> torch.Tensor:
    r"""Solve the continuous Lyapunov equation :math:`SX + XS^T = C` for ``X``.

    The same as ``solve_sylvester(S, S.mT, C)``, and as
    ``scipy.linalg.solve_continuous_lyapunov(S, C)``, but decomposing (or iterating on) ``S``
    once: symmetric ``S = V diag(l) V^T`` gives :math:`X = V[(V^T C V) / (l_i + l_j)]V^T`,
    and for ``"eig"`` and ``"sign"`` the factors or iterates of ``S^T`` are the transposes of
    those of ``S``. The control-theory form :math:`SX + XS^T + Q = 0` with ``S`` stable
    (eigenvalues in the left half-plane) is ``solve_lyapunov(S, -Q)``: the sign method
    handles both half-planes. Symmetric ``C`` gives symmetric ``X`` up to rounding.

    Gradient: ``S`` enters as both coefficients; it is computed through the Sylvester rule
    with ``B = S^T`` as a transpose view, so autograd adds both contributions,
    :math:`\bar S = -Y X^T - Y^T X` with :math:`S^T Y + Y S = \bar X`, and :math:`\bar C = Y`.
    Double backward, ``jvp`` and ``vmap`` as for :func:`solve_sylvester`.
<<methods>>
    Args:
        S: ``(*, n, n)``, float32 or float64.
        C: ``(*, n, n)``, same dtype and device, batch dims broadcasting with ``S``.
        method: ``"auto"``, ``"eigh"``, ``"eig"`` or ``"sign"``.
        check: raise on non-finite input, on a singular operator (eig/eigh) and on
            non-symmetric input to ``"eigh"`` (device syncs on GPU).

    Returns:
        ``X`` of shape ``(*, n, n)``.

    Raises:
        ValueError: (``ShapeError``) as :func:`solve_sylvester`.
        TypeError: (``DTypeError``) as :func:`solve_sylvester`.

    References:
        As :func:`solve_sylvester`; R. H. Bartels, G. W. Stewart 1972 (Lyapunov case).

    Example:
        >>> S = torch.tensor([[-2.0, 1.0], [0.0, -3.0]])  # stable
        >>> Q = torch.eye(2)
        >>> X = solve_lyapunov(S, -Q)  # S X + X S^T + Q = 0
        >>> torch.allclose(S @ X + X @ S.T + Q, torch.zeros(2, 2), atol=1e-6)
        True
    """
    op = "solve_lyapunov"
    S = check_square(op, "S", S, "(*, n, n)")
    n = S.shape[-1]
    C = _check_rhs(op, "S", S, C, n, n, "(*, n, n)", ())
    if check:
        check_finite(op, "S", S)
        check_finite(op, "C", C)
    kernel = _pick(op, method, (("S", S),), check)
    return apply_fastest(_Sylvester, _SylvesterClassic, S, S.mT, C, kernel, True, check,
                         None)[0]


solve_sylvester.__doc__ = (solve_sylvester.__doc__ or "").replace("<<methods>>\n",
                                                                  _DOC_METHODS + "\n")
solve_lyapunov.__doc__ = (solve_lyapunov.__doc__ or "").replace("<<methods>>\n", (
    _DOC_METHODS.replace("``A`` and ``B``", "``S``")
    .replace("of ``[[A, C], [0, -B]]``", "of ``[[S, C], [0, -S^T]]``") + "\n"))
