"""Argo Events' trigger templates and data filters, evaluated the way the Sensor evaluates them, for the small part
of Go's text/template, sprig and RE2 that the project's Sensors use. Nothing here can run the Sensor itself.

Templates (argo-events pkg/sensors/triggers/params.go, getValueWithTemplate): the event's data, parsed as JSON, is
``.Input``; functions are Go's builtins plus sprig's (``template.New("param").Funcs(sprig.FuncMap())``); an output
that is empty or ``<no value>`` is an error, and so is a failed execution. Supported here: text and ``{{ }}``
actions, pipelines (``a | f x``: the previous value is the last argument), parenthesised pipelines followed by
field access, ``.Field`` chains on maps, string and integer literals, and the functions

    index      Go builtin: index of a list or a map
    regexFind  sprig regex.go: regexp.MustCompile(regex).FindString(s)
    sha256sum  sprig crypto.go: hex.EncodeToString(sha256.Sum256([]byte(s)))
    trunc      sprig strings.go: the first c bytes of s (c >= 0)
    lower      sprig: strings.ToLower
    default    sprig defaults.go: ``x | default d`` is x unless x is empty (nil, "", 0, false, an empty list or
               map), then d

A missing map key is Go's zero ``reflect.Value``: printed it is ``<no value>``; passed to a function that takes a
string it fails the execution ("invalid value; expected string", text/template exec.go validateType). Anything
outside this subset raises, so a Sensor that starts using more fails this evaluator rather than passing untested.

Data filters of type string (argo-events pkg/sensors/dependencies/filter.go, filterData) use
``regexp.Compile(value).Match``: an unanchored search. ``go_regex_search`` runs a pattern that keeps to the syntax
Go's RE2 and Python's ``re`` share, with Go's meaning of ``$`` (end of text; Python's also matches before a final
newline), and refuses what the two read differently.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any


class TemplateError(Exception):
    pass


class _Missing:
    def __str__(self) -> str:
        return "<no value>"


MISSING = _Missing()

_TOKEN = re.compile(r'\s+|(?P<str>"(?:[^"\\]|\\.)*")|(?P<int>-?\d+)|(?P<field>(?:\.[A-Za-z_]\w*)+|\.)'
                    r'|(?P<ident>[A-Za-z_]\w*)|(?P<punct>[|()])')


def _tokens(action: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(action):
        match = _TOKEN.match(action, pos)
        if not match:
            raise TemplateError(f"unsupported template syntax at {action[pos:]!r}")
        pos = match.end()
        if match.lastgroup:
            out.append((match.lastgroup, match.group(match.lastgroup)))
    return out


def _string_arg(name: str, value: Any) -> str:
    if value is MISSING:
        raise TemplateError(f"error calling {name}: invalid value; expected string")
    if not isinstance(value, str):
        raise TemplateError(f"error calling {name}: wrong type for value; expected string; got {type(value)}")
    return value


def _index(container: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(container, list):
            if not isinstance(key, int) or not 0 <= key < len(container):
                raise TemplateError(f"error calling index: index out of range: {key}")
            container = container[key]
        elif isinstance(container, dict):
            container = container.get(key, MISSING)
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(container)}")
    return container


def _regex_find(pattern: Any, text: Any) -> str:
    match = re.search(check_common_regex(_string_arg("regexFind", pattern)), _string_arg("regexFind", text))
    return match.group(0) if match else ""


def _trunc(count: Any, text: Any) -> str:
    text = _string_arg("trunc", text)
    if not isinstance(count, int):
        raise TemplateError("error calling trunc: expected an int")
    return text[:count] if count >= 0 else text[len(text) + count:] if len(text) > -count else text


def _empty(value: Any) -> bool:
    return value is MISSING or value is None or value in ("", 0, False) or value == [] or value == {}


def _default(fallback: Any, *given: Any) -> Any:
    # a missing key reaches sprig's `given ...interface{}` as nil (text/template validateType: the zero value of
    # an interface), so it is empty
    return fallback if not given or _empty(given[0]) else given[0]


FUNCTIONS = {
    "default": _default,
    "index": _index,
    "regexFind": _regex_find,
    "sha256sum": lambda text: hashlib.sha256(_string_arg("sha256sum", text).encode()).hexdigest(),
    "trunc": _trunc,
    "lower": lambda text: _string_arg("lower", text).lower(),
}


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], data: Any):
        self.tokens, self.pos, self.data = tokens, 0, data

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise TemplateError("unexpected end of action")
        self.pos += 1
        return token

    def pipeline(self) -> Any:
        value = self.command(None)
        while self.peek() == ("punct", "|"):
            self.take()
            value = self.command(value)
        return value

    def command(self, piped: Any) -> Any:
        kind, text = self.peek() or ("", "")
        if kind == "ident":
            self.take()
            if text not in FUNCTIONS:
                raise TemplateError(f'function "{text}" not defined here (or not in this evaluator)')
            args = []
            while self.peek() is not None and self.peek() not in (("punct", "|"), ("punct", ")")):
                args.append(self.operand())
            if piped is not None:
                args.append(piped)
            return FUNCTIONS[text](*args)
        if piped is not None:
            raise TemplateError("a pipeline stage must be a function")
        return self.operand()

    def operand(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            value: Any = bytes(text[1:-1], "utf-8").decode("unicode_escape")
        elif kind == "int":
            value = int(text)
        elif kind == "field":
            value = self._fields(self.data, text)
        elif (kind, text) == ("punct", "("):
            value = self.pipeline()
            if self.take() != ("punct", ")"):
                raise TemplateError("unclosed (")
        else:
            raise TemplateError(f"unexpected {text!r}")
        nxt = self.peek()
        if nxt is not None and nxt[0] == "field" and nxt[1] != "." and kind == "punct":
            self.take()
            value = self._fields(value, nxt[1])
        return value

    @staticmethod
    def _fields(value: Any, chain: str) -> Any:
        for name in [part for part in chain.split(".") if part]:
            if value is MISSING:
                raise TemplateError(f"nil pointer evaluating .{name}")
            if not isinstance(value, dict):
                raise TemplateError(f"can't evaluate field {name} in type {type(value)}")
            value = value.get(name, MISSING)
        return value


def render(template: str, data: Any) -> str:
    """Execute ``template`` on ``data`` as text/template does and return the output."""
    out, pos = [], 0
    for match in re.finditer(r"\{\{(-?)(.*?)(-?)\}\}", template, re.S):
        text = template[pos:match.start()]
        out.append(text.rstrip() if match.group(1) else text)
        parser = _Parser(_tokens(match.group(2)), data)
        value = parser.pipeline()
        if parser.peek() is not None:
            raise TemplateError(f"unexpected {parser.peek()[1]!r} in action")
        out.append(str(value))
        pos = match.end()
        if match.group(3):
            template = template[:pos] + template[pos:].lstrip()
    out.append(template[pos:])
    return "".join(out)


def sensor_template_value(template: str, event_data: dict) -> str:
    """What a trigger parameter's ``dataTemplate`` resolves to for an event whose data is ``event_data``."""
    value = render(template, {"Input": event_data})
    if value in ("", "<no value>"):
        raise TemplateError(f"template evaluated to empty string or no value: {template}")
    return value


# Syntax whose meaning differs between Go's RE2 and Python's re, or that one of them lacks: lookarounds and
# backreferences (not in RE2), \Z (Python's end of text; RE2 has \z), possessive and atomic groups, named
# groups in Python's (?P=…) back-reference form, and inline flags other than i/m/s.
_NOT_COMMON = re.compile(r"\(\?[=!<>]|\(\?P=|\\[1-9]|\\Z|\\z|\\A|[*+?}]\+|\(\?[^:imsP)]|\\[pP]|\[\[:")


def check_common_regex(pattern: str) -> str:
    found = _NOT_COMMON.search(pattern)
    if found:
        raise ValueError(f"{pattern!r} uses {found.group(0)!r}, which Go's RE2 and Python's re do not read alike")
    return pattern


def go_regex_search(pattern: str, text: str) -> bool:
    """regexp.MustCompile(pattern).MatchString(text) for a pattern in the common subset. Go's ``$`` (no
    multi-line flag) is the end of the text only: Python's ``$`` also matches before a final newline, so an
    unescaped ``$`` is read as Python's ``\\Z``."""
    check_common_regex(pattern)
    python = re.sub(r"(?<!\\)\$", r"\\Z", pattern)
    return re.search(python, text) is not None
