"""Tests for neuronlib.viewer: validation, a self-contained and injection-safe HTML page built from the
package's asset files and locked by a hash-based Content-Security-Policy (checked in headless Chromium when
available), and the static matplotlib figure.

Chromium: /usr/bin/chromium (Debian package `chromium`). Its tests are skipped only when it is absent
and the environment variable CI is not set; under CI a missing chromium is a failure.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import io
import json
import math
import os
import re
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from neuronlib import viewer  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "</script><script>document.body.setAttribute('data-pwned','1');alert(1)</script><!-- \u2028 ]]>"


# ------------------------------------------------------------------------------------------------
# sample graphs
# ------------------------------------------------------------------------------------------------

def small_graph(description: str = "top tokens: ' Austin', ' Texas'") -> dict:
    tokens = ["<bos>", "Dallas", " is", " in"]
    nodes = [
        {"id": "e1", "site": "embed", "layer": -1, "position": 1, "token": "Dallas", "unit": -1, "sign": "",
         "score": 1.5, "label": "emb:Dallas", "group": None, "description": "input embedding"},
        {"id": "n1", "site": "mlp_acts", "layer": 0, "position": 1, "token": "Dallas", "unit": 17, "sign": "+",
         "score": 0.8, "label": "L0/N17+", "group": "Dallas/Texas cities", "description": description},
        {"id": "n2", "site": "mlp_acts", "layer": 1, "position": 1, "token": "Dallas", "unit": 5, "sign": "-",
         "score": -0.4, "label": "L1/N5-", "group": "Texas", "description": ""},
        {"id": "n3", "site": "mlp_acts", "layer": 1, "position": 3, "token": " in", "unit": 99, "sign": "+",
         "score": 0.3, "label": "L1/N99+", "group": "Texas", "description": "say Texas"},
        {"id": "n4", "site": "mlp_acts", "layer": 2, "position": 3, "token": " in", "unit": 8079, "sign": "-",
         "score": 0.9, "label": "L2/N8079-", "group": "say a capital", "description": "capital"},
        {"id": "n5", "site": "mlp_acts", "layer": 2, "position": 0, "token": "<bos>", "unit": 3, "sign": "+",
         "score": 0.05, "label": "L2/N3+", "group": None, "description": ""},
        {"id": "out", "site": "logit", "layer": 3, "position": 3, "token": " in", "unit": -1, "sign": "",
         "score": 2.0, "label": "top-5 logits", "group": None, "description": "metric"},
    ]
    edges = [
        {"source": "e1", "target": "n1", "weight": 1.2},
        {"source": "n1", "target": "n2", "weight": -0.5},
        {"source": "n1", "target": "n3", "weight": 0.7},
        {"source": "n2", "target": "n4", "weight": 0.2},
        {"source": "n3", "target": "n4", "weight": 0.9},
        {"source": "n4", "target": "out", "weight": 1.1},
        {"source": "e1", "target": "out", "weight": -0.05},
    ]
    meta = {"title": "Dallas test circuit", "prompt": "".join(tokens), "tokens": tokens, "n_layers": 3,
            "metric": "sum of top-5 logits"}
    return {"nodes": nodes, "edges": edges, "meta": meta}


def evil_graph() -> dict:
    g = small_graph(description=EVIL)
    g["nodes"][2]["label"] = EVIL
    g["nodes"][3]["group"] = "grp " + EVIL
    g["nodes"][4]["token"] = EVIL
    g["meta"]["title"] = "title " + EVIL
    g["meta"]["prompt"] = "prompt " + EVIL
    return g


# ------------------------------------------------------------------------------------------------
# (a) validation
# ------------------------------------------------------------------------------------------------

def _mutated(fn):
    g = copy.deepcopy(small_graph())
    fn(g)
    return g


@pytest.mark.parametrize("mutate, match", [
    (lambda g: g["nodes"].append(dict(g["nodes"][1])), r"duplicate node id 'n1'"),
    (lambda g: g["edges"].append({"source": "n1", "target": "ghost", "weight": 1.0}),
     r"target 'ghost' is not a node id"),
    (lambda g: g["edges"].append({"source": "nope", "target": "n1", "weight": 1.0}), r"source 'nope' is not a node id"),
    (lambda g: g["edges"][0].update(weight=float("nan")), r"weight must be finite"),
    (lambda g: g["edges"][0].update(weight=float("inf")), r"weight must be finite"),
    (lambda g: g["edges"][0].update(weight="heavy"), r"weight must be a finite number"),
    (lambda g: g["edges"][0].pop("weight"), r"missing 'weight'"),
    (lambda g: g["edges"].append({"source": "n1", "target": "n1", "weight": 1.0}), r"self loop"),
    (lambda g: g["edges"].append(dict(g["edges"][0])), r"duplicate edge 'e1' -> 'n1'"),
    (lambda g: g["nodes"][1].update(score=float("nan")), r"node 'n1': score must be finite"),
    (lambda g: g["nodes"][1].update(layer=1.5), r"node 'n1': layer must be an integer"),
    (lambda g: g["nodes"][1].update(layer=-2), r"node 'n1': layer must be >= -1"),
    (lambda g: g["nodes"][1].update(layer=7), r"node 'n1': layer 7 exceeds meta\['n_layers'\] = 3"),
    (lambda g: g["nodes"][1].pop("position"), r"node 'n1': missing 'position'"),
    (lambda g: g["nodes"][1].update(position=9), r"node 'n1': position 9 is out of range"),
    (lambda g: g["nodes"][1].update(sign="±"), r"node 'n1': sign must be"),
    (lambda g: g["nodes"][1].pop("id"), r"nodes\[1\]\['id'\] is missing"),
    (lambda g: g["nodes"][1].update(id=""), r"non-empty"),
    (lambda g: g["meta"].update(tokens="Dallas is in"), r"meta\['tokens'\] must be a list of str"),
    (lambda g: g["meta"].update(n_layers="many"), r"meta\['n_layers'\] must be an integer"),
])
def test_validation_errors(mutate, match):
    g = _mutated(mutate)
    with pytest.raises(ValueError, match=match):
        viewer.graph_to_json(g["nodes"], g["edges"], g["meta"])
    with pytest.raises(ValueError, match=match):  # render_html validates too
        viewer.render_html(g)


def test_validation_bad_containers():
    with pytest.raises(ValueError, match="nodes"):
        viewer.graph_to_json({"id": "x"}, [], {})
    with pytest.raises(ValueError, match="meta must be a dict"):
        viewer.graph_to_json([], [], ["not", "a", "dict"])
    with pytest.raises(ValueError, match="'nodes' key"):
        viewer.render_html({"edges": []})


def test_normalised_json_and_defaults():
    g = small_graph()
    out = viewer.graph_to_json(g["nodes"], g["edges"], g["meta"])
    assert out["schema"] == viewer.SCHEMA_VERSION
    json.dumps(out, allow_nan=False)  # strictly JSON-serialisable
    assert [n["id"] for n in out["nodes"]] == [n["id"] for n in g["nodes"]]
    assert out["meta"]["n_layers"] == 3 and out["meta"]["tokens"] == g["meta"]["tokens"]
    # idempotent: normalising the normalised graph gives the same dict
    assert viewer.graph_to_json(out) == out
    # minimal input: defaults and inferred meta
    mini = viewer.graph_to_json([{"id": 1, "layer": 0, "position": 2, "token": "x"},
                                 {"id": 2, "layer": 1, "position": 2, "site": "logit"}],
                                [{"source": 1, "target": 2, "weight": 0.5}], None)
    a, b = mini["nodes"]
    assert a["id"] == "1" and a["label"] == "1" and a["group"] is None and a["score"] == 0.0 and a["sign"] == ""
    assert mini["meta"]["tokens"] == ["", "", "x"] and mini["meta"]["n_layers"] == 1
    assert b["token"] == "x"  # filled from the inferred tokens


def test_dataframe_input_matches_dicts():
    g = small_graph()
    ndf = pd.DataFrame(g["nodes"])
    edf = pd.DataFrame(g["edges"])
    from_df = viewer.graph_to_json(ndf, edf, g["meta"])
    from_dicts = viewer.graph_to_json(g["nodes"], g["edges"], g["meta"])
    assert from_df == from_dicts  # numpy scalars converted, NaN/None groups -> None
    # the graph dict may hold DataFrames, and a (nodes, edges, meta) tuple works too
    assert viewer.graph_to_json({"nodes": ndf, "edges": edf, "meta": g["meta"]}) == from_dicts
    assert viewer.graph_to_json((ndf, edf, g["meta"])) == from_dicts
    bad = edf.copy()
    bad.loc[2, "weight"] = float("nan")
    with pytest.raises(ValueError, match=r"edges\[2\].*weight"):
        viewer.graph_to_json(ndf, bad, g["meta"])


def test_layout_geometry():
    g = small_graph()
    lay = viewer.layout_graph(g)
    assert len(lay["nodes"]) == len(g["nodes"])
    y = {n["id"]: c[1] for n, c in zip(g["nodes"], lay["nodes"])}
    x = {n["id"]: c[0] for n, c in zip(g["nodes"], lay["nodes"])}
    assert y["e1"] > y["n1"] > y["n2"] > y["n4"] > y["out"]  # embeddings at the bottom, output at the top
    assert x["n5"] < x["n1"] < x["n3"]  # x follows the token position
    assert [c["token"] for c in lay["columns"]] == g["meta"]["tokens"]
    assert [r["name"] for r in lay["rows"]] == ["emb", "L0", "L1", "L2", "out"]
    names = [gr["name"] for gr in lay["groups"]]
    assert names[:3] == ["Dallas/Texas cities", "Texas", "say a capital"]
    assert set(names[3:]) == {"(embedding)", "(output)", "(ungrouped)"}


# ------------------------------------------------------------------------------------------------
# (b) self-contained, (c) no script breakout -- static checks of the page
# ------------------------------------------------------------------------------------------------

class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        if tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        if self._in_title:
            self.title += data


def _parse(page: str) -> _Collector:
    p = _Collector()
    p.feed(page)
    p.close()
    return p


def test_html_is_self_contained():
    page = viewer.render_html(small_graph())
    assert page.startswith("<!DOCTYPE html>")
    p = _parse(page)
    url_attrs = ("src", "href", "srcset", "data", "action", "poster", "xlink:href", "background")
    for tag, attrs in p.tags:
        for a in url_attrs:
            v = (attrs.get(a) or "").strip().lower()
            assert not v or v.startswith(("#", "data:")), f"<{tag} {a}={v!r}> references a resource"
        assert tag not in ("link", "iframe", "img", "object", "embed", "base"), f"unexpected <{tag}>"
        if tag == "script":
            assert "src" not in attrs, "external script"
    assert not re.search(r"https?://", page), "the page mentions a URL"
    assert not re.search(r"@import|url\(", page), "CSS could fetch a resource"
    assert not re.search(r"\bfetch\(|XMLHttpRequest|WebSocket|EventSource|importScripts", page)
    csp = [a for t, a in p.tags if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy"]
    assert csp and "default-src 'none'" in csp[0]["content"] and "connect-src 'none'" in csp[0]["content"]
    assert [a.get("type") for t, a in p.tags if t == "script"] == ["application/json", None, None]


def test_no_script_breakout_static():
    g = evil_graph()
    page = viewer.render_html(g)
    p = _parse(page)
    # exactly our three script elements; the payload did not open a fourth or close one early
    assert sum(1 for t, _ in p.tags if t == "script") == 3
    assert page.lower().count("</script") == 3
    assert "alert(1)" not in p.scripts[1] + p.scripts[2]
    for bad in ("</script", "<script", "<!--", "\u2028"):
        assert bad not in p.scripts[0].lower()
    data = json.loads(p.scripts[0])  # the inline data decodes back to the exact strings
    nodes = {n["id"]: n for n in data["graph"]["nodes"]}
    assert nodes["n1"]["description"] == EVIL
    assert nodes["n2"]["label"] == EVIL
    assert nodes["n3"]["group"] == "grp " + EVIL
    assert nodes["n4"]["token"] == EVIL
    assert data["graph"]["meta"]["title"] == "title " + EVIL
    assert p.title == "title " + EVIL  # <title> is HTML-escaped, not markup
    assert "<title>title &lt;/script&gt;" in page


def test_show_returns_iframe_srcdoc():
    pytest.importorskip("IPython")
    g = small_graph(description=EVIL)
    obj = viewer.show(g, height=420)
    frag = obj.data
    assert "<iframe srcdoc=\"" in frag and 'sandbox="allow-scripts"' in frag and "height:420px" in frag
    assert "<script" not in frag and "</script" not in frag  # everything escaped inside the attribute
    src = re.search(r'<iframe srcdoc="([^"]*)"', frag).group(1)
    assert html.unescape(src) == viewer.render_html(g)


def test_save_html(tmp_path):
    path = viewer.save_html(small_graph(), tmp_path / "sub" / "c.html")
    assert path.exists() and path.read_text(encoding="utf-8") == viewer.render_html(small_graph())


# ------------------------------------------------------------------------------------------------
# assets inlined at save time, CSP by hash, group colours, neuron names, CircuitGraph input
# ------------------------------------------------------------------------------------------------

def _csp(page: str) -> dict[str, list[str]]:
    p = _parse(page)
    content = next(a["content"] for t, a in p.tags
                   if t == "meta" and a.get("http-equiv", "").lower() == "content-security-policy")
    return {d.split()[0]: d.split()[1:] for d in (x.strip() for x in content.split(";")) if d}


def _style_text(page: str) -> str:
    return re.search(r"<style>(.*?)</style>", page, re.S).group(1)


def test_page_is_built_from_the_packaged_asset_files():
    from importlib.resources import files

    assets = files("neuronlib.viewer").joinpath("assets")
    texts = {name: assets.joinpath(name).read_text(encoding="utf-8")
             for name in ("template.html", "viewer.css", "guard.js", "viewer.js")}
    page = viewer.render_html(small_graph())
    p = _parse(page)
    assert p.scripts[1] == texts["guard.js"] and p.scripts[2] == texts["viewer.js"]  # inlined verbatim
    assert _style_text(page) == texts["viewer.css"]
    assert "{{" not in page.replace(p.scripts[0], "")  # every template slot filled
    head = texts["template.html"].split("{{csp}}")[0]
    assert page.startswith(head)
    # the assets ship with the package (pyproject package-data)
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "assets/*" in pyproject["tool"]["setuptools"]["package-data"]["neuronlib.viewer"]


def test_csp_allows_only_the_page_scripts_and_style_by_hash():
    page = viewer.render_html(small_graph())
    csp = _csp(page)
    p = _parse(page)
    assert "'unsafe-inline'" not in page and "'unsafe-eval'" not in page
    assert csp["default-src"] == ["'none'"] and csp["connect-src"] == ["'none'"]
    assert sorted(csp["script-src"]) == sorted([_sha256_source(p.scripts[1]), _sha256_source(p.scripts[2])])
    assert csp["style-src"] == [_sha256_source(_style_text(page))]
    # the hash is computed at render time from what is inlined: another script gets another hash
    assert viewer.page.csp_hash("alert(1)") not in csp["script-src"]
    assert viewer.page.csp_hash(p.scripts[2]) in csp["script-src"]


def test_edited_asset_gets_its_own_hash(monkeypatch):
    """The hash follows the inlined text (computed when the page is saved, not stored with the assets)."""
    from neuronlib.viewer import page as page_mod

    real = page_mod.asset

    def edited(name):
        return real(name) + "\n// edited\n" if name == "viewer.js" else real(name)

    monkeypatch.setattr(page_mod, "asset", edited)
    page = viewer.render_html(small_graph())
    script = _parse(page).scripts[2]
    assert script.endswith("// edited\n") and _sha256_source(script) in _csp(page)["script-src"]


@pytest.mark.parametrize("colors, match", [
    ({"Texas": "notacolour"}, r"meta\['group_colors'\]\['Texas'\]: 'notacolour' is not a colour"),
    ({"Texas": "#12345"}, r"'#12345' is not a colour"),
    ({"Texas": "red;background:red"}, r"is not a colour"),
    ({"Texas": "#fff\" onload=\"x"}, r"is not a colour"),
    ({"Texas": 0xFF0000}, r"\['Texas'\]: a colour is a str"),
    ({"Texas": None}, r"\['Texas'\]: a colour is a str"),
    ({3: "#ff0000"}, r"group names must be non-empty str"),
    (["#ff0000"], r"meta\['group_colors'\] must be a dict"),
])
def test_bad_group_colors_are_a_clear_error(colors, match):
    g = small_graph()
    g["meta"]["group_colors"] = colors
    with pytest.raises(ValueError, match=match):
        viewer.graph_to_json(g)
    with pytest.raises(ValueError, match=match):
        viewer.render_html(g)
    with pytest.raises(ValueError, match=match):
        viewer.draw_circuit(g)


def test_group_colors_are_normalised_and_used():
    g = small_graph()
    g["meta"]["group_colors"] = {"Texas": "#ABC", "say a capital": "tab:blue", "(output)": " #00FF00 "}
    out = viewer.graph_to_json(g)
    assert out["meta"]["group_colors"] == {"Texas": "#aabbcc", "say a capital": "#1f77b4", "(output)": "#00ff00"}
    assert viewer.graph_to_json(out) == out
    colors = {gr["name"]: gr["color"] for gr in viewer.layout_graph(g)["groups"]}
    assert colors["Texas"] == "#aabbcc" and colors["say a capital"] == "#1f77b4" and colors["(output)"] == "#00ff00"


def test_neurons_are_named_with_the_neuron_type():
    from neuronlib.neurons import Neuron

    g = viewer.graph_to_json([{"id": "a", "site": "mlp_acts", "layer": 23, "position": 0, "unit": 807, "sign": "-"},
                              {"id": "b", "site": "mlp_acts", "layer": 2, "position": 0, "unit": 5},
                              {"id": "c", "site": "attn_out", "layer": 1, "position": 0, "unit": 5},
                              {"id": "d", "site": "mlp_acts", "layer": 1, "position": 0, "unit": 9,
                               "label": "my name"}], [], {"n_layers": 24})
    labels = [n["label"] for n in g["nodes"]]
    assert labels == ["L23/N807-", "L2/N5", "c", "my name"]
    assert Neuron.parse(labels[0]) == Neuron(23, 807, "-")


def test_circuit_graph_is_accepted_everywhere(tmp_path):
    from neuronlib import CircuitGraph

    cg = CircuitGraph.from_json(small_graph())
    js = cg.to_json()
    assert viewer.graph_to_json(cg) == js
    assert viewer.render_html(cg) == viewer.render_html(js)
    assert viewer.save_html(cg, tmp_path / "cg.html").read_text(encoding="utf-8") == viewer.render_html(js)
    assert viewer.layout_graph(cg) == viewer.layout_graph(js)
    import matplotlib.pyplot as plt

    plt.close(viewer.draw_circuit(cg))


# ------------------------------------------------------------------------------------------------
# (d) headless Chromium
# ------------------------------------------------------------------------------------------------

def _need_chromium():
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{CHROMIUM} is missing but CI is set: install it with `apt-get install -y chromium`")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium); set CI=1 to make this a failure")


_CONSOLE_RE = re.compile(r":CONSOLE[:(]|Uncaught")


def _dump_dom(path: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Open ``path`` (file://) in headless Chromium; return (serialised DOM, console/error lines)."""
    last = None
    for attempt in range(2):  # one retry if the browser itself fails to start
        profile = tmp_path / f"chromium-profile-{attempt}"
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-quic", "--no-first-run", "--no-default-browser-check",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}",
               "--window-size=1280,900", "--enable-logging=stderr", "--v=0", "--dump-dom",
               path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        console = [ln for ln in proc.stderr.splitlines() if _CONSOLE_RE.search(ln)]
        last = proc
        if proc.returncode == 0 and "<body" in proc.stdout:
            return proc.stdout, console
    raise AssertionError(f"chromium failed (rc={last.returncode}):\n{last.stderr[-3000:]}")


