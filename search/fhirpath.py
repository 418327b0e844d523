"""The FHIRPath that search expressions need: parsed once, compiled to Python closures, run over FHIR JSON.

A compiled expression is a function `(focus, root) -> collection`: `focus` is the input collection (a list),
`root` the resource being indexed (`%resource`). Collections are plain lists of JSON values (dicts, str,
bool, int, float, Decimal). No type model is loaded; three JSON facts stand in for one:

- choice elements (`Observation.value`) are found by their JSON keys `valueQuantity`, `valueString`, ...: a
  name listed in CHOICE_SUFFIXES (the 74 R4 choice element names, each with its R4 type suffixes) matches
  `name + Suffix` when `name` itself is absent;
- `X.name as T`, `X.name.as(T)`, `X.name.ofType(T)` and `X.name is T` read the key `nameT` directly (and the
  keys of T's subtypes: `as Quantity` takes `onsetAge`);
- `resolve() is T` is answered from the reference text (`T/id`, `http://base/T/id`, a contained `#id`, else
  `Reference.type`) without resolving anything.

`X.name.extension(...)` also reaches the extensions of primitives (JSON `_name`). Anything outside the
supported subset is rejected at compile time with FHIRPathError, never at evaluation time.

Supported: paths, `[n]`, literals (string with escapes, number, boolean, `{}`, `@date`), `$this`, `%resource`
(`%rootResource`, `%context`), `%ucum`/`%sct`/`%loinc`/`%vs-x`/`%ext-x`; operators `| = != ~ !~ < > <= >=
in contains and or xor implies is as + - * / div mod &`; functions where, select, exists, all, empty, not,
first, last, tail, skip, take, count, single, distinct, isDistinct, hasValue, iif, union, combine, intersect,
exclude, children, descendants, as, is, ofType, extension, hasExtension, resolve, trace, allTrue, anyTrue,
allFalse, anyFalse, startsWith, endsWith, contains, matches, replaceMatches, replace, indexOf, substring,
lower, upper, trim, length, toString, toInteger, toDecimal. Not supported (compile error): quantity
literals, `$index`/`$total`, terminology functions (memberOf, subsumes), today()/now() (an index must not
depend on the day it was written).

The module has three parts: the parser (text -> tuple AST), the compiler (AST -> closures) and the
function library. A library fallback (fhirpathpy) is not used: it would be a run-time dependency of
`search`, and every R4 expression compiles here (tests/search/test_fhirpath.py compares the results with
fhirpathpy over all spec examples).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib.resources import files
from typing import Any

Ast = tuple[Any, ...]
Fn = Callable[[list[Any], Any], list[Any]]
"""A compiled expression: (focus collection, root resource) -> result collection."""

DATA_FILE = "data/search-parameters.json"  # in the `resources` package


@lru_cache(maxsize=1)
def packaged_data() -> dict[str, Any]:
    """resources/data/search-parameters.json: the R4 SearchParameters and choice-element types (parsed once)."""
    data: dict[str, Any] = json.loads(files("resources").joinpath(DATA_FILE).read_text(encoding="utf-8"))
    return data


class FHIRPathError(ValueError):
    """The expression is not valid FHIRPath, or uses something outside the supported subset."""


# ============================================================================================== parser

_TOKEN = re.compile(r"""
   (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  |(?P<str>'(?:[^'\\]|\\.)*')
  |(?P<did>`(?:[^`\\]|\\.)*`)
  |(?P<date>@T?[0-9][0-9T:.+\-Z]*)
  |(?P<num>\d+(?:\.\d+)?)
  |(?P<const>%(?:[A-Za-z_][A-Za-z0-9_\-]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  |(?P<var>\$[A-Za-z]+)
  |(?P<id>[A-Za-z_][A-Za-z0-9_]*)
  |(?P<op><=|>=|!=|!~|[.\[\](),|=~<>+\-*/&{}])
""", re.S | re.X)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PRECEDENCE = {"implies": 1, "or": 2, "xor": 2, "and": 3, "in": 4, "contains": 4,
               "=": 5, "~": 5, "!=": 5, "!~": 5, "<": 6, ">": 6, "<=": 6, ">=": 6, "|": 7, "is": 8, "as": 8,
               "+": 9, "-": 9, "&": 9, "*": 10, "/": 10, "div": 10, "mod": 10}


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u"):
            return chr(int(code[1:], 16))
        if code in _ESCAPES:
            return _ESCAPES[code]
        raise FHIRPathError(f"invalid escape \\{code}")
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", replace, text)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise FHIRPathError(f"unexpected character {text[position]!r} at {position} in {text!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, match.group(), position))
        position = match.end()
    tokens.append(("eof", "", len(text)))
    return tokens


class _Parser:
    """A precedence-climbing parser producing tuple ASTs:
    ("literal", v) ("id", name, delimited) ("this",) ("const", name) ("path", base, name)
    ("call", base | None, name, args) ("index", base, expr) ("as"|"is", operand, type) ("unary", op, x)
    ("binop", op, left, right).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.at = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at]

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        token = self.tokens[self.at]
        if value is not None and token[1] != value:
            raise FHIRPathError(f"expected {value!r} at {token[2]} in {self.text!r}, found {token[1] or 'the end'!r}")
        self.at += 1
        return token

    def parse(self) -> Ast:
        ast = self.expression(1)
        if self.peek()[0] != "eof":
            raise FHIRPathError(f"unexpected {self.peek()[1]!r} at {self.peek()[2]} in {self.text!r}")
        return ast

    def expression(self, minimum: int) -> Ast:
        left = self.unary()
        while True:
            kind, value, _ = self.peek()
            precedence = _PRECEDENCE.get(value) if kind in ("op", "id") else None
            if precedence is None or precedence < minimum:
                return left
            self.take()
            if value in ("is", "as"):
                left = (value, left, self.type_name())
            else:
                left = ("binop", value, left, self.expression(precedence + 1))

    def type_name(self) -> str:
        kind, value, position = self.take()
        if kind not in ("id", "did"):
            raise FHIRPathError(f"a type name was expected at {position} in {self.text!r}")
        name = value.strip("`")
        while self.peek()[1] == "." and self.tokens[self.at + 1][0] == "id":  # FHIR.Quantity, System.String
            self.take()
            name = self.take()[1]
        return name

    def unary(self) -> Ast:
        if self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = self.take()[1]
            return ("unary", op, self.unary())
        return self.postfix(self.term())

    def postfix(self, ast: Ast) -> Ast:
        while True:
            value = self.peek()[1]
            if value == "." and self.peek()[0] == "op":
                self.take()
                kind, name, position = self.take()
                if kind not in ("id", "did"):
                    raise FHIRPathError(f"a name was expected after '.' at {position} in {self.text!r}")
                if kind == "did":
                    ast = ("path", ast, _unescape(name[1:-1]))
                elif self.peek()[1] == "(":
                    ast = ("call", ast, name, self.arguments())
                else:
                    ast = ("path", ast, name)
            elif value == "[" and self.peek()[0] == "op":
                self.take()
                index = self.expression(1)
                self.take("]")
                ast = ("index", ast, index)
            else:
                return ast

    def arguments(self) -> list[Ast]:
        self.take("(")
        args: list[Ast] = []
        if self.peek()[1] != ")":
            args.append(self.expression(1))
            while self.peek()[1] == ",":
                self.take()
                args.append(self.expression(1))
        self.take(")")
        return args

    def term(self) -> Ast:
        kind, value, position = self.take()
        if kind == "op" and value == "(":
            inner = self.expression(1)
            self.take(")")
            return inner
        if kind == "op" and value == "{":
            self.take("}")
            return ("literal", None)
        if kind == "str":
            return ("literal", _unescape(value[1:-1]))
        if kind == "num":
            if self.peek()[0] == "str" or self.peek()[1] in _CALENDAR_UNITS:
                raise FHIRPathError(f"quantity literals are not supported (at {position} in {self.text!r})")
            return ("literal", Decimal(value) if "." in value else int(value))
        if kind == "date":
            return ("literal", value[1:])
        if kind == "const":
            name = value[1:]
            return ("const", _unescape(name[1:-1]) if name[:1] in "`'" else name)
        if kind == "var":
            if value == "$this":
                return ("this",)
            raise FHIRPathError(f"{value} is not supported (in {self.text!r})")
        if kind == "did":
            return ("id", _unescape(value[1:-1]), True)
        if kind == "id":
            if value in ("true", "false"):
                return ("literal", value == "true")
            if self.peek()[1] == "(":
                return ("call", None, value, self.arguments())
            return ("id", value, False)
        raise FHIRPathError(f"unexpected {value or 'end of expression'!r} at {position} in {self.text!r}")


