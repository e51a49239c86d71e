"""Extraction expressions: accepted ones match pandas run directly; refused ones never run anything."""

import inspect
import re
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from featstore.bounded import Budget
from featstore.datasets import expressions
from featstore.datasets.expressions import ExpressionError, compile_extraction, evaluate_extraction
from featstore.errors import FeatstoreError

WHERE = "datasets/main.csv row 3 (12_my_data), Probe to extraction"
TEXT = pd.Series(["War and Peace", " yes ", "y", "a,b,c", "12345", "NO", None, "warrior"], name="text")
INTEGERS = pd.Series([1, 2, 3, -4, 10, 0], name="label")
FLOATS = pd.Series([1.25, np.nan, -3.5, 2.0, 7.75], name="score")


@pytest.mark.parametrize(
    ("expression", "reference", "column"),
    [
        ("col", lambda col: col, TEXT),
        ("col == 1", lambda col: col == 1, INTEGERS),
        ("1 == col", lambda col: col == 1, INTEGERS),
        ("col != 2", lambda col: col != 2, INTEGERS),
        ("col >= 2", lambda col: col >= 2, INTEGERS),
        ("col < -1", lambda col: col < -1, INTEGERS),
        ('col.str.contains("war")', lambda col: col.str.contains("war"), TEXT),
        (
            'col.str.contains("war", case=False, na=False)',
            lambda col: col.str.contains("war", case=False, na=False),
            TEXT,
        ),
        (r'col.str.contains("^\d+$")', lambda col: col.str.contains(r"^\d+$"), TEXT),
        ('col.str.contains("a.c", regex=False)', lambda col: col.str.contains("a.c", regex=False), TEXT),
        ("col.str.len() > 10", lambda col: col.str.len() > 10, TEXT),
        ('(col == "yes") | (col == "y")', lambda col: (col == "yes") | (col == "y"), TEXT),
        ('(col.str.strip() == "yes") & ~col.isna()', lambda col: (col.str.strip() == "yes") & ~col.isna(), TEXT),
        ("col.str.lower().str.strip()", lambda col: col.str.lower().str.strip(), TEXT),
        ("~col.isna()", lambda col: ~col.isna(), TEXT),
        ("col.notna()", lambda col: col.notna(), FLOATS),
        ("col.astype(str)", lambda col: col.astype(str), INTEGERS),
        ('col.astype("float64")', lambda col: col.astype("float64"), INTEGERS),
        ("col.astype(dtype=bool)", lambda col: col.astype(bool), INTEGERS),
        ('col.isin(["a,b,c", "y"])', lambda col: col.isin(["a,b,c", "y"]), TEXT),
        ("col.isin((1, -4))", lambda col: col.isin((1, -4)), INTEGERS),
        ("col.between(1, 3)", lambda col: col.between(1, 3), INTEGERS),
        ('col.between(1, 3, inclusive="neither")', lambda col: col.between(1, 3, inclusive="neither"), INTEGERS),
        ('col.str.split(",").str[0]', lambda col: col.str.split(",").str[0], TEXT),
        ('col.str.split(",").str[-1]', lambda col: col.str.split(",").str[-1], TEXT),
        ("col.str[1:4]", lambda col: col.str[1:4], TEXT),
        ("col.str[::-1]", lambda col: col.str[::-1], TEXT),
        ('col.str.startswith(("War", "y"))', lambda col: col.str.startswith(("War", "y")), TEXT),
        ('col.str.replace("a", "4", regex=False)', lambda col: col.str.replace("a", "4", regex=False), TEXT),
        ('col.str.fullmatch("[a-z]+")', lambda col: col.str.fullmatch("[a-z]+"), TEXT),
        ('col.str.count("a")', lambda col: col.str.count("a"), TEXT),
        ("col.str.isdigit()", lambda col: col.str.isdigit(), TEXT),
        ('col.str.get(0) == "w"', lambda col: col.str.get(0) == "w", TEXT),
        ('col + "!"', lambda col: col + "!", TEXT),
        ("col.fillna(0) * 2 - 1", lambda col: col.fillna(0) * 2 - 1, FLOATS),
        ("-col / 4 + col // 2 + col % 3", lambda col: -col / 4 + col // 2 + col % 3, INTEGERS),
        ("(col > 0) ^ (col > 2)", lambda col: (col > 0) ^ (col > 2), INTEGERS),
        ("col.abs().round(1).clip(0, 5)", lambda col: col.abs().round(1).clip(0, 5), FLOATS),
        ("col.gt(2).eq(True)", lambda col: col.gt(2).eq(True), INTEGERS),
        ("col == -3.5", lambda col: col == -3.5, FLOATS),
    ],
)
def test_accepted_expression_matches_pandas(expression, reference, column):
    before = column.copy()
    pd.testing.assert_series_equal(evaluate_extraction(expression, column, WHERE), reference(column))
    pd.testing.assert_series_equal(column, before)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os').system('echo hi')", "method 'system'"),
        ("__import__('os')", "call of '__import__'"),
        ("__builtins__", "name '__builtins__'"),
        ("col.__class__", "attribute '__class__'"),
        ("col.__class__.__mro__", "attribute '__mro__'"),
        ("col.apply(print)", "method 'apply'"),
        ('col.pipe(eval, "1")', "method 'pipe'"),
        ("col.map(str)", "method 'map'"),
        ("(lambda: 1)()", "call of 'lambda: 1'"),
        ("lambda: col", "a lambda"),
        ("[x for x in col]", "a comprehension"),
        ("(x for x in col)", "a generator expression"),
        ("col.str.contains(open('/etc/passwd').read())", "only literals"),
        ('getattr(col, "apply")', "call of 'getattr'"),
        ('col.to_csv("/tmp/x")', "method 'to_csv'"),
        ('col.eval("1+1")', "method 'eval'"),
        ('col.query("col > 1")', "method 'query'"),
        ('f"{col}"', "an f-string"),
        ('col.astype("object").values', "attribute 'values'"),
        ("().__class__.__bases__[0].__subclasses__()", "method '__subclasses__'"),
        ('"abc".upper()', "which is a literal"),
        ('"x".join', "attribute 'join'"),
        ('"x".join(col)', "method 'join'"),
        ('col.astype(dtype=__import__("os"))', "only literals"),
        ('col.astype("int", **{"copy": True})', "starred arguments"),
        ('col.str.contains(*["a"])', "starred arguments"),
        ("col.astype(list)", "only literals"),
        ('col.astype("datetime64[ns]")', "astype dtype 'datetime64[ns]'"),
        ('col.astype("int", bogus=1)', "unexpected keyword argument 'bogus'"),
        ("col.str.contains()", "missing a required argument"),
        ("pd.Series([1])", "method 'Series'"),
        ("pd.isna(col)", "name 'pd'"),
        ("pd.isna", "attribute 'isna'"),
        ("col.isna() == pd", "name 'pd'"),
        ("os", "name 'os'"),
        ("globals()", "call of 'globals'"),
        ("col.values", "attribute 'values'"),
        ("col.str.__class__", "attribute '__class__'"),
        ("col.str.repeat(10 ** 9)", "method 'repeat'"),
        ("col.str.pad(1000000000)", "method 'pad'"),
        ("col.str", "gives a col.str accessor"),
        ("1 + 2", "needs a Series computed from col"),
        ('"a" * 10 + col', "needs a Series computed from col"),
        ("col * 'ab'", "take numbers only"),
        ("'%999999999d' % col", "take numbers only"),
        ("col ** 2", "operator Pow"),
        ("col @ col", "operator MatMult"),
        ("col and col", "use & and |"),
        ("col or col", "use & and |"),
        ("not col", "use ~"),
        ('"a" in col', "use col.isin"),
        ('"a" not in col', "use ~col.isin"),
        ("col is None", "col.isna()"),
        ("1 < col < 3", "chained comparison"),
        ("col if col else col", "a conditional expression"),
        ("(x := col)", "the walrus operator"),
        ("col[0]", "subscript 'col[0]'"),
        ("col.str['a']", "subscript"),
        ("col.str[col]", "only literals"),
        ("col.str[0.5]", "subscript"),
        ('{"a": col}', "Dict"),
        ("{col}", "Set"),
        ("b'x' == col", "only literals"),
        ("~1", "needs a Series computed from col"),
        ("col.isin.__self__", "attribute '__self__'"),
        ("col.fillna(0, inplace=True)", "inplace= in fillna()"),
        ("col.clip(0, 1, inplace=False)", "inplace= in clip()"),
    ],
)
def test_refused_expression_names_where_and_piece(expression, fragment):
    with pytest.raises(ExpressionError) as caught:
        compile_extraction(expression, WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: {expression!r} is not allowed: ")
    assert fragment in message
    assert "\n" not in message
    assert isinstance(caught.value, FeatstoreError)


SENTINEL_ATTACKS = [
    '__import__("pathlib").Path({path!r}).touch()',
    "col.to_csv({path!r})",
    'col.str.contains(open({path!r}, "w").name)',
    'col.astype(dtype=__import__("pathlib").Path({path!r}).touch() or "str")',
    'col.pipe(lambda c: open({path!r}, "w").close())',
    '[open({path!r}, "w").close() for x in col]',
    "getattr(col, 'to_csv')({path!r})",
    '(col == "y") & col.to_csv({path!r})',
]


@pytest.mark.parametrize("attack", SENTINEL_ATTACKS)
def test_refused_attack_never_runs(attack, tmp_path):
    control, sentinel = tmp_path / "control.csv", tmp_path / "sentinel.csv"
    try:  # control: the attack is real, plain eval does create its file
        eval(attack.format(path=str(control)), {"col": TEXT})
    except Exception:
        pass
    assert control.exists()
    with pytest.raises(ExpressionError):
        evaluate_extraction(attack.format(path=str(sentinel)), TEXT, WHERE)
    assert not sentinel.exists()


def test_length_cap_is_exact():
    longest = "col + 1" + " " * (expressions.MAX_EXPRESSION_LENGTH - len("col + 1"))
    pd.testing.assert_series_equal(evaluate_extraction(longest, INTEGERS, WHERE), INTEGERS + 1)
    with pytest.raises(ExpressionError, match=r"has 501 characters, more than the 500 allowed"):
        compile_extraction(longest + " ", WHERE)
    with pytest.raises(ExpressionError, match=r"^datasets/main\.csv row 3 .*more than the 500 allowed$"):
        compile_extraction("col" + " + 1" * 200, WHERE)


def test_deep_nesting_is_handled():
    deep = "~" * 300 + "(col > 1)"
    pd.testing.assert_series_equal(evaluate_extraction(deep, INTEGERS, WHERE), INTEGERS > 1)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 100)
    try:
        with pytest.raises(ExpressionError, match="is not allowed: it is nested too deeply$"):
            compile_extraction(deep, WHERE)
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize("expression", ["", "   ", None, float("nan")])
def test_empty_expression_is_refused(expression):
    with pytest.raises(ExpressionError, match=rf"^{re.escape(WHERE)}: the expression is empty"):
        compile_extraction(expression, WHERE)


