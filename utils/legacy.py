"""Files written by round 1 of this repo, read in the reference's layout: the one converter.

Round 1 wrote configs in a layout of its own (`latent_dim`, `encoder_config`, top-level
`train_bs`, warm-up ratios inside `optimizer`), checkpoints of the simple scheme under the
composite scheme's optimiser keys (`optimizer_g_state_dict`), and a critic LR schedule stepped at
every global step. Config files, run folders and checkpoints from then still resume, render and
grade: every reader passes what it loads through here, and anything already in the current layout
comes back unchanged.
"""

import copy
import math
from typing import Any

from utils.lr_schedule import warmup_cosine

# Keys that only round 1's layouts have.
_ROUND1_MODEL_KEYS = {"latent_dim", "image_shape", "encoder_config", "decoder_config"}
_ROUND1_TRAIN_KEYS = {"train_bs", "val_bs"}


def upgrade_model_config(data: dict) -> dict:
    """A model config dict in the current layout; round 1's is rewritten, key for key."""
    if "model_config" in data or not _ROUND1_MODEL_KEYS & data.keys():
        return data
    data = copy.deepcopy(data)
    image_shape = data.pop("image_shape", [1, 28, 28])
    upgraded: dict[str, Any] = {
        "model_config": {
            "img_size": image_shape,
            "latent_features": data.pop("latent_dim", None),
            "encoder": data.pop("encoder_config", None),
            "decoder": data.pop("decoder_config", None),
        }
    }
    critic = data.pop("discriminator_config", None)
    if isinstance(critic, dict):
        channels = image_shape[0] if isinstance(image_shape, list) and image_shape else 1
        upgraded["discriminator_config"] = {
            "im_channels": channels,
            "hidden_channels": critic.pop("channels", None),
            "kernel_size": critic.pop("kernel", None),
            **critic,
        }
    elif critic is not None:
        upgraded["discriminator_config"] = critic
    # Anything left (pips_config, or a stray key) keeps its place, and its checks.
    return {key: value for key, value in {**upgraded, **data}.items() if value is not None}


def is_round1_train(data: dict) -> bool:
    loss = data.get("loss")
    return (
        "data" not in data
        and "scheduler" not in data
        and (
            bool(_ROUND1_TRAIN_KEYS & data.keys())
            or (isinstance(loss, dict) and "params" not in loss)
        )
    )


def upgrade_train_config(data: dict, composite: bool) -> dict:
    """A training config dict in the current layout of the simple or the composite scheme. In
    round 1 both schemes shared one layout; the simple scheme ignored the critic's keys, which
    are dropped here."""
    if not is_round1_train(data):
        return data
    data = copy.deepcopy(data)
    loss_raw, optimizer_raw = data.pop("loss", {}), data.pop("optimizer", {})
    loss = loss_raw if isinstance(loss_raw, dict) else {}
    optimizer = optimizer_raw if isinstance(optimizer_raw, dict) else {}
    g_raw, d_raw = optimizer.get("params_g") or {}, optimizer.get("params_d") or {}
    params_g = dict(g_raw) if isinstance(g_raw, dict) else {}
    params_d = dict(d_raw) if isinstance(d_raw, dict) else {}
    loss_params = {
        "beta": loss.pop("beta", 4.0),
        "warmup_epochs": loss.pop("beta_warmup_epochs", 15.0),
        "free_bits": loss.pop("free_bits", 0.2),
        "lambda_recon": loss.pop("lambda_recon", 1.0),
    }
    disc_start_ratio = loss.pop("disc_start_ratio", 0.05)
    lambdas = {
        "lambda_pips": loss.pop("lambda_pips", 1.0),
        "lambda_disc": loss.pop("lambda_disc", 0.5),
    }
    g_schedule = {"warmup_ratio": params_g.pop("warmup_ratio", 0.0)}
    if composite:
        d_schedule = {"warmup_ratio": params_d.pop("warmup_ratio", 0.0)}
        params_d["warmup_ratio"] = disc_start_ratio
        loss_params.update(lambdas)
        optimizer_new = {"params_g": params_g, "params_d": params_d}
        scheduler = {"params_g": g_schedule, "params_d": d_schedule}
    else:
        optimizer_new = {"params": params_g}
        scheduler = {"params": g_schedule}
    upgraded = {
        "seed": data.pop("seed", 42),
        "num_epochs": data.pop("num_epochs", 40),
        "save_dir": data.pop("save_dir", None),
        # Whatever else round 1's loss block held is kept, so its checks still name it.
        "loss": {"params": {**loss_params, **loss}},
        "early_stopping": data.pop("early_stopping", None),
        "optimizer": optimizer_new,
        "scheduler": scheduler,
        "data": {"train_bs": data.pop("train_bs", 128), "val_bs": data.pop("val_bs", 128)},
    }
    # A block that is not an object goes where the checks will name it.
    if not isinstance(loss_raw, dict):
        upgraded["loss"] = loss_raw
    if not isinstance(optimizer_raw, dict):
        upgraded["optimizer"] = optimizer_raw
    if not isinstance(g_raw, dict):
        optimizer_new["params_g" if composite else "params"] = g_raw
    if composite and not isinstance(d_raw, dict):
        optimizer_new["params_d"] = d_raw
    if upgraded["save_dir"] is None:
        del upgraded["save_dir"]
    return {**upgraded, **data}


def upgrade_checkpoint(payload: dict) -> dict:
    """A checkpoint payload with the current keys and configs. Round 1's training checkpoints
    (their configs are in its layout) get their configs upgraded; the simple scheme's optimiser
    and schedule move to the reference's unsuffixed keys; the critic's schedule, which counted
    global steps, is set to the number of critic updates taken so far, the count the reference
    steps it by, with its learning rate for the next update."""
    saved_model = payload.get("model_config")
    if not isinstance(saved_model, dict) or "model_config" in saved_model:
        return payload
    payload = dict(payload)
    composite = payload.get("scheme") == "composite"
    old_train = payload["train_config"]
    payload["model_config"] = upgrade_model_config(saved_model)
    payload["train_config"] = upgrade_train_config(old_train, composite)
    if not composite:
        payload["optimizer_state_dict"] = payload.pop("optimizer_g_state_dict")
        payload["scheduler_state_dict"] = payload.pop("scheduler_g_state_dict")
        return payload
    steps_per_epoch = payload["train_size"] // old_train["train_bs"]
    total = old_train["num_epochs"] * steps_per_epoch
    disc_start = math.floor(old_train["loss"]["disc_start_ratio"] * total)
    warmup = math.floor(old_train["optimizer"]["params_d"]["warmup_ratio"] * total)
    updates = max(0, payload["step"] - disc_start)
    schedule = copy.deepcopy(payload["scheduler_d_state_dict"])
    optimizer = copy.deepcopy(payload["optimizer_d_state_dict"])
    lrs = [base * warmup_cosine(updates, warmup, total) for base in schedule["base_lrs"]]
    schedule.update(last_epoch=updates, _step_count=updates + 1, _last_lr=lrs)
    for group, lr in zip(optimizer["param_groups"], lrs, strict=True):
        group["lr"] = lr
    payload["scheduler_d_state_dict"], payload["optimizer_d_state_dict"] = schedule, optimizer
    return payload
