"""A study's report from its finished runs: REPORT.md's text (the headline in the question's
measures with plain words per arm, the arms, what they cost, the balance of the extra terms,
every arm against its baseline), arms.png from the arms' figures, and the cost files it reads
(flops.json, bench.json). study.py counts, draws and writes them.

Two arms that train alike (scheme, configs, settings, images) cost alike: flops.json and
bench.json are keyed by that (arm_key), not by the arm's name."""

import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from utils.comparison import DIAGNOSTICS, Budget, markdown_table
from utils.dataset import DATASETS
from utils.errors import UserError
from utils.outputs import write_output
from utils.stats import Verdict
from utils.study_spec import StudySpec, arm_key


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
    command: str,
    budget: Budget,
    rows: list[dict],
    baselines: dict[str, str],
    summaries: dict[str, list[dict]],
    figures: dict[str, list[str]],
    cost: Cost,
    missing: list[str] | None = None,
) -> str:
    """REPORT.md: what ran (and, for an interim report, what has not), the headline, the arms,
    what they cost, every arm against its baseline, the figures; `command` is what wrote it."""
    data = DATASETS[spec.dataset].title if spec.dataset else "each train config's dataset"
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
        f"Written by `{command}` ({len(rows)} runs).",
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