_CALENDAR_UNITS = frozenset({"year", "years", "month", "months", "week", "weeks", "day", "days", "hour", "hours",
                             "minute", "minutes", "second", "seconds", "millisecond", "milliseconds"})


@lru_cache(maxsize=4096)
def parse(expression: str) -> Ast:
    """Parse a FHIRPath expression into a tuple AST (cached)."""
    if not isinstance(expression, str) or not expression.strip():
        raise FHIRPathError("the expression is empty")
    return _Parser(expression).parse()


# ============================================================================================== types

CHOICE_SUFFIXES: dict[str, frozenset[str]] = {
    name: frozenset(suffixes) for name, suffixes in packaged_data()["choice_types"].items()}

# `as`/`is`/`ofType` accept subtypes (R4 type hierarchy): `as Quantity` takes `onsetAge`, `as uri` takes
# `sourceCanonical`, as fhirpathpy does with the R4 model loaded.
_SUBTYPES: dict[str, tuple[str, ...]] = {
    "Quantity": ("Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"),
    "string": ("String", "Code", "Id", "Markdown"),
    "uri": ("Uri", "Url", "Canonical", "Oid", "Uuid"),
    "integer": ("Integer", "PositiveInt", "UnsignedInt"),
}
_STRING_TYPES = frozenset({"string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid",
                           "base64Binary", "date", "dateTime", "instant", "time", "xhtml",
                           "String", "Date", "DateTime", "Time"})
