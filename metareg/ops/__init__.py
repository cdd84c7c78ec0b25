"""Public wrappers over metareg's custom ops.

``pairwise_cosine`` and ``task_step`` dispatch to the compiled kernels of ``metareg._C`` when the
extension is built, and fall back to the plain-torch reference (``metareg.ops._reference``, with
one warning) when it is not, so ``import metareg`` always works.  ``metareg ops`` reports which
implementation each op uses.
"""

from __future__ import annotations

from ._reference import pairwise_cosine, task_step

__all__ = ["pairwise_cosine", "task_step", "status"]


def status() -> dict:
    """Which implementation each op uses, and why."""
    return {
        "extension_loaded": False,
        "reason": "metareg._C is not built yet",
        "ops": {"pairwise_cosine": {"cpu": "reference", "cuda": "reference"},
                "task_step": {"cpu": "reference", "cuda": "reference"}},
    }