@pytest.mark.parametrize("expression", ["col +", "col ==", "col)", "col\x00"])
def test_syntax_error_is_refused(expression):
    with pytest.raises(ExpressionError, match=rf"^{re.escape(WHERE)}: .* is not valid Python: "):
        compile_extraction(expression, WHERE)


@pytest.mark.parametrize(
    ("expression", "column", "fragment"),
    [
        ("col.str.lower()", INTEGERS, "AttributeError: Can only use .str accessor with string values"),
        ("col * 3", TEXT, "* and % need numeric columns, got dtype str"),
        ('col.str.split(",", expand=True)', TEXT, "split() gave a DataFrame, not a Series"),
        ('col.str.contains("(")', TEXT, "regular expression"),
        ("col == [1, 2]", INTEGERS, "ValueError"),
    ],
)
def test_pandas_errors_become_one_line_expression_errors(expression, column, fragment):
    apply = compile_extraction(expression, WHERE)
    with pytest.raises(ExpressionError) as caught:
        apply(column)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: {expression!r} failed on the column: ")
    assert fragment in message
    assert "\n" not in message


def test_result_of_other_length_is_refused(monkeypatch):
    monkeypatch.setattr(expressions, "SERIES_METHODS", expressions.SERIES_METHODS | {"head"})
    with pytest.raises(ExpressionError, match=r"must give a Series of length 6, got a Series of length 2"):
        evaluate_extraction("col.head(2)", INTEGERS, WHERE)