def _body_attrs(dom: str) -> dict:
    m = re.search(r"<body\b[^>]*>", dom)
    assert m, "no <body> in the dumped DOM"
    p = _parse(m.group(0))
    return p.tags[0][1]


def test_chromium_renders_page_from_disk(tmp_path):
    _need_chromium()
    g = evil_graph()  # also proves the payload does not run in a real browser
    path = viewer.save_html(g, tmp_path / "circuit.html")
    t0 = time.perf_counter()
    dom, console = _dump_dom(path, tmp_path)
    elapsed = time.perf_counter() - t0
    body = _body_attrs(dom)
    assert console == [], f"console output: {console}"
    assert "data-error" not in body, body.get("data-error")
    assert body.get("data-ready") == "1"
    assert "data-pwned" not in body, "injected script ran"
    n, e = len(g["nodes"]), len(g["edges"])
    assert body.get("data-nodes") == str(n) and body.get("data-total-nodes") == str(n)
    assert body.get("data-edges") == str(e) and body.get("data-total-edges") == str(e)
    assert len(re.findall(r'<circle class="node"', dom)) == n
    assert len(re.findall(r'<path class="edge"', dom)) == e
    assert dom.count("<script") == 3
    assert elapsed < 120


# run after the page's own script: drive the controls and record what the page shows
_DRIVER = """<script>
(function(){
  var b=document.body, out={};
  try{
    var num=document.getElementById('thr-num');
    num.value='0.6'; num.dispatchEvent(new Event('change'));
    out.edges_thr=b.getAttribute('data-edges'); out.nodes_thr=b.getAttribute('data-nodes');
    var iso=document.getElementById('hide-iso'); iso.checked=true; iso.dispatchEvent(new Event('change'));
    out.nodes_iso=b.getAttribute('data-nodes');
    iso.checked=false; iso.dispatchEvent(new Event('change'));
    num.value='0'; num.dispatchEvent(new Event('change'));
    var c=document.querySelector('circle.node[data-i="1"]');
    c.dispatchEvent(new MouseEvent('mouseover',{bubbles:true,clientX:50,clientY:50}));
    out.hl=document.querySelectorAll('path.edge.hl').length;
    out.tip=document.getElementById('tip').style.display;
    out.tip_text=document.getElementById('tip').textContent;
    c.dispatchEvent(new MouseEvent('mouseout',{bubbles:true}));
    out.hl_after=document.querySelectorAll('path.edge.hl').length;
    document.querySelector('.lg[data-group="1"]').dispatchEvent(new MouseEvent('click',{bubbles:true}));
    out.group_focus=document.getElementById('svg').classList.contains('focus');
  }catch(err){ out.err=String(err); }
  b.setAttribute('data-driver', JSON.stringify(out));
})();
</script>"""


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _with_trusted_script(page: str, script: str) -> str:
    """Append ``script`` (a ``<script>...</script>`` element) and allow it by its hash in the page's CSP, as the
    page allows its own scripts; without the hash the browser blocks it (test_chromium_blocks_unhashed_script)."""
    body = re.fullmatch(r"<script>(.*)</script>", script, re.S).group(1)
    page, n = re.subn(r"script-src ", "script-src " + _sha256_source(body) + " ", page, count=1)
    assert n == 1
    return page.replace("</body>", script + "\n</body>")


