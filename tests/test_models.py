"""The networks against the reference design: sizes, shapes, init, key names, checkpoints, infer.py.

Parameter counts are worked out by hand from the layer formulas, state-dict names are spelled out
as the reference code writes them, and the checkpoint tests write real files and run infer.py as
a user would.
"""

import json
import math
from pathlib import Path

import matplotlib.image
import pytest
import torch
from torch import nn

from model.discriminator import PatchDiscriminator
from model.vae import VAE
from tests.helpers import REPO, run_main, run_script
from utils import views
from utils.checkpoint import load_checkpoint, load_state, vae_state_from
from utils.config import ModelConfig, load_model_config
from utils.errors import CheckpointError

MODEL_SIMPLE = REPO / "configs" / "model_simple_config.json"
MODEL_COMPOSITE = REPO / "configs" / "model_composite_config.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def model_config_variant(tmp_dir: Path, name: str, **changes) -> Path:
    """A copy of the shipped simple model config with `changes` to its model_config block,
    written to tmp_dir."""
    data = json.loads(MODEL_SIMPLE.read_text())
    data["model_config"].update(changes)
    path = tmp_dir / name
    path.write_text(json.dumps(data, indent=2))
    return path


def make_vae(seed: int, config: ModelConfig | None = None) -> VAE:
    torch.manual_seed(seed)
    return VAE((config or load_model_config(MODEL_SIMPLE)).model_config)


