"""Static checks of the deployment artefacts: Dockerfile, .dockerignore, docker-compose.yml and the
Helm chart in helm/ramp-orchestrator. No Docker engine, Kubernetes or helm binary is needed.

The chart is rendered by a small renderer of exactly the Go-template + Sprig subset the chart uses
(the first section below). It is stricter than Helm on purpose: reading a map key that does not
exist is an error (Helm would print nothing), an unknown function is an error, and numbers from
values.yaml are float64 as in Helm, printed the way Go prints them (1048576 -> "1.048576e+06"), so
a missing ``| int`` shows up as a setting the service cannot parse.

What is proved: compose and chart wire the service the way its code reads its settings (every env
var name exists in service.core.config.Settings, Ray or the workers; the API container's environment
builds a valid non-embedded Settings pointing at the Ray head's Jobs API, the shared storage and
itself), secrets consumed exist, the shared volume is at one path everywhere, probes, hooks,
RayCluster shape and GPU limits; and that these checks fail on broken inputs (mutation tests).
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import hashlib
import importlib.util
import json
import math
import random
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlparse

import pytest
import yaml
from pydantic import AliasChoices

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "ramp-orchestrator"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# ============================================================================ Go-template renderer


class TemplateError(Exception):
    """A template that Helm would reject, or that this renderer's strict subset rejects."""


class Struct(dict):
    """A Go struct (.Chart, .Release): reading a field it does not have is an error."""


_NO_VALUE = object()
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_PTOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<decl>:=)
    | (?P<assign>=)
    | (?P<var>\$\w*(?:\.\w+)*)
    | (?P<field>(?:\.\w+)+|\.)
    | (?P<ident>[A-Za-z_]\w*)
    | (?P<punct>[()|,])
    )""",
    re.X,
)


def _lex(src: str, name: str) -> list[tuple[Any, ...]]:
    """Text and actions, with the ``{{-`` / ``-}}`` whitespace trimming already applied."""
    out: list[tuple[Any, ...]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        out.append(("action", m.group(2).strip(), f"{name}:{src.count(chr(10), 0, m.start()) + 1}"))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = src[pos:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return out


def _tokens(src: str, where: str) -> list[tuple[str, str]]:
    toks, pos = [], 0
    while pos < len(src):
        if not src[pos:].strip():
            break
        m = _PTOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"{where}: cannot parse {src[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        toks.append((kind, m.group(kind)))
        pos = m.end()
    return toks


def _operand(kind: str, text: str, where: str) -> tuple[Any, ...]:
    if kind == "str":
        return ("lit", ast.literal_eval(text))
    if kind == "raw":
        return ("lit", text[1:-1])
    if kind == "num":
        return ("lit", float(text) if "." in text else int(text))
    if kind == "var":
        name, *fields = text.split(".")
        return ("var", name, fields)
    if kind == "field":
        return ("field", [f for f in text.split(".") if f])
    if kind == "ident":
        consts = {"true": True, "false": False, "nil": None}
        return ("lit", consts[text]) if text in consts else ("ident", text)
    raise TemplateError(f"{where}: unexpected {text!r}")


def _parse_commands(toks: list[tuple[str, str]], i: int, where: str) -> tuple[list[list[Any]], int]:
    cmds: list[list[Any]] = [[]]
    while i < len(toks) and toks[i] != ("punct", ")"):
        kind, text = toks[i]
        i += 1
        if (kind, text) == ("punct", "|"):
            if not cmds[-1]:
                raise TemplateError(f"{where}: empty command before '|'")
            cmds.append([])
        elif (kind, text) == ("punct", "("):
            sub, i = _parse_commands(toks, i, where)
            if i >= len(toks):
                raise TemplateError(f"{where}: unclosed '('")
            i += 1
            cmds[-1].append(("pipe", sub))
        else:
            cmds[-1].append(_operand(kind, text, where))
    if not cmds[-1]:
        raise TemplateError(f"{where}: empty command")
    return cmds, i


def _parse_pipeline(src: str, where: str) -> tuple[list[str], bool, list[list[Any]]]:
    """(declared variables, is '=' assignment, commands)."""
    toks = _tokens(src, where)
    names, j = [], 0
    while j < len(toks) and toks[j][0] == "var" and "." not in toks[j][1]:
        names.append(toks[j][1])
        j += 1
        if j < len(toks) and toks[j] == ("punct", ","):
            j += 1
            continue
        break
    decl, assign, start = [], False, 0
    if names and j < len(toks) and toks[j][0] in ("decl", "assign"):
        decl, assign, start = names, toks[j][0] == "assign", j + 1
    cmds, end = _parse_commands(toks, start, where)
    if end != len(toks):
        raise TemplateError(f"{where}: unexpected ')'")
    return decl, assign, cmds


def _parse(tokens: list[tuple[Any, ...]], defines: dict[str, list[Any]]) -> list[Any]:
    pos = 0

    def until(stops: set[str]) -> tuple[list[Any], str | None, str]:
        nonlocal pos
        nodes: list[Any] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok[0] == "text":
                nodes.append(("text", tok[1]))
                continue
            body, where = tok[1], tok[2]
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise TemplateError(f"{where}: unclosed comment")
                continue
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word) :].strip()
            if word in ("end", "else"):
                if word not in stops:
                    raise TemplateError(f"{where}: unexpected {word}")
                return nodes, word, rest
            if word == "if":
                nodes.append(parse_if(rest, where))
            elif word in ("with", "range"):
                inner, stop, srest = until({"end", "else"})
                other: list[Any] = []
                if stop == "else":
                    if srest:
                        raise TemplateError(f"{where}: 'else {srest}' after {word} is not supported")
                    other, _, _ = until({"end"})
                nodes.append((word, _parse_pipeline(rest, where), inner, other, where))
            elif word == "define":
                inner, _, _ = until({"end"})
                defines[ast.literal_eval(rest)] = inner
            elif word in ("template", "block", "break", "continue"):
                raise TemplateError(f"{where}: '{word}' is outside the supported subset")
            else:
                nodes.append(("expr", _parse_pipeline(body, where), where))
        if stops:
            raise TemplateError(f"missing {{{{ end }}}} (expected one of {sorted(stops)})")
        return nodes, None, ""

    def parse_if(cond: str, where: str) -> tuple[Any, ...]:
        branches = []
        while True:
            inner, stop, srest = until({"end", "else"})
            branches.append((_parse_pipeline(cond, where), inner))
            if stop == "end":
                return ("if", branches, [], where)
            if srest.startswith("if "):
                cond = srest[3:].strip()
                continue
            if srest:
                raise TemplateError(f"{where}: unsupported 'else {srest}'")
            other, _, _ = until({"end"})
            return ("if", branches, other, where)

    nodes, _, _ = until(set())
    return nodes


def go_float(f: float) -> str:
    """Go's %v of a float64 (strconv 'g' with the shortest digits): the exponent form as soon as
    the exponent is < -4 or >= 6 -- hence Helm's famous 1e+06 for a value of 1000000."""
    if f == 0:
        return "0"
    if math.isnan(f) or math.isinf(f):
        return "NaN" if math.isnan(f) else ("+Inf" if f > 0 else "-Inf")
    _, digit_tuple, exp = Decimal(repr(abs(f))).as_tuple()  # repr: the shortest round-trip digits
    assert isinstance(exp, int)
    full = "".join(map(str, digit_tuple))
    digits = full.rstrip("0")
    exp += len(full) - len(digits)
    point = len(digits) - 1 + exp  # decimal exponent of the first digit
    sign = "-" if f < 0 else ""
    if point < -4 or point >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point >= len(digits) - 1:
        return sign + digits + "0" * (point - len(digits) + 1)
    if point >= 0:
        return sign + digits[: point + 1] + "." + digits[point + 1 :]
    return sign + "0." + "0" * (-point - 1) + digits


