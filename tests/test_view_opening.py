"""Opening a view: the catalog is read once per state of its file, and a changed catalog is read again; a split is
opened once per content of its sealed root, and a changed or damaged root is read again."""

import shutil

import numpy as np
import pytest
import xarray as xr

from featstore.api import open_store
from featstore.catalog.database import catalog_writer
from featstore.errors import FeatstoreError
from featstore.project import open_project
from featstore.store.layout import SHARD_EXAMPLES
from featstore.views import view as view_module
from tests.builders import MODEL, published_folder


def test_a_view_opened_again_costs_no_catalog_connection(toy_copy, monkeypatch):
    first = open_store(toy_copy.root).view("1_toy", "test", layers=[1])

    def refuse(*args, **kwargs):
        raise AssertionError("the catalog was opened again")

    monkeypatch.setattr(view_module, "catalog_reader", refuse)
    again = open_store(toy_copy.root).view("1_toy", "test", layers=[1])
    np.testing.assert_array_equal(again.attn.values, first.attn.values)
    np.testing.assert_array_equal(again.label.values, first.label.values)


def test_a_changed_catalog_is_read_again(toy_copy):
    before = open_store(toy_copy.root).view("1_toy", "test")
    first_id = int(before.example_id.values[0])
    with catalog_writer(toy_copy) as con:
        con.execute("UPDATE examples SET label = 1 - label WHERE dataset = '1_toy' AND example_id = ?", [first_id])
    after = open_store(toy_copy.root).view("1_toy", "test")
    assert after.label.values[0] == 1 - before.label.values[0]
    np.testing.assert_array_equal(after.label.values[1:], before.label.values[1:])


def test_the_feature_arrays_are_chunked_and_the_coordinates_in_memory(toy_copy):
    view = open_store(toy_copy.root).view("1_toy", "test", model=MODEL)
    assert view.attn.chunks is not None and view.attn.data.chunksize[:2] == (view.sizes["example"], 1)
    assert view.attn.data.name != view.resid.data.name != view.tokens.data.name
    for name in ("example_id", "seq_len", "label"):
        assert view[name].chunks is None


@pytest.mark.parametrize("shards", [1, 2])
def test_a_chunk_holds_the_whole_shards_that_fit_its_bytes(toy_copy, monkeypatch, shards):
    """The train split (200 examples, 2 shards): its widest array's one-layer row is the attention's 4 heads x its
    longest row, float16; a budget of one shard of it gives one-shard chunks, of two the whole split."""
    probe = open_store(toy_copy.root).view("1_toy", "train")
    row_bytes = 2 * probe.sizes["head"] * probe.sizes["token"]
    monkeypatch.setattr(view_module, "VIEW_CHUNK_BYTES", shards * SHARD_EXAMPLES * row_bytes)
    view_module.forget_opened_views()
    view = open_store(toy_copy.root).view("1_toy", "train")
    assert view.attn.data.chunks[0] == ((128, 72) if shards == 1 else (200,))
    assert view.resid.data.chunks[0] == view.attn.data.chunks[0] == view.tokens.data.chunks[0]


def test_a_split_opened_again_reads_no_zarr_metadata(toy_copy, monkeypatch):
    first = open_store(toy_copy.root).view("1_toy", "test")
    monkeypatch.setattr(xr, "open_zarr", lambda *a, **k: pytest.fail("the split was opened again"))
    again = open_store(toy_copy.root).view("1_toy", "test", layers=[0])
    np.testing.assert_array_equal(again.attn.values, first.attn.values[:, :1])
    with pytest.raises(ValueError, match="read-only"):
        again.seq_len.values[0] = 1  # the kept split's coordinates are shared by every view of it


def test_a_kept_split_whose_root_is_damaged_is_refused(toy_copy):
    kept = open_store(toy_copy.root).view("1_toy", "test")
    assert kept.attn.values.any()
    root = published_folder(toy_copy, "test") / "zarr.json"
    root.write_bytes(root.read_bytes().replace(b'"zarr_format": 3', b'"zarr_format": 2'))
    with pytest.raises(FeatstoreError, match="does not match its seal"):
        open_store(toy_copy.root).view("1_toy", "test")


def test_copies_of_a_store_are_different_arrays_to_dask(toy_copy, tmp_path):
    other = open_project(shutil.copytree(toy_copy.root, tmp_path / "other"))
    mine, theirs = (open_store(project.root).view("1_toy", "test") for project in (toy_copy, other))
    assert mine.attn.data.name != theirs.attn.data.name