def images(n: int = 5, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Sizes and shapes


def test_default_vae_parameter_count_matches_the_layer_formulas():
    # Linear(i, o) with bias: i*o + o.  LinearLayer(i, o): Linear without bias i*o,
    # plus BatchNorm1d(o) weight and bias 2*o (running stats are buffers, not parameters).
    encoder = (
        (784 * 784 + 784)  # in_layer: Linear(784, h[0]=784)
        + (784 * 512 + 2 * 512)  # LinearLayer(784, 512)
        + (512 * 256 + 2 * 256)  # LinearLayer(512, 256)
        + (256 * 128 + 2 * 128)  # LinearLayer(256, 128)
        + (128 * 2 + 2)  # mu: Linear(128, 2)
        + (128 * 2 + 2)  # logvar: Linear(128, 2)
    )
    decoder = (
        (2 * 128 + 128)  # in_layer: Linear(2, 128)
        + (128 * 256 + 2 * 256)  # LinearLayer(128, 256)
        + (256 * 512 + 2 * 512)  # LinearLayer(256, 512)
        + (512 * 784 + 2 * 784)  # LinearLayer(512, 784)
        + (784 * 784 + 784)  # out_layer: Linear(784, 784)
    )
    assert encoder == 1_182_996
    assert decoder == 1_184_176
    vae = make_vae(0)
    assert n_params(vae.encoder) == encoder
    assert n_params(vae.decoder) == decoder
    assert n_params(vae) == encoder + decoder == 2_367_172


def test_default_discriminator_parameter_count_matches_the_layer_formulas():
    # Conv2d(i, o, k) with bias: o*i*k*k + o.  ConvLayer(i, o, k): conv without bias o*i*k*k,
    # plus BatchNorm2d(o) weight and bias 2*o.
    expected = (
        (32 * 1 * 3 * 3 + 32)  # in_layer: Conv2d(1, 32, 3, 1, 1)
        + (64 * 32 * 4 * 4 + 2 * 64)  # ConvLayer(32, 64, 4, 2, 1)
        + (128 * 64 * 4 * 4 + 2 * 128)  # ConvLayer(64, 128, 4, 2, 1)
        + (256 * 128 * 3 * 3 + 2 * 256)  # ConvLayer(128, 256, 3, 1, 1)
        + (1 * 256 * 1 * 1 + 1)  # out_layer: Conv2d(256, 1, 1)
    )
    assert expected == 460_225
    torch.manual_seed(0)
    critic = PatchDiscriminator(load_model_config(MODEL_COMPOSITE).discriminator_config)
    assert n_params(critic) == expected


def test_vae_forward_shapes_and_range():
    vae = make_vae(0)
    x = images()
    for mode in (vae.train, vae.eval):
        mode()
        recon, mu, logvar = vae(x)
        assert recon.shape == (5, 1, 28, 28)
        assert mu.shape == (5, 2)
        assert logvar.shape == (5, 2)
        assert recon.min() >= 0.0 and recon.max() <= 1.0
        assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()


def test_discriminator_gives_a_7x7_logit_map():
    torch.manual_seed(0)
    critic = PatchDiscriminator(load_model_config(MODEL_COMPOSITE).discriminator_config)
    # 28 -(k3 s1 p1)-> 28 -(k4 s2 p1)-> 14 -(k4 s2 p1)-> 7 -(k3 s1 p1)-> 7 -(k1)-> 7
    side = 28
    for k, s, p in [(3, 1, 1), (4, 2, 1), (4, 2, 1), (3, 1, 1), (1, 1, 0)]:
        side = (side + 2 * p - k) // s + 1
    assert side == 7
    logits = critic(images())
    assert logits.shape == (5, 1, 7, 7)
    # Logits, not probabilities: an untrained critic with Xavier init is not squashed into [0, 1].
    assert logits.min() < 0.0 or logits.max() > 1.0


# ---------------------------------------------------------------------------------------------
# Initialisation


def all_networks() -> list[nn.Module]:
    torch.manual_seed(0)
    critic = PatchDiscriminator(load_model_config(MODEL_COMPOSITE).discriminator_config)
    return [make_vae(0), critic]


def test_biases_are_zero_and_batchnorm_is_identity():
    seen = {"linear_conv": 0, "bn": 0}
    for net in all_networks():
        for m in net.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                seen["linear_conv"] += 1
                if m.bias is not None:
                    assert torch.equal(m.bias, torch.zeros_like(m.bias))
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                seen["bn"] += 1
                assert torch.equal(m.weight, torch.ones_like(m.weight))
                assert torch.equal(m.bias, torch.zeros_like(m.bias))
                assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
                assert torch.equal(m.running_var, torch.ones_like(m.running_var))
    # VAE: encoder in/mu/logvar + decoder in/out + 6 LinearLayer linears (6 BatchNorm1d);
    # critic: in/out convs + 3 ConvLayer convs (3 BatchNorm2d).
    assert seen == {"linear_conv": 5 + 6 + 2 + 3, "bn": 6 + 3}


def test_weights_are_xavier_uniform():
    checked_big = 0
    for net in all_networks():
        for name, m in net.named_modules():
            if not isinstance(m, nn.Linear | nn.Conv2d):
                continue
            w = m.weight.detach()
            receptive = w[0, 0].numel()  # 1 for Linear, k*k for Conv2d
            fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max() <= bound, name
            if w.numel() >= 10_000:
                # U(-b, b) has std b / sqrt(3); PyTorch's default init would give about half that.
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03), name
                assert abs(w.mean().item()) < 0.02 * bound, name
                assert w.abs().max() > 0.99 * bound, name
                checked_big += 1
    assert checked_big >= 10


# ---------------------------------------------------------------------------------------------
# Sampling: z = mu + eps * exp(0.5 * logvar) in training mode, mu in eval mode


def test_eval_mode_decodes_mu_deterministically():
    vae = make_vae(0).eval()
    x = images()
    torch.manual_seed(1)
    recon_a, mu_a, logvar_a = vae(x)
    torch.manual_seed(2)
    recon_b, mu_b, logvar_b = vae(x)
    assert torch.equal(recon_a, recon_b)
    assert torch.equal(mu_a, mu_b) and torch.equal(logvar_a, logvar_b)
    with torch.no_grad():
        assert torch.allclose(recon_a, vae.decoder(mu_a), atol=1e-6)


