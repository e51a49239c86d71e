"""`featstore verify`: check every complete split the catalog lists, file by file, and say what to rebuild."""

from __future__ import annotations

from featstore.catalog.safe_sql import query_catalog
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.integrity import Damage, SplitRef, verify_split


def verify_store(project: Project, model: str | None = None, datasets: list[str] | None = None) -> list[Damage]:
    """The damaged splits among the complete ones of `model` and `datasets` (all by default)."""
    if not project.catalog_path.exists():
        raise FeatstoreError("the catalog is empty; nothing is built to verify")
    splits = query_catalog(
        project.catalog_path,
        "SELECT model, dataset, split, path FROM feature_splits WHERE status = 'complete' "
        "AND ($model IS NULL OR model = $model) AND ($datasets IS NULL OR list_contains($datasets, dataset)) "
        "ORDER BY ALL",
        {"model": model, "datasets": datasets},
    )
    if splits.empty:
        raise FeatstoreError(f"no complete features of {model or 'any model'} to verify"
                             + (f" for {', '.join(datasets)}" if datasets else ""))
    found = (verify_split(project.store_dir / row.path, SplitRef(row.model, row.dataset, row.split))
             for row in splits.itertuples())
    return [damage for damage in found if damage is not None]
