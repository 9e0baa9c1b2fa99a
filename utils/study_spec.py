"""A study file (studies/*.json, described in studies/README.md): its arms, seeds, budget and
search block, each arm checked as train.py would check it before anything runs; and what names
a run (the arm as it runs, its recipe hash, every arm x seed wanted) and what its cost depends
on (arm_key)."""

import hashlib
import json
from dataclasses import dataclass, field

from utils.comparison import MEASURES, REPO, Arm, Budget, recipe_of
from utils.config import (
    TRAIN_CONFIGS,
    check_same_dataset,
    config_from_dict,
    load_model_config,
    load_train_config,
    need,
    parse_settings,
    read_json,
)
from utils.dataset import DATASETS
from utils.errors import UserError


@dataclass
class ArmSpec:
    """One arm: `scheme` with two config files (relative to the repo) and train.py --set
    changes, each "KEY=VALUE" with VALUE JSON."""

    name: str
    scheme: str
    model_config: str
    train_config: str
    settings: list[str] = field(default_factory=list)
    # The arm this one is compared with, when not the study's baseline (another cell's own).
    baseline: str | None = None
    # The data it trains on (train.py --dataset), when not the study's.
    dataset: str | None = None

    def check(self) -> None:
        ok = self.name.replace("_", "").replace("-", "").isalnum()
        need(ok, "name", self.name, "must be letters, digits, - and _ (a folder name)")
        need(
            self.scheme in TRAIN_CONFIGS,
            "scheme",
            self.scheme,
            f"must be one of {', '.join(TRAIN_CONFIGS)}",
        )
        check_dataset(self.dataset)


def check_dataset(dataset: str | None) -> None:
    need(
        dataset in (None, *DATASETS),
        "dataset",
        dataset,
        f"must be one of {', '.join(map(json.dumps, DATASETS))}",
    )


@dataclass
class SearchParam:
    """One config field the sampler varies: a dotted --set key, its range, log scale or not."""

    key: str
    low: float
    high: float
    log: bool = False

    def check(self) -> None:
        ok = self.low < self.high and (self.low > 0 or not self.log)
        need(ok, "low", self.low, "must be below high (and > 0 on a log scale)")


@dataclass
class SearchSpec:
    """--search: vary `params` of arm `arm` over `trials` runs to minimise grade `minimise`."""

    arm: str
    minimise: str
    trials: int
    params: list[SearchParam]
    seed: int = 0

    def check(self) -> None:
        need(
            self.minimise in MEASURES,
            "minimise",
            self.minimise,
            f"must be one of {', '.join(MEASURES)}",
        )
        need(self.trials >= 1, "trials", self.trials, "must be >= 1")


@dataclass
class StudySpec:
    """A study file: see studies/README.md."""

    name: str
    baseline: str
    seeds: list[int]
    epochs: int
    arms: list[ArmSpec]
    subset: int | None = None
    num_samples: int | None = None
    # train.py --set changes every arm takes before its own (a budget's schedules, say).
    settings: list[str] = field(default_factory=list)
    # The data every arm trains on (train.py --dataset); left out, each train config's.
    dataset: str | None = None
    objective: str = "fid_samples"
    search: SearchSpec | None = None

    def check(self) -> None:
        names = [a.name for a in self.arms]
        need(len(set(names)) == len(names), "arms", names, "names an arm twice; rename one")
        need(
            self.baseline in names,
            "baseline",
            self.baseline,
            f"must be one of the arms: {', '.join(names)}",
        )
        need(
            len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds),
            "seeds",
            self.seeds,
            "must be distinct seeds, at least one",
        )
        need(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check_dataset(self.dataset)
        need(self.subset is None or self.subset >= 1, "subset", self.subset, "must be >= 1")
        need(
            self.objective in MEASURES,
            "objective",
            self.objective,
            f"must be one of {', '.join(MEASURES)}",
        )
        for arm in self.arms:
            need(
                arm.baseline in (None, *names),
                f"arms.{arm.name}.baseline",
                arm.baseline,
                f"must be one of the arms: {', '.join(names)}",
            )
        if self.search is not None:
            need(
                self.search.arm in names,
                "search.arm",
                self.search.arm,
                f"must be one of the arms: {', '.join(names)}",
            )


def load_study(path: str) -> StudySpec:
    """The study file, checked, with every arm's configs and settings checked as train.py would
    check them, so that a mistake stops the study before its first run."""
    spec = config_from_dict(read_json(path), StudySpec, path)
    for arm in spec.arms:
        where = f"{path}: arm {arm.name!r}"
        for config in (arm.model_config, arm.train_config):
            if not (REPO / config).is_file():
                raise UserError(f"{where}: no config file {config} in the repo")
        check_arm(where, arm, list(arm_of(spec, arm.name).settings))
    search = spec.search
    if search is not None:
        arm = next(a for a in spec.arms if a.name == search.arm)
        for end in ("low", "high"):  # each searched field at both ends of its range
            extra = [f"{p.key}={json.dumps(getattr(p, end))}" for p in search.params]
            check_arm(
                f"{path}: search.params at their {end} ends",
                arm,
                list(arm_of(spec, arm.name, tuple(extra)).settings),
            )
    return spec


def check_arm(where: str, arm: ArmSpec, settings: list[str]) -> None:
    """Refuse, in one line starting `where`, an arm train.py would refuse with `settings`."""
    try:
        model_settings, train_settings = parse_settings(settings, arm.scheme)
        model_cfg = load_model_config(REPO / arm.model_config, model_settings)
        train_cfg = load_train_config(REPO / arm.train_config, arm.scheme, train_settings)
        if arm.scheme == "composite":
            check_same_dataset(model_cfg, train_cfg, arm.model_config)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def recipe_hash(arm: Arm, seed: int, budget: Budget) -> str:
    text = json.dumps(recipe_of(arm, seed, budget), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def arm_of(spec: StudySpec, name: str, extra: tuple[str, ...] = ()) -> Arm:
    """Arm `name` as it runs: its dataset (when the study or the arm names one), the study's
    settings, then its own, then `extra`."""
    a = next(a for a in spec.arms if a.name == name)
    dataset = a.dataset or spec.dataset
    settings = (*spec.settings, *a.settings, *extra)
    if dataset is not None:
        settings = (f"data.dataset={json.dumps(dataset)}", *settings)
    return Arm(a.name, a.scheme, a.model_config, a.train_config, settings)


def wanted_runs(spec: StudySpec, budget: Budget) -> list[dict]:
    """Every arm x seed the study file asks for, named as its trial is: arm, seed, recipe."""
    return [
        {"arm": a.name, "seed": s, "recipe": recipe_hash(arm_of(spec, a.name), s, budget)}
        for s in spec.seeds
        for a in spec.arms
    ]


def arm_key(spec: StudySpec, name: str, budget: Budget) -> str:
    """What an arm's cost depends on: its scheme, configs, settings and training images."""
    arm = arm_of(spec, name)
    return json.dumps([arm.scheme, arm.model_config, arm.train_config, arm.settings, budget.subset])
