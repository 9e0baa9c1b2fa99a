"""What the loop tracks across steps and epochs, each with a state dict for exact resume:
epoch means of the loss terms, early stopping, and the first non-finite loss term."""

import math

import torch

from utils.errors import UserError


class NonFiniteLossError(UserError):
    """A loss term became NaN or infinite; the run stops before it saves anything after that."""


class TermAverager:
    """Weighted means of named loss terms, summed on the device and read once."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor], weight: int = 1) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0) + value * weight
            self.weights[name] = self.weights.get(name, 0) + weight

    def means(self, names: tuple[str, ...]) -> dict[str, float]:
        """NaN for a term never reported (the adversarial terms before the critic is on)."""
        return {
            n: (self.sums[n] / self.weights[n]).item() if n in self.sums else math.nan
            for n in names
        }

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.weights = dict(state["sums"]), dict(state["weights"])


class EarlyStopping:
    """Stop once the epoch's train loss has not beaten the best by more than `tol` for
    `patience` epochs; remembers the best weights."""

    def __init__(self, patience: int, tol: float):
        self.patience, self.tol = patience, tol
        self.best_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] = {}

    def should_stop(self, epoch: int, loss: float, model: torch.nn.Module) -> bool:
        if loss < self.best_loss - self.tol:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


class NonFiniteWatch:
    """Remembers the first step with a non-finite loss term, on the device: no per-step sync.
    `check` reads it (one sync) and raises; the loop calls it before anything is saved."""

    def __init__(self, names: tuple[str, ...], device: torch.device):
        # The total is named last: it is non-finite whenever any part is.
        self.names = tuple(n for n in names if n != "loss") + ("loss",)
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms = torch.zeros(len(self.names), dtype=torch.bool, device=device)
        self.finite = torch.zeros((), device=device)

    def observe(self, terms: dict[str, torch.Tensor], step: int) -> None:
        bad = ~torch.isfinite(torch.stack([terms.get(n, self.finite) for n in self.names]))
        first = bad.any() & (self.first_step < 0)
        self.first_step = torch.where(first, step, self.first_step)
        self.bad_terms = torch.where(first, bad, self.bad_terms)

    def check(self, last_good: str) -> None:
        step = int(self.first_step)
        if step >= 0:
            name = self.names[int(self.bad_terms.int().argmax())]
            raise NonFiniteLossError(
                f"step {step}: loss term '{name}' is not finite; stopped without saving after it "
                f"(last good checkpoint: {last_good}); lower the VAE's learning rate "
                "(optimizer.params.lr, or params_g.lr in the composite scheme) and train again"
            )
