"""``/docs`` and ``/openapi.json``: the API document, and the same as one self-contained HTML
page (no scripts, no CDN).

The page is rendered on the server from the document ``/openapi.json`` serves, so it reads
offline and cannot drift from the API. Its example request is built from the served state:
the newest stored hour of a location, so pasting it works as long as the data is current
(``tests/serving/test_examples.py``), and the URLs are the ones the reader used.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

from flask import Blueprint, Response, current_app, request

from serving.problems import json_response
from serving.schemas import openapi

STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1b1f23;line-height:1.45}
code,pre{font-family:ui-monospace,monospace;font-size:.9em}
pre{background:#f5f6f8;padding:.75rem;overflow-x:auto;border-radius:4px}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{border:1px solid #d8dde3;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f2f5}
.op{border-top:2px solid #d8dde3;margin-top:2rem;padding-top:.5rem}
.method{font-weight:bold;text-transform:uppercase;padding:.1rem .4rem;border-radius:3px;
background:#e6eefc}
"""

PROBLEMS = [
    ("malformed-json", "400", "The body is empty, not valid JSON, or not UTF-8."),
    ("unknown-location", "404", "The location id is not in the configuration: see "
                                "GET /v1/locations."),
    ("no-batch-forecast", "404", "The latest batch forecast has no row for the location."),
    ("", "413", "The body is larger than the configured limit (AQ_SERVING_MAX_BODY_BYTES)."),
    ("unsupported-media-type", "415", "Send Content-Type: application/json (UTF-8)."),
    ("invalid-request", "422", "The body or a query parameter violates the schema, or holds "
                               "impossible values (negative concentrations, humidity above 100 %,"
                               " times in the future or off the hour, duplicate hours, hours "
                               "older than the feature window). errors[] names each path."),
    ("insufficient-inputs", "422", "Too few of the model's inputs are known, or a target was "
                                   "not observed recently enough (params.yaml forecast.*, the "
                                   "batch pipeline's rule): send the newest observations."),
    ("not-ready", "503", "No verified champion loaded yet, or no batch forecasts yet."),
]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _type(schema: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{_esc(name)}">{_esc(name)}</a>'
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_esc(v)}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{_esc(schema['const'])}</code>"
    kind = schema.get("type", "any")
    if schema.get("format"):
        kind += f" ({schema['format']})"
    return _esc(kind)


def _constraints(schema: dict) -> str:
    parts = []
    for sub in [schema, *schema.get("anyOf", [])]:
        for key, label in (("minimum", "&ge;"), ("maximum", "&le;"), ("minLength", "length &ge;"),
                           ("maxLength", "length &le;"), ("maxItems", "items &le;"),
                           ("pattern", "pattern")):
            if key in sub:
                parts.append(f"{label} <code>{_esc(sub[key])}</code>")
    return ", ".join(parts)


def _schema_table(name: str, schema: dict) -> str:
    rows = []
    required = set(schema.get("required", []))
    for prop, sub in schema.get("properties", {}).items():
        rows.append(
            f"<tr><td><code>{_esc(prop)}</code>{' (required)' if prop in required else ''}</td>"
            f"<td>{_type(sub)}</td><td>{_constraints(sub)}</td>"
            f"<td>{_esc(sub.get('description', ''))}</td></tr>")
    extra = (" No other fields are accepted." if schema.get("additionalProperties") is False
             else "")
    return (f'<section id="schema-{_esc(name)}"><h3>{_esc(name)}</h3>'
            f"<p>{_esc(schema.get('description', ''))}{extra}</p>"
            "<table><tr><th>field</th><th>type</th><th>constraints</th><th>meaning</th></tr>"
            + "".join(rows) + "</table></section>")


def _operation(path: str, method: str, op: dict) -> str:
    params = "".join(
        f"<tr><td><code>{_esc(p['name'])}</code> ({_esc(p['in'])})</td>"
        f"<td>{_type(p.get('schema', {}))}</td><td>{_esc(p.get('description', ''))}</td></tr>"
        for p in op.get("parameters", []))
    body = ""
    if "requestBody" in op:
        content = op["requestBody"]["content"]
        media, spec = next(iter(content.items()))
        body = (f"<p>Body: <code>{_esc(media)}</code>, {_type(spec['schema'])} "
                f"({_esc(op['requestBody'].get('description', ''))})</p>")
    responses = "".join(
        f"<tr><td>{_esc(code)}</td><td>{_esc(r.get('description', ''))}</td><td>"
        + ", ".join(f"<code>{_esc(m)}</code> {_type(s.get('schema', {})) if s else ''}"
                    for m, s in r.get("content", {}).items())
        + "</td></tr>"
        for code, r in op.get("responses", {}).items())
    anchor = op.get("operationId", "")
    return (f'<section class="op" id="{_esc(anchor)}"><h2><span class="method">{_esc(method)}'
            f"</span> <code>{_esc(path)}</code></h2><p>{_esc(op.get('summary', ''))}</p>"
            + (f"<table><tr><th>parameter</th><th>type</th><th>meaning</th></tr>{params}</table>"
               if params else "")
            + body
            + "<table><tr><th>status</th><th>meaning</th><th>content</th></tr>"
            + responses + "</table></section>")


