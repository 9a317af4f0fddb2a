"""Weight Adjustment (paper, Section 4; METHODS.md "Shared building blocks").

``adjust(W, F_target, F_source) = W F_targetᵀ pinv(F_sourceᵀ)`` is the least-squares ``W'`` with
``F_source W'ᵀ ≈ F_target Wᵀ``. It is computed from the Gram matrix ``F_sourceᵀ F_source`` (``h x h``)
and ``F_sourceᵀ T`` with the targets ``T = F_target Wᵀ``, never from an SVD of the ``N x h`` matrix:
``pinv(Fᵀ) = F (FᵀF)⁺``.
"""
import torch
from scipy.linalg import blas


def gram(F):
    """``Fᵀ F`` for an ``N x h`` matrix; on the CPU through BLAS syrk (half the FLOPs of a GEMM)."""
    if F.device.type != "cpu" or F.dtype not in (torch.float32, torch.float64):
        return F.T @ F
    syrk = blas.ssyrk if F.dtype == torch.float32 else blas.dsyrk
    upper = torch.from_numpy(syrk(1.0, F.contiguous().numpy().T, trans=0))  # Fortran view, no copy
    return upper.triu() + upper.triu(1).T


def solve_normal_equations(G, B, eps):
    """``G⁺ B`` for a symmetric positive semi-definite ``G`` (a Gram matrix), in float64.

    Features that are zero on every sample (dead ReLUs) are dropped exactly, which is what the
    pseudo-inverse does with them (their rows of the answer are 0). The rest is solved by Cholesky;
    if that block is numerically singular at the precision ``eps`` of the features, an eigenvalue
    pseudo-inverse with a relative cut-off ``eps`` gives the minimum-norm answer instead.
    """
    G, B = G.double(), B.double()
    out = torch.zeros_like(B)
    active = torch.nonzero(torch.diagonal(G) > 0).squeeze(1)
    if len(active) == 0:
        return out
    Ga, Ba = G[active][:, active], B[active]
    cutoff = eps * torch.diagonal(Ga).max()
    L, info = torch.linalg.cholesky_ex(Ga)
    if info == 0 and torch.diagonal(L).min() ** 2 > cutoff:
        out[active] = torch.cholesky_solve(Ba, L)
    else:
        values, vectors = torch.linalg.eigh(Ga)
        keep = values > eps * values.max()
        vectors = vectors[:, keep]
        out[active] = vectors @ ((vectors.T @ Ba) / values[keep, None])
    return out


def fit_outgoing(T, F):
    """The minimum-norm ``W'`` (``out x h``) minimising ``||F W'ᵀ - T||`` for features ``F`` (``N x h``).

    The normal equations are formed on the smaller side: ``(FᵀF)⁺ FᵀT`` when ``N >= h``, else
    ``Fᵀ (FFᵀ)⁺ T``; both are ``pinv(F) T``.
    """
    eps = torch.finfo(F.dtype).eps
    if len(F) < F.shape[1]:
        coefficients = solve_normal_equations(gram(F.T), T, eps).to(F.dtype)
        return (F.T @ coefficients).T
    return solve_normal_equations(gram(F), F.T @ T, eps).T.to(F.dtype)


def adjust(W, F_target, F_source):
    """WA: new incoming weights for features ``F_source`` reproducing ``W`` applied to ``F_target``.

    ``W`` may be a conv kernel ``(out, C, k, k)`` when the features are patch matrices ``(N, C*k*k)``;
    the answer has the shape of ``W``.
    """
    matrix = W.reshape(len(W), -1)
    return fit_outgoing(F_target @ matrix.T, F_source).reshape(W.shape)


