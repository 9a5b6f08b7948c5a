"""Choose between the fused Triton kernels and the PyTorch reference for each attack-step operation.

``backend`` is "auto" (default), "reference" or "triton". An explicit "reference" or "triton" wins; with
"auto" the environment variable ``ROBUSTRAIN_KERNELS`` (auto / reference / triton) decides, and when it is
unset or "auto" the fused kernel runs if every tensor is on a CUDA device, triton imports, the dtypes are
supported and a fused kernel exists for the operation; otherwise the reference runs. Forcing "triton"
where it cannot run raises :class:`KernelUnavailableError` naming the missing requirement. CPU tensors run
the Triton kernels only when forced and only through the interpreter (``TRITON_INTERPRET=1`` set before
triton is first imported): that is how the parity tests run in CI.

The reference path of every operation computes exactly what the attacks computed before the kernels
existed, drawing its random numbers from the ``torch.Generator`` it is given. The fused path draws one
seed from that generator and generates Philox numbers in the kernel (see ``reference.py``).
"""
from __future__ import annotations

import os
from types import ModuleType

import torch
from torch import Tensor

from ..errors import KernelUnavailableError
from ..registry import choice
from ..threat import L2Ball, LinfBall, ThreatModel, clip_to_box
from . import reference

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "ROBUSTRAIN_KERNELS"
IMAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""dtypes the fused kernels accept for images and gradients (the perturbation is always fp32)."""

_TRITON: dict[str, object] = {}  # import result, cached: {"module": module} or {"error": message}


def _triton_kernels() -> ModuleType | str:
    """The kernel module, or why it cannot be imported."""
    if not _TRITON:
        try:
            from . import triton_kernels
            _TRITON["module"] = triton_kernels
        except Exception as err:  # ImportError, or a broken triton install
            _TRITON["error"] = f"{type(err).__name__}: {err}"
    return _TRITON.get("module") or str(_TRITON["error"])


def requested_backend(backend: str | None = "auto") -> str:
    """The backend asked for: ``backend`` unless it is "auto" (or None), then ``$ROBUSTRAIN_KERNELS``."""
    asked = choice("kernel backend", "auto" if backend is None else str(backend).lower(), BACKENDS)
    if asked == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        asked = choice("kernel backend", env, BACKENDS, f"${ENV_VAR}", "Unset it or set it to one of these.")
    return asked


def fused_problem(what: str, *tensors: Tensor, fused_exists: bool = True) -> str | None:
    """Why the fused kernel for ``what`` cannot run on ``tensors`` (None when it can)."""
    if not fused_exists:
        return f"there is no fused kernel for {what}"
    mod = _triton_kernels()
    if isinstance(mod, str):
        return f"triton is not importable ({mod}); install it (pip install triton) on a CUDA machine"
    devices = {t.device.type for t in tensors}
    if devices != {"cuda"}:
        if devices == {"cpu"} and mod.interpreted():
            pass  # the Triton interpreter runs the kernels on CPU tensors
        elif devices == {"cpu"} and os.environ.get("TRITON_INTERPRET") == "1":
            return ("no CUDA device: the tensors are on cpu, and TRITON_INTERPRET=1 was set after triton was "
                    "imported; set it before the first import of triton to run the kernels through the interpreter")
        else:
            return (f"no CUDA device: the tensors are on {sorted(devices)} (torch.cuda.is_available() = "
                    f"{torch.cuda.is_available()}); move them to a CUDA device, or set TRITON_INTERPRET=1 before "
                    "triton is imported to run the kernels on CPU through the Triton interpreter (slow, for tests)")
    for t in tensors:
        if t.dtype not in IMAGE_DTYPES:
            return (f"dtype {t.dtype} is not supported by the fused kernels (supported: "
                    f"{', '.join(str(d) for d in IMAGE_DTYPES)})")
    if any(t.numel() >= 2 ** 31 for t in tensors):
        return "the fused kernels use 32-bit offsets and take tensors of fewer than 2^31 elements"
    return None


def choose(what: str, *tensors: Tensor, backend: str | None = "auto", fused_exists: bool = True) -> str:
    """"triton" or "reference" for the operation ``what`` on ``tensors`` (see the module docstring)."""
    choice = requested_backend(backend)
    if choice == "reference":
        return "reference"
    if choice == "auto":  # CPU tensors never import triton here
        cuda = all(t.device.type == "cuda" for t in tensors)
        return "triton" if cuda and fused_problem(what, *tensors, fused_exists=fused_exists) is None else "reference"
    problem = fused_problem(what, *tensors, fused_exists=fused_exists)
    if problem is not None:
        source = "backend='triton'" if str(backend).lower() == "triton" else f"{ENV_VAR}=triton"
        raise KernelUnavailableError(f"the fused kernel was forced ({source}) but cannot run: {problem}. Use "
                                     "backend 'auto' (or unset the variable) to fall back to the PyTorch reference.")
    return "triton"


def _kernels() -> ModuleType:
    mod = _triton_kernels()
    assert not isinstance(mod, str)
    return mod


def _seed(generator: torch.Generator | None) -> int:
    """One seed for a fused random kernel, drawn from ``generator`` (torch's default one when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2 ** 31 - 1, (), generator=generator, device=device).item())


# -- operations -------------------------------------------------------------------------------------------
def linf_step(delta: Tensor, grad: Tensor, x: Tensor, step: float, eps: float | None, *,
              backend: str | None = "auto") -> Tensor:
    """:func:`reference.linf_step`, fused when possible."""
    if choose("the L-inf step", delta, grad, x, backend=backend) == "triton":
        return _kernels().linf_step(delta, grad, x, step, eps)
    return reference.linf_step(delta, grad, x, step, eps)


def l2_step(delta: Tensor, grad: Tensor, x: Tensor, step: float, eps: float | None, *,
            backend: str | None = "auto") -> Tensor:
    """:func:`reference.l2_step`, fused when possible."""
    if choose("the L2 step", delta, grad, x, backend=backend) == "triton":
        return _kernels().l2_step(delta, grad, x, step, eps)
    return reference.l2_step(delta, grad, x, step, eps)


def ascent_step(threat: ThreatModel, delta: Tensor, grad: Tensor, x: Tensor, step: float, *, project: bool = True,
                backend: str | None = "auto") -> Tensor:
    """``δ + step·dir(g)``, projected onto the ε-ball when ``project``, clipped to the box (fp32)."""
    eps = threat.eps if project else None
    if type(threat) is LinfBall:
        return linf_step(delta, grad, x, step, eps, backend=backend)
    if type(threat) is L2Ball:
        return l2_step(delta, grad, x, step, eps, backend=backend)
    choose(f"the step of {type(threat).__name__}", delta, grad, x, backend=backend, fused_exists=False)
    d = delta + step * threat.ascent_direction(grad)
    return threat.project_feasible(x, d) if project else clip_to_box(x.float(), d)


def random_start(threat: ThreatModel, x: Tensor, generator: torch.Generator | None = None, scale: float = 1.0, *,
                 backend: str | None = "auto") -> Tensor:
    """``threat.random_init(x, generator, scale)``; fused (Philox from a seed of ``generator``) for L∞ and L2."""
    if choose(f"the random start of {type(threat).__name__}", x, backend=backend,
              fused_exists=type(threat) in (LinfBall, L2Ball)) == "triton":
        if type(threat) is L2Ball:
            return _kernels().l2_random_start(x, scale * threat.eps, _seed(generator), uniform_in_ball=True)
        return _kernels().linf_random_start(x, scale * threat.eps, _seed(generator))
    return threat.random_init(x, generator, scale=scale)


def pgd_start(threat: ThreatModel, x: Tensor, generator: torch.Generator | None = None, *,
              backend: str | None = "auto") -> Tensor:
    """``threat.pgd_start(x, generator)``; fused for L∞ (the uniform start) and L2 (Gaussian direction, radius
    U(0, ε))."""
    if choose(f"the PGD start of {type(threat).__name__}", x, backend=backend,
              fused_exists=type(threat) in (LinfBall, L2Ball)) == "triton":
        if type(threat) is L2Ball:
            return _kernels().l2_random_start(x, threat.eps, _seed(generator), uniform_in_ball=False)
        return _kernels().linf_random_start(x, threat.eps, _seed(generator))
    return threat.pgd_start(x, generator)


def keep_best_update(best_delta: Tensor, best_loss: Tensor, best_wrong: Tensor, delta: Tensor, loss: Tensor,
                     wrong: Tensor, *, backend: str | None = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """The keep-best update (:func:`reference.keep_best`): (best δ, its loss, its misclassified flag).
    The fused path updates ``best_delta`` in place and returns it."""
    if choose("the keep-best update", best_delta, delta, backend=backend) == "triton":
        better = reference.keep_best_mask(best_loss, best_wrong, loss, wrong)
        best = best_delta if best_delta.is_contiguous() else best_delta.contiguous()
        _kernels().keep_best_copy(best, delta, better)
        return best, torch.where(better, loss, best_loss), wrong | best_wrong
    return reference.keep_best(best_delta, best_loss, best_wrong, delta, loss, wrong)


def elle_triplets(threat: ThreatModel, x: Tensor, generator: torch.Generator | None = None, *, clip: bool = False,
                  backend: str | None = "auto") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ELLE's random triplet (x_a, x_b, x_c, a): x_a, x_b uniform in the ε-ball around x (clipped to the
    box when ``clip``), a ~ U(0,1) per example (fp32), x_c = (1−a)·x_a + a·x_b; points in x's dtype.
    The reference draws η_a, η_b, then a from ``generator``, in that order."""
    if choose(f"the ELLE triplets of {type(threat).__name__}", x, backend=backend,
              fused_exists=type(threat) is LinfBall) == "triton":
        return _kernels().linf_elle_triplets(x, threat.eps, _seed(generator), clip)
    xw = x if x.dtype in (torch.float32, torch.float64) else x.float()
    eta_a = threat.sample_ball(xw, threat.eps, generator)
    eta_b = threat.sample_ball(xw, threat.eps, generator)
    a = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float32)
    return (*reference.triplets(x, eta_a, eta_b, a, clip), a)
