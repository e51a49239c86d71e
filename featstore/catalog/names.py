"""Dataset names as users type them, resolved one way everywhere (clean, build, probe, results, report, views).

A dataset is `<number>_<tag>`. Its exact name always selects it; its number or tag selects it only when no
other dataset has that number or tag, else the error lists the candidates. Unknown names are errors that
suggest the closest known names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from featstore.catalog.database import catalog_reader
from featstore.catalog.datasets import indexed_datasets
from featstore.catalog.features import complete_models
from featstore.catalog.safe_sql import CatalogReader
from featstore.errors import FeatstoreError
from featstore.project import Project


@dataclass(frozen=True)
class DatasetNames:
    """The datasets one can name, as (name, number, tag); `where` says where they are listed, for errors
    (`dataset 'x' is not {where}`)."""

    names: tuple[str, ...]
    numbers: tuple[str, ...]
    tags: tuple[str, ...]
    where: str = "in the catalog"

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, where: str = "in the catalog") -> DatasetNames:
        """From a frame with columns `name`, `number` and `tag`."""
        return cls(
            tuple(map(str, frame["name"])), tuple(map(str, frame["number"])), tuple(map(str, frame["tag"])), where
        )

    def resolve(self, given: str) -> str:
        """The one dataset `given` names: its exact name, else the unique dataset with that number or tag."""
        if given in self.names:
            return given
        matches = {
            name: "number" if number == given else "tag"
            for name, number, tag in zip(self.names, self.numbers, self.tags, strict=False)
            if given in (number, tag)
        }
        if len(matches) == 1:
            return next(iter(matches))
        if matches:
            candidates = ", ".join(f"{name} (by {how})" for name, how in matches.items())
            raise FeatstoreError(f"dataset {given!r} is ambiguous: it could be {candidates}; give the full name")
        by_tag = dict(zip(self.tags, self.names, strict=False))
        raise FeatstoreError(f"dataset {given!r} is not {self.where}{did_you_mean(given, self.names, by_tag)}")

    def resolve_all(self, given: Sequence[str]) -> list[str]:
        """Each of `given` resolved, without repeats, in the order given."""
        return list(dict.fromkeys(self.resolve(name) for name in given))


def catalog_dataset_names(project: Project, reader: CatalogReader | None = None) -> DatasetNames:
    """The datasets indexed in the catalog (read through `reader` when a batch of reads shares one)."""
    with catalog_reader(project, shared=reader.con if reader is not None else None) as con:
        return DatasetNames.from_frame(indexed_datasets(con))


def did_you_mean(given: str, known: Iterable[str], aliases: dict[str, str] | None = None) -> str:
    """`; did you mean a or b?` naming the known names closest to `given` (an alias counts for the name it
    stands for), or an empty string when none is close."""
    aliases = {**(aliases or {}), **{name: name for name in known}}
    close = dict.fromkeys(aliases[match] for match in difflib.get_close_matches(given, list(aliases), n=3, cutoff=0.6))
    return f"; did you mean {' or '.join(close)}?" if close else ""


def built_models(project: Project, reader: CatalogReader | None = None) -> list[str]:
    """The models with complete features of at least one split (read through `reader` when a batch shares one)."""
    with catalog_reader(project, shared=reader.con if reader is not None else None) as con:
        return complete_models(con)


def unknown_model(given: str, known: Sequence[str], what: str = "features") -> FeatstoreError:
    """The error for a model that has no `what` in the store, naming the models that have some."""
    return FeatstoreError(
        f"no {what} of model {given!r} in this store (models with {what}: {', '.join(known) or 'none'})"
        f"{did_you_mean(given, known)}"
    )