def test_compiled_extraction_is_reusable_across_columns():
    apply = compile_extraction("col.str.len()", WHERE)
    other = pd.Series(["abc", "", "de"])
    pd.testing.assert_series_equal(apply(TEXT), TEXT.str.len())
    pd.testing.assert_series_equal(apply(other), other.str.len())


def test_regex_escapes_in_plain_strings_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_extraction(r'col.str.contains("\d")', TEXT, WHERE)
    pd.testing.assert_series_equal(result, TEXT.str.contains(r"\d"))


@pytest.mark.parametrize(
    "expression, piece",
    [
        ('col.str.replace("", "abcdefghij")', "matches the empty string"),
        ('col.str.replace("a*", "xx", regex=True)', "matches the empty string"),
        ('col.str.replace("(?=a)", "xx", regex=True)', "matches the empty string"),
        (r'col.str.replace("\\b", "xx", regex=True)', "matches the empty string"),
        ('col.str.replace("^", "xx", regex=True)', "matches the empty string"),
        ('col.str.replace("(?<=a)|b", "xx", regex=True)', "matches the empty string"),
        ('col.str.replace("a", "' + "x" * 60 + '")', "longer than 50"),
        ('col.str.join("--")', "method 'join'"),
    ],
)
def test_text_blow_up_through_replace_or_join_is_refused(expression, piece):
    with pytest.raises(ExpressionError, match=piece):
        compile_extraction(expression, "here")