_CONSTANTS = {"ucum": "http://unitsofmeasure.org", "sct": "http://snomed.info/sct", "loinc": "http://loinc.org"}
_ANY_RESOURCE = ("Resource", "DomainResource")


def suffixes_for(type_name: str) -> tuple[str, ...]:
    """JSON key suffixes holding a value of FHIR type `type_name` or a subtype (dateTime -> DateTime)."""
    return _SUBTYPES.get(type_name, (type_name[:1].upper() + type_name[1:],))


def is_type(value: Any, type_name: str) -> bool:
    """A best-effort runtime type test: JSON carries types only for resources and primitives."""
    kind = type(value)
    if kind is dict:
        res_type = value.get("resourceType")
        if res_type is not None:
            return bool(res_type == type_name or type_name in _ANY_RESOURCE)
        return type_name[:1].isupper() and type_name not in _STRING_TYPES
    if kind is bool:
        return type_name in ("boolean", "Boolean")
    if kind is int:
        return type_name in ("integer", "Integer", "positiveInt", "unsignedInt", "decimal", "Decimal")
    if kind in (float, Decimal):
        return type_name in ("decimal", "Decimal")
    return kind is str and type_name in _STRING_TYPES


_REFERENCE_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


def reference_type(node: Any, root: Any = None) -> str | None:
    """The resource type a Reference (or a reference/canonical string) points at, read from its text."""
    text = node.get("reference") if type(node) is dict else node
    if type(text) is str:
        if text.startswith("#"):
            target = _contained(text, root)
            kind = target.get("resourceType") if target is not None else None
            return kind if type(kind) is str else None
        match = _REFERENCE_TAIL.search(text.split("|", 1)[0])
        if match:
            return match.group(1)
    if type(node) is dict and type(node.get("type")) is str:
        return str(node["type"]).rsplit("/", 1)[-1]
    return None


def _contained(text: Any, root: Any) -> dict[str, Any] | None:
    if type(text) is str and text.startswith("#") and type(root) is dict:
        for contained in _as_list(root.get("contained")):
            if type(contained) is dict and contained.get("id") == text[1:]:
                return contained
    return None


# ============================================================================================== values

def _num(value: Any) -> Decimal | None:
    kind = type(value)
    if kind is int:
        return Decimal(value)
    if kind is float:
        return Decimal(repr(value))
    if kind is Decimal:
        return value
    return None


def _equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        return na == nb
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_equal_lists(_as_list(a[k]), _as_list(b[k])) for k in a)
    return bool(type(a) is type(b) and a == b)


def _as_list(value: Any) -> list[Any]:
    return value if type(value) is list else [value]


def _equal_lists(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))


def _equivalent(a: Any, b: Any) -> bool:
    if type(a) is str and type(b) is str:
        return " ".join(a.lower().split()) == " ".join(b.lower().split())
    return _equal(a, b)


def _truth(items: list[Any]) -> bool | None:
    """A collection as a boolean (singleton evaluation): empty -> None (unknown)."""
    if not items:
        return None
    if len(items) == 1:
        return items[0] if type(items[0]) is bool else True
    raise FHIRPathError("a boolean was expected, but the collection has more than one item")


def _passes(items: list[Any]) -> bool:
    """A where()/exists()/all() criterion result: true only for a single true (or non-boolean) item."""
    return len(items) == 1 and (items[0] is True or type(items[0]) is not bool)


def _identical(a: Any, b: Any) -> bool:
    """Equal as written: unlike `=`, decimals of different precision (1.0, 1.00) differ, as they do for search."""
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_identical_lists(_as_list(a[k]), _as_list(b[k])) for k in a)
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        return str(na) == str(nb)
    return bool(type(a) is type(b) and a == b)


def _identical_lists(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))


def _distinct(items: list[Any]) -> list[Any]:
    """Union and distinct() semantics; duplicates are those identical as written."""
    if len(items) < 2:
        return items
    out: list[Any] = []
    for item in items:
        if not any(_identical(item, seen) for seen in out):
            out.append(item)
    return out


# ============================================================================================== navigation

def _children(node: Any, name: str, out: list[Any]) -> None:
    """Append the value(s) of element `name` of `node` to `out` (arrays flattened, nulls dropped)."""
    if type(node) is not dict:
        return
    value = node.get(name)
    if value is None:
        suffixes = CHOICE_SUFFIXES.get(name)
        if suffixes is None:
            return
        size = len(name)
        for key, candidate in node.items():
            if key.startswith(name) and key[size:] in suffixes:
                value = candidate
                break
        else:
            return
    if type(value) is list:
        out.extend(v for v in value if v is not None)
    else:
        out.append(value)


def _member_path(base: Fn | None, names: tuple[str, ...]) -> Fn:
    """`base.a.b.c` as one loop over the names (no base: start at the focus)."""
    def fn(focus: list[Any], root: Any) -> list[Any]:
        items = base(focus, root) if base else focus
        for name in names:
            if not items:
                break
            out: list[Any] = []
            for node in items:
                _children(node, name, out)
            items = out
        return items
    return fn