def go_str(v: Any) -> str:
    if v is None:
        return ""  # Helm replaces Go's "<no value>" with nothing
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return v
    raise TemplateError(f"refusing to print a {type(v).__name__} ({v!r}); use toYaml")


def _truthy(v: Any) -> bool:
    return bool(v)


def _plain(v: Any) -> Any:
    """What toYaml/toJson see: Go marshals an integral float64 without a fraction."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _kind(v: Any) -> str:
    for t, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(v, t):
            return name
    return "nil" if v is None else type(v).__name__


def _eq(a: Any, *bs: Any) -> bool:
    for b in bs:
        if _kind(a) != _kind(b) or _kind(a) not in ("bool", "int", "float", "string"):
            raise TemplateError(f"eq: incompatible types for comparison ({_kind(a)} vs {_kind(b)})")
        if a == b:
            return True
    return False


def _int_arg(n: Any, fn: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TemplateError(f"{fn}: wants an int literal, got {_kind(n)} {n!r}")
    return n


def _indent(n: Any, s: Any) -> str:
    pad = " " * _int_arg(n, "indent")
    return pad + go_str(s).replace("\n", "\n" + pad)


def _trunc(n: Any, s: Any) -> str:
    n, s = _int_arg(n, "trunc"), go_str(s)
    if n < 0:
        return s[len(s) + n :] if len(s) + n > 0 else s
    return s[:n]


def _printf(fmt: str, *args: Any) -> str:
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        arg = next(it)
        if verb == "d":
            if _kind(arg) != "int":
                raise TemplateError(f"printf %d of a {_kind(arg)} ({arg!r}): Go prints %!d(...)")
            return str(arg)
        return json.dumps(go_str(arg)) if verb == "q" else go_str(arg)

    return re.sub(r"%([sdvq%])", sub, fmt)


def _to_int(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, str):
        return int(float(v))
    return int(v)


def _toyaml(v: Any) -> str:
    if v is None:
        return "null"
    text = yaml.safe_dump(_plain(v), default_flow_style=False, sort_keys=True, allow_unicode=True)
    return text.removesuffix("\n...\n").rstrip("\n")


def _get(d: Any, k: str) -> Any:
    return d.get(k, "") if isinstance(d, dict) else ""


def _required(msg: str, v: Any) -> Any:
    if v is None or v == "":
        raise TemplateError(f"required: {msg}")
    return v


def _fail(msg: str) -> Any:
    raise TemplateError(f"fail: {msg}")


def _default(d: Any, *given: Any) -> Any:
    return d if not given or not _truthy(given[0]) else given[0]


def _ternary(t: Any, f: Any, cond: Any) -> Any:
    if not isinstance(cond, bool):
        raise TemplateError(f"ternary: condition must be a bool, got {_kind(cond)}")
    return t if cond else f


def _lookup(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return {}  # what `helm template` (no cluster) returns


def _index(coll: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(coll, list):
            coll = coll[_int_arg(k, "index")]
        elif isinstance(coll, dict):
            coll = coll.get(k)
        else:
            raise TemplateError(f"index of a {_kind(coll)}")
    return coll


def _dict(*kv: Any) -> dict[str, Any]:
    return {go_str(kv[i]): kv[i + 1] for i in range(0, len(kv) - 1, 2)}


FUNCS: dict[str, Callable[..., Any]] = {
    "default": _default,
    "required": _required,
    "fail": _fail,
    "quote": lambda *a: " ".join(json.dumps(go_str(x), ensure_ascii=False) for x in a if x is not None),
    "toYaml": _toyaml,
    "toJson": lambda v: json.dumps(_plain(v), separators=(",", ":"), sort_keys=True),
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "trunc": _trunc,
    "trimSuffix": lambda suffix, s: go_str(s).removesuffix(suffix),
    "replace": lambda old, new, s: go_str(s).replace(old, new),
    "contains": lambda sub, s: go_str(sub) in go_str(s),
    "printf": _printf,
    "b64enc": lambda s: base64.b64encode(go_str(s).encode()).decode(),
    "b64dec": lambda s: base64.b64decode(go_str(s)).decode(),
    "urlquery": lambda *a: quote_plus("".join(go_str(x) for x in a)),
    "sha256sum": lambda s: hashlib.sha256(go_str(s).encode()).hexdigest(),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "not": lambda v: not _truthy(v),
    "ternary": _ternary,
    "list": lambda *a: list(a),
    "dict": _dict,
    "get": _get,
    "hasKey": lambda d, k: isinstance(d, dict) and k in d,
    "index": _index,
    "lookup": _lookup,
    "int": _to_int,
    "toString": go_str,
}


class Renderer:
    """Executes parsed templates. ``rng`` makes randAlphaNum reproducible."""

    def __init__(self, defines: dict[str, list[Any]], seed: int = 0) -> None:
        self.defines = defines
        self.rng = random.Random(seed)

    def include(self, name: str, data: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"include: no template named {name!r}")
        return self.render(self.defines[name], data, [{"$": data}])

    def render(self, nodes: list[Any], dot: Any, scopes: list[dict[str, Any]]) -> str:
        out = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
                continue
            try:
                out.append(self._node(node, dot, scopes))
            except TemplateError as e:
                if " @ " in str(e):
                    raise
                raise TemplateError(f"{e} @ {node[-1]}") from None
        return "".join(out)

    def _node(self, node: tuple[Any, ...], dot: Any, scopes: list[dict[str, Any]]) -> str:
        kind = node[0]
        if kind == "expr":
            value = self.pipeline(node[1], dot, scopes)
            return "" if node[1][0] else go_str(value)
        if kind == "if":
            for cond, body in node[1]:
                inner = [*scopes, {}]
                if _truthy(self.pipeline(cond, dot, inner)):
                    return self.render(body, dot, inner)
            return self.render(node[2], dot, [*scopes, {}])
        if kind == "with":
            inner = [*scopes, {}]
            value = self.pipeline(node[1], dot, inner)
            return self.render(node[2], value, inner) if _truthy(value) else self.render(node[3], dot, inner)
        if kind == "range":
            names, _, cmds = node[1]
            coll = self.commands(cmds, dot, scopes)
            if isinstance(coll, dict):
                items = [(k, coll[k]) for k in sorted(coll)]
            elif isinstance(coll, list):
                items = list(enumerate(coll))
            elif coll is None:
                items = []
            else:
                raise TemplateError(f"range over a {_kind(coll)}")
            if not items:
                return self.render(node[3], dot, [*scopes, {}])
            parts = []
            for key, item in items:
                inner: dict[str, Any] = {}
                if len(names) == 1:
                    inner[names[0]] = item
                elif len(names) == 2:
                    inner[names[0]], inner[names[1]] = key, item
                parts.append(self.render(node[2], item, [*scopes, inner]))
            return "".join(parts)
        raise TemplateError(f"unknown node {kind}")

    def pipeline(
        self, pipe: tuple[list[str], bool, list[list[Any]]], dot: Any, scopes: list[dict[str, Any]]
    ) -> Any:
        names, assign, cmds = pipe
        value = self.commands(cmds, dot, scopes)
        if names:
            if len(names) != 1:
                raise TemplateError("multiple variables outside range")
            if assign:
                for scope in reversed(scopes):
                    if names[0] in scope:
                        scope[names[0]] = value
                        break
                else:
                    raise TemplateError(f"assignment to undefined variable {names[0]}")
            else:
                scopes[-1][names[0]] = value
        return value

    def commands(self, cmds: list[list[Any]], dot: Any, scopes: list[dict[str, Any]]) -> Any:
        value: Any = _NO_VALUE
        for cmd in cmds:
            value = self.command(cmd, dot, scopes, value)
        return value

    def command(self, cmd: list[Any], dot: Any, scopes: list[dict[str, Any]], piped: Any) -> Any:
        head = cmd[0]
        if head[0] != "ident":
            if len(cmd) > 1 or piped is not _NO_VALUE:
                raise TemplateError("can't give arguments to a non-function")
            return self.operand(head, dot, scopes)
        name = head[1]
        if name in ("and", "or"):  # short-circuit, as Go 1.18+ does
            ops = [lambda a=a: self.operand(a, dot, scopes) for a in cmd[1:]]
            if piped is not _NO_VALUE:
                ops.append(lambda: piped)
            value = None
            for op in ops:
                value = op()
                if _truthy(value) != (name == "and"):
                    return value
            return value
        args = [self.operand(a, dot, scopes) for a in cmd[1:]]
        if piped is not _NO_VALUE:
            args.append(piped)
        return self.call(name, args)

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "include":
            return self.include(*args)
        if name == "randAlphaNum":
            alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            return "".join(self.rng.choice(alphabet) for _ in range(_int_arg(args[0], name)))
        fn = FUNCS.get(name)
        if fn is None:
            raise TemplateError(f"function {name!r} is not in the supported subset")
        try:
            return fn(*args)
        except TypeError as e:
            raise TemplateError(f"{name}: {e}") from None

    def operand(self, op: tuple[Any, ...], dot: Any, scopes: list[dict[str, Any]]) -> Any:
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind == "ident":
            return self.call(op[1], [])
        if kind == "pipe":
            return self.commands(op[1], dot, scopes)
        if kind == "var":
            for scope in reversed(scopes):
                if op[1] in scope:
                    value = scope[op[1]]
                    break
            else:
                raise TemplateError(f"undefined variable {op[1]}")
            fields = op[2]
        else:
            value, fields = dot, op[1]
        for f in fields:
            value = self.field(value, f)
        return value

    @staticmethod
    def field(obj: Any, name: str) -> Any:
        if obj is None:
            raise TemplateError(f"nil pointer evaluating .{name}")
        if not isinstance(obj, dict):
            raise TemplateError(f"can't evaluate field {name} in a {_kind(obj)}")
        if name not in obj:
            # Helm would silently give nil here; a typo'd key is what we want to catch.
            raise TemplateError(f"missing key {name!r} (keys: {sorted(obj)})")
        return obj[name]


# ============================================================================ chart rendering


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _as_float64(v: Any) -> Any:
    """Helm decodes values through JSON: every number is a float64."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, dict):
        return {k: _as_float64(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_as_float64(x) for x in v]
    return v


BUNDLED_PW = "s3cr:t/p@ss word"  # characters a URL's userinfo must escape
RELEASE, NAMESPACE = "ramp", "ml"
SCENARIOS: dict[str, dict[str, Any]] = {
    "bundled-postgres": {"postgresql": {"auth": {"password": BUNDLED_PW}}},
    "external-postgres": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql://ramp:pw@db.internal:5432/ramp"},
    },
    "ray-auth-disabled": {"postgresql": {"auth": {"password": "pw"}}, "ray": {"auth": {"mode": "disabled"}}},
    "existing-secret": {"postgresql": {"enabled": False}, "auth": {"existingSecret": "my-ramp-secret"}},
    "external-ray": {
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql://ramp:pw@db.internal:5432/ramp"},
        "ray": {"address": "http://ray.internal:8265", "cluster": {"enabled": False}},
    },
    "fixed-gpus-no-autoscaling": {
        "postgresql": {"auth": {"password": "pw"}},
        "ray": {
            "autoscaling": {"enabled": False},
            "cpuWorkers": {"enabled": False},
            "gpuWorkers": {"gpus": 2, "replicas": 2, "minReplicas": 1, "maxReplicas": 3},
        },
        "migrations": {"enabled": False},
        "storage": {"existingClaim": "shared-nfs", "mountPath": "/mnt/ramp"},
    },
}


