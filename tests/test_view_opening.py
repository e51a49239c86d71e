"""Opening a view: the catalog is read once per state of its file, and a changed catalog is read again."""

import numpy as np

from featstore.api import open_store
from featstore.catalog.database import catalog_writer
from featstore.views import view as view_module
from tests.builders import MODEL


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
    assert view.attn.chunks is not None and view.attn.data.chunksize[:2] == (min(128, view.sizes["example"]), 1)
    assert view.attn.data.name != view.resid.data.name != view.tokens.data.name
    for name in ("example_id", "seq_len", "label"):
        assert view[name].chunks is None