def _choice_as(base: Fn | None, name: str, type_name: str) -> Fn:
    """`base.name as T`: the choice key `name + T` (or a subtype), or `name` itself when its value fits T."""
    keys = tuple(name + suffix for suffix in suffixes_for(type_name))

    def fn(focus: list[Any], root: Any) -> list[Any]:
        out: list[Any] = []
        for node in base(focus, root) if base else focus:
            if type(node) is not dict:
                continue
            value = node.get(name)
            if value is not None:
                out.extend(v for v in _as_list(value) if v is not None and is_type(v, type_name))
                continue
            for key in keys:
                value = node.get(key)
                if value is not None:
                    out.extend(v for v in _as_list(value) if v is not None)
                    break
        return out
    return fn


def _member_extensions(base: Fn | None, name: str) -> Fn:
    """`base.name.extension`: the extensions of complex values and of primitives (JSON `_name`)."""
    hidden = "_" + name

    def fn(focus: list[Any], root: Any) -> list[Any]:
        out: list[Any] = []
        for node in base(focus, root) if base else focus:
            if type(node) is dict:
                for key in (name, hidden):
                    for item in _as_list(node.get(key)):
                        if type(item) is dict:
                            out.extend(_as_list(item.get("extension") or []))
        return out
    return fn


# ============================================================================================== compiler

def _leftmost_type(ast: Ast) -> str | None:
    """The type name a path starts with (`Observation` in `(Observation.value as Quantity).unit`)."""
    while True:
        kind = ast[0]
        if kind == "id":
            return str(ast[1]) if ast[1][:1].isupper() and not ast[2] else None
        if kind in ("path", "index", "as", "is") or (kind == "call" and ast[1] is not None):
            ast = ast[1]
        else:
            return None


def _prune(ast: Ast, root_type: str) -> Ast | None:
    """Drop the branches of a top-level union that start with another resource type."""
    if ast[0] == "binop" and ast[1] == "|":
        left, right = _prune(ast[2], root_type), _prune(ast[3], root_type)
        if left is None or right is None:
            return left or right
        return ("binop", "|", left, right)
    start = _leftmost_type(ast)
    if start is not None and start not in (root_type, *_ANY_RESOURCE):
        return None
    return ast


def _empty(focus: list[Any], root: Any) -> list[Any]:
    return []


def _is_member(ast: Ast) -> bool:
    return ast[0] == "id" and (ast[2] or not ast[1][:1].isupper())


