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
import json
import os
import statistics
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from utils.cli import OneLineParser, pick_device, run_cli
from utils.comparison import (
    MEASURES,
    SMALLEST_EFFECTS,
    SUMMARY_FIELDS,
    Arm,
    Budget,
    contrast,
    forward_stop_signals,
    is_graded,
    summarise_contrasts,
    train_and_grade,
    write_csv,
    write_json,
)
from utils.config import load_model_config, load_train_config, parse_settings
from utils.dataset import DATA_ROOT_HELP, load_mnist
from utils.errors import UserError, first_line
from utils.networks import make_network, pips_backbone_to_make
from utils.outputs import write_output
from utils.study_report import (
    Cost,
    cache_error,
    positive,
    read_bench,
    read_cache,
    report_text,
    side_by_side,
)
from utils.study_spec import StudySpec, arm_key, arm_of, load_study, wanted_runs


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


def lock_each_transaction(engine) -> None:
    """Every transaction begun on this SQLite engine from now on takes the database's write lock
    first (BEGIN IMMEDIATE). Optuna claims a queued trial by reading that it is waiting, then
    marking it running, under SELECT ... FOR UPDATE (optuna/optuna#1014), which SQLAlchemy
    leaves out for SQLite: two workers, threads or processes, could claim the same run, and the
    loser's failure then failed the winner's trial (optuna/optuna#4621). With the lock taken
    first, the read and the write are one step."""
    from sqlalchemy import event

    event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))


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
    sqlite = url.startswith("sqlite")
    # isolation_level None: pysqlite begins no transaction itself, so lock_each_transaction's
    # BEGIN is the one each transaction starts with.
    engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {}
    try:
        storage = storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=max(1, grace // 4),
            grace_period=grace,
            heartbeat_stale_trial_callback=retry(),
        )
        if sqlite:  # after RDBStorage's set-up, which must run without it: its schema
            # check opens a second connection while a first is in a transaction
            lock_each_transaction(storage.engine)
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


def graded(arm: Arm, seed: int, budget: Budget, run: Path, env: dict[str, str]) -> dict:
    """train_and_grade; a run that fails says so in one line before its trial fails."""
    try:
        return train_and_grade(arm, seed, budget, run, env)
    except UserError as e:
        print(f"error: arm {arm.name!r}, seed {seed}: {e}", file=sys.stderr, flush=True)
        raise


def run_folder(out: Path, arm: str, seed: int) -> Path:
    """Where the study keeps arm `arm`'s run with `seed`."""
    return out / "runs" / f"{arm}_seed{seed}"


def make_backbone(arm: Arm, budget: Budget) -> None:
    """The PIPS backbone file `arm` needs, made when it is missing, as train.py would make it,
    so that the runs started together do not each make it."""
    if arm.scheme != "composite":
        return
    model_settings, train_settings = parse_settings(list(arm.settings), arm.scheme)
    pips = load_model_config(str(arm.config_paths()[0]), model_settings).pips_config
    backbone = pips_backbone_to_make(pips)
    if backbone is None:
        return
    dataset = load_train_config(str(arm.config_paths()[1]), arm.scheme, train_settings).data.dataset
    make_network(
        "pips",
        backbone,
        load_mnist(budget.data_root, "train", dataset=dataset),
        load_mnist(budget.data_root, "test", dataset=dataset),
    )


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
    for a in spec.arms:  # each backbone a run still to train needs, made once
        runs = [run_folder(out, a.name, seed) for seed in spec.seeds]
        if not all(is_graded(run) for run in runs):
            make_backbone(arm_of(spec, a.name), budget)

    def objective(trial) -> float:
        name, seed = trial.user_attrs.get("arm"), trial.user_attrs.get("seed")
        if name is None:  # the queue emptied under us: nothing to run
            raise optuna.TrialPruned()
        row = graded(arm_of(spec, name), seed, budget, run_folder(out, name, seed), env)
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
    mode = "--report" if args.report else f"--workers {args.workers}"
    command = f"python study.py {args.study} --data_root {args.data_root} {mode}"
    text = report_text(spec, command, budget, rows, baselines, summaries, figures, cost, missing)
    write_output(out / "REPORT.md", text.encode(), "--out")
    print(f"-> {out / 'REPORT.md'}, {out / 'runs.csv'}, {out / 'summary.csv'}")


def draw_figures(spec: StudySpec, out: Path, budget: Budget) -> dict[str, list[str]]:
    """Per arm, infer.py's views of the first seed's run: its latent grid, prior samples
    (infer.py's seed: the same z in every arm) and reconstructions of the same test images,
    drawn in this process through infer.main; then arms.png, those views side by side, an arm
    per row. A view already drawn is kept (a committed one needs no checkpoint); arms whose run
    another machine trained, with no views here, have none."""
    import infer

    figures = {}
    for arm in spec.arms:
        run = run_folder(out, arm.name, spec.seeds[0])
        paths = {mode: out / f"{arm.name}_{mode}.png" for mode in ("grid", "samples", "recon")}
        drawn = all(path.exists() for path in paths.values())
        if not drawn and not (run / "final_model.pth").exists():
            continue
        figures[arm.name] = []
        for mode, path in paths.items():
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
    epoch where that is shorter. The PIPS backbone file the arm needs is made first."""
    make_backbone(arm, budget)
    train_settings = parse_settings(list(arm.settings), arm.scheme)[1]
    data = load_train_config(str(arm.config_paths()[1]), arm.scheme, train_settings).data
    train_set = load_mnist(budget.data_root, "train", dataset=data.dataset)
    steps = (budget.subset or len(train_set)) // data.train_bs
    return max(1, min(BENCH_STEPS, steps)), data.train_bs


def main() -> None:
    forward_stop_signals()
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