def chart_values(overrides: dict[str, Any], chart: Path = CHART) -> dict[str, Any]:
    return deep_merge(yaml.safe_load((chart / "values.yaml").read_text()), overrides)


def render_chart(overrides: dict[str, Any], chart: Path = CHART) -> dict[str, str]:
    """{template file name: rendered text} for every template, NOTES.txt included."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    context = Struct(
        Values=_as_float64(chart_values(overrides, chart)),
        Chart=Struct(Name=meta["name"], Version=meta["version"], AppVersion=meta["appVersion"]),
        Release=Struct(Name=RELEASE, Namespace=NAMESPACE, Service="Helm", IsInstall=True, IsUpgrade=False),
        Template=Struct(BasePath=f"{meta['name']}/templates"),
    )
    defines: dict[str, list[Any]] = {}
    files = sorted((chart / "templates").iterdir())
    parsed = {p.name: _parse(_lex(p.read_text(), p.name), defines) for p in files}
    renderer = Renderer(defines)
    return {
        name: renderer.render(nodes, context, [{"$": context}])
        for name, nodes in parsed.items()
        if not name.startswith("_")
    }


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for name, text in rendered.items():
        if name.endswith(".txt"):
            continue
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            raise AssertionError(f"{name} does not render to valid YAML: {e}\n{text}") from e
        for doc in loaded:
            if doc is not None:
                assert isinstance(doc, dict), f"{name}: a document is not a mapping: {doc!r}"
                doc["__file__"] = name
                docs.append(doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    hits = [d for d in find(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every workload, Ray groups included."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "RayCluster":
            yield "RayCluster/head", d["spec"]["headGroupSpec"]["template"]["spec"]
            for g in d["spec"]["workerGroupSpecs"] or []:
                yield f"RayCluster/{g['groupName']}", g["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | dict(secret.get("stringData") or {})


def resolve_env(env: list[dict[str, Any]], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    out = {}
    for e in env:
        if "value" in e:
            assert isinstance(e["value"], str), f"env {e['name']} is not a string: {e['value']!r}"
            out[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = secrets[ref["name"]][ref["key"]]
    return out


def api_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "-api")
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "api")


# ============================================================================ env var names


def settings_env_names() -> set[str]:
    """The environment variable names service.core.config.Settings reads."""
    from service.core.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


@functools.cache
def _quoted_env_literals(root: Path, prefix: str) -> frozenset[str]:
    """Every quoted ``PREFIX...`` upper-case literal in the Python sources under ``root``."""
    literal = re.compile(rf"""["']({prefix}[A-Z0-9_]+)["']""")
    found: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text(errors="ignore")
        if prefix in text:
            found.update(literal.findall(text))
    return frozenset(found)


def unknown_env_names(names: set[str]) -> set[str]:
    """Names neither Settings, nor Ray (its installed sources), nor the workers read."""
    spec = importlib.util.find_spec("ray")
    assert spec and spec.submodule_search_locations, "ray is not installed"
    ray_root = Path(next(iter(spec.submodule_search_locations)))
    known = settings_env_names() | _quoted_env_literals(ray_root, "RAY_")
    return names - known - _quoted_env_literals(ROOT / "workers", "RAMP_")


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    import os

    from service.core.config import Settings

    for name in list(os.environ):
        if name.startswith(("RAMP_", "RAY_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


# ============================================================================ renderer self-tests


def _render_src(src: str, values: dict[str, Any] | None = None) -> str:
    defines: dict[str, list[Any]] = {}
    nodes = _parse(_lex(src, "t"), defines)
    ctx = Struct(Values=_as_float64(values or {}))
    return Renderer(defines).render(nodes, ctx, [{"$": ctx}])


def test_renderer_follows_go_template_semantics() -> None:
    src = (
        '{{- define "x" -}}<{{ . }}>{{- end -}}\n'
        "a {{- if .Values.n }} big{{ else if .Values.s }} s{{ else }} none{{ end }}\n"
        '{{ include "x" .Values.s | nindent 2 }}\n'
        "{{- range $i, $v := .Values.l }}[{{ $i }}={{ $v }}]{{- end }}\n"
        "{{ $m := .Values.m }}{{ with $m.k }}{{ . | quote }}{{ end }} {{ and 0 (fail \"no\") }}"
    )
    out = _render_src(src, {"n": 0, "s": "yes", "l": ["p", "q"], "m": {"k": 'say "hi"'}})
    assert out == 'a s\n\n  <yes>[0=p][1=q]\n"say \\"hi\\"" 0'


@pytest.mark.parametrize(
    ("value", "printed"),
    [(8000, "8000"), (1048576, "1.048576e+06"), (1000000, "1e+06"), (999999, "999999"), (0.5, "0.5"),
     (0.00001, "1e-05"), (0.0001, "0.0001"), (1.25, "1.25"), (-3, "-3"), (123456.5, "123456.5")],
)
def test_values_numbers_print_like_helm(value: float, printed: str) -> None:
    assert _render_src("{{ .Values.x }}", {"x": value}) == printed
    assert _render_src("{{ .Values.x | toJson }}", {"x": value}) == json.dumps(value)


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("{{ .Values.missing }}", "missing key"),
        ("{{ .Values.a.b }}", "nil pointer"),
        ("{{ frobnicate 1 }}", "not in the supported subset"),
        ('{{ eq .Values.n 1 }}', "incompatible types"),
        ('{{ printf "%d" .Values.n }}', "printf %d"),
        ('{{ required "need it" .Values.e }}', "need it"),
        ("{{ if .Values.n }}", "missing {{ end }}"),
        ('{{ include "nope" . }}', "no template"),
    ],
)
def test_renderer_rejects_what_helm_would_get_wrong(src: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        _render_src(src, {"a": None, "n": 3, "e": ""})


# ============================================================================ Chart.yaml, values.yaml

VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_]\w*)+)")
VAR_DECL = re.compile(r"(\$\w+)\s*:=\s*\.Values((?:\.[A-Za-z_]\w*)+)")
VAR_REF = re.compile(r"(\$\w+)((?:\.[A-Za-z_]\w*)+)")


