"""JMeter test plans (.jmx) in and out.

``read_jmx`` turns a plan into the raw tables of a scenario (what a .toml file holds), so the
same validation applies; ``write_jmx`` does the reverse for closed-model scenarios. Parsing
uses the standard library's ElementTree, refusing any DOCTYPE or entity declaration (the
XML "billion laughs" family), which JMeter never writes.

Mapping: a Thread Group is the closed model (threads → users, ramp-up, loops or the
scheduler's duration; "continue forever" needs a duration); each enabled HTTP sampler is a
request, with HTTP Request Defaults, Header Managers and query arguments applied; Simple and
Transaction Controllers are flattened in order; a Constant Timer is think time (a Uniform
Random Timer its mean). One JMeter iteration runs every sampler once, so loops are
multiplied by the number of samplers. Anything else is listed once as not supported.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from harness.config import Scenario
from harness.errors import ConfigError
from harness.interop import parse_xml

SAMPLERS = {"HTTPSamplerProxy", "HTTPSampler", "HTTPSampler2"}
FLATTENED = {"GenericController", "TransactionController"}
KNOWN = SAMPLERS | FLATTENED | {"TestPlan", "ThreadGroup", "HeaderManager", "ConfigTestElement", "Arguments",
                                "ConstantTimer", "UniformRandomTimer", "hashTree"}
VAR = re.compile(r"\$\{([^}]*)\}")
PROPERTY = re.compile(r"__P\(\s*([^,)]+?)\s*(?:,\s*([^)]*?)\s*)?\)")


@dataclass
class Plan:
    """What was read from a .jmx, before it becomes scenario tables."""

    name: str = "jmeter"
    variables: dict[str, str] = field(default_factory=dict)
    thread_group: ET.Element | None = None
    defaults: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    samplers: list[tuple[ET.Element, dict[str, str]]] = field(default_factory=list)  # (sampler, its own headers)
    think_ms: float = 0.0
    ignored: list[str] = field(default_factory=list)


def _props(el: ET.Element) -> dict[str, str]:
    """The element's direct string/int/long/bool props by name."""
    out = {}
    for child in el:
        if child.tag in ("stringProp", "intProp", "longProp", "boolProp") and child.get("name"):
            out[child.get("name")] = (child.text or "").strip()
    return out


def _arguments(el: ET.Element | None) -> list[tuple[str, str]]:
    """(name, value) pairs of an Arguments elementProp/collectionProp."""
    if el is None:
        return []
    out = []
    for arg in el.iter("elementProp"):
        p = _props(arg)
        if "Argument.name" in p or "Argument.value" in p:
            out.append((p.get("Argument.name", ""), p.get("Argument.value", "")))
    return out


def _children(tree: ET.Element) -> list[tuple[ET.Element, ET.Element | None]]:
    """(element, its hashTree of children) pairs, as JMeter lays them out."""
    items = list(tree)
    out = []
    for i, el in enumerate(items):
        if el.tag == "hashTree":
            continue
        nxt = items[i + 1] if i + 1 < len(items) and items[i + 1].tag == "hashTree" else None
        out.append((el, nxt))
    return out