class _Compiler:
    """AST -> closure. `root_type` (when known) makes a leading `Observation.` a no-op at the top level."""

    def __init__(self, root_type: str | None) -> None:
        self.root_type = root_type

    def compile(self, ast: Ast) -> Fn:
        method: Callable[[Ast], Fn] = getattr(self, "c_" + ast[0])
        return method(ast)

    def optional(self, ast: Ast | None) -> Fn | None:
        return None if ast is None else self.compile(ast)

    # terms ------------------------------------------------------------------------------------------
    def c_literal(self, ast: Ast) -> Fn:
        constant = [] if ast[1] is None else [ast[1]]
        return lambda focus, root: constant

    def c_this(self, ast: Ast) -> Fn:
        return lambda focus, root: focus

    def c_const(self, ast: Ast) -> Fn:
        name: str = ast[1]
        if name in ("resource", "rootResource", "context"):
            return lambda focus, root: [root]
        if name in _CONSTANTS:
            constant = [_CONSTANTS[name]]
            return lambda focus, root: constant
        if name.startswith(("vs-", "ext-")):
            kind = "ValueSet" if name.startswith("vs-") else "StructureDefinition"
            constant = [f"http://hl7.org/fhir/{kind}/{name.split('-', 1)[1]}"]
            return lambda focus, root: constant
        raise FHIRPathError(f"unknown external constant %{name}")

    def c_id(self, ast: Ast) -> Fn:
        name: str = ast[1]
        if _is_member(ast):
            return _member_path(None, (name,))
        if name == self.root_type:  # `Observation.code` evaluated on an Observation
            return lambda focus, root: focus

        def of_type(focus: list[Any], root: Any) -> list[Any]:
            return [n for n in focus if type(n) is dict and "resourceType" in n
                    and (n["resourceType"] == name or name in _ANY_RESOURCE)]
        return of_type

    # navigation -------------------------------------------------------------------------------------
    def c_path(self, ast: Ast) -> Fn:
        names: list[str] = []
        while ast[0] == "path":
            names.append(ast[2])
            ast = ast[1]
        base: Fn | None
        if _is_member(ast):
            names.append(ast[1])
            base = None
        else:
            base = self.compile(ast)
        names.reverse()
        return _member_path(base, tuple(names))

    def c_index(self, ast: Ast) -> Fn:
        base, index = self.compile(ast[1]), self.compile(ast[2])

        def fn(focus: list[Any], root: Any) -> list[Any]:
            position = index(focus, root)
            if len(position) != 1 or type(position[0]) is not int or position[0] < 0:
                return []
            i: int = position[0]
            return base(focus, root)[i:i + 1]
        return fn

    def split_member(self, ast: Ast | None) -> tuple[Fn | None, str] | None:
        """`base.name` (or a bare `name`) -> (compiled base, name); None for any other shape."""
        if ast is None:
            return None
        if ast[0] == "path":
            return self.compile(ast[1]), ast[2]
        if _is_member(ast):
            return None, ast[1]
        return None

    # types ------------------------------------------------------------------------------------------
    def c_as(self, ast: Ast) -> Fn:
        return self.as_type(ast[1], ast[2])

    def as_type(self, operand: Ast | None, type_name: str) -> Fn:
        member = self.split_member(operand)
        if member is not None:
            return _choice_as(member[0], member[1], type_name)
        if operand is not None and operand[0] == "call" and operand[2] == "resolve":
            return self.resolved_as(operand, type_name)
        inner = self.optional(operand)

        def fn(focus: list[Any], root: Any) -> list[Any]:
            return [v for v in (inner(focus, root) if inner else focus) if is_type(v, type_name)]
        return fn

    def resolved_as(self, call: Ast, type_name: str) -> Fn:
        """`x.resolve() as T` / `.ofType(T)`: nothing is fetched; only contained targets are returned."""
        inner = self.optional(call[1])

        def fn(focus: list[Any], root: Any) -> list[Any]:
            out: list[Any] = []
            for item in inner(focus, root) if inner else focus:
                target = _contained(item.get("reference") if type(item) is dict else item, root)
                if target is not None and is_type(target, type_name):
                    out.append(target)
            return out
        return fn

    def c_is(self, ast: Ast) -> Fn:
        operand: Ast | None = ast[1]
        type_name: str = ast[2]
        if operand is not None and operand[0] == "call" and operand[2] == "resolve":
            inner = self.optional(operand[1])

            def is_resolved(focus: list[Any], root: Any) -> list[Any]:
                items = inner(focus, root) if inner else focus
                if len(items) != 1:
                    return []
                found = reference_type(items[0], root)
                return [found == type_name or (found is not None and type_name in _ANY_RESOURCE)]
            return is_resolved
        matches, whole = self.as_type(operand, type_name), self.optional(operand)

        def is_fn(focus: list[Any], root: Any) -> list[Any]:
            items = whole(focus, root) if whole else focus
            return [bool(matches(focus, root))] if len(items) == 1 else []
        return is_fn

    # operators --------------------------------------------------------------------------------------
    def c_unary(self, ast: Ast) -> Fn:
        inner = self.compile(ast[2])
        if ast[1] == "+":
            return inner

        def negate(focus: list[Any], root: Any) -> list[Any]:
            values = inner(focus, root)
            number = _num(values[0]) if len(values) == 1 else None
            return [] if number is None else [-number]
        return negate

    def c_binop(self, ast: Ast) -> Fn:
        op: str = ast[1]
        left, right = self.compile(ast[2]), self.compile(ast[3])
        if op == "|":
            return lambda focus, root: _distinct(left(focus, root) + right(focus, root))
        if op in ("and", "or", "xor", "implies"):
            return _logic(op, left, right)
        if op in ("in", "contains"):
            return _membership(op, left, right)
        if op in _COMPARISONS:
            return _comparison(op, left, right)
        return _arithmetic(op, left, right)

    # functions --------------------------------------------------------------------------------------
    def c_call(self, ast: Ast) -> Fn:
        _, base_ast, name, args = ast
        if name in ("as", "ofType", "is") and len(args) == 1:
            type_name = _type_argument(args[0])
            if name == "is":
                return self.c_is(("is", base_ast, type_name))
            if base_ast is not None and base_ast[0] == "call" and base_ast[2] == "resolve":
                return self.resolved_as(base_ast, type_name)
            return self.as_type(base_ast, type_name)
        if name == "extension" and len(args) == 1:
            return self.extension(base_ast, args[0])
        spec = _FUNCTIONS.get(name)
        if spec is None:
            raise FHIRPathError(f"the FHIRPath function {name}() is not supported")
        (low, high), build = spec
        if not low <= len(args) <= high:
            raise FHIRPathError(f"{name}() takes {low} to {high} arguments, not {len(args)}")
        return build(self.optional(base_ast), [self.compile(a) for a in args])

    def extension(self, base_ast: Ast | None, arg: Ast) -> Fn:
        member = self.split_member(base_ast)
        source = (_member_extensions(*member) if member is not None
                  else _member_path(self.optional(base_ast), ("extension",)))
        url_fn = self.compile(arg)

        def fn(focus: list[Any], root: Any) -> list[Any]:
            urls = url_fn(focus, root)
            if len(urls) != 1:
                return []
            return [e for e in source(focus, root) if type(e) is dict and e.get("url") == urls[0]]
        return fn


def _type_argument(ast: Ast) -> str:
    if ast[0] == "id":
        return str(ast[1])
    if ast[0] == "path" and ast[1][0] == "id":  # FHIR.Quantity, System.String
        return str(ast[2])
    raise FHIRPathError("a type name was expected")


# ============================================================================================== operators