def values_references(chart: Path = CHART) -> dict[str, set[str]]:
    """{values path 'a.b.c': files} for every .Values.a.b.c, including through `$v := .Values.x`."""
    refs: dict[str, set[str]] = {}
    for path in (chart / "templates").iterdir():
        text = path.read_text()
        found = {m.group(1)[1:] for m in VALUES_REF.finditer(text)}
        aliases = {m.group(1): m.group(2)[1:] for m in VAR_DECL.finditer(text)}
        for m in VAR_REF.finditer(text):
            if m.group(1) in aliases:
                found.add(f"{aliases[m.group(1)]}{m.group(2)}")
        for ref in found:
            refs.setdefault(ref, set()).add(path.name)
    return refs


def unresolved_references(chart: Path = CHART) -> list[str]:
    values = yaml.safe_load((chart / "values.yaml").read_text())
    bad = []
    for ref, files in sorted(values_references(chart).items()):
        node: Any = values
        for part in ref.split("."):
            if not isinstance(node, dict) or part not in node:
                bad.append(f".Values.{ref} ({', '.join(sorted(files))})")
                break
            node = node[part]
    return bad


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def test_chart_yaml_declares_the_chart_and_its_postgresql_dependency() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    project = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{meta["appVersion"]}"' in project, "appVersion must follow pyproject's version"
    deps = {d["name"]: d for d in meta["dependencies"]}
    pg = deps["postgresql"]
    assert pg["repository"] and pg["version"]
    assert pg["condition"] == "postgresql.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    node: Any = values
    for part in pg["condition"].split("."):
        node = node[part]
    assert isinstance(node, bool), "the dependency's condition must name a boolean in values.yaml"