def _walk(plan: Plan, tree: ET.Element | None, inherited_headers: dict[str, str], source: str) -> None:
    if tree is None:
        return
    local_headers = dict(inherited_headers)
    pending = _children(tree)
    # config elements and timers apply to their whole scope, wherever they sit in it
    for el, _ in pending:
        if el.get("enabled", "true") == "false":
            continue
        if el.tag == "HeaderManager":
            for h in el.iter("elementProp"):
                p = _props(h)
                if p.get("Header.name"):
                    local_headers[p["Header.name"]] = p.get("Header.value", "")
        elif el.tag == "ConfigTestElement" and "HttpDefaults" in (el.get("guiclass") or ""):
            plan.defaults.update({k: v for k, v in _props(el).items() if v})
            plan.defaults["_args"] = "&".join(f"{n}={v}" for n, v in _arguments(el))
        elif el.tag == "Arguments":
            plan.variables.update(dict(_arguments(el)))
        elif el.tag == "ConstantTimer":
            plan.think_ms = float(_props(el).get("ConstantTimer.delay") or 0)
        elif el.tag == "UniformRandomTimer":
            p = _props(el)
            plan.think_ms = float(p.get("ConstantTimer.delay") or 0) + float(p.get("RandomTimer.range") or 0) / 2
            plan.ignored.append(
                f"approximated: UniformRandomTimer ({el.get('testname')}) as its mean, {plan.think_ms:g} ms"
            )
    for el, sub in pending:
        if el.get("enabled", "true") == "false":
            continue
        if el.tag == "ThreadGroup":
            if plan.thread_group is not None:
                plan.ignored.append(f"not supported, ignored: a second ThreadGroup ({el.get('testname')})")
                continue
            plan.thread_group = el
            _walk(plan, sub, local_headers, source)
        elif el.tag in SAMPLERS:
            own = dict(local_headers)
            for child, _ in _children(sub) if sub is not None else []:
                if child.tag == "HeaderManager" and child.get("enabled", "true") != "false":
                    for h in child.iter("elementProp"):
                        p = _props(h)
                        if p.get("Header.name"):
                            own[p["Header.name"]] = p.get("Header.value", "")
                elif child.tag not in KNOWN and child.get("enabled", "true") != "false":
                    plan.ignored.append(f"not supported, ignored: {child.tag} ({child.get('testname')})")
            plan.samplers.append((el, own))
        elif el.tag in FLATTENED:
            _walk(plan, sub, local_headers, source)
        elif el.tag == "TestPlan":
            plan.name = el.get("testname") or plan.name
            udv = next((e for e in el.iter("elementProp") if e.get("name") == "TestPlan.user_defined_variables"), None)
            plan.variables.update(dict(_arguments(udv)))
            _walk(plan, sub, local_headers, source)
        elif el.tag not in KNOWN:
            plan.ignored.append(f"not supported, ignored: {el.tag} ({el.get('testname')})")


def _parse(path: Path) -> ET.Element:
    root = parse_xml(path, "test plan")
    if root.tag != "jmeterTestPlan":
        raise ConfigError(
            f"{path}: the root element is <{root.tag}>, not <jmeterTestPlan>; is this a JMeter .jmx file?"
        )
    return root


