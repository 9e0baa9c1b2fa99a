"""The linear layers' backends: oneDNN's forward and both gradients equal F.linear's to float32
rounding; the choice (config, timing, CUDA, checkpoint) and the fallback to ATen where oneDNN's
op is missing or wrong; one step of the VAE on either backend."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model.linear_backend as lb
from model.linear_backend import Linear, choose, onednn_linear, onednn_problem
from model.vae import VAE
from tests.helpers import REPO
from training_schemes import linear_backend_choice
from utils.config import load_model_config, load_train_config

CPU = torch.device("cpu")
ONEDNN = onednn_problem() is None
needs_onednn = pytest.mark.skipif(not ONEDNN, reason=f"oneDNN's linear op: {onednn_problem()}")


def forward_and_gradients(function, x, weight, bias, grad):
    """The output and the gradients of x, weight and bias (None without one) for `grad`."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = function(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


@pytest.fixture
def no_onednn(monkeypatch):
    """This process as on a PyTorch without oneDNN's linear op."""

    def missing():
        raise AttributeError("_linear_pointwise")

    monkeypatch.setattr(lb, "onednn_op", missing)
    lb.onednn_problem.cache_clear()
    yield
    lb.onednn_problem.cache_clear()


SHAPES = [
    # (leading dims of x, in_features, out_features, bias)
    ((128,), 784, 784, True),
    ((128,), 512, 256, False),
    ((128,), 128, 2, True),
    ((128,), 2, 128, True),
    ((1,), 3, 5, False),
    ((7,), 300, 1, True),
    ((4, 6), 33, 17, True),
]


@needs_onednn
@pytest.mark.parametrize("lead, n_in, n_out, bias", SHAPES)
def test_onednn_forward_and_both_gradients_equal_f_linear(lead, n_in, n_out, bias):
    g = torch.Generator().manual_seed(n_in * 1000 + n_out)
    x = torch.randn(*lead, n_in, generator=g)
    weight = torch.randn(n_out, n_in, generator=g) / n_in**0.5
    b = torch.randn(n_out, generator=g) if bias else None
    grad = torch.randn(*lead, n_out, generator=g)
    got = forward_and_gradients(onednn_linear, x, weight, b, grad)
    want = forward_and_gradients(F.linear, x, weight, b, grad)
    # Sums of up to 784 float32 products, in another order: a few units of the last place.
    for name, a, e in zip(("output", "grad x", "grad weight", "grad bias"), got, want, strict=True):
        if e is None:
            assert a is None, name
        else:
            assert a.shape == e.shape, name
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5, msg=name)


def test_onednn_under_autocast_or_in_bfloat16_is_f_linear_itself():
    x, weight = torch.randn(8, 16), torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = onednn_linear(x, weight), F.linear(x, weight)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    got = onednn_linear(x.bfloat16(), weight.bfloat16())
    assert torch.equal(got, F.linear(x.bfloat16(), weight.bfloat16()))


def test_linear_keeps_nn_linear_parameters_and_starts_on_aten():
    layer = Linear(5, 3, bias=False)
    assert isinstance(layer, torch.nn.Linear)
    assert list(layer.state_dict()) == ["weight"] and layer.backend == "aten"
    x = torch.randn(2, 5)
    assert torch.equal(layer(x), F.linear(x, layer.weight))
    with pytest.raises(ValueError, match="'mkl': must be one of aten, onednn"):
        layer.set_backend("mkl")


@pytest.mark.parametrize("setting", ["auto", "aten", "onednn"])
def test_cuda_always_takes_aten(setting):
    assert (
        choose(setting, VAE(simple_config().model_config), 128, torch.device("cuda")).backend
        == "aten"
    )


def simple_config():
    return load_model_config(REPO / "configs/model_simple_config.json")


@pytest.mark.parametrize("setting", ["aten", "onednn"])
def test_a_backend_set_in_the_config_is_taken_or_onednn_falls_back(setting):
    choice = choose(setting, VAE(simple_config().model_config), 128, CPU)
    if setting == "onednn" and not ONEDNN:
        assert choice.backend == "aten" and choice.why.startswith("onednn falls back to aten: ")
    else:
        assert (choice.backend, choice.why) == (setting, "set in the train config")


def test_onednn_falls_back_to_aten_with_one_line_where_the_op_is_missing(no_onednn):
    for setting in ("auto", "onednn"):
        choice = choose(setting, VAE(simple_config().model_config), 128, CPU)
        assert choice.backend == "aten"
        assert choice.why == (
            "onednn falls back to aten: torch.ops.mkldnn._linear_pointwise is missing from this "
            "PyTorch"
        )