def test_chromium_controls(tmp_path):
    _need_chromium()
    g = small_graph()
    page = _with_trusted_script(viewer.render_html(g), _DRIVER)
    path = tmp_path / "driven.html"
    path.write_text(page, encoding="utf-8")
    dom, console = _dump_dom(path, tmp_path)
    body = _body_attrs(dom)
    assert console == [], console
    assert "data-error" not in body, body.get("data-error")
    res = json.loads(body["data-driver"])
    assert "err" not in res, res
    strong = [e for e in g["edges"] if abs(e["weight"]) >= 0.6]
    assert res["edges_thr"] == str(len(strong))  # threshold hides the weak edges
    assert res["nodes_thr"] == str(len(g["nodes"]))  # nodes stay unless asked
    touched = {e["source"] for e in strong} | {e["target"] for e in strong}
    assert res["nodes_iso"] == str(len(touched))
    n1_edges = [e for e in g["edges"] if "n1" in (e["source"], e["target"])]
    assert res["hl"] == len(n1_edges) and res["hl_after"] == 0  # hover highlights the node's edges
    assert res["tip"] == "block"
    for piece in ("L0/N17+", "layer", "position", "token", "score", "Dallas/Texas cities", "top tokens"):
        assert piece in res["tip_text"]
    assert res["group_focus"] is True


