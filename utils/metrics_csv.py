"""metrics.csv: one row per epoch, rewritten whole (atomically) after every epoch."""

import csv
import io
import math
from pathlib import Path

from utils.outputs import write_output


class MetricsLog:
    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns, self.rows = path, columns, []

    def last(self, column: str) -> float:
        """The newest row's value in `column`, NaN before the first row."""
        return self.rows[-1][column] if self.rows else math.nan

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in self.rows)
        write_output(self.path, out.getvalue().encode(), "--save_dir")


def _cell(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.6g}"