@needs_onednn
def test_onednn_falls_back_where_its_op_computes_something_else(monkeypatch):
    real = lb.onednn_op()
    monkeypatch.setattr(
        lb, "onednn_op", lambda: lambda x, w, b, *rest: 1.001 * real(x, w, b, *rest)
    )
    lb.onednn_problem.cache_clear()
    try:
        choice = choose("onednn", VAE(simple_config().model_config), 128, CPU)
    finally:
        lb.onednn_problem.cache_clear()
    assert choice.backend == "aten"
    assert (
        choice.why
        == "onednn falls back to aten: oneDNN's linear op differs from F.linear in the output"
    )


@needs_onednn
@pytest.mark.parametrize(
    "ratio, expected", [(0.5, "onednn"), (0.94, "onednn"), (0.96, "aten"), (1.3, "aten")]
)
def test_auto_takes_onednn_only_where_it_is_timed_faster_by_the_margin(
    monkeypatch, ratio, expected
):
    timed = []

    def times(shapes, batch):
        timed.append((shapes, batch))
        return {"aten": 0.010, "onednn": 0.010 * ratio}

    monkeypatch.setattr(lb, "time_backends", times)
    choice = choose("auto", VAE(simple_config().model_config), 64, CPU)
    assert choice.backend == expected
    assert choice.why == (
        f"auto: the linear layers' step took {10 * ratio:.1f} ms with onednn, 10.0 ms with aten"
    )
    # Timed on the VAE's own layers: encoder 784-784-512-256-128 and the mu / logvar heads,
    # decoder 2-128-256-512-784 and its output layer; the LinearLayers have no bias.
    assert timed == [
        (
            [
                (784, 784, True),
                (784, 512, False),
                (512, 256, False),
                (256, 128, False),
                (128, 2, True),
                (128, 2, True),
                (2, 128, True),
                (128, 256, False),
                (256, 512, False),
                (512, 784, False),
                (784, 784, True),
            ],
            64,
        )
    ]


@needs_onednn
def test_timing_measures_both_backends():
    seconds = lb.time_backends([(64, 32, True), (32, 8, False)], batch=16, reps=1)
    assert set(seconds) == {"aten", "onednn"}
    assert all(0 < t < 1 for t in seconds.values())


@pytest.mark.parametrize("saved", ["aten", "onednn"])
def test_a_resumed_run_takes_its_own_backend_without_timing(monkeypatch, saved):
    monkeypatch.setattr(lb, "time_backends", lambda *a: pytest.fail("timed on resume"))
    choice = choose("auto", VAE(simple_config().model_config), 128, CPU, saved=saved)
    if saved == "onednn" and not ONEDNN:
        assert choice.backend == "aten" and choice.why.startswith("onednn falls back")
    else:
        assert (choice.backend, choice.why) == (saved, "the run's own, from its checkpoint")


@needs_onednn
def test_one_vae_step_agrees_between_backends():
    # The same weights, batch and dropout masks: outputs and every gradient equal up to float32
    # rounding, amplified a little by BatchNorm, whichever backend runs the products. LeakyReLU
    # is swapped for a smooth activation here: with its kink, a pre-activation within rounding
    # of 0 takes slope 1 on one backend and 0.2 on the other, and that one element's gradient
    # then differs by 80 % (at some seeds and thread counts), which says nothing of the products.
    torch.manual_seed(0)
    reference = VAE(simple_config().model_config)
    x = torch.rand(128, 1, 28, 28)
    results = {}
    for backend in ("aten", "onednn"):
        vae = VAE(simple_config().model_config)
        vae.load_state_dict(reference.state_dict())
        for module in list(vae.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.LeakyReLU):
                    setattr(module, name, nn.SiLU())
        vae.set_linear_backend(backend)
        torch.manual_seed(1)
        x_hat, mu, logvar = vae(x)
        (x_hat.square().sum() + mu.square().sum() + logvar.sum()).backward()
        results[backend] = {
            "x_hat": x_hat,
            "mu": mu,
            "logvar": logvar,
            **{name: p.grad for name, p in vae.named_parameters()},
        }
    for name, want in results["aten"].items():
        error = (results["onednn"][name] - want).abs().max()
        assert error <= 1e-4 * want.abs().max(), name


def test_a_checkpoint_from_before_the_choice_resumes_on_aten(monkeypatch):
    # Such a run trained on ATen, whatever the config now says.
    monkeypatch.setattr(lb, "time_backends", lambda *a: pytest.fail("timed on resume"))
    train_cfg = load_train_config(REPO / "configs/train_simple_config.json", "simple")
    train_cfg.linear_backend = "onednn"
    choice = linear_backend_choice(train_cfg, simple_config(), 128, CPU, resume={"step": 9})
    assert (choice.backend, choice.why) == ("aten", "the run's own, from its checkpoint")
