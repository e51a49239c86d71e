"""Safe evaluation of the registry's `Probe from/to extraction` expressions over the name `col`.

The text is untrusted: it is parsed with `ast` and run by a whitelist walker, never by eval/exec.
Allowed: `col`; literals (str, int, float, bool, None, lists/tuples of them); == != < <= > >=;
+ - * / // % & | ^ ~ and unary -; calls of SERIES_METHODS on a Series and of STR_METHODS on
`.str`, with literal arguments only; `.str[int]` and `.str[start:stop:step]` with int literals.
Refused: other names and attributes, dunders, `and`/`or`/`not` (use & | ~), `in` (use isin),
lambdas, comprehensions, f-strings, `**`, starred arguments, and any operation without `col`.
`*` and `%` need numbers on both sides, `replace` needs a pattern that cannot match the empty string
(zero-width ones such as `(?=a)` or `\\b` included) and a replacement of at most MAX_REPLACEMENT characters,
and `.str.join` is not offered, so text cannot be blown up by repetition, padding or insertion; chained
replacements still multiply, so no step may make a row longer than MAX_ROW_CHARS characters (or its
source text, when that is longer), checked before a replacement runs.
Any expression other than a bare `col` runs in a forked child under EVALUATION_BUDGET (time and memory),
so a regex with catastrophic backtracking (e.g. `(a+)+$`) is stopped, and Ctrl-C stops it too.
"""

import ast
import inspect
import operator
import re
import re._parser
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from featstore.bounded import Budget, run_bounded
from featstore.errors import FeatstoreError

MAX_EXPRESSION_LENGTH = 500
MAX_REPLACEMENT = 50
MAX_ROW_CHARS = 100_000  # about 25k tokens: past the context of every supported model
EVALUATION_BUDGET = Budget(seconds=60.0, memory_bytes=4 * 2**30)
SERIES_METHODS = frozenset(
    {
        "isin",
        "between",
        "isna",
        "notna",
        "isnull",
        "notnull",
        "fillna",
        "astype",
        "abs",
        "round",
        "clip",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
    }
)
STR_METHODS = frozenset(
    {
        "contains",
        "startswith",
        "endswith",
        "match",
        "fullmatch",
        "count",
        "find",
        "rfind",
        "len",
        "lower",
        "upper",
        "title",
        "capitalize",
        "casefold",
        "swapcase",
        "strip",
        "lstrip",
        "rstrip",
        "replace",
        "removeprefix",
        "removesuffix",
        "slice",
        "split",
        "rsplit",
        "get",
        "isdigit",
        "isalpha",
        "isalnum",
        "isnumeric",
        "isdecimal",
        "isspace",
        "islower",
        "isupper",
        "istitle",
    }
)
ASTYPE_DTYPES = frozenset(
    {
        "str",
        "string",
        "object",
        "category",
        "bool",
        "boolean",
        "int",
        "int32",
        "int64",
        "Int64",
        "float",
        "float32",
        "float64",
        "Float64",
    }
)
BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
REFUSAL_HINTS = {
    ast.BoolOp: "'and'/'or' (use & and | with parentheses)",
    ast.In: "'in' (use col.isin([...]))",
    ast.NotIn: "'not in' (use ~col.isin([...]))",
    ast.Is: "'is' (use == or col.isna())",
    ast.IsNot: "'is not' (use != or col.notna())",
    ast.Not: "'not' (use ~)",
    ast.Lambda: "a lambda",
    ast.JoinedStr: "an f-string",
    ast.NamedExpr: "the walrus operator",
    ast.IfExp: "a conditional expression",
    ast.GeneratorExp: "a generator expression",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
}
SERIES, ACCESSOR, LITERAL = "Series", "col.str accessor", "literal"
Compiled = tuple[str, Callable[[pd.Series], Any]]


class ExpressionError(FeatstoreError):
    """An extraction expression that is not allowed, or that failed on the column it was applied to."""


class _Refused(Exception):
    """Internal: the reason a piece of the expression is not allowed."""


class _TooLong(Exception):
    """Internal: a step would make a row's text longer than allowed."""

    def __init__(self, row: int, length: int, allowed: int):
        super().__init__(row, length, allowed)
        self.row, self.length, self.allowed = row, length, allowed