def _logic(op: str, left: Fn, right: Fn) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        a = _truth(left(focus, root))
        if (op == "and" and a is False) or (op == "implies" and a is False):
            return [op == "implies"]
        if op == "or" and a is True:
            return [True]
        b = _truth(right(focus, root))
        result: bool | None
        if op == "and":
            result = False if b is False else (True if a and b else None)
        elif op == "or":
            result = True if b is True else (False if a is False and b is False else None)
        elif op == "xor":
            result = None if a is None or b is None else a != b
        else:  # implies; a is true or unknown
            result = True if b is True else (b if a is True else None)
        return [] if result is None else [result]
    return fn


_COMPARISONS = frozenset({"=", "!=", "~", "!~", "<", ">", "<=", ">="})


def _comparison(op: str, left: Fn, right: Fn) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        a, b = left(focus, root), right(focus, root)
        if op in ("~", "!~"):
            same = len(a) == len(b) and all(_equivalent(x, y) for x, y in zip(a, b, strict=True))
            return [same == (op == "~")]
        if not a or not b:
            return []
        if op in ("=", "!="):
            return [_equal_lists(a, b) == (op == "=")]
        if len(a) != 1 or len(b) != 1:
            raise FHIRPathError(f"'{op}' compares single items")
        x, y = a[0], b[0]
        nx, ny = _num(x), _num(y)
        if nx is not None and ny is not None:
            x, y = nx, ny
        elif type(x) is not str or type(y) is not str:
            return []
        return [x < y if op == "<" else x > y if op == ">" else x <= y if op == "<=" else x >= y]
    return fn


def _membership(op: str, left: Fn, right: Fn) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        a, b = left(focus, root), right(focus, root)
        item, collection = (a, b) if op == "in" else (b, a)
        if not item:
            return []
        if len(item) != 1:
            raise FHIRPathError(f"'{op}' needs a single item")
        return [any(_equal(item[0], c) for c in collection)]
    return fn