def test_ordinary_replacements_still_work():
    column = pd.Series(["a_b", "c_d"])
    assert evaluate_extraction('col.str.replace("_", " ")', column, "here").tolist() == ["a b", "c d"]
    assert evaluate_extraction('col.str.replace("[bd]", "!", regex=True)', column, "here").tolist() == ["a_!", "c_!"]


def test_zero_width_lookarounds_inside_a_match_are_still_allowed():
    column = pd.Series(["ab", "b"])
    assert evaluate_extraction('col.str.replace("(?<=a)b", "!", regex=True)', column, WHERE).tolist() == ["a!", "b"]


def test_catastrophic_backtracking_is_stopped_by_the_time_limit(monkeypatch):
    monkeypatch.setattr(expressions, "EVALUATION_BUDGET", Budget(seconds=1.0, memory_bytes=2**30))
    started = time.monotonic()
    with pytest.raises(FeatstoreError, match=r"^here: .*\(a\+\)\+\$.* stopped after 1 s time limit$"):
        evaluate_extraction("col.str.contains('(a+)+$', flags=2)", pd.Series(["a" * 30 + "!"]), "here")
    assert time.monotonic() - started < 10


CHAINED = "col" + (".str.replace('a', '" + "a" * 50 + "')") * 3


def test_chained_replacements_stop_at_the_row_limit():
    column = pd.Series(["abc abc " * 10, "short"])
    with pytest.raises(
        ExpressionError,
        match=r"would make raw row 0 2,500,060 characters long, "
        r"more than the 100,000 allowed per row$",
    ):
        evaluate_extraction(CHAINED, column, WHERE)


def test_concatenation_stops_at_the_row_limit_but_long_sources_pass_unchanged():
    long_text = pd.Series(["x" * 60_000, "y"])
    with pytest.raises(ExpressionError, match=r"would make raw row 0 120,000 characters long"):
        evaluate_extraction("col + col", long_text, WHERE)
    longer = pd.Series(["x" * 150_000 + " ", "y"])
    assert evaluate_extraction("col.str.strip().str.replace('x', 'z')", longer, WHERE).str.len().tolist() == [
        150_000,
        1,
    ]


@pytest.mark.parametrize(
    "expression, reason",
    [
        ('col.str.replace("a", "b", regex=True, flags="i")', "flags must be a whole number, got 'i'"),
        ('col.str.replace("(a+)", "\\\\1\\\\1", regex=True)', "a backslash in a regex replacement"),
    ],
    ids=["text flags", "group references"],
)
def test_replacements_that_could_escape_the_checks_are_refused_in_one_line(expression, reason):
    with pytest.raises(ExpressionError, match=re.escape(reason)):
        compile_extraction(expression, WHERE)