def test_train_mode_samples_with_the_reparameterisation():
    vae = make_vae(0)
    vae.train()
    x = images()
    torch.manual_seed(1)
    recon_1, _, _ = vae(x)
    torch.manual_seed(2)
    recon_2, _, _ = vae(x)
    assert not torch.allclose(recon_1, recon_2)

    # With dropout off, the only randomness is eps; reproduce it and decode by hand.
    cfg = load_model_config(MODEL_SIMPLE)
    cfg.model_config.encoder.dropout = cfg.model_config.decoder.dropout = 0.0
    vae = make_vae(0, cfg).train()
    torch.manual_seed(7)
    recon, mu, logvar = vae(x)
    torch.manual_seed(7)
    eps = torch.randn(5, 2)
    with torch.no_grad():
        expected = vae.decoder(mu + eps * torch.exp(0.5 * logvar))
        eval_like = vae.decoder(mu)
    assert torch.allclose(recon, expected, atol=1e-6)
    assert not torch.allclose(recon, eval_like, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# State-dict names: the reference code's checkpoints must load by these keys


def test_vae_state_dict_keys_follow_the_reference():
    state = make_vae(0).state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = ["encoder.in_layer.0.weight", "encoder.in_layer.0.bias"]
    for i in range(3):
        expected += [f"encoder.layers.{i}.linear.weight"]
        expected += [f"encoder.layers.{i}.norm.{b}" for b in bn]
    expected += ["encoder.mu.weight", "encoder.mu.bias"]
    expected += ["encoder.logvar.weight", "encoder.logvar.bias"]
    expected += ["decoder.in_layer.0.weight", "decoder.in_layer.0.bias"]
    for i in range(3):
        expected += [f"decoder.layers.{i}.linear.weight"]
        expected += [f"decoder.layers.{i}.norm.{b}" for b in bn]
    expected += ["decoder.out_layer.0.weight", "decoder.out_layer.0.bias"]
    assert list(state) == expected
    for key in (
        "encoder.in_layer.0.weight",
        "encoder.layers.0.linear.weight",
        "encoder.layers.0.norm.running_mean",
        "encoder.mu.weight",
        "encoder.logvar.weight",
        "decoder.in_layer.0.weight",
        "decoder.layers.2.norm.weight",
        "decoder.out_layer.0.weight",
    ):
        assert key in state
    assert state["encoder.in_layer.0.weight"].shape == (784, 784)
    assert state["encoder.layers.0.linear.weight"].shape == (512, 784)
    assert state["encoder.mu.weight"].shape == (2, 128)
    assert state["decoder.in_layer.0.weight"].shape == (128, 2)
    assert state["decoder.layers.2.norm.weight"].shape == (784,)
    assert state["decoder.out_layer.0.weight"].shape == (784, 784)


def test_discriminator_state_dict_keys_follow_the_reference():
    torch.manual_seed(0)
    state = PatchDiscriminator(load_model_config(MODEL_COMPOSITE).discriminator_config).state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = ["in_layer.0.weight", "in_layer.0.bias"]
    for i in range(3):
        expected += [f"layers.{i}.conv.weight"] + [f"layers.{i}.norm.{b}" for b in bn]
    expected += ["out_layer.weight", "out_layer.bias"]
    assert list(state) == expected
    assert state["in_layer.0.weight"].shape == (32, 1, 3, 3)
    assert state["layers.0.conv.weight"].shape == (64, 32, 4, 4)
    assert state["layers.0.norm.weight"].shape == (64,)
    assert state["layers.2.conv.weight"].shape == (256, 128, 3, 3)
    assert state["out_layer.weight"].shape == (1, 256, 1, 1)


# ---------------------------------------------------------------------------------------------
# Checkpoints written the reference way, loaded here


def reference_checkpoint(vae: VAE) -> dict:
    """A checkpoint dict keyed the way the reference training code saves it."""
    opt = torch.optim.Adam(vae.parameters(), lr=5e-4, weight_decay=1e-5)
    vae.train()
    recon, _, _ = vae(images(8, seed=5))
    recon.sum().backward()
    opt.step()
    opt.zero_grad()
    return {
        "model_state_dict": vae.state_dict(),
        "encoder_state_dict": vae.encoder.state_dict(),
        "decoder_state_dict": vae.decoder.state_dict(),
        "optimizer_g_state_dict": opt.state_dict(),
        "epoch": 5,
    }


def test_reference_checkpoint_loads_with_identical_outputs(tmp_path):
    vae = make_vae(0)
    path = tmp_path / "checkpoint_epoch_005.pth"
    torch.save(reference_checkpoint(vae), path)
    vae.eval()
    x = images()
    with torch.no_grad():
        want = vae(x)[0]

    loaded = views.load_vae(str(MODEL_SIMPLE), str(path), torch.device("cpu"))
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], want)


