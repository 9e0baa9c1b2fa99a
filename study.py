r"""Run a study: arms x seeds, each run a real train.py process graded by evaluate.py, on Optuna's
storage, then the paired comparison of every arm against a baseline, figures and REPORT.md.

    python study.py studies/smoke.json --data_root data/
    python study.py studies/main.json --data_root data/ --workers 2
    python study.py studies/main.json --data_root data/ --storage postgresql://host/studies
    python study.py studies/pilot.json --data_root data/ --search

A study file names the arms (a scheme, its model and training configs, train.py --set changes),
the seeds, the budget (epochs, training images, prior samples graded) and the baseline every arm
is compared with; studies/README.md describes the fields. Runs are Optuna trials in a study of
that name: a SQLite file in --out by default, or any database URL Optuna takes, so the same
command on several machines shares one study (each machine trains the runs it takes, in its own
--out). A finished run is never redone; a run whose process died is taken again once its
heartbeat has been silent for $STUDY_GRACE_PERIOD seconds (default 120: Optuna marks it failed,
then retries it) and continues from its last checkpoint with --resume auto. --workers N runs N
at once, each train.py with OMP_NUM_THREADS set to its share of the cores (--threads).

--bench times every arm's training step in this one process, the arms in turn, writes
bench.json and stops: run it on a quiet machine, before, during or after the study's runs; the
report (written when the runs have finished, or by --report) gives its figures. It measures
again only when the arms have changed.

--report writes the report from the runs finished so far and trains nothing: an interim one,
naming the runs not yet finished, while a long study goes on (here or on other machines).

--search lets Optuna's TPE sampler look for the `search` block's settings (ranges of config
fields) of one arm that minimise a named grade, one seed, at the study's budget: a pilot. It
writes search.csv and SEARCH.md; the grid of arms is not run.

Writes into --out (default results/studies/<name>/):
    study.db                    the Optuna storage (without --storage)
    runs/<arm>_seed<S>/         run folders (configs, metrics.csv, eval.json, checkpoints)
    runs.csv                    one row per finished run: arm, seed, cost, every grade
    summary.csv                 per arm and measure, arm minus baseline over the shared seeds
                                (95 % t-interval, d_z, p, Holm's correction across the
                                measures of each arm's comparison, verdict)
    <arm>_grid.png, <arm>_samples.png, <arm>_recon.png   the first seed's latent grid, prior
                                samples (the same z in every arm) and reconstructions
    arms.png                    those figures side by side, an arm per row
    flops.json                  each arm's float operations per epoch (counted once)
    bench.json                  --bench: each arm's seconds per training step
    REPORT.md                   the headline (each cell's arms in the question's measures, and
                                plain words), the arms, the budget, cost, the tables, figures
"""

import argparse
import hashlib
import io
import json
import math
import os
import statistics
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from utils.cli import OneLineParser, pick_device, run_cli
from utils.comparison import (
    DIAGNOSTICS,
    MEASURES,
    REPO,
    SMALLEST_EFFECTS,
    SUMMARY_FIELDS,
    Arm,
    Budget,
    contrast,
    markdown_table,
    recipe_of,
    stop_on_sigterm,
    summarise_contrasts,
    train_and_grade,
    write_csv,
    write_json,
)
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
from utils.dataset import DATA_ROOT_HELP, DATASETS, load_mnist
from utils.errors import UserError, first_line
from utils.networks import make_network, pips_backbone_to_make
from utils.outputs import write_output
from utils.stats import Verdict


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


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="the study file (studies/*.json)")
    p.add_argument("--data_root", default="data/", help=DATA_ROOT_HELP)
    p.add_argument("--out", help="folder to write (default results/studies/<name>/)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS of each run (default: the cores over --workers, at least 1)",
    )
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<out>/study.db)")
    mode = p.add_mutually_exclusive_group()  # without one: train the grid of arms x seeds
    mode.add_argument("--search", action="store_true", help="search the `search` block's settings")
    mode.add_argument(
        "--bench",
        action="store_true",
        help="time every arm's training step for the report (bench.json), and stop",
    )
    mode.add_argument(
        "--report",
        action="store_true",
        help="write the report from the runs finished so far; train nothing",
    )
    args = p.parse_args()
    if args.workers < 1:
        p.error(f"--workers {args.workers}: must be >= 1")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: must be >= 1")
    return args


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


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError(
            "study.py needs Optuna: pip install optuna (or pip install -e '.[study]')"
        ) from None
    # A failed run says so in one line (run_workers); Optuna's own report of it is a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # fail_stale_trials and the heartbeat options are marked experimental; the study relies on
    # them as documented, so the warning says nothing to the user.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def grace_period() -> int:
    """Seconds a running trial may go without a heartbeat before it counts as dead:
    $STUDY_GRACE_PERIOD, default 120."""
    text = os.environ.get("STUDY_GRACE_PERIOD", "120")
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if not (text.strip().isascii() and seconds >= 2):
        raise UserError(f"STUDY_GRACE_PERIOD={text!r}: must be a whole number of seconds >= 2")
    return seconds