def read_jmx(path: str | Path, properties: dict[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(raw scenario tables, notes on what was ignored or approximated) for a .jmx test plan."""
    p = Path(path)
    root = _parse(p)
    plan = Plan()
    _walk(plan, root.find("hashTree"), {}, str(p))
    if plan.thread_group is None:
        raise ConfigError(f"{p}: no enabled Thread Group; the plan needs one to say how many users run")
    if not plan.samplers:
        raise ConfigError(f"{p}: no enabled HTTP Request sampler; add one for the harness to send")
    resolve = _resolver(p, plan.variables, properties or {})
    tg = _props(plan.thread_group)
    loop_ctl = next(
        (e for e in plan.thread_group.iter("elementProp") if e.get("name") == "ThreadGroup.main_controller"), None
    )
    lc = _props(loop_ctl) if loop_ctl is not None else {}
    users = int(resolve(tg.get("ThreadGroup.num_threads", "1")) or 1)
    ramp = float(resolve(tg.get("ThreadGroup.ramp_time", "0")) or 0)
    forever = lc.get("LoopController.continue_forever") == "true" or resolve(lc.get("LoopController.loops", "1")) in (
        "-1",
        "",
    )
    loops = 0 if forever else int(resolve(lc.get("LoopController.loops", "1")) or 1)
    duration = (
        float(resolve(tg.get("ThreadGroup.duration", "") or "0") or 0)
        if tg.get("ThreadGroup.scheduler") == "true"
        else 0.0
    )
    if not loops and not duration:
        raise ConfigError(
            f"{p}: the Thread Group loops forever with no scheduler duration; set a loop count or a duration"
        )
    per_iteration = len(plan.samplers)
    requests = _merge([_request(s, own, plan.defaults, resolve) for s, own in plan.samplers])
    load: dict[str, Any] = {"model": "closed", "users": users, "ramp_up": ramp}
    if loops:
        load["loops"] = loops * per_iteration  # one JMeter iteration runs every sampler once
    if duration:
        load["duration"] = duration
    if plan.think_ms:
        load["think_time"] = plan.think_ms / 1000.0
    raw = {"name": re.sub(r"[^A-Za-z0-9_-]+", "_", plan.name).strip("_") or p.stem, "load": load, "requests": requests}
    return raw, list(dict.fromkeys(plan.ignored))


def _merge(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identical samplers become one request with a weight (how write_jmx spells a weight)."""
    out: list[dict[str, Any]] = []
    for r in requests:
        same = next((o for o in out if {k: v for k, v in o.items() if k != "weight"} == r), None)
        if same is not None:
            same["weight"] = same.get("weight", 1) + 1
        else:
            out.append(dict(r))
    return out


def _resolver(path: Path, variables: dict[str, str], properties: dict[str, str]) -> Callable[[str], str]:
    def resolve(text: str, depth: int = 0) -> str:
        def sub(m: re.Match) -> str:
            expr = m.group(1)
            prop = PROPERTY.fullmatch(expr)
            if prop:
                name, default = prop.group(1), prop.group(2)
                if name in properties:
                    return properties[name]
                if default is None:
                    raise ConfigError(f"{path}: ${{{expr}}} has no default and property {name!r} is not set")
                return default
            if expr in variables:
                return resolve(variables[expr], depth + 1) if depth < 10 else variables[expr]
            raise ConfigError(
                f"{path}: variable ${{{expr}}} is not defined; add it to the Test Plan's user defined variables"
            )

        return VAR.sub(sub, text or "")

    return resolve


def _request(el: ET.Element, headers: dict[str, str], defaults: dict[str, str], resolve: Any) -> dict[str, Any]:
    p = {
        **{k: v for k, v in defaults.items() if k.startswith("HTTPSampler.")},
        **{k: v for k, v in _props(el).items() if v},
    }
    method = resolve(p.get("HTTPSampler.method", "GET")).upper()
    path = resolve(p.get("HTTPSampler.path", "/")) or "/"
    if "://" in path:  # a full URL in the path field: keep its path and query
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if not path.startswith("/"):
        path = "/" + path
    args_el = next((e for e in el.iter("elementProp") if e.get("name") == "HTTPsampler.Arguments"), None)
    args = [(resolve(n), resolve(v)) for n, v in _arguments(args_el)]
    name = el.get("testname") or ""
    req: dict[str, Any] = {"path": path, "method": method}
    if name and name != f"{method} {path}":
        req["name"] = name
    if p.get("HTTPSampler.postBodyRaw") == "true" and args:
        req["body"] = args[0][1]
    elif args and method in ("POST", "PUT", "PATCH"):
        req["body"] = urlencode(args)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    elif args:
        req["path"] = path + ("&" if "?" in path else "?") + urlencode(args)
    if headers:
        req["headers"] = {k: resolve(v) for k, v in headers.items()}
    return req


def write_jmx(scenario: Scenario) -> str:
    """A JMeter 5 test plan running the same closed-model load against ${__P(host,127.0.0.1)}:${__P(port,8000)}."""
    load = scenario.load
    if load.model != "closed":
        raise ConfigError(
            f"{scenario.source or scenario.name}: only closed-model scenarios map onto a JMeter Thread Group; "
            "an open arrival rate needs a plugin JMeter does not ship"
        )
    per_iteration = sum(r.weight for r in scenario.requests)
    if load.loops and load.loops % per_iteration:
        raise ConfigError(f"loops = {load.loops} is not a multiple of the requests per iteration ({per_iteration}); "
                          "JMeter runs every sampler once per loop")
    loops = load.loops // per_iteration if load.loops else -1
    samplers = []
    for r in scenario.requests:
        path, _, query = r.path.partition("?")
        header = ""
        if r.headers:
            rows = "".join(
                f'<elementProp name="" elementType="Header"><stringProp name="Header.name">{escape(k)}</stringProp>'
                f'<stringProp name="Header.value">{escape(v)}</stringProp></elementProp>' for k, v in r.headers.items())
            header = (
                '<HeaderManager guiclass="HeaderPanel" testclass="HeaderManager" testname="HTTP Header Manager" '
                'enabled="true">'
                f'<collectionProp name="HeaderManager.headers">{rows}</collectionProp></HeaderManager><hashTree/>'
            )
        args = ""
        if r.body:
            args = (
                '<elementProp name="" elementType="HTTPArgument"><boolProp '
                'name="HTTPArgument.always_encode">false</boolProp>'
                f'<stringProp name="Argument.value">{escape(r.body)}</stringProp><stringProp '
                'name="Argument.metadata">=</stringProp></elementProp>'
            )
        sampler = (
            '<HTTPSamplerProxy guiclass="HttpTestSampleGui" testclass="HTTPSamplerProxy" '
            f'testname="{escape(r.label, {chr(34): "&quot;"})}" enabled="true">'
            + ('<boolProp name="HTTPSampler.postBodyRaw">true</boolProp>' if r.body else "")
            + '<elementProp name="HTTPsampler.Arguments" elementType="Arguments"><collectionProp '
            f'name="Arguments.arguments">{args}</collectionProp></elementProp>'
            f'<stringProp name="HTTPSampler.path">{escape(path + ("?" + query if query else ""))}</stringProp>'
            f'<stringProp name="HTTPSampler.method">{r.method}</stringProp>'
            '<boolProp name="HTTPSampler.follow_redirects">true</boolProp><boolProp '
            'name="HTTPSampler.use_keepalive">true</boolProp>'
            f'</HTTPSamplerProxy><hashTree>{header}</hashTree>'
        )
        samplers.extend([sampler] * r.weight)
    timer = (
        f'<ConstantTimer guiclass="ConstantTimerGui" testclass="ConstantTimer" testname="Think time" enabled="true">'
        '<stringProp '
        f'name="ConstantTimer.delay">{round(load.think_time_s * 1000)}</stringProp></ConstantTimer><hashTree/>'
        if load.think_time_s
        else ""
    )
    scheduler = "true" if load.duration_s else "false"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<jmeterTestPlan version="1.2" properties="5.0" jmeter="5.6.3">
  <hashTree>
    <TestPlan guiclass="TestPlanGui" testclass="TestPlan" testname="{escape(scenario.name)}" enabled="true">
      <elementProp name="TestPlan.user_defined_variables" elementType="Arguments">
        <collectionProp name="Arguments.arguments"/>
      </elementProp>
    </TestPlan>
    <hashTree>
      <ConfigTestElement guiclass="HttpDefaultsGui" testclass="ConfigTestElement" testname="HTTP Request Defaults"
          enabled="true">
        <stringProp name="HTTPSampler.domain">${{__P(host,127.0.0.1)}}</stringProp>
        <stringProp name="HTTPSampler.port">${{__P(port,8000)}}</stringProp>
        <stringProp name="HTTPSampler.protocol">http</stringProp>
      </ConfigTestElement>
      <hashTree/>
      <ThreadGroup guiclass="ThreadGroupGui" testclass="ThreadGroup" testname="{escape(scenario.name)} users"
          enabled="true">
        <elementProp name="ThreadGroup.main_controller" elementType="LoopController">
          <boolProp name="LoopController.continue_forever">false</boolProp>
          <stringProp name="LoopController.loops">{loops}</stringProp>
        </elementProp>
        <stringProp name="ThreadGroup.num_threads">{load.users}</stringProp>
        <stringProp name="ThreadGroup.ramp_time">{load.ramp_up_s:g}</stringProp>
        <boolProp name="ThreadGroup.scheduler">{scheduler}</boolProp>
        <stringProp name="ThreadGroup.duration">{f"{load.duration_s:g}" if load.duration_s else ""}</stringProp>
      </ThreadGroup>
      <hashTree>
        {timer}{"".join(samplers)}
      </hashTree>
    </hashTree>
  </hashTree>
</jmeterTestPlan>
"""