def _piece(node: ast.AST) -> str:
    text = ast.unparse(node)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _literal(node: ast.AST) -> Any:
    match node:
        case ast.Constant(value=value) if value is None or type(value) in (str, int, float, bool):
            return value
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as value)):
            return -value
        case ast.List(elts=elements):
            return [_literal(element) for element in elements]
        case ast.Tuple(elts=elements):
            return tuple(_literal(element) for element in elements)
    raise _Refused(f"{_piece(node)} (only literals are allowed here)")


def _argument(method: str, node: ast.AST) -> Any:
    """A literal argument; astype also takes the builtin type names str, int, float and bool."""
    if method == "astype" and isinstance(node, ast.Name) and node.id in ("str", "int", "float", "bool"):
        return node.id
    return _literal(node)


def _numbers_only(value: Any) -> Any:
    if isinstance(value, pd.Series) and not pd.api.types.is_numeric_dtype(value):
        raise TypeError(f"* and % need numeric columns, got dtype {value.dtype}")
    return value


def _binary(node: ast.AST, op: ast.AST, left: ast.AST, right: ast.AST) -> Compiled:
    if type(op) not in BINARY_OPERATORS:
        raise _Refused(REFUSAL_HINTS.get(type(op), f"operator {type(op).__name__} in {_piece(node)}"))
    (left_kind, left_fn), (right_kind, right_fn) = _compile(left), _compile(right)
    if SERIES not in (left_kind, right_kind) or ACCESSOR in (left_kind, right_kind):
        raise _Refused(f"{_piece(node)} (an operator needs a Series computed from col on one side)")
    function = BINARY_OPERATORS[type(op)]
    if isinstance(op, (ast.Mult, ast.Mod)):
        for kind, operand in ((left_kind, left), (right_kind, right)):
            if kind == LITERAL and type(_literal(operand)) not in (int, float):
                raise _Refused(f"{_piece(node)} (* and % take numbers only)")
        return SERIES, lambda col: function(_numbers_only(left_fn(col)), _numbers_only(right_fn(col)))
    return SERIES, lambda col: _within_row_limit(function(left_fn(col), right_fn(col)), col)


def _method_call(receiver: ast.AST, method: str, args: list, keywords: list) -> Compiled:
    if method not in SERIES_METHODS | STR_METHODS:
        raise _Refused(f"method {method!r}")
    kind, target = _compile(receiver)
    owner = {SERIES: pd.Series, ACCESSOR: pd.Series.str}.get(kind)
    if owner is None or method not in (SERIES_METHODS if kind == SERIES else STR_METHODS):
        raise _Refused(f"method {method!r} on {_piece(receiver)}, which is a {kind}")
    if any(isinstance(arg, ast.Starred) for arg in args) or any(kw.arg is None for kw in keywords):
        raise _Refused("starred arguments (* or **)")
    positional = [_argument(method, arg) for arg in args]
    named = {keyword.arg: _argument(method, keyword.value) for keyword in keywords}
    try:
        bound = inspect.signature(getattr(owner, method)).bind(None, *positional, **named)
    except TypeError as error:
        raise _Refused(f"arguments of {method}(): {error}") from None
    if "inplace" in {**bound.arguments, **named}:
        raise _Refused(f"inplace= in {method}() (it would change the source column)")
    if method == "replace":
        _check_replacement(bound.arguments)
    if method == "astype" and bound.arguments.get("dtype") not in ASTYPE_DTYPES:
        raise _Refused(f"astype dtype {bound.arguments.get('dtype')!r} (allowed: {sorted(ASTYPE_DTYPES)})")

    texts = _compile(receiver.value)[1] if method == "replace" else None  # the Series under `.str`

    def call(col: pd.Series) -> pd.Series:
        if texts is None:
            result = getattr(target(col), method)(*positional, **named)
        else:
            source = texts(col)
            _check_replacement_size(source, bound.arguments, col)
            result = source.str.replace(*positional, **named)
        if not isinstance(result, pd.Series):
            raise TypeError(f"{method}() gave a {type(result).__name__}, not a Series")
        return _within_row_limit(result, col)

    return SERIES, call