def test_chromium_blocks_a_script_without_its_hash(tmp_path):
    """The CSP lock works in a real browser: a script added to the saved file (not one of the page's own, so its
    hash is not in the policy) does not run, and the page itself still draws."""
    _need_chromium()
    page = viewer.render_html(small_graph())
    injected = "<script>document.body.setAttribute('data-pwned','1');</script>"
    path = tmp_path / "tampered.html"
    path.write_text(page.replace("</body>", injected + "\n</body>"), encoding="utf-8")
    dom, console = _dump_dom(path, tmp_path)
    body = _body_attrs(dom)
    assert "data-pwned" not in body, "a script without its hash ran"
    assert body.get("data-ready") == "1" and "data-error" not in body
    assert any("Content Security Policy" in ln for ln in console), console
    # control: the same script allowed by its hash does run, so the absence above is the policy's doing
    path.write_text(_with_trusted_script(page, injected), encoding="utf-8")
    dom, console = _dump_dom(path, tmp_path)
    assert _body_attrs(dom).get("data-pwned") == "1" and console == [], console


def test_chromium_harness_detects_errors(tmp_path):
    """The checks above would notice a broken page: corrupt the data and expect data-error + console."""
    _need_chromium()
    page = viewer.render_html(small_graph())
    broken = re.sub(r'(<script type="application/json" id="graph-data">)\{', r"\1{{", page, count=1)
    assert broken != page
    path = tmp_path / "broken.html"
    path.write_text(broken, encoding="utf-8")
    dom, console = _dump_dom(path, tmp_path)
    body = _body_attrs(dom)
    assert body.get("data-error"), body
    assert "data-ready" not in body
    assert any("Uncaught" in ln for ln in console), console