def _arithmetic(op: str, left: Fn, right: Fn) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        a, b = left(focus, root), right(focus, root)
        if op == "&":
            return ["".join(str(v[0]) if v else "" for v in (a, b))]
        if len(a) != 1 or len(b) != 1:
            return []
        if op == "+" and type(a[0]) is str and type(b[0]) is str:
            return [a[0] + b[0]]
        x, y = _num(a[0]), _num(b[0])
        if x is None or y is None or (op in ("/", "div", "mod") and not y):
            return []
        if type(a[0]) is int and type(b[0]) is int and op in ("+", "-", "*", "mod"):
            return [a[0] + b[0] if op == "+" else a[0] - b[0] if op == "-" else a[0] * b[0] if op == "*"
                    else int(x % y)]
        try:
            if op == "div":
                return [int(x // y)]
            result = {"+": x.__add__, "-": x.__sub__, "*": x.__mul__, "/": x.__truediv__, "mod": x.__mod__}[op](y)
        except InvalidOperation:
            return []
        return [result]
    return fn


# ============================================================================================== functions

Builder = Callable[[Fn | None, list[Fn]], Fn]
_FUNCTIONS: dict[str, tuple[tuple[int, int], Builder]] = {}


def _function(name: str, low: int = 0, high: int | None = None) -> Callable[[Builder], Builder]:
    def register(build: Builder) -> Builder:
        _FUNCTIONS[name] = ((low, low if high is None else high), build)
        return build
    return register


def _items(base: Fn | None, focus: list[Any], root: Any) -> list[Any]:
    return base(focus, root) if base else focus


def _on_items(transform: Callable[[list[Any]], list[Any]]) -> Builder:
    """A function of the input collection alone (first(), count(), ...)."""
    def build(base: Fn | None, args: list[Fn]) -> Fn:
        return lambda focus, root: transform(_items(base, focus, root))
    return build


for _name, _transform in {
    "empty": lambda items: [not items],
    "first": lambda items: items[:1],
    "last": lambda items: items[-1:],
    "tail": lambda items: items[1:],
    "count": lambda items: [len(items)],
    "distinct": _distinct,
    "isDistinct": lambda items: [len(_distinct(items)) == len(items)],
    "hasValue": lambda items: [len(items) == 1 and type(items[0]) is not dict],
    "allTrue": lambda items: [all(i is True for i in items)],
    "anyTrue": lambda items: [any(i is True for i in items)],
    "allFalse": lambda items: [all(i is False for i in items)],
    "anyFalse": lambda items: [any(i is False for i in items)],
}.items():
    _function(_name)(_on_items(_transform))


@_function("not")
def _not(base: Fn | None, args: list[Fn]) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        value = _truth(_items(base, focus, root))
        return [] if value is None else [not value]
    return fn


@_function("single")
def _single(base: Fn | None, args: list[Fn]) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        items = _items(base, focus, root)
        if len(items) > 1:
            raise FHIRPathError("single() found more than one item")
        return items
    return fn


@_function("where", 1)
def _where(base: Fn | None, args: list[Fn]) -> Fn:
    (criterion,) = args
    return lambda focus, root: [i for i in _items(base, focus, root) if _passes(criterion([i], root))]


@_function("select", 1)
def _select(base: Fn | None, args: list[Fn]) -> Fn:
    (projection,) = args
    return lambda focus, root: [v for i in _items(base, focus, root) for v in projection([i], root)]


@_function("exists", 0, 1)
def _exists(base: Fn | None, args: list[Fn]) -> Fn:
    if not args:
        return lambda focus, root: [bool(_items(base, focus, root))]
    (criterion,) = args
    return lambda focus, root: [any(_passes(criterion([i], root)) for i in _items(base, focus, root))]


@_function("all", 1)
def _all(base: Fn | None, args: list[Fn]) -> Fn:
    (criterion,) = args
    return lambda focus, root: [all(_passes(criterion([i], root)) for i in _items(base, focus, root))]


def _count_argument(arg: Fn, focus: list[Any], root: Any) -> int:
    value = arg(focus, root)
    if len(value) != 1 or type(value[0]) is not int:
        raise FHIRPathError("an integer argument was expected")
    return int(value[0])


@_function("skip", 1)
def _skip(base: Fn | None, args: list[Fn]) -> Fn:
    return lambda focus, root: _items(base, focus, root)[max(_count_argument(args[0], focus, root), 0):]


@_function("take", 1)
def _take(base: Fn | None, args: list[Fn]) -> Fn:
    return lambda focus, root: _items(base, focus, root)[:max(_count_argument(args[0], focus, root), 0)]


@_function("iif", 2, 3)
def _iif(base: Fn | None, args: list[Fn]) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        items = _items(base, focus, root)
        if _truth(args[0](items, root)):
            return args[1](items, root)
        return args[2](items, root) if len(args) > 2 else []
    return fn


def _set_operation(combine: Callable[[list[Any], list[Any]], list[Any]]) -> Builder:
    def build(base: Fn | None, args: list[Fn]) -> Fn:
        return lambda focus, root: combine(_items(base, focus, root), args[0](focus, root))
    return build


_function("union", 1)(_set_operation(lambda a, b: _distinct(a + b)))
_function("combine", 1)(_set_operation(lambda a, b: a + b))
_function("intersect", 1)(_set_operation(lambda a, b: _distinct([x for x in a if any(_equal(x, y) for y in b)])))
_function("exclude", 1)(_set_operation(lambda a, b: [x for x in a if not any(_equal(x, y) for y in b)]))


def _child_values(node: Any) -> list[Any]:
    out: list[Any] = []
    if type(node) is dict:
        for key, value in node.items():
            if not key.startswith("_") and key != "resourceType":
                out.extend(v for v in _as_list(value) if v is not None)
    return out


@_function("children")
def _children_fn(base: Fn | None, args: list[Fn]) -> Fn:
    return lambda focus, root: [c for node in _items(base, focus, root) for c in _child_values(node)]


@_function("descendants")
def _descendants(base: Fn | None, args: list[Fn]) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        out: list[Any] = []
        pending = [c for node in _items(base, focus, root) for c in _child_values(node)]
        while pending:
            node = pending.pop(0)
            out.append(node)
            pending.extend(_child_values(node))
        return out
    return fn


@_function("resolve")
def _resolve(base: Fn | None, args: list[Fn]) -> Fn:
    """Only contained resources can be resolved at index time; other references resolve to nothing."""
    def fn(focus: list[Any], root: Any) -> list[Any]:
        out = []
        for item in _items(base, focus, root):
            target = _contained(item.get("reference") if type(item) is dict else item, root)
            if target is not None:
                out.append(target)
        return out
    return fn


@_function("hasExtension", 1)
def _has_extension(base: Fn | None, args: list[Fn]) -> Fn:
    def fn(focus: list[Any], root: Any) -> list[Any]:
        urls = args[0](focus, root)
        items = _items(base, focus, root)
        return [any(type(e) is dict and e.get("url") in urls for i in items if type(i) is dict
                    for e in _as_list(i.get("extension") or []))]
    return fn


@_function("trace", 1, 2)
def _trace(base: Fn | None, args: list[Fn]) -> Fn:
    return lambda focus, root: _items(base, focus, root)


def _string_function(name: str, low: int, high: int, apply: Callable[..., Any]) -> None:
    """A function of a single string input and literal-like arguments; empty on any other input."""
    def build(base: Fn | None, args: list[Fn]) -> Fn:
        def fn(focus: list[Any], root: Any) -> list[Any]:
            items = _items(base, focus, root)
            if len(items) != 1 or type(items[0]) is not str:
                return []
            values = []
            for arg in args:
                value = arg(focus, root)
                if len(value) != 1:
                    return []
                values.append(value[0])
            try:
                result = apply(items[0], *values)
            except (TypeError, ValueError, re.error):
                return []
            return [] if result is None else [result]
        return fn
    _function(name, low, high)(build)


_string_function("startsWith", 1, 1, lambda s, p: s.startswith(p))
_string_function("endsWith", 1, 1, lambda s, p: s.endswith(p))
_string_function("contains", 1, 1, lambda s, p: p in s)
_string_function("matches", 1, 1, lambda s, p: re.search(p, s, re.S) is not None)
_string_function("replaceMatches", 2, 2, lambda s, p, r: re.sub(p, r, s))
_string_function("replace", 2, 2, lambda s, p, r: s.replace(p, r))
_string_function("indexOf", 1, 1, lambda s, p: s.find(p))
_string_function("substring", 1, 2, lambda s, i, n=None: None if not 0 <= i < len(s) else
                 (s[i:] if n is None else s[i:i + n]))
_string_function("lower", 0, 0, str.lower)
_string_function("upper", 0, 0, str.upper)
_string_function("trim", 0, 0, str.strip)
_string_function("length", 0, 0, len)


def _convert(value: Any, kind: str) -> Any:
    if kind == "string":
        if type(value) is bool:
            return "true" if value else "false"
        return str(value) if type(value) in (str, int, float, Decimal) else None
    if type(value) is bool:
        return int(value) if kind == "integer" else Decimal(int(value))
    try:
        number = Decimal(str(value)) if type(value) in (str, int, float, Decimal) else None
    except InvalidOperation:
        return None
    if number is None or not number.is_finite():
        return None
    if kind == "integer":
        return int(number) if number == number.to_integral_value() and type(value) is not float else None
    return number


def _conversion(kind: str) -> Builder:
    def build(base: Fn | None, args: list[Fn]) -> Fn:
        def fn(focus: list[Any], root: Any) -> list[Any]:
            items = _items(base, focus, root)
            converted = _convert(items[0], kind) if len(items) == 1 else None
            return [] if converted is None else [converted]
        return fn
    return build


_function("toString")(_conversion("string"))
_function("toInteger")(_conversion("integer"))
_function("toDecimal")(_conversion("decimal"))


# ============================================================================================== entry points

@lru_cache(maxsize=8192)
def compile_expression(expression: str, root_type: str | None = None) -> Fn:
    """Compile once (cached). With `root_type`, top-level union branches that start with another type are
    dropped, so `clinical-patient` costs one path on an Observation, not forty."""
    ast: Ast | None = parse(expression)
    if root_type is None or ast is None:
        return _Compiler(root_type).compile(ast) if ast is not None else _empty
    union = ast[0] == "binop" and ast[1] == "|"
    ast = _prune(ast, root_type)
    if ast is None:
        return _empty
    compiled = _Compiler(root_type).compile(ast)
    if union and not (ast[0] == "binop" and ast[1] == "|"):  # a union pruned to one branch still deduplicates
        return lambda focus, root: _distinct(compiled(focus, root))
    return compiled


# Calls that give nothing for nothing: a path through them starting at an absent element selects nothing.
_EMPTY_STAYS_EMPTY = frozenset({"where", "as", "ofType", "extension", "resolve", "first", "last", "distinct"})


@lru_cache(maxsize=8192)
def root_keys(expression: str, root_type: str) -> frozenset[str] | None:
    """JSON keys of a `root_type` resource, one of which every path of `expression` starts from (`code`,
    `_code`, `valueQuantity`, `_valueQuantity`, `value`, `_value` for `Observation.code | Observation.value as
    Quantity`): on a resource holding none of them the expression selects nothing, so the indexer need not
    evaluate it. None when that cannot be told from the expression (a branch that is not a path from the
    resource through steps that keep nothing as nothing; `exists()` does not)."""
    ast: Ast | None = parse(expression)
    pruned = _prune(ast, root_type) if ast is not None else None
    if pruned is None:
        return frozenset()
    keys: set[str] = set()
    for branch in _branches(pruned):
        found = _root_keys(branch, root_type)
        if found is None:
            return None
        keys |= found
    return frozenset(keys | {"_" + key for key in keys})


def _branches(ast: Ast) -> list[Ast]:
    if ast[0] == "binop" and ast[1] == "|":
        return _branches(ast[2]) + _branches(ast[3])
    return [ast]


def _is_root(ast: Ast | None, root_type: str) -> bool:
    return ast is not None and ast[0] == "id" and not _is_member(ast) and ast[1] in (root_type, *_ANY_RESOURCE)


def _root_keys(ast: Ast | None, root_type: str) -> set[str] | None:
    """The keys element `name` of `Type.name...` is read from (as `_children` and `_choice_as` read them), when
    each step after it gives nothing for nothing; else None."""
    above: Ast | None = None
    while ast is not None:
        kind = ast[0]
        if kind == "path" and _is_root(ast[1], root_type):
            name = str(ast[2])
            typed = above is not None and (above[0] == "as" or above[0] == "call" and above[2] in ("as", "ofType"))
            if typed and above is not None:
                type_name = above[2] if above[0] == "as" else _type_argument(above[3][0])
                return {name, *(name + suffix for suffix in suffixes_for(type_name))}
            return {name, *(name + suffix for suffix in CHOICE_SUFFIXES.get(name, ()))}
        if kind == "call" and ast[2] == "extension" and _is_root(ast[1], root_type):
            return {"extension"}
        if not (kind in ("path", "index", "as") or (kind == "call" and ast[2] in _EMPTY_STAYS_EMPTY)):
            return None
        above, ast = ast, ast[1]
    return None


def evaluate(expression: str, resource: Any) -> list[Any]:
    """Evaluate `expression` on `resource` (parsed FHIR JSON); `%resource` is the resource itself."""
    root_type = resource.get("resourceType") if isinstance(resource, dict) else None
    return compile_expression(expression, root_type)([resource], resource)
