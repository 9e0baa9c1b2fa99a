"""The linear layers' matrix products through ATen (MKL's sgemm on the CPU) or oneDNN.

PyTorch's float32 `F.linear` and its gradients run on the CPU through MKL, while oneDNN, the
library PyTorch already uses for convolutions, also has linear layers
(`torch.ops.mkldnn._linear_pointwise`), and on some CPUs it gets far more of the cores' rate than
MKL does; on others the two are even. The op is internal to PyTorch, so it is used only once it
has been found and checked against `F.linear`, and "auto" takes it only where it is timed faster
on the model's own layer shapes (`choose`). The swap is functional: `Linear` is an `nn.Linear`
with the same parameters and state-dict keys, whose forward calls the chosen function.

    aten    F.linear (the reference, the default when nothing chose; always on CUDA)
    onednn  forward x @ W^T, input gradient g @ W (W^T passed as a view) and weight gradient
            g^T @ x, each one oneDNN product; autocast or other dtypes and devices take F.linear
"""

import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

BACKENDS = ("aten", "onednn")
# "auto" takes oneDNN only when its time is below this share of ATen's, so that on a CPU where
# the two libraries are even, runs with the same seed keep to one arithmetic, ATen's.
AUTO_MARGIN = 0.95
TIMING_REPS = 5


@functools.cache
def onednn_op():
    """oneDNN's linear-layer op (looked up once); raises AttributeError or RuntimeError where
    this PyTorch lacks it (a build without oneDNN, or a later release that renamed it)."""
    return torch.ops.mkldnn._linear_pointwise.default


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """x @ weight^T (+ bias) for 2-D x, one oneDNN call; either operand may be a strided view."""
    return onednn_op()(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """F.linear on 2-D float32 CPU tensors, forward and both gradients through oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_product(grad, weight.t(), None)
        if ctx.needs_input_grad[1]:
            grad_weight = _onednn_product(grad.t(), x.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """F.linear through oneDNN where it applies (float32 on the CPU, outside autocast; any
    leading dimensions), else F.linear itself."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
    ):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    return _OneDNNLinear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])


FUNCTIONS = {"aten": F.linear, "onednn": onednn_linear}


class Linear(nn.Linear):
    """nn.Linear (same parameters, state-dict keys and init) whose product runs through the
    backend in `self.backend`: "aten" until `set_backend` chooses another."""

    backend = "aten"

    def set_backend(self, backend: str) -> None:
        if backend not in FUNCTIONS:
            raise ValueError(f"linear backend {backend!r}: must be one of {', '.join(BACKENDS)}")
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FUNCTIONS[self.backend](x, self.weight, self.bias)


def _forward_and_gradients(function, x, weight, bias, grad) -> list[torch.Tensor]:
    """The output, and the gradients of x, weight (and bias) for the output gradient `grad`."""
    leaves = [t.detach().requires_grad_() for t in (x, weight, *([] if bias is None else [bias]))]
    out = function(leaves[0], leaves[1], leaves[2] if bias is not None else None)
    out.backward(grad)
    return [out.detach(), *(t.grad for t in leaves)]


@functools.cache
def onednn_problem() -> str | None:
    """Why oneDNN's linear op cannot be used in this process (missing, failing, or off from
    F.linear beyond float32 rounding on forward or either gradient); None when it passes. Checked
    once per process, with and without a bias."""
    try:
        onednn_op()
    except (AttributeError, RuntimeError):
        return "torch.ops.mkldnn._linear_pointwise is missing from this PyTorch"
    g = torch.Generator().manual_seed(0)
    for bias in (True, False):
        x, weight, grad = (torch.randn(*s, generator=g) for s in ((37, 53), (29, 53), (37, 29)))
        b = torch.randn(29, generator=g) if bias else None
        try:
            got = _forward_and_gradients(onednn_linear, x, weight, b, grad)
        except RuntimeError as error:
            return f"oneDNN's linear op failed ({str(error).splitlines()[0]})"
        expected = _forward_and_gradients(F.linear, x, weight, b, grad)
        for name, a, e in zip(
            ("output", "input gradient", "weight gradient", "bias gradient"),
            got,
            expected,
            strict=False,
        ):
            if not torch.allclose(a, e, rtol=1e-4, atol=1e-4):
                return f"oneDNN's linear op differs from F.linear in the {name}"
    return None


def layer_shapes(module: nn.Module) -> list[tuple[int, int, bool]]:
    """(in_features, out_features, has bias) of every `Linear` inside `module`."""
    return [
        (m.in_features, m.out_features, m.bias is not None)
        for m in module.modules()
        if isinstance(m, Linear)
    ]


def time_backends(shapes: list[tuple[int, int, bool]], batch: int, reps: int = TIMING_REPS):
    """Seconds per backend for the forward pass and both gradients of every layer in `shapes` at
    `batch` rows: the fastest of `reps` rounds, the backends alternating round by round so that
    load elsewhere on the machine hits both alike."""
    g = torch.Generator().manual_seed(0)
    problems = [
        (
            torch.randn(batch, n_in, generator=g),
            torch.randn(n_out, n_in, generator=g),
            torch.randn(n_out, generator=g) if bias else None,
            torch.randn(batch, n_out, generator=g),
        )
        for n_in, n_out, bias in shapes
    ]
    best = dict.fromkeys(BACKENDS, float("inf"))
    for _ in range(reps + 1):  # the first round warms up
        for backend in BACKENDS:
            started = time.perf_counter()
            for problem in problems:
                _forward_and_gradients(FUNCTIONS[backend], *problem)
            best[backend] = min(best[backend], time.perf_counter() - started)
    return best


@dataclass
class Choice:
    """The backend a run uses and, in words, why (for the start line and the run folder)."""

    backend: str
    why: str


def choose(
    setting: str, module: nn.Module, batch: int, device: torch.device, saved: str | None = None
) -> Choice:
    """The backend for `module`'s linear layers under the train config's `setting` ("auto",
    "aten" or "onednn") on `device`, or the backend `saved` that a resumed run used: CUDA always
    takes ATen; oneDNN only once it passes its check (else ATen, the reason said); "auto" times
    both on the module's own layer shapes at `batch` rows and takes oneDNN where it is faster by
    the margin AUTO_MARGIN."""
    if device.type != "cpu":
        return Choice("aten", f"{device.type}: ATen's kernels")
    wanted = saved or setting
    source = "the run's own, from its checkpoint" if saved else "set in the train config"
    if wanted == "aten":
        return Choice("aten", source)
    problem = onednn_problem()
    if problem is not None:
        return Choice("aten", f"onednn falls back to aten: {problem}")
    if wanted == "onednn":
        return Choice("onednn", source)
    seconds = time_backends(layer_shapes(module), batch)
    faster = "onednn" if seconds["onednn"] < AUTO_MARGIN * seconds["aten"] else "aten"
    return Choice(
        faster,
        f"auto: the linear layers' step took {seconds['onednn'] * 1e3:.1f} ms "
        f"with onednn, {seconds['aten'] * 1e3:.1f} ms with aten",
    )