def _check_replacement(arguments: dict) -> None:
    """Refuse replacements that multiply the text: patterns matching the empty string, long replacements."""
    pattern, replacement = arguments.get("pat"), arguments.get("repl")
    if not isinstance(pattern, str) or not isinstance(replacement, str):
        raise _Refused("replace() without a text pattern and a text replacement")
    if type(arguments.get("flags", 0)) is not int:
        raise _Refused(f"replace() flags must be a whole number, got {arguments['flags']!r}")
    if arguments.get("regex") and "\\" in replacement:
        raise _Refused("replace() with a backslash in a regex replacement (group references can multiply the text)")
    try:
        matches_empty = (
            _can_match_empty(pattern, arguments.get("flags", 0)) if arguments.get("regex") else pattern == ""
        )
    except re.error as error:
        raise _Refused(f"replace() pattern {pattern!r}: {error}") from None
    if matches_empty:
        raise _Refused(f"replace() pattern {pattern!r}, which matches the empty string")
    if len(replacement) > MAX_REPLACEMENT:
        raise _Refused(f"replace() with a replacement longer than {MAX_REPLACEMENT} characters")


def _can_match_empty(pattern: str, flags: int) -> bool:
    """Whether the regex can match zero characters anywhere (`a*`, `x|`, and zero-width `(?=a)`, `\\b`, `^`):
    the shortest match that Python's own regex parser computes for it."""
    return re._parser.parse(pattern, flags).getwidth()[0] == 0


def _text_lengths(values: pd.Series) -> np.ndarray:
    """The length of each text value; 0 where a value is not text."""
    if not (pd.api.types.is_string_dtype(values) or values.dtype == object):
        return np.zeros(len(values), dtype=np.int64)
    return values.map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy(dtype=np.int64)


def _raise_if_too_long(lengths: np.ndarray, col: pd.Series) -> None:
    allowed = np.maximum(MAX_ROW_CHARS, _text_lengths(col))
    over = np.flatnonzero(lengths > allowed)
    if len(over):
        row = int(over[0])
        raise _TooLong(row, int(lengths[row]), int(allowed[row]))


def _within_row_limit(result: Any, col: pd.Series) -> Any:
    """`result`, if none of its texts is longer than MAX_ROW_CHARS (or than the source row, when longer)."""
    if isinstance(result, pd.Series) and len(result) == len(col):
        _raise_if_too_long(_text_lengths(result), col)
    return result


def _check_replacement_size(texts: pd.Series, arguments: dict, col: pd.Series) -> None:
    """Before replacing: refuse when a row would outgrow the limit. Each match of at least the pattern's
    shortest length gives way to the replacement, so the new length is at most a sum over the matches."""
    pattern, repl, flags = arguments["pat"], arguments["repl"], arguments.get("flags", 0)
    literal, ignore_case = not arguments.get("regex"), arguments.get("case") is False
    if literal and not ignore_case:  # str.count: pandas would count it as a regex, far slower
        matches = texts.map(lambda v: v.count(pattern) if isinstance(v, str) else 0).to_numpy(dtype=np.int64)
    else:
        flags |= re.IGNORECASE if ignore_case else 0
        matches = texts.str.count(re.escape(pattern) if literal else pattern, flags=flags)
        matches = matches.fillna(0).to_numpy(dtype=np.int64)
    if arguments.get("n", -1) >= 0:
        matches = np.minimum(matches, arguments["n"])
    shortest = len(pattern) if literal else re._parser.parse(pattern, flags).getwidth()[0]
    _raise_if_too_long(_text_lengths(texts) + matches * (len(repl) - shortest), col)


def _str_subscript(node: ast.Subscript) -> Compiled:
    kind, target = _compile(node.value)
    index = node.slice
    if isinstance(index, ast.Slice):
        parts = [None if part is None else _literal(part) for part in (index.lower, index.upper, index.step)]
        key = slice(*parts)
    else:
        parts = [key := _literal(index)]
    if kind != ACCESSOR or any(part is not None and type(part) is not int for part in parts):
        raise _Refused(f"subscript {_piece(node)} (only col.str[int] or col.str[int:int])")
    return SERIES, lambda col: target(col)[key]