EXAMPLE = "newest_hour"  # the name of the request example in the document
MAX_CACHED_PAGES = 8  # rendered pages kept, one per URL readers used (nginx passes the Host)


def example_request(state: Any) -> dict[str, Any]:
    """The documented on-demand request: a location's newest stored hour, with new values of
    a few variables (they replace the stored ones). Before any history is stored, the hour
    before now."""
    ids = list(state.ctx.params.location_ids)
    stored = [loc for loc in ids if loc in state.history and len(state.history[loc])]
    location = stored[0] if stored else (ids[0] if ids else "berlin")
    if stored:
        hour = int(state.history[location].hours[-1])
    else:
        hour = int(dt.datetime.now(dt.UTC).timestamp()) // 3600 - 1
    time = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"location_id": location, "observations": [
        {"time": time, "pm2_5": 12.5, "temperature_2m": 3.1, "relative_humidity_2m": 81.0}]}


def document_example(document: dict) -> dict[str, Any]:
    post = document["paths"]["/v1/forecasts"]["post"]
    return post["requestBody"]["content"]["application/json"]["examples"][EXAMPLE]["value"]


def render_docs(document: dict, base_url: str = "http://127.0.0.1:8000") -> str:
    info = document["info"]
    base_url = base_url.rstrip("/")
    example = document_example(document)
    example_id = example["location_id"]
    body = json.dumps(example, indent=2)
    examples = (
        "<h2 id=\"examples\">Examples</h2><pre>"
        f"curl -s {_esc(base_url)}/v1/locations\n"
        f"curl -s '{_esc(base_url)}/v1/forecasts/{_esc(example_id)}?target=pm2_5'\n"
        f"curl -s -X POST {_esc(base_url)}/v1/forecasts \\\n"
        "     -H 'Content-Type: application/json' \\\n"
        f"     -d '{_esc(json.dumps(example))}'</pre>"
        "<p>Request body of the last one (the newest hour this server stores for "
        f"<code>{_esc(example_id)}</code>: the values sent replace the stored ones):</p>"
        f"<pre>{_esc(body)}</pre>")
    problems = ("<h2 id=\"errors\">Errors</h2><p>Every error is an RFC 9457 problem "
                "(<code>application/problem+json</code>): <code>type</code>, <code>title</code>,"
                " <code>status</code>, <code>detail</code>, <code>instance</code> and, for "
                "invalid input, <code>errors</code> (<code>path</code>, <code>message</code>, "
                "<code>type</code>) naming every field.</p><table><tr><th>type</th>"
                "<th>status</th><th>when</th></tr>"
                + "".join(f'<tr id="{_esc(slug)}"><td><code>'
                          f'{_esc("/docs#" + slug) if slug else "about:blank"}'
                          f"</code></td><td>{code}</td><td>{_esc(text)}</td></tr>"
                          for slug, code, text in PROBLEMS)
                + "</table>")
    operations = "".join(_operation(path, method, op)
                         for path, item in document["paths"].items()
                         for method, op in item.items())
    schemas = "".join(_schema_table(name, schema)
                      for name, schema in document["components"]["schemas"].items())
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(info['title'])}</title><style>{STYLE}</style></head><body>"
            f"<h1>{_esc(info['title'])}</h1><p>{_esc(info['description'])}</p>"
            "<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> "
            f"(OpenAPI {_esc(document['openapi'])}).</p>"
            + examples + problems + operations
            + "<h2 id=\"schemas\">Schemas</h2>" + schemas + "</body></html>")


blueprint = Blueprint("docs", __name__)


def _document() -> dict:
    """The document with the current example (rebuilt when the newest stored hour moves)."""
    state = current_app.extensions["aq_serving"]
    example = example_request(state)
    cache = current_app.extensions.setdefault("aq_docs", {})
    if cache.get("example") != example:
        cache.clear()
        cache["example"] = example
        cache["openapi"] = openapi(state.settings.max_body_bytes, example)
    return cache["openapi"]


@blueprint.get("/openapi.json", endpoint="openapi", provide_automatic_options=False)
def openapi_json() -> Response:
    return json_response(_document())


@blueprint.get("/docs", endpoint="docs", provide_automatic_options=False)
def docs() -> Response:
    document = _document()
    pages = current_app.extensions["aq_docs"].setdefault("html", {})
    if request.host_url not in pages:
        if len(pages) >= MAX_CACHED_PAGES:  # the Host header is the client's: bounded
            pages.clear()
        pages[request.host_url] = render_docs(document, request.host_url)
    return Response(pages[request.host_url], mimetype="text/html")