def test_every_values_reference_resolves_in_values_yaml() -> None:
    refs = values_references()
    assert len(refs) > 40, "the scan found suspiciously few .Values references"
    assert unresolved_references() == []


def test_every_value_is_used_by_a_template() -> None:
    """The reverse direction: no dead knobs (the postgresql subtree belongs to the subchart)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    refs = set(values_references())
    unused = [
        leaf for leaf in _leaf_paths(values)
        if not leaf.startswith("postgresql.primary")
        and not any(leaf == r or leaf.startswith(r + ".") for r in refs)
    ]
    assert unused == []


def test_reference_check_catches_a_typo(tmp_path: Path) -> None:
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    deployment = chart / "templates" / "api-deployment.yaml"
    text = deployment.read_text()
    assert ".Values.api.maxConcurrentJobs" in text
    deployment.write_text(text.replace(".Values.api.maxConcurrentJobs", ".Values.api.maxConcurentJobs"))
    assert unresolved_references(chart) == [".Values.api.maxConcurentJobs (api-deployment.yaml)"]
    with pytest.raises(TemplateError, match="maxConcurentJobs"):
        render_chart(SCENARIOS["bundled-postgres"], chart)


# ============================================================================ rendered chart

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    overrides = SCENARIOS[request.param]
    return request.param, chart_values(overrides), manifests(render_chart(overrides))


def test_every_template_renders_to_named_labelled_resources(scenario: Any) -> None:
    name, values, docs = scenario
    seen = set()
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d["__file__"]
        meta = d["metadata"]
        assert len(meta["name"]) <= 63 and DNS_LABEL.fullmatch(meta["name"]), meta["name"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert (d["kind"], meta["name"]) not in seen, f"duplicate {d['kind']}/{meta['name']} in {name}"
        seen.add((d["kind"], meta["name"]))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == kinds.count("Service") == 1
    assert kinds.count("Job") == int(values["migrations"]["enabled"])
    assert kinds.count("RayCluster") == int(values["ray"]["cluster"]["enabled"])


def test_secret_keys_consumed_by_workloads_exist(scenario: Any) -> None:
    name, values, docs = scenario
    rendered = {s["metadata"]["name"]: secret_data(s) for s in find(docs, "Secret")}
    existing = values["auth"]["existingSecret"]
    refs = 0
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    continue
                refs += 1
                if ref["name"] in rendered:
                    assert ref["key"] in rendered[ref["name"]], f"{where}: {ref} not in the rendered Secret"
                else:
                    assert ref["name"] == existing, f"{where}: {ref['name']} not rendered, not existingSecret"
                    assert ref["key"] in {"DATABASE_URL", "RAMP_ADMIN_TOKEN", "RAY_AUTH_TOKEN"}
    assert refs >= 2, name
    if existing:
        assert not find(docs, "Secret"), "an existing Secret replaces the chart's"


def test_api_environment_builds_the_settings_the_service_reads(
    scenario: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, values, docs = scenario
    from sqlalchemy.engine import make_url

    from service.runtime import external_auth_token, jobs_api_address

    api = api_container(docs)
    env_names = {e["name"] for e in api["env"]}
    assert unknown_env_names(env_names) == set()
    if values["auth"]["existingSecret"]:
        return  # values live in a Secret the chart does not render
    secrets = {s["metadata"]["name"]: secret_data(s) for s in find(docs, "Secret")}
    settings = settings_from_env(resolve_env(api["env"], secrets), monkeypatch)
    assert not settings.embedded and not settings.is_sqlite
    url = make_url(str(settings.database_url))
    assert url.get_backend_name() == "postgresql"
    if values["postgresql"]["enabled"]:
        assert url.password == values["postgresql"]["auth"]["password"]
        assert url.host == f"{RELEASE}-postgresql"
    # The Jobs API: our RayCluster's head Service (KubeRay: <cluster>-head-svc), or the given address.
    address = jobs_api_address(settings)
    if values["ray"]["address"]:
        assert address == values["ray"]["address"]
    else:
        cluster = one(docs, "RayCluster")["metadata"]["name"]
        assert urlparse(address).hostname == f"{cluster}-head-svc.{NAMESPACE}.svc.cluster.local"
        assert urlparse(address).port == 8265
    if values["ray"]["auth"]["mode"] == "token":
        monkeypatch.setenv("RAY_AUTH_TOKEN", resolve_env(api["env"], secrets)["RAY_AUTH_TOKEN"])
        assert external_auth_token(settings)
    # Drivers call back to the API's own Service, on the port the Service exposes.
    service = one(docs, "Service", "-api")
    public = urlparse(str(settings.public_url))
    assert public.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert public.port == service["spec"]["ports"][0]["port"]
    assert settings.max_concurrent_jobs == values["api"]["maxConcurrentJobs"]
    assert settings.max_body_bytes == values["api"]["maxBodyBytes"]
    assert settings.run_migrations is (not values["migrations"]["enabled"])
    assert str(settings.storage_dir).startswith(values["storage"]["mountPath"] + "/")


def test_api_deployment_probes_ports_and_service(scenario: Any) -> None:
    _, values, docs = scenario
    api = api_container(docs)
    port = next(p for p in api["ports"] if p["name"] == "http")
    assert port["containerPort"] == values["api"]["port"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["command"][:2] == ["rampctl", "serve"]
    assert api["command"][api["command"].index("--port") + 1] == str(values["api"]["port"])
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    service = one(docs, "Service", "-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    deployment = one(docs, "Deployment", "-api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_shared_storage_is_one_claim_at_one_path_everywhere(scenario: Any) -> None:
    _, values, docs = scenario
    storage = values["storage"]
    claims = find(docs, "PersistentVolumeClaim")
    if storage["existingClaim"]:
        assert claims == [] and (claim := storage["existingClaim"])
    else:
        (pvc,) = claims
        claim = pvc["metadata"]["name"]
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pvc["spec"]["resources"]["requests"]["storage"] == storage["size"]
    mounted = {}
    for where, spec in pod_specs(docs):
        if where.startswith("Job/"):
            continue  # migrations need no storage
        volumes = {v["name"]: v for v in spec["volumes"]}
        shared = [n for n, v in volumes.items()
                  if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        assert len(shared) == 1, where
        for c in spec["containers"]:
            paths = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == shared[0]]
            mounted[f"{where}/{c['name']}"] = paths
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for var in ("RAMP_STORAGE_DIR", "RAMP_DATA_ROOT"):
                if var in env:
                    assert env[var].startswith(storage["mountPath"] + "/"), (where, var)
    assert mounted and all(p == [storage["mountPath"]] for p in mounted.values()), mounted
    has_ray = values["ray"]["cluster"]["enabled"]
    assert any(k.startswith("RayCluster/head") for k in mounted) == has_ray


def test_raycluster_head_dashboard_and_gpu_worker_group(scenario: Any) -> None:
    _, values, docs = scenario
    ray = values["ray"]
    clusters = find(docs, "RayCluster")
    if not ray["cluster"]["enabled"]:
        assert clusters == []
        return
    (rc,) = clusters
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    assert spec["rayVersion"] == ray["version"]
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert params["dashboard-host"] == "0.0.0.0" and params["dashboard-port"] == "8265"
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams values must be strings"
    (head_c,) = head["template"]["spec"]["containers"]
    assert {"name": "dashboard", "containerPort": 8265} in head_c["ports"]
    assert {"name": "gcs-server", "containerPort": 6379} in head_c["ports"]
    assert spec["enableInTreeAutoscaling"] is ray["autoscaling"]["enabled"]
    if ray["autoscaling"]["enabled"]:
        opts = spec["autoscalerOptions"]
        assert opts["idleTimeoutSeconds"] == ray["autoscaling"]["idleTimeoutSeconds"]
        assert opts["upscalingMode"] in ("Default", "Conservative", "Aggressive")
    else:
        assert "autoscalerOptions" not in spec
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]
    want = ray["gpuWorkers"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (want["minReplicas"], want["maxReplicas"])
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] or (
        ray["autoscaling"]["enabled"] and gpu["replicas"] <= gpu["maxReplicas"]
    )
    (gpu_c,) = gpu["template"]["spec"]["containers"]
    assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == want["gpus"]
    assert gpu_c["resources"]["requests"]["nvidia.com/gpu"] == want["gpus"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu["template"]["spec"].get("tolerations", []))
    assert ("cpu" in groups) is ray["cpuWorkers"]["enabled"]
    for where, pod in pod_specs([rc]):
        (c,) = pod["containers"]
        res = c["resources"]
        assert res["limits"]["memory"], where
        # KubeRay derives the Ray node's CPU count from the limit; a request alone would not match it.
        assert res["limits"]["cpu"] == res["requests"]["cpu"], where
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"], where
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"], where


def test_ray_auth_mode_is_pinned_identically_on_ray_and_the_api(scenario: Any) -> None:
    _, values, docs = scenario
    mode = values["ray"]["auth"]["mode"]
    api_env = {e["name"]: e for e in api_container(docs)["env"]}
    assert api_env["RAMP_RAY_AUTH_MODE"]["value"] == api_env["RAY_AUTH_MODE"]["value"] == mode
    envs = [("api", api_env)]
    for rc in find(docs, "RayCluster"):
        for where, pod in pod_specs([rc]):
            envs += [(where, {e["name"]: e for e in c["env"]}) for c in pod["containers"]]
        if "autoscalerOptions" in rc["spec"]:
            envs.append(("autoscaler", {e["name"]: e for e in rc["spec"]["autoscalerOptions"]["env"]}))
    for where, env in envs:
        assert env["RAY_AUTH_MODE"]["value"] == mode, where
        token_ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert (token_ref is not None) == (mode == "token"), where
        if where != "api":
            assert unknown_env_names(set(env)) == set(), where


def test_ray_token_auth_is_on_by_default_in_the_chart() -> None:
    """Ray's Jobs API runs whatever it is sent and lists every job's environment: by default every
    Ray container, the autoscaler and the API carry the token from the release's Secret."""
    values = chart_values(SCENARIOS["bundled-postgres"])
    assert values["ray"]["auth"]["mode"] == "token"
    docs = manifests(render_chart(SCENARIOS["bundled-postgres"]))
    secret = f"{RELEASE}-ramp-orchestrator"
    assert secret_data(one(docs, "Secret", secret))["RAY_AUTH_TOKEN"]
    (rc,) = find(docs, "RayCluster")
    envs = [("api", api_container(docs)["env"]),
            ("autoscaler", rc["spec"]["autoscalerOptions"]["env"])]
    envs += [(where, c["env"]) for where, pod in pod_specs([rc]) for c in pod["containers"]]
    assert len(envs) >= 5
    for where, env in envs:
        by_name = {e["name"]: e for e in env}
        assert by_name["RAY_AUTH_MODE"]["value"] == "token", where
        ref = by_name["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret, "key": "RAY_AUTH_TOKEN"}, where
    assert {e["name"]: e for e in api_container(docs)["env"]}["RAMP_RAY_AUTH_MODE"]["value"] == "token"


def test_migrations_job_is_a_helm_hook_running_rampctl_db_upgrade(scenario: Any) -> None:
    _, values, docs = scenario
    jobs = find(docs, "Job")
    if not values["migrations"]["enabled"]:
        assert jobs == []
        assert "initContainers" not in one(docs, "Deployment")["spec"]["template"]["spec"]
        return
    (job,) = jobs
    ann = job["metadata"]["annotations"]
    hooks = set(ann["helm.sh/hook"].split(","))
    # The bundled database does not exist before the install: then the init container migrates first.
    assert hooks == ({"pre-upgrade"} if values["postgresql"]["enabled"] else {"pre-install", "pre-upgrade"})
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["command"] == ["rampctl", "db", "upgrade"]
    (db,) = [e for e in c["env"] if e["name"] == "DATABASE_URL"]
    secret_name = db["valueFrom"]["secretKeyRef"]["name"]
    if values["auth"]["existingSecret"]:
        assert secret_name == values["auth"]["existingSecret"]
        return
    # Hooks run before the release's ordinary resources exist: the Secret it reads must be a hook
    # of the same phases, created first (lower weight).
    secret = next(s for s in find(docs, "Secret") if s["metadata"]["name"] == secret_name)
    s_ann = secret["metadata"]["annotations"]
    assert set(s_ann["helm.sh/hook"].split(",")) == hooks
    assert int(s_ann["helm.sh/hook-weight"]) < int(ann.get("helm.sh/hook-weight", "0"))
    main = one(docs, "Secret", RELEASE + "-ramp-orchestrator")
    assert secret_data(secret)["DATABASE_URL"] == secret_data(main)["DATABASE_URL"]


def test_api_pods_migrate_before_the_api_starts(scenario: Any) -> None:
    _, values, docs = scenario
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    if not values["migrations"]["enabled"]:
        assert "initContainers" not in spec
        return
    (init,) = spec["initContainers"]
    assert init["command"][:2] == ["sh", "-c"]
    script = init["command"][2]
    subprocess.run(["sh", "-n", "-c", script], check=True)  # a shell syntax error fails here
    assert "rampctl db upgrade && exit 0" in script
    assert f"$(seq {values['migrations']['initAttempts']})" in script
    assert script.rstrip().endswith("exit 1"), "giving up must fail the pod, not start the API"
    (db,) = init["env"]
    assert db["name"] == "DATABASE_URL"
    api_db = next(e for e in api_container(docs)["env"] if e["name"] == "DATABASE_URL")
    assert db["valueFrom"] == api_db["valueFrom"]


def test_notes_render_with_the_admin_token_command(scenario: Any) -> None:
    name, values, _ = scenario
    notes = render_chart(SCENARIOS[name])["NOTES.txt"]
    assert "RAMP_ADMIN_TOKEN" in notes and "port-forward" in notes
    assert (values["auth"]["existingSecret"] or f"{RELEASE}-ramp-orchestrator") in notes


def test_generated_tokens_are_long_and_distinct() -> None:
    docs = manifests(render_chart(SCENARIOS["bundled-postgres"]))
    data = secret_data(one(docs, "Secret", RELEASE + "-ramp-orchestrator"))
    assert len(data["RAMP_ADMIN_TOKEN"]) >= 32 and len(data["RAY_AUTH_TOKEN"]) >= 32
    assert data["RAMP_ADMIN_TOKEN"] != data["RAY_AUTH_TOKEN"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "postgresql.auth.password is required"),
        ({"postgresql": {"enabled": False}}, "externalDatabase.url"),
        ({"postgresql": {"auth": {"password": "pw"}}, "ray": {"cluster": {"enabled": False}}}, "ray.address"),
    ],
)
def test_incomplete_values_fail_with_a_message(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        render_chart(overrides)


def test_settings_check_catches_a_number_printed_in_go_float_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drop `| int` from RAMP_MAX_BODY_BYTES: Helm would print 1.048576e+06, the service would not start."""
    chart = tmp_path / CHART.name
    shutil.copytree(CHART, chart)
    deployment = chart / "templates" / "api-deployment.yaml"
    good = "{{ .Values.api.maxBodyBytes | int | quote }}"
    assert good in deployment.read_text()
    deployment.write_text(deployment.read_text().replace(good, "{{ .Values.api.maxBodyBytes | quote }}"))
    docs = manifests(render_chart(SCENARIOS["external-postgres"], chart))
    secrets = {s["metadata"]["name"]: secret_data(s) for s in find(docs, "Secret")}
    env = resolve_env(api_container(docs)["env"], secrets)
    assert env["RAMP_MAX_BODY_BYTES"] == "1.048576e+06"
    with pytest.raises(ValueError, match="max_body_bytes"):
        settings_from_env(env, monkeypatch)


# ============================================================================ docker-compose.yml

_COMPOSE_VAR = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (${V}, ${V:-d}, ${V-d}, ${V:?err}, ${V?err}, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        return arg if op else ""

    return _COMPOSE_VAR.sub(sub, value)


COMPOSE_REQUIRED = {"RAMP_ADMIN_TOKEN": "t0ken", "RAY_AUTH_TOKEN": "ray-t0ken"}


def load_compose(env: dict[str, str] | None = None, text: str | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(text if text is not None else COMPOSE.read_text())
    return interpolate(raw, dict(COMPOSE_REQUIRED) if env is None else env)


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_argv(svc: dict[str, Any]) -> list[str]:
    cmd = svc["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


RAY_AND_API = ("api", "ray-head", "ray-worker")


def test_compose_has_the_four_services_with_healthchecks() -> None:
    services = load_compose()["services"]
    assert set(services) == {"postgres", "api", "ray-head", "ray-worker"}
    for name in ("postgres", "api", "ray-head"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    for name in ("api", "ray-head"):  # python -c snippets: they must at least compile
        test = services[name]["healthcheck"]["test"]
        assert test[1:3] == ["python", "-c"], name
        compile(test[3], f"{name}-healthcheck", "exec")
    assert "/healthz" in services["api"]["healthcheck"]["test"][3]
    assert ":8265/api/" in services["ray-head"]["healthcheck"]["test"][3]


def test_compose_start_order_waits_for_healthy_dependencies() -> None:
    services = load_compose()["services"]
    assert services["api"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "ray-head": {"condition": "service_healthy"},
    }
    assert services["ray-worker"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}


def test_compose_commands_migrate_then_serve_and_start_ray() -> None:
    services = load_compose()["services"]
    api = command_argv(services["api"])
    assert api[:2] == ["sh", "-c"]
    script = api[2]
    assert script.index("rampctl db upgrade") < script.index("rampctl serve") and "&&" in script
    serve = shlex.split(script.split("&&", 1)[1])
    assert serve[serve.index("--host") + 1] == "0.0.0.0"
    head = command_argv(services["ray-head"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    assert "--dashboard-host=0.0.0.0" in head and "--dashboard-port=8265" in head and "--port=6379" in head
    worker = command_argv(services["ray-worker"])
    assert worker[:2] == ["ray", "start"] and "--block" in worker and "--head" not in worker
    assert "--address=ray-head:6379" in worker


def test_compose_ports_published_and_workers_scalable() -> None:
    services = load_compose()["services"]
    assert "8000:8000" in services["api"]["ports"]
    assert "8265:8265" in services["ray-head"]["ports"]
    worker = services["ray-worker"]
    assert "ports" not in worker and "container_name" not in worker, "fixed ports/names break --scale"
    assert all(services[s]["image"] == services["api"]["image"] for s in RAY_AND_API), "one image for all"
    for s in ("ray-head", "ray-worker"):
        assert services[s]["shm_size"], s


def test_compose_shared_volume_is_mounted_at_the_same_path() -> None:
    compose = load_compose()
    services = compose["services"]
    mounts = {}
    for s in RAY_AND_API:
        mounts[s] = dict(v.split(":")[:2] for v in services[s]["volumes"])  # name:path[:mode]
    storage = service_env(services["api"])["RAMP_STORAGE_DIR"]
    volume = next(name for name, path in mounts["api"].items() if path == storage)
    assert volume in compose["volumes"], "a named volume, not a host path"
    assert {mounts[s].get(volume) for s in RAY_AND_API} == {storage}


def test_compose_env_names_exist_and_build_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.runtime import jobs_api_address

    compose = load_compose()
    services = compose["services"]
    for s in RAY_AND_API:
        assert unknown_env_names(set(service_env(services[s]))) == set(), s
    env = service_env(services["api"])
    settings = settings_from_env(env, monkeypatch)
    assert not settings.embedded
    assert jobs_api_address(settings) == "http://ray-head:8265"
    assert settings.admin_token == "t0ken"
    public = urlparse(str(settings.public_url))
    assert public.hostname == "api" and f"{public.port}:{public.port}" in services["api"]["ports"]
    assert settings.database_url.startswith("postgresql://ramp:")
    assert urlparse(settings.database_url).hostname == "postgres"
    pg_env = service_env(services["postgres"])
    assert urlparse(settings.database_url).password == pg_env["POSTGRES_PASSWORD"]


def test_compose_ray_auth_mode_is_the_same_for_head_workers_and_api(monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in ("disabled", "token"):
        env = {"RAMP_ADMIN_TOKEN": "x", "RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN": "rt"}
        services = load_compose(env)["services"]
        modes = {s: service_env(services[s])["RAY_AUTH_MODE"] for s in RAY_AND_API}
        assert set(modes.values()) == {mode}, modes
        assert {service_env(services[s])["RAY_AUTH_TOKEN"] for s in RAY_AND_API} == {"rt"}
        settings = settings_from_env(service_env(services["api"]), monkeypatch)
        assert settings.ray_auth_mode == mode
    defaults = load_compose()["services"]
    assert service_env(defaults["ray-head"])["RAY_AUTH_MODE"] == "token", "pinned, not left to Ray"


def test_compose_turns_ray_token_auth_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.runtime import external_auth_token

    services = load_compose()["services"]
    for s in RAY_AND_API:
        env = service_env(services[s])
        assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"]) == ("token", "ray-t0ken"), s
    api = service_env(services["api"])
    settings = settings_from_env(api, monkeypatch)
    assert settings.ray_auth_mode == "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", api["RAY_AUTH_TOKEN"])
    assert external_auth_token(settings) == "ray-t0ken", "the API sends the token to Ray's Jobs API"
    # The head's healthcheck authenticates too (it must pass once auth is on).
    assert "RAY_AUTH_TOKEN" in services["ray-head"]["healthcheck"]["test"][3]
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN"):
        load_compose({"RAMP_ADMIN_TOKEN": "t0ken"})


def test_compose_requires_an_admin_token() -> None:
    with pytest.raises(ValueError, match="RAMP_ADMIN_TOKEN"):
        load_compose({"RAY_AUTH_TOKEN": "rt"})


def test_compose_gpu_reservation_is_valid_once_uncommented() -> None:
    text = COMPOSE.read_text()
    block = re.search(r"(?m)^(    # deploy:\n(?:    #  .*\n)+)", text)
    assert block, "the commented GPU reservation of ray-worker is missing"
    enabled = text.replace(block.group(1), re.sub(r"(?m)^    # ", "    ", block.group(1)))
    worker = load_compose(text=enabled)["services"]["ray-worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "deploy" not in load_compose()["services"]["ray-worker"], "GPUs stay opt-in"


# ============================================================================ Dockerfile, .dockerignore


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", DOCKERFILE.read_text()))


def test_dockerfile_builds_one_image_for_api_and_ray() -> None:
    text = DOCKERFILE.read_text()
    args = dockerfile_args()
    (base,) = re.findall(r"(?m)^FROM (\S+)", text)
    assert base.replace("${PYTHON_VERSION}", args["PYTHON_VERSION"]) == "python:3.11-slim"
    assert args["TORCH_VARIANT"] == "cpu"
    assert "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"] and '--index-url "${TORCH_INDEX_URL}"' in text
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in setup
    assert f"torchvision=={args['TORCHVISION_VERSION']}" in setup
    # editable: service/db/migrate.py finds migrations/ next to the code
    assert re.search(r"pip install[^\n]*-e \.", text)
    assert "COPY . ." in text
    assert "wget" in text, "KubeRay's default Ray pod probes call wget"
    user = re.findall(r"(?m)^USER (\S+)", text)
    assert user and user[-1] not in ("root", "0")
    assert {"8000", "8265"} <= set(re.search(r"(?m)^EXPOSE (.+)$", text).group(1).split())
    cmd = json.loads(re.search(r"(?m)^CMD (.+)$", text).group(1))
    assert cmd[:2] == ["rampctl", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    env_names = set(re.findall(r"\b(RAMP_\w+|RAY_\w+)=", text)) - set(args)
    assert env_names and unknown_env_names(env_names) == set()


def test_ray_version_is_the_same_in_image_compose_and_chart() -> None:
    image = dockerfile_args()["RAY_VERSION"]
    chart = yaml.safe_load((CHART / "values.yaml").read_text())["ray"]["version"]
    compose = load_compose()["services"]["api"]["build"]["args"]["RAY_VERSION"]
    assert image == chart == compose


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: '*' and '?' stay within a path element, '**/' spans directories."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``path`` out (a pattern matching a parent directory
    excludes everything below it; the last matching pattern wins, '!' re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _dockerignore_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "migrations/env.py", "migrations/versions/0001_initial.py",
              "service/main.py", "service/db/migrate.py", "workers/jobs/driver.py", "rampctl/main.py"]
    assert [p for p in needed if _dockerignored(p, patterns)] == []
    junk = (".venv/bin/python", ".git/HEAD", "service/__pycache__/main.cpython-311.pyc", "tests/test_x.py")
    for junk_path in junk:
        assert _dockerignored(junk_path, patterns), junk_path