# ------------------------------------------------------------------------------------------------
# (e) matplotlib
# ------------------------------------------------------------------------------------------------

def _node_offsets(ax):
    return [c for c in ax.collections if c.get_gid() == "circuit-nodes"]


def test_draw_circuit_markers_and_legend():
    import matplotlib.pyplot as plt

    g = small_graph()
    fig = viewer.draw_circuit(g)
    try:
        ax = fig.axes[0]
        cols = _node_offsets(ax)
        assert sum(len(c.get_offsets()) for c in cols) == len(g["nodes"])
        edges = [c for c in ax.collections if c.get_gid() == "circuit-edges"]
        assert len(edges) == 1 and len(edges[0].get_segments()) == len(g["edges"])
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for name in ("Dallas/Texas cities", "Texas", "say a capital", "(output)"):
            assert any(t.startswith(name + " (") for t in legend), legend
        assert [t.get_text() for t in ax.get_xticklabels()] == g["meta"]["tokens"]
        for fmt in ("png", "pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
            assert buf.tell() > 1000
    finally:
        plt.close(fig)


def test_draw_circuit_on_given_axes_with_threshold():
    import matplotlib.pyplot as plt

    g = evil_graph()  # odd strings ($, <, quotes) must not break mathtext or layout
    fig0, ax = plt.subplots(figsize=(6, 4))
    try:
        fig = viewer.draw_circuit(g, ax=ax, min_abs_weight=0.6, labels=True, legend=False)
        assert fig is fig0
        assert sum(len(c.get_offsets()) for c in _node_offsets(ax)) == len(g["nodes"])
        edges = [c for c in ax.collections if c.get_gid() == "circuit-edges"]
        assert len(edges[0].get_segments()) == sum(abs(e["weight"]) >= 0.6 for e in g["edges"])
        fig.savefig(io.BytesIO(), format="png")
    finally:
        plt.close(fig0)


def test_large_graph_renders_quickly():
    import random

    rng = random.Random(0)
    n_layers, n_pos = 32, 30
    nodes = [{"id": f"n{i}", "layer": rng.randrange(-1, n_layers), "position": rng.randrange(n_pos),
              "score": rng.gauss(0, 1), "group": rng.choice([None, "a", "b", "c"])} for i in range(400)]
    edges, seen = [], set()
    while len(edges) < 3000:
        s, t = rng.sample(range(400), 2)
        if (s, t) not in seen:
            seen.add((s, t))
            edges.append({"source": f"n{s}", "target": f"n{t}", "weight": rng.gauss(0, 1)})
    meta = {"tokens": [f"t{i}" for i in range(n_pos)], "n_layers": n_layers}
    t0 = time.perf_counter()
    page = viewer.render_html({"nodes": nodes, "edges": edges, "meta": meta})
    assert time.perf_counter() - t0 < 5
    data = json.loads(_parse(page).scripts[0])
    assert len(data["graph"]["edges"]) == 3000 and all(math.isfinite(c[0]) for c in data["layout"]["nodes"])
    small = viewer.render_html({"nodes": nodes, "edges": edges, "meta": meta}, max_edges=100)
    assert len(json.loads(_parse(small).scripts[0])["graph"]["edges"]) == 100