def _compile(node: ast.AST) -> Compiled:
    match node:
        case ast.Name(id="col"):
            return SERIES, lambda col: col
        case ast.Name(id=name):
            raise _Refused(f"name {name!r} (the only name is 'col')")
        case ast.Constant() | ast.List() | ast.Tuple() | ast.UnaryOp(op=ast.USub(), operand=ast.Constant()):
            value = _literal(node)
            return LITERAL, lambda col: value
        case ast.Attribute(value=receiver, attr="str"):
            kind, target = _compile(receiver)
            if kind != SERIES:
                raise _Refused(f".str on {_piece(receiver)}, which is a {kind}")
            return ACCESSOR, lambda col: target(col).str
        case ast.Attribute(attr=attribute):
            raise _Refused(f"attribute {attribute!r}")
        case ast.Call(func=ast.Attribute(value=receiver, attr=method), args=args, keywords=keywords):
            return _method_call(receiver, method, args, keywords)
        case ast.Call(func=function):
            raise _Refused(f"call of {_piece(function)} (only methods of col and col.str can be called)")
        case ast.Subscript():
            return _str_subscript(node)
        case ast.UnaryOp(op=ast.Invert() | ast.USub() | ast.UAdd() as op, operand=operand):
            kind, target = _compile(operand)
            if kind != SERIES:
                raise _Refused(f"{_piece(node)} (an operator needs a Series computed from col)")
            function = {ast.Invert: operator.invert, ast.USub: operator.neg, ast.UAdd: operator.pos}[type(op)]
            return SERIES, lambda col: function(target(col))
        case ast.UnaryOp(op=ast.Not()):
            raise _Refused(REFUSAL_HINTS[ast.Not])
        case ast.BinOp(left=left, op=op, right=right) | ast.Compare(left=left, ops=[op], comparators=[right]):
            return _binary(node, op, left, right)
        case ast.Compare(ops=[_, _, *_]):
            raise _Refused(f"chained comparison {_piece(node)} (use col.between(a, b) or &)")
    raise _Refused(REFUSAL_HINTS.get(type(node), f"{type(node).__name__} {_piece(node)}"))


def compile_extraction(expression: str, where: str) -> Callable[[pd.Series], pd.Series]:
    """Validate once (raising ExpressionError naming `where` and the offending piece),
    return a function applying it to a column."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError(f"{where}: the expression is empty (write col to take the column as it is)")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"{where}: the expression has {len(expression)} characters, more than the {MAX_EXPRESSION_LENGTH} allowed"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences in regex literals like "\d"
            tree = ast.parse(expression.strip(), mode="eval")
        kind, apply = _compile(tree.body)
    except (SyntaxError, ValueError) as error:  # ValueError: null bytes in the text
        reason = error.msg if isinstance(error, SyntaxError) else error
        raise ExpressionError(f"{where}: {expression!r} is not valid Python: {reason}") from None
    except _Refused as refusal:
        raise ExpressionError(f"{where}: {expression!r} is not allowed: {refusal}") from None
    except RecursionError:
        raise ExpressionError(f"{where}: {expression!r} is not allowed: it is nested too deeply") from None
    if kind != SERIES:
        raise ExpressionError(f"{where}: {expression!r} is not allowed: it gives a {kind}, not a Series from col")

    def extract(column: pd.Series) -> pd.Series:
        try:
            if isinstance(tree.body, ast.Name):  # bare `col`: nothing to bound
                result = apply(column)
            else:
                result = run_bounded(apply, column, budget=EVALUATION_BUDGET, what=f"{where}: {expression!r}")
        except FeatstoreError:
            raise
        except _TooLong as too_long:
            raise ExpressionError(
                f"{where}: {expression!r} would make raw row {too_long.row} {too_long.length:,} characters long, "
                f"more than the {too_long.allowed:,} allowed per row"
            ) from None
        except Exception as error:  # pandas raises many types; each becomes one line naming `where`
            message = " ".join(str(error).split())
            raise ExpressionError(
                f"{where}: {expression!r} failed on the column: {type(error).__name__}: {message}"
            ) from error
        if not isinstance(result, pd.Series) or len(result) != len(column):
            size = len(result) if isinstance(result, pd.Series) else "?"
            raise ExpressionError(
                f"{where}: {expression!r} must give a Series of length {len(column)},"
                f" got a {type(result).__name__} of length {size}"
            )
        return result

    return extract


def evaluate_extraction(expression: str, column: pd.Series, where: str) -> pd.Series:
    """compile_extraction(expression, where)(column): a Series of the column's length, else ExpressionError."""
    return compile_extraction(expression, where)(column)