def open_study(optuna, spec_name: str, url: str, sampler, existing: bool = False):
    """The study `spec_name` in storage `url`, made if new (one line if it must exist and does
    not). Each running trial beats every quarter of the grace period; one silent for the whole
    period (its process died) is marked failed and queued again, as often as it takes, and its
    run continues from its folder."""
    import optuna.storages as storages

    # Optuna 4.9 renamed the retrying callback; older releases have only the first name.
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    retry = retry or storages.RetryFailedTrialCallback
    grace = grace_period()
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        storage = storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=max(1, grace // 4),
            grace_period=grace,
            heartbeat_stale_trial_callback=retry(),
        )
        found = spec_name in optuna.get_all_study_names(storage) if existing else True
        if found:
            return optuna.create_study(
                storage=storage,
                study_name=spec_name,
                sampler=sampler,
                direction="minimize",
                load_if_exists=True,
            )
    except Exception as e:  # a bad URL, a missing database driver, an unreachable server
        raise UserError(
            f"--storage {url}: cannot open it ({first_line(e)}); pass a database URL Optuna "
            "takes, e.g. sqlite:///study.db"
        ) from None
    raise UserError(
        f"--storage {url}: holds no study {spec_name!r}, so nothing of it has run; run the study "
        "first, or pass the --storage it ran in"
    )


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_workers(study, objective, workers: int, more) -> None:
    """`workers` threads, each taking one trial at a time while `more()` says there is work
    (first failing any trial whose heartbeat went silent, which queues it again). A run that
    fails (train.py or evaluate.py exits non-zero) fails its trial, says so in one line, and the
    others go on; Ctrl-C, or any other error, stops every worker after its current run."""
    from optuna.storages import fail_stale_trials

    stop, lock = threading.Event(), threading.Lock()

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:  # one thread at a time fails stale trials and reads the queue
                    fail_stale_trials(study)
                    if not more():
                        return
                study.optimize(objective, n_trials=1, catch=(UserError,))
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(workers)
    try:
        for done in [pool.submit(work) for _ in range(workers)]:
            done.result()
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def recipe_hash(arm: Arm, seed: int, budget: Budget) -> str:
    text = json.dumps(recipe_of(arm, seed, budget), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def graded(arm: Arm, seed: int, budget: Budget, run: Path, env: dict[str, str]) -> dict:
    """train_and_grade; a run that fails says so in one line before its trial fails."""
    try:
        return train_and_grade(arm, seed, budget, run, env)
    except UserError as e:
        print(f"error: arm {arm.name!r}, seed {seed}: {e}", file=sys.stderr, flush=True)
        raise


def arm_of(spec: StudySpec, name: str, extra: tuple[str, ...] = ()) -> Arm:
    """Arm `name` as it runs: its dataset (when the study or the arm names one), the study's
    settings, then its own, then `extra`."""
    a = next(a for a in spec.arms if a.name == name)
    dataset = a.dataset or spec.dataset
    settings = (*spec.settings, *a.settings, *extra)
    if dataset is not None:
        settings = (f"data.dataset={json.dumps(dataset)}", *settings)
    return Arm(a.name, a.scheme, a.model_config, a.train_config, settings)


def run_grid(optuna, spec: StudySpec, args: argparse.Namespace, out: Path, budget: Budget) -> None:
    """Every arm x seed as a queued trial; workers take them until none is left."""
    study = open_study(optuna, spec.name, args.storage, optuna.samplers.RandomSampler(seed=0))
    wanted = wanted_runs(spec, budget)
    TrialState = optuna.trial.TrialState
    live = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    # A run is named by user attributes, not Optuna parameters, so a study file may gain arms
    # and seeds between calls; an arm whose settings or budget changed is a new run (whose
    # folder, made the old way, is then refused in one line).
    held = [
        {k: t.user_attrs.get(k) for k in ("arm", "seed", "recipe")}
        for t in study.get_trials(states=live)
    ]
    for run in wanted:
        if run not in held:
            study.enqueue_trial({}, user_attrs=run)
    env = thread_env(args.threads)

    def objective(trial) -> float:
        name, seed = trial.user_attrs.get("arm"), trial.user_attrs.get("seed")
        if name is None:  # the queue emptied under us: nothing to run
            raise optuna.TrialPruned()
        row = graded(arm_of(spec, name), seed, budget, out / "runs" / f"{name}_seed{seed}", env)
        trial.set_user_attr("row", row)
        return row[spec.objective]

    def more() -> bool:
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    print(
        f"{spec.name}: {len(wanted)} runs ({len(spec.arms)} arms x {len(spec.seeds)} seeds), "
        f"{args.workers} at a time, {args.threads} threads each -> {out}",
        flush=True,
    )
    run_workers(study, objective, args.workers, more)
    rows, missing = finished_rows(study, TrialState, wanted)
    if missing:
        raise UserError(
            f"{len(missing)} of {len(wanted)} runs did not finish ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); see their output above, then run the "
            "same command again to retry them"
        )
    report(spec, args, out, budget, rows)


def report_so_far(
    optuna, spec: StudySpec, args: argparse.Namespace, out: Path, budget: Budget
) -> None:
    """--report: the report from the runs finished so far, training nothing (an interim one,
    saying which runs are missing, while the study goes on here or elsewhere)."""
    study = open_study(
        optuna, spec.name, args.storage, optuna.samplers.RandomSampler(seed=0), existing=True
    )
    wanted = wanted_runs(spec, budget)
    rows, missing = finished_rows(study, optuna.trial.TrialState, wanted)
    if not rows:
        raise UserError(
            f"study {spec.name!r} in {args.storage}: no run has finished yet, so "
            "there is nothing to report; run the study first"
        )
    report(spec, args, out, budget, rows, missing)


def wanted_runs(spec: StudySpec, budget: Budget) -> list[dict]:
    """Every arm x seed the study file asks for, named as its trial is: arm, seed, recipe."""
    return [
        {"arm": a.name, "seed": s, "recipe": recipe_hash(arm_of(spec, a.name), s, budget)}
        for s in spec.seeds
        for a in spec.arms
    ]


def finished_rows(study, TrialState, wanted: list[dict]) -> tuple[list[dict], list[str]]:
    """The finished runs' rows in the study's order, and the runs not finished ("arm/seed S")."""

    def key(attrs: dict) -> tuple:
        return attrs.get("arm"), attrs.get("seed"), attrs.get("recipe")

    rows = {
        key(t.user_attrs): t.user_attrs["row"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "row" in t.user_attrs
    }
    missing = [f"{w['arm']}/seed {w['seed']}" for w in wanted if key(w) not in rows]
    return [rows[key(w)] for w in wanted if key(w) in rows], missing


def report(
    spec: StudySpec,
    args: argparse.Namespace,
    out: Path,
    budget: Budget,
    rows: list[dict],
    missing: list[str] | None = None,
) -> None:
    """runs.csv, summary.csv, the figures and REPORT.md; `missing` names the runs not finished
    (an interim report: each arm is compared with its baseline over the seeds both finished)."""
    write_csv(out / "runs.csv", rows)
    baselines = {a.name: a.baseline or spec.baseline for a in spec.arms}
    seeds = {name: {r["seed"] for r in rows if r["arm"] == name} for name in baselines}
    contrasts = {
        name: contrast(rows, base, name)
        for name, base in baselines.items()
        if name != base and seeds[name] & seeds[base]
    }
    summaries = summarise_contrasts(contrasts, SMALLEST_EFFECTS)
    write_csv(
        out / "summary.csv",
        [
            {"arm": name, "baseline": baselines[name], **r}
            for name in summaries
            for r in summaries[name]
        ],
        ("arm", "baseline", *SUMMARY_FIELDS),
    )
    figures = draw_figures(spec, out, budget)
    cost = Cost(arm_flops(spec, out, budget), read_bench(spec, out, budget))
    text = report_text(spec, args, budget, rows, baselines, summaries, figures, cost, missing)
    write_output(out / "REPORT.md", text.encode(), "--out")
    print(f"-> {out / 'REPORT.md'}, {out / 'runs.csv'}, {out / 'summary.csv'}")


def draw_figures(spec: StudySpec, out: Path, budget: Budget) -> dict[str, list[str]]:
    """Per arm, infer.py's views of the first seed's run: its latent grid, prior samples
    (infer.py's seed: the same z in every arm) and reconstructions of the same test images,
    drawn in this process through infer.main; then arms.png, those views side by side, an arm
    per row. Arms whose run another machine trained have none here."""
    import infer

    figures = {}
    for arm in spec.arms:
        run = out / "runs" / f"{arm.name}_seed{spec.seeds[0]}"
        if not (run / "final_model.pth").exists():
            continue
        figures[arm.name] = []
        for mode in ("grid", "samples", "recon"):
            path = out / f"{arm.name}_{mode}.png"
            if not path.exists():
                infer.main(
                    [
                        "--mode",
                        mode,
                        "--model_config",
                        str(run / "model_config.json"),
                        "--ckpt_path",
                        str(run / "final_model.pth"),
                        "--data_root",
                        budget.data_root,
                        "--save_path",
                        str(path),
                    ]
                )
            figures[arm.name].append(path.name)
    if figures:
        side_by_side(out, figures)
    return figures


def side_by_side(out: Path, figures: dict[str, list[str]]) -> None:
    """arms.png: each arm's views (the files in `figures`, from `out`) in a row, the arm named;
    the columns as wide as their images, at the scale that makes the first one a row high."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {name: [plt.imread(out / file) for file in files] for name, files in figures.items()}
    longest = max(images.values(), key=len)
    widths = [image.shape[1] / longest[0].shape[0] for image in longest]
    fig, axes = plt.subplots(
        len(images),
        len(widths),
        squeeze=False,
        figsize=(3 * sum(widths), 3 * len(images)),
        gridspec_kw={"width_ratios": widths},
    )
    for row, (name, shown) in zip(axes, images.items(), strict=True):
        for ax in row:
            ax.axis("off")
        for ax, image in zip(row, shown, strict=False):
            ax.imshow(image)
        row[0].set_title(name, loc="left", fontsize=12, fontweight="bold")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_output(out / "arms.png", buffer.getvalue(), "--out")


# The cost. Two arms that train alike (scheme, configs, settings, images) cost alike: flops.json
# and bench.json are keyed by that, not by the arm's name.


def arm_key(spec: StudySpec, name: str, budget: Budget) -> str:
    """What an arm's cost depends on: its scheme, configs, settings and training images."""
    arm = arm_of(spec, name)
    return json.dumps([arm.scheme, arm.model_config, arm.train_config, arm.settings, budget.subset])


def arm_flops(spec: StudySpec, out: Path, budget: Budget) -> dict[str, float]:
    """Per arm, the float operations of one epoch at the study's budget (bench.epoch_flops over
    real steps of the arm's configs and settings), kept in flops.json so a report made again
    counts nothing."""
    from bench import epoch_flops

    cache = out / "flops.json"
    known = read_cache(cache)
    if not all(positive(v) for v in known.values()):
        raise cache_error(cache)
    flops = {}
    for a in spec.arms:
        key = arm_key(spec, a.name, budget)
        if key not in known:
            arm = arm_of(spec, a.name)
            counted = epoch_flops(
                tuple(map(str, arm.config_paths())),
                arm.scheme,
                budget.data_root,
                arm.settings,
                budget.subset,
            )
            known[key] = sum(counted.values())
        flops[a.name] = known[key]
    write_json(cache, known)
    return flops


def read_cache(path: Path) -> dict:
    """A file study.py keeps so as to count or measure nothing twice (flops.json, bench.json):
    its JSON object, {} when there is none, one line when it is not one."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise cache_error(path, f"unreadable ({e})") from None
    if not isinstance(data, dict):
        raise cache_error(path)
    return data


def cache_error(path: Path, why: str = "not as study.py writes it") -> UserError:
    return UserError(f"{path}: {why}; delete it and study.py makes it again")


def positive(value: object) -> bool:
    """A count or a time as study.py writes one: a finite number above 0."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (math.isfinite(value) and value > 0)
    )


@dataclass(frozen=True)
class Bench:
    """What --bench measured (bench.json): each arm's seconds per training step, and how."""

    seconds_per_step: dict[str, float]
    device: str
    processor: str  # the CPU's model, or the GPU's name on CUDA
    threads: int
    torch: str
    rounds: int


# bench.json's fields besides "arms" ({arm key: {"arms": names, "steps", "each",
# "seconds_per_step"}}): how it measured.
BENCH_FIELDS = ("device", "processor", "threads", "torch", "rounds")


def read_bench(spec: StudySpec, out: Path, budget: Budget) -> Bench | None:
    """bench.json's measurement, when it holds every arm as it is now (None otherwise)."""
    path = out / "bench.json"
    bench = read_cache(path)
    if not bench:
        return None
    measured = bench.get("arms")
    if (
        not isinstance(measured, dict)
        or not all(k in bench for k in BENCH_FIELDS)
        or not all(
            isinstance(v, dict) and positive(v.get("seconds_per_step")) for v in measured.values()
        )
    ):
        raise cache_error(path)
    keys = {a.name: arm_key(spec, a.name, budget) for a in spec.arms}
    if set(keys.values()) != set(measured):
        return None
    seconds = {name: measured[key]["seconds_per_step"] for name, key in keys.items()}
    return Bench(seconds, **{k: bench[k] for k in BENCH_FIELDS})


@dataclass(frozen=True)
class Cost:
    """Per arm, float operations per epoch; --bench's measurement when there is one."""

    flops: dict[str, float]
    bench: Bench | None


# The report's text. The headline: the question's measures, in the order it asks them: are
# samples sharper (by the edge grade, and is the speckle that could fake it lower), as realistic,
# as varied, at what reconstruction.
HEADLINE = (
    "edge_sharpness",
    "background_speckle",
    "fid_samples",
    "precision",
    "recall",
    "class_kl",
    "recon_mse",
)
# Which way is better in each of them: +1 higher, -1 lower.
BETTER = {
    "edge_sharpness": 1,
    "background_speckle": -1,
    "fid_samples": -1,
    "precision": 1,
    "recall": 1,
    "class_kl": -1,
    "recon_mse": -1,
}
# The plain words: each aspect of the answer, the measures that judge it, and what to say when
# they are, taken together, better, worse, mixed (some each way), the same (equivalent), open
# (not shown either way) or untested (one seed).
ASPECTS = (
    (
        ("edge_sharpness",),
        {
            "better": "sharper samples",
            "worse": "blurrier samples",
            "same": "samples as sharp",
            "open": "sharpness not settled",
            "untested": "sharpness untested",
        },
    ),
    (
        ("background_speckle",),
        {
            "better": "less speckle",
            "worse": "more speckle",
            "same": "as much speckle",
            "open": "speckle not settled",
            "untested": "speckle untested",
        },
    ),
    (
        ("fid_samples", "precision"),
        {
            "better": "more realistic",
            "worse": "less realistic",
            "mixed": "realism mixed",
            "same": "as realistic",
            "open": "realism not settled",
            "untested": "realism untested",
        },
    ),
    (
        ("recall", "class_kl"),
        {
            "better": "wider coverage",
            "worse": "loses coverage",
            "mixed": "coverage mixed",
            "same": "keeps coverage",
            "open": "coverage not settled",
            "untested": "coverage untested",
        },
    ),
    (
        ("recon_mse",),
        {
            "better": "better reconstructions",
            "worse": "worse reconstructions",
            "same": "reconstructions as good",
            "open": "reconstruction not settled",
            "untested": "reconstruction untested",
        },
    ),
)


def report_text(
    spec: StudySpec,
    args: argparse.Namespace,
    budget: Budget,
    rows: list[dict],
    baselines: dict[str, str],
    summaries: dict[str, list[dict]],
    figures: dict[str, list[str]],
    cost: Cost,
    missing: list[str] | None = None,
) -> str:
    """REPORT.md: what ran (and, for an interim report, what has not), the headline, the arms,
    what they cost, every arm against its baseline, the figures."""
    data = DATASETS[spec.dataset].title if spec.dataset else "each train config's dataset"
    mode = "--report" if args.report else f"--workers {args.workers}"
    lines = [f"# Study `{spec.name}`", ""]
    if missing:
        apart = [
            a.name for a in spec.arms if a.name not in summaries and baselines[a.name] != a.name
        ]
        uncompared = (
            f" Not compared yet (no seed finished in both the arm and its baseline): "
            f"{', '.join(apart)}."
            if apart
            else ""
        )
        lines += [
            f"**Interim** (`--report`): {len(rows)} of {len(rows) + len(missing)} runs have "
            f"finished; not yet {', '.join(missing)}. Each arm is compared over the seeds "
            "it and its baseline have both finished, so its verdicts are provisional: "
            f"fewer seeds than the final report's.{uncompared}",
            "",
        ]
    lines += [
        f"Written by `python study.py {args.study} --data_root {args.data_root} {mode}` "
        f"({len(rows)} runs).",
        "",
        f"Budget: {spec.epochs} epochs, {budget.subset or 'all'} training images of "
        f"{data}, seeds {', '.join(map(str, spec.seeds))}, "
        f"{budget.num_samples or 10_000} prior samples graded per run. Each arm is compared "
        f"with `{spec.baseline}` (or the baseline it names) seed by seed: paired 95 % "
        "t-intervals, Holm's correction across the measures of each arm's comparison "
        '(one question per arm), and "equivalent" '
        "only where the 90 % interval lies inside the smallest effect that matters "
        "(utils/comparison.py).",
        "",
    ]
    lines += headline_lines(baselines, summaries, cost)
    lines += ["", "## Arms", ""]
    if spec.settings:
        lines += ["Every arm also takes " + ", ".join(f"`{s}`" for s in spec.settings) + ".", ""]
    lines += [
        "| arm | scheme | model config | training config | changes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for a in spec.arms:
        own = [f"`dataset {a.dataset}`"] if a.dataset else []
        changes = ", ".join(own + [f"`{s}`" for s in a.settings]) or "—"
        lines.append(
            f"| {a.name} | {a.scheme} | `{a.model_config}` | `{a.train_config}` | {changes} |"
        )
    lines += cost_lines(spec, rows, cost)
    logged = [
        a.name
        for a in spec.arms
        if any(k in r for r in rows if r["arm"] == a.name for k in DIAGNOSTICS)
    ]
    if logged:
        lines += [
            "",
            "## Balance of the extra terms (last epoch, median over seeds)",
            "",
            "grad_ratio_X: the gradient of the weighted term X at the decoder's last layer "
            "over the weighted reconstruction's; disc_weight: the adversarial weight "
            "(lambda_disc, or the adaptive one).",
            "",
            "| arm | " + " | ".join(DIAGNOSTICS) + " |",
            "| --- |" + " --- |" * len(DIAGNOSTICS),
        ]
        for name in logged:
            mine = [r for r in rows if r["arm"] == name]
            cells = [median_text([r[k] for r in mine if k in r]) for k in DIAGNOSTICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, summary in summaries.items():
        lines += [
            "",
            f"## {name} against {baselines[name]}",
            "",
            markdown_table(summary, baselines[name], name).rstrip(),
        ]
    lines += ["", "## Figures", ""]
    if figures:
        lines += [
            "Each arm's first seed: latent grid, prior samples (the same z in every arm), "
            "reconstructions of the same test images.",
            "",
            "![arms.png](arms.png)",
            "",
        ]
    for name, files in figures.items():
        lines.append(f"{name}: " + " · ".join(f"![{f}]({f})" for f in files))
    return "\n".join(lines) + "\n"


def headline_lines(
    baselines: dict[str, str], summaries: dict[str, list[dict]], cost: Cost
) -> list[str]:
    """## Headline: per cell of the study (a baseline and the arms compared with it), a table of
    the arms' differences in the question's measures, and each arm's answer in plain words."""
    lines = [
        "## Headline",
        "",
        "Arm minus baseline, paired by seed, with the 95 % t-interval: **bold** is different "
        "from 0 after Holm's correction; ≈ is equivalent within the smallest effect that "
        'matters (a real but negligible difference included); "no spread" marks a '
        "difference every seed gave alike, which no test can judge; neither is not shown "
        "either way. Cost: the arm's over the baseline's (float operations per epoch; "
        "seconds per training step where `--bench` measured them).",
    ]
    bench = cost.bench
    for base in dict.fromkeys(baselines[name] for name in summaries):
        arms = [name for name in summaries if baselines[name] == base]
        header = ["arm", *HEADLINE, "float operations", *(["seconds per step"] if bench else [])]
        lines += [
            "",
            f"Against `{base}`:",
            "",
            "| " + " | ".join(header) + " |",
            "| --- |" + " --- |" * (len(header) - 1),
        ]
        words = []
        for name in arms:
            by_measure = {r["measure"]: r for r in summaries[name]}
            ratios = {"float operations per epoch": cost.flops[name] / cost.flops[base]}
            if bench:
                ratios["seconds per training step"] = (
                    bench.seconds_per_step[name] / bench.seconds_per_step[base]
                )
            cells = [marked(by_measure[m]) if m in by_measure else "—" for m in HEADLINE]
            cells += [f"{ratio:.3g}x" for ratio in ratios.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            words.append(f"- {plain_words(name, base, by_measure, ratios)}")
        lines += ["", *words]
    return lines


def untested_spread(row: dict) -> bool:
    """A difference every seed gave alike: "different" by its zero-width interval, untested."""
    return row["verdict"] == Verdict.DIFFERENT.value and row["p_holm"] == ""


def marked(row: dict) -> str:
    """A summary row's difference and interval: bold where different after Holm's correction,
    ≈ where equivalent (or negligible), "(no spread)" where every seed differed alike."""
    if untested_spread(row):
        return f"{row['interval']} (no spread)"
    if row["verdict"] == Verdict.DIFFERENT.value:
        return f"**{row['interval']}**"
    if row["verdict"] in (Verdict.EQUIVALENT.value, Verdict.NEGLIGIBLE.value):
        return f"≈ {row['interval']}"
    return row["interval"]


def judged(row: dict | None, measure: str) -> str:
    """What a summary row says of the arm in `measure`: "better", "worse", "same" (equivalent
    or negligible), "open" (not shown either way, or alike in every seed without a test) or
    "untested" (one seed, or no such measure)."""
    if row is None or row["verdict"] == Verdict.NO_TEST.value:
        return "untested"
    if row["verdict"] == Verdict.DIFFERENT.value and not untested_spread(row):
        return "better" if row["difference"] * BETTER[measure] > 0 else "worse"
    if row["verdict"] in (Verdict.EQUIVALENT.value, Verdict.NEGLIGIBLE.value):
        return "same"
    return "open"


def together(judgements: list[str]) -> str:
    """What several measures of one aspect say at once: mixed when some are better and some
    worse; else worse if any is; better if each is better or the same; the same, or untested,
    if all are; open otherwise."""
    seen = set(judgements)
    if {"better", "worse"} <= seen:
        return "mixed"
    if "worse" in seen:
        return "worse"
    if seen in ({"better"}, {"better", "same"}):
        return "better"
    if seen in ({"same"}, {"untested"}):
        return seen.pop()
    return "open"


def plain_words(name: str, base: str, rows: dict[str, dict], ratios: dict[str, float]) -> str:
    """One sentence from the verdicts: `name` against `base` in each aspect of ASPECTS (sharper,
    less speckle, as realistic, coverage kept, reconstructions), each with its intervals, and
    the cost."""

    def quoted(measure: str) -> str:
        return f"{measure} {rows[measure]['interval']}" if measure in rows else f"no {measure}"

    parts = []
    for measures, words in ASPECTS:
        verdict = together([judged(rows.get(m), m) for m in measures])
        parts.append(f"{words[verdict]} ({', '.join(map(quoted, measures))})")
    costs = " and ".join(f"{ratio:.3g}x the {what}" for what, ratio in ratios.items())
    return f"**{name}** against {base}: " + "; ".join(parts) + f"; at {costs}."


def cost_lines(spec: StudySpec, rows: list[dict], cost: Cost) -> list[str]:
    """## Cost: per arm, counted float operations per epoch, --bench's seconds per training
    step (or how to measure them), the runs' own seconds per epoch and peak memory."""
    bench = cost.bench
    how = (
        f"seconds per step: `--bench`, every arm in one process on {bench.device} "
        f"({bench.processor}) at --threads {bench.threads}, torch {bench.torch}, the median "
        f"of {bench.rounds} rounds that take the arms in turn"
        if bench
        else "seconds per step: not measured (`python study.py ... --bench` on a quiet machine "
        "measures them)"
    )
    lines = [
        "",
        "## Cost",
        "",
        "GFLOP per epoch: counted over real steps of the arm (bench.epoch_flops, training at "
        f"the study's budget and validation); {how}; seconds per epoch: the runs' own, on "
        "whatever else the machine ran.",
        "",
        "| arm | GFLOP per epoch | seconds per step (bench) | seconds per epoch (median "
        "over runs) | peak RSS, MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for a in spec.arms:
        mine = [r for r in rows if r["arm"] == a.name]
        seconds = median_text([r["seconds_per_epoch"] for r in mine])
        peak = f"{max(float(r['peak_rss_mb']) for r in mine):.0f}" if mine else "—"
        step = f"{bench.seconds_per_step[a.name]:.3g}" if bench else "—"
        lines.append(f"| {a.name} | {cost.flops[a.name] / 1e9:.4g} | {step} | {seconds} | {peak} |")
    return lines


def median_text(values: list) -> str:
    finite = [float(v) for v in values if v not in (None, "") and math.isfinite(float(v))]
    return f"{statistics.median(finite):.3g}" if finite else "—"


def search_folder(settings: dict[str, float]) -> str:
    """A run folder named by its settings, so a retried trial continues the same run."""
    text = json.dumps(settings, sort_keys=True)
    return "search_" + hashlib.sha256(text.encode()).hexdigest()[:12]


def run_search(
    optuna, spec: StudySpec, args: argparse.Namespace, out: Path, budget: Budget
) -> None:
    """Optuna's TPE sampler over the search block's ranges, `trials` finished runs in all."""
    search = spec.search
    if search is None:
        raise UserError(f"{args.study}: has no 'search' block for --search; add one")
    sampler = optuna.samplers.TPESampler(seed=search.seed)
    study = open_study(optuna, f"{spec.name}-search", args.storage, sampler)
    TrialState = optuna.trial.TrialState
    env = thread_env(args.threads)

    def objective(trial) -> float:
        values = {
            p.key: trial.suggest_float(p.key, p.low, p.high, log=p.log) for p in search.params
        }
        extra = tuple(f"{k}={json.dumps(v)}" for k, v in values.items())
        run = out / "runs" / search_folder(values)
        row = graded(arm_of(spec, search.arm, extra), spec.seeds[0], budget, run, env)
        trial.set_user_attr("row", row)
        trial.set_user_attr("folder", run.name)
        return row[search.minimise]

    def more() -> bool:
        """Runs left to take, unless as many have failed as were asked for (a setting every
        run fails on would otherwise start runs without end)."""
        counted = study.get_trials(deepcopy=False)
        failed = sum(t.state == TrialState.FAIL for t in counted)
        taken = sum(
            t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
            for t in counted
        )
        return taken < search.trials and failed < search.trials

    print(
        f"{spec.name}: searching {', '.join(p.key for p in search.params)} of arm "
        f"{search.arm!r} for the lowest {search.minimise}, {search.trials} runs -> {out}",
        flush=True,
    )
    run_workers(study, objective, args.workers, more)
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "row" in t.user_attrs]
    if not done:
        raise UserError("no search run finished; see their output above")
    rows = [
        {
            "trial": t.number,
            **t.params,
            search.minimise: t.value,
            "folder": t.user_attrs["folder"],
            **{k: v for k, v in t.user_attrs["row"].items() if k in MEASURES},
        }
        for t in sorted(done, key=lambda t: t.value)
    ]
    write_csv(out / "search.csv", rows)
    best = rows[0]
    text = [
        f"# Search `{spec.name}`: arm `{search.arm}`, lowest {search.minimise}",
        "",
        f"{len(rows)} runs, seed {spec.seeds[0]}, {spec.epochs} epochs, "
        f"{budget.subset or 'all'} training images. Best: "
        + ", ".join(f"`{p.key}` = {best[p.key]:.4g}" for p in search.params)
        + f" ({search.minimise} {best[search.minimise]:.4g}). Every run: search.csv.",
    ]
    write_output(out / "SEARCH.md", ("\n".join(text) + "\n").encode(), "--out")
    print(text[-1])


# --bench: each arm's training steps timed in rounds that take the arms in turn, after one
# warm-up epoch (the median of the rounds keeps a slow first call of any arm out), as epochs of
# BENCH_STEPS steps (fewer where the study's epoch is shorter).
BENCH_STEPS = 16
BENCH_ROUNDS = 3


def measure_speed(spec: StudySpec, out: Path, budget: Budget, threads: int) -> None:
    """--bench: each arm's seconds per training step, every arm in this one process at `threads`
    threads on the device train.py would take, the median of BENCH_ROUNDS epochs of
    BENCH_STEPS steps and one validation batch each (the composite loss without its every-50th-
    step diagnostic, the critic on from the first step); arms that train alike are timed once.
    Written to bench.json; kept while it holds every arm, so its figures were taken side by
    side in one run."""
    import torch

    from bench import cpu, project_epoch

    known = read_bench(spec, out, budget)
    if known is not None:
        print(
            f"--bench: {out / 'bench.json'} holds these arms already (measured on "
            f"{known.device}, {known.processor}, at --threads {known.threads}); delete it "
            "to measure again"
        )
        return
    device = pick_device("auto")
    names: dict[str, list[str]] = {}  # arm key -> the arms that train so
    for a in spec.arms:
        names.setdefault(arm_key(spec, a.name, budget), []).append(a.name)
    arms = {key: arm_of(spec, group[0]) for key, group in names.items()}
    epochs = {key: bench_epoch(arm, budget) for key, arm in arms.items()}

    def seconds_per_step(key: str) -> float:
        arm, (steps, batch) = arms[key], epochs[key]
        quiet = ("loss.params.grad_ratio_every=0",) if arm.scheme == "composite" else ()
        epoch = project_epoch(
            tuple(map(str, arm.config_paths())),
            arm.scheme,
            budget.data_root,
            subset=steps * batch,
            val_size=batch,
            linear_backend="auto",
            device=device.type,
            settings=(*arm.settings, *quiet),
        )
        return epoch / steps

    print(
        f"--bench: {len(arms)} arms x {BENCH_ROUNDS} rounds on {device.type}, {threads} threads",
        flush=True,
    )
    seconds = {key: [] for key in arms}
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds_per_step(next(iter(arms)))  # the warm-up epoch
        for _ in range(BENCH_ROUNDS):
            for key in arms:
                seconds[key].append(seconds_per_step(key))
    finally:
        torch.set_num_threads(saved_threads)
    processor = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu()["model"]
    write_json(
        out / "bench.json",
        {
            "device": device.type,
            "processor": processor,
            "threads": threads,
            "torch": torch.__version__,
            "rounds": BENCH_ROUNDS,
            "arms": {
                key: {
                    "arms": names[key],
                    "steps": epochs[key][0],
                    "each": seconds[key],
                    "seconds_per_step": statistics.median(seconds[key]),
                }
                for key in arms
            },
        },
    )
    for key in arms:
        print(f"  {', '.join(names[key])}: {statistics.median(seconds[key]):.3g} s per step")


def bench_epoch(arm: Arm, budget: Budget) -> tuple[int, int]:
    """The steps and batch size of `arm`'s --bench epoch: BENCH_STEPS steps, or the study's
    epoch where that is shorter. The PIPS backbone file the arm needs is made first when it is
    missing, as train.py would make it."""
    model_settings, train_settings = parse_settings(list(arm.settings), arm.scheme)
    data = load_train_config(str(arm.config_paths()[1]), arm.scheme, train_settings).data
    train_set = load_mnist(budget.data_root, "train", dataset=data.dataset)
    if arm.scheme == "composite":
        pips = load_model_config(str(arm.config_paths()[0]), model_settings).pips_config
        backbone = pips_backbone_to_make(pips)
        if backbone is not None:
            make_network(
                "pips",
                backbone,
                train_set,
                load_mnist(budget.data_root, "test", dataset=data.dataset),
            )
    steps = (budget.subset or len(train_set)) // data.train_bs
    return max(1, min(BENCH_STEPS, steps)), data.train_bs


def main() -> None:
    stop_on_sigterm()
    args = parse_args()
    spec = load_study(args.study)
    optuna = None if args.bench else import_optuna()
    out = Path(args.out or f"results/studies/{spec.name}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    args.storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    budget = Budget(args.data_root, spec.epochs, spec.subset, spec.num_samples)
    if args.bench:
        measure_speed(spec, out, budget, args.threads)
    elif args.report:
        report_so_far(optuna, spec, args, out, budget)
    elif args.search:
        run_search(optuna, spec, args, out, budget)
    else:
        run_grid(optuna, spec, args, out, budget)


if __name__ == "__main__":
    run_cli(main)