def test_encoder_and_decoder_dicts_alone_rebuild_the_model(tmp_path):
    vae = make_vae(0)
    ckpt = reference_checkpoint(vae)
    path = tmp_path / "halves.pth"
    torch.save(
        {
            "encoder_state_dict": ckpt["encoder_state_dict"],
            "decoder_state_dict": ckpt["decoder_state_dict"],
        },
        path,
    )
    payload = load_checkpoint(path)
    state = vae_state_from(payload, path)
    assert list(state) == list(vae.state_dict())

    fresh = make_vae(1).eval()
    vae.eval()
    x = images()
    with torch.no_grad():
        want = vae(x)[0]
        assert not torch.allclose(fresh(x)[0], want)  # a different init really differs
        load_state(fresh, state, path)
        assert torch.equal(fresh(x)[0], want)
    assert torch.equal(
        fresh.state_dict()["decoder.layers.1.norm.running_var"],
        vae.state_dict()["decoder.layers.1.norm.running_var"],
    )


def test_foreign_latent_size_names_the_tensor_and_both_shapes(tmp_path):
    cfg3 = load_model_config(model_config_variant(tmp_path, "latent3.json", latent_features=3))
    path = tmp_path / "latent3.pth"
    torch.save({"model_state_dict": make_vae(0, cfg3).state_dict()}, path)
    default = make_vae(1)
    with pytest.raises(CheckpointError) as info:
        load_state(default, vae_state_from(load_checkpoint(path), path), path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert "'encoder.mu.weight'" in message
    assert "[3, 128]" in message and "[2, 128]" in message
    assert message.index("[3, 128]") < message.index("[2, 128]")  # file's shape, then model's


def test_latent_grid_layout_for_a_4d_latent():
    z = views.latent_grid(4, 8)
    assert z.shape == (64, 4)
    assert torch.equal(z[:, 2:], torch.zeros(64, 2))
    cells = z.view(8, 8, 4)  # (row, column, dim) in display order
    sweep = torch.linspace(-3.0, 3.0, 8)
    for r in range(8):
        assert torch.allclose(cells[r, :, 0], sweep)  # z[0] left to right along columns
    for c in range(8):
        assert torch.allclose(cells[:, c, 1], sweep)  # z[1] from -3 in the top row down
    # The reference's plot_latent_grid: axes[i, j] shows z = (range[j], range[i]).
    for i in range(8):
        for j in range(8):
            assert torch.allclose(cells[i, j, :2], torch.stack([sweep[j], sweep[i]]))
    assert torch.all(cells[0, :, 1] == -3.0)  # top row has z[1] = -3, as the reference draws it
    assert torch.all(cells[-1, :, 1] == 3.0)
    assert cells[0, 0, 0] == -3.0 and cells[0, -1, 0] == 3.0


def test_the_grid_tiles_the_decodes_in_display_order():
    vae = make_vae(0).eval()
    canvas = views.tile(views.decode(vae, views.latent_grid(2, 3)), 3)
    assert canvas.shape == (3 * 28, 3 * 28, 3)
    with torch.no_grad():
        cells = vae.decoder(views.latent_grid(2, 3))
    for r in range(3):
        for c in range(3):
            tile = canvas[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28, 0]
            assert torch.allclose(tile, cells[r * 3 + c, 0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# infer.py as a user runs it: all commands start side by side (each costs ~3 s of start-up)


@pytest.fixture(scope="module")
def infer_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_cli")
    simple = str(MODEL_SIMPLE.relative_to(REPO))

    reference = root / "reference" / "checkpoint_epoch_005.pth"
    reference.parent.mkdir()
    torch.save(reference_checkpoint(make_vae(0)), reference)

    cfg3 = model_config_variant(root, "latent3.json", latent_features=3)
    foreign = root / "foreign.pth"
    torch.save({"model_state_dict": make_vae(0, load_model_config(cfg3)).state_dict()}, foreign)

    truncated = root / "truncated.pth"
    whole = reference.read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])

    cfg4 = model_config_variant(root, "latent4.json", latent_features=4)
    latent4 = root / "latent4" / "final_model.pth"
    latent4.parent.mkdir()
    torch.save(make_vae(3, load_model_config(cfg4)).state_dict(), latent4)

    cases = {
        "reference": (simple, reference, []),
        "latent4": (str(cfg4), latent4, []),
        "foreign": (simple, foreign, []),
        "missing": (simple, root / "absent.pth", []),
        "truncated": (simple, truncated, []),
        "grid0": (simple, reference, ["--grid_size", "0"]),
    }
    commands = {
        name: [
            "infer.py",
            "--model_config",
            cfg,
            "--ckpt_path",
            str(ckpt),
            "--save_path",
            str(root / "out" / f"{name}.png"),
            "--device",
            "cpu",
            *extra,
        ]
        for name, (cfg, ckpt, extra) in cases.items()
    }
    # The reference checkpoint's picture in a real process; the other cases in this one, as the
    # script's __main__ runs them (tests/helpers.run_main).
    done = {
        name: run_main(*argv) if name != "reference" else run_script(*argv)
        for name, argv in commands.items()
    }
    results = {}
    for name, result in done.items():
        results[name] = {
            "code": result.returncode,
            "out": result.stdout,
            "err": result.stderr,
            "png": root / "out" / f"{name}.png",
            "ckpt": cases[name][1],
        }
    return results


def check_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 3000, image.shape
    assert image.std() > 0.05  # a drawn figure, not a blank canvas


@pytest.mark.parametrize("case", ["reference", "latent4"])
def test_infer_writes_the_grid_png(infer_runs, case):
    run = infer_runs[case]
    assert run["code"] == 0, run["err"]
    assert "Traceback" not in run["err"]
    assert f"grid of 8x8 -> {run['png']}" in run["out"]
    check_png(run["png"])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("foreign", "tensor 'encoder.mu.weight' has shape [3, 128] but the model expects [2, 128]"),
        ("missing", "no such checkpoint file"),
        ("truncated", "not a readable PyTorch checkpoint"),
        ("grid0", "--grid_size 0: must be >= 1"),
    ],
)
def test_infer_bad_input_exits_2_with_one_line(infer_runs, case, expected):
    run = infer_runs[case]
    assert run["code"] == 2, (run["out"], run["err"])
    assert "Traceback" not in run["err"]
    lines = run["err"].splitlines()
    assert len(lines) == 1, run["err"]
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    if case != "grid0":
        assert str(run["ckpt"]) in lines[0]
    assert not run["png"].exists()


def test_composite_config_carries_the_same_vae():
    # infer.py on a composite run uses the composite config: same VAE, same keys and shapes.
    a = VAE(load_model_config(MODEL_SIMPLE).model_config).state_dict()
    b = VAE(load_model_config(MODEL_COMPOSITE).model_config).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
