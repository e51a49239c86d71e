"""The dataset registry `datasets/main.csv`: reading, validating and rewriting it.

Its schema follows SAE-Probes' `probing_datasets_MASTER.csv` plus `number`, `source` and the two
extraction expressions. `Probe from` and `Probe to` name the columns of the source file that the
extraction expressions see as `col`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from featstore.catalog.names import DatasetNames
from featstore.datasets.expressions import compile_extraction
from featstore.errors import FeatstoreError
from featstore.project import REGISTRY_COLUMNS, Project
from featstore.store.safe_paths import UnsafeName, checked_key

REQUIRED_COLUMNS = [
    "number",
    "Dataset Tag",
    "source",
    "Probe from",
    "Probe to",
    "Data type",
    "Probe from extraction",
    "Probe to extraction",
]
BINARY = "Binary Classification"
MAX_NUMBER = 2**31 - 1  # the catalog's datasets.number is an INTEGER
FORBIDDEN_TAG_CHARACTERS = set('/\\:*?"<>|\0') | {chr(code) for code in range(1, 32)} | {"\x7f"}
MAX_TAG_BYTES = 100  # a dataset name `<number>_<tag>` becomes file names (`<name>.csv`, `<name>.html`)


@dataclass(frozen=True)
class DatasetEntry:
    """One validated registry row."""

    number: int
    tag: str
    source: str
    probe_from: str
    probe_to: str
    data_type: str
    prompt_extraction: str
    target_extraction: str
    line: int
    row: dict

    @property
    def name(self) -> str:
        return f"{self.number}_{self.tag}"

    def where(self, what: str) -> str:
        """A label for error messages: the registry line, the dataset and the field."""
        return f"datasets/main.csv line {self.line} ({self.name}), {what}"


def read_registry_frame(project: Project) -> pd.DataFrame:
    """The registry as strings, exactly as written (empty cells are empty strings)."""
    try:
        frame = pd.read_csv(project.registry_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise FeatstoreError(f"{project.registry_path} does not exist; run `featstore init`") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise FeatstoreError(f"datasets/main.csv is malformed: {message}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise FeatstoreError(f"datasets/main.csv lacks the column(s) {', '.join(repr(c) for c in missing)}")
    return frame


def parse_registry(frame: pd.DataFrame) -> list[DatasetEntry]:
    """Validate every row (numbers, tags, data types, extraction expressions) before anything uses them."""
    entries: list[DatasetEntry] = []
    seen_numbers: dict[int, int] = {}
    seen_tags: dict[str, int] = {}
    for index, row in enumerate(frame.to_dict("records")):
        line = index + 2
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        number = _parse_number(row["number"], line)
        tag = row["Dataset Tag"]
        _check_tag(tag, line)
        if number in seen_numbers:
            raise FeatstoreError(
                f"datasets/main.csv line {line}: number {number} is already used on line {seen_numbers[number]}"
            )
        if tag in seen_tags:
            raise FeatstoreError(f"datasets/main.csv line {line}: tag {tag!r} is already used on line {seen_tags[tag]}")
        seen_numbers[number], seen_tags[tag] = line, line
        entry = DatasetEntry(
            number=number,
            tag=tag,
            source=row["source"],
            probe_from=row["Probe from"],
            probe_to=row["Probe to"],
            data_type=row["Data type"],
            prompt_extraction=row["Probe from extraction"] or "col",
            target_extraction=row["Probe to extraction"] or "col",
            line=line,
            row=row,
        )
        _check_fields(entry)
        compile_extraction(entry.prompt_extraction, entry.where("Probe from extraction"))
        compile_extraction(entry.target_extraction, entry.where("Probe to extraction"))
        entries.append(entry)
    return entries


def load_registry(project: Project) -> list[DatasetEntry]:
    """Read and validate `datasets/main.csv`."""
    return parse_registry(read_registry_frame(project))


def select_entries(entries: list[DatasetEntry], names: list[str] | None) -> list[DatasetEntry]:
    """The entries named (see `featstore.catalog.names`: the exact name, else an unambiguous number or tag), in
    registry order; all when names is empty."""
    if not names:
        return entries
    registered = DatasetNames(
        tuple(e.name for e in entries),
        tuple(str(e.number) for e in entries),
        tuple(e.tag for e in entries),
        "in datasets/main.csv",
    )
    chosen = set(registered.resolve_all(names))
    return [e for e in entries if e.name in chosen]


@contextmanager
def registry_replaced_after(project: Project, frame: pd.DataFrame) -> Iterator[None]:
    """Write `frame` as the new `datasets/main.csv` beside the old one, run the block, then swap it in by a
    rename (which needs no space); when writing or the block fails, the old registry stays and no file is left."""
    columns = REGISTRY_COLUMNS + [c for c in frame.columns if c not in REGISTRY_COLUMNS]
    frame = frame.reindex(columns=columns, fill_value="")
    handle, name = tempfile.mkstemp(dir=project.registry_path.parent, prefix=".main.csv.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)  # a name of its own, so concurrent imports never share or delete each other's file
    try:
        frame.to_csv(temporary, index=False)
        yield
        os.replace(temporary, project.registry_path)
    finally:
        temporary.unlink(missing_ok=True)


def _parse_number(value: str, line: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FeatstoreError(f"datasets/main.csv line {line}: number {value!r} is not a whole number") from None
    if number < 0:
        raise FeatstoreError(f"datasets/main.csv line {line}: number {number} is negative")
    if number > MAX_NUMBER:
        raise FeatstoreError(f"datasets/main.csv line {line}: number {number} is too large (at most {MAX_NUMBER})")
    return number


def _check_tag(tag: str, line: int) -> None:
    if not tag:
        raise FeatstoreError(f"datasets/main.csv line {line}: 'Dataset Tag' is empty")
    bad = sorted(FORBIDDEN_TAG_CHARACTERS & set(tag))
    if bad or tag.startswith("."):
        raise FeatstoreError(f"datasets/main.csv line {line}: tag {ascii(tag)[:80]} cannot be part of a file name")
    if len(tag.encode()) > MAX_TAG_BYTES:
        raise FeatstoreError(f"datasets/main.csv line {line}: tag {tag[:40]!r}... is longer than {MAX_TAG_BYTES} bytes")


def _check_fields(entry: DatasetEntry) -> None:
    for field, value in (("source", entry.source), ("Probe from", entry.probe_from), ("Probe to", entry.probe_to)):
        if not value:
            raise FeatstoreError(f"{entry.where(repr(field))} is empty")
    if entry.data_type != BINARY:
        raise FeatstoreError(f"{entry.where('Data type')}: {entry.data_type!r} is not supported (only {BINARY!r})")
    try:
        checked_key(entry.source, "source")
    except UnsafeName:
        raise FeatstoreError(
            f"{entry.where('source')}: {ascii(entry.source)[:80]} must be a file name under datasets/raw/"
        ) from None
