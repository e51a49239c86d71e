"""The layering stays as docs/architecture.md draws it: no import cycles, no import running up the layers, no SQL
statement outside featstore/catalog."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tree_has_no_cycle_no_upward_import_and_no_sql_outside_the_catalog(capsys):
    assert load_tool().main(ROOT) == 0, capsys.readouterr().out


def test_the_tool_finds_a_cycle_an_upward_import_and_sql(tmp_path):
    tool = load_tool()
    for name, text in {
        "featstore/__init__.py": "",
        "featstore/store/__init__.py": "",
        "featstore/store/a.py": "from featstore.store import b\nfrom featstore.views import v\n",
        "featstore/store/b.py": "import featstore.store.a\nQUERY = 'SELECT 1'\n",
        "featstore/views/__init__.py": "",
        "featstore/views/v.py": "",
    }.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    mods = tool.modules(tmp_path)
    edges = tool.imports(mods)
    assert tool.cycles(edges) == [["featstore.store.a", "featstore.store.b"]]
    assert tool.layer("featstore.views.v") > tool.layer("featstore.store.a")
    assert tool.main(tmp_path) == 1
