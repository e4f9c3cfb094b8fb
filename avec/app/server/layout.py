"""The page shell every page shares: navigation, the error banner, Plotly (served from the installed
plotly package: nothing is fetched from the network) and ``avec.js``, the few helpers pages use."""

from __future__ import annotations

import html
from typing import Sequence

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;line-height:1.4}
header{background:#2d3e50;color:#fff;padding:0.5em 1em;display:flex;gap:1.5em;align-items:baseline;flex-wrap:wrap}
header a{color:#dfe8f0;text-decoration:none} header a.here{color:#fff;font-weight:bold;text-decoration:underline}
header .model{margin-left:auto;font-size:0.85em;color:#bcd}
main{max-width:1200px;margin:1em auto;padding:0 1em}
.controls{display:flex;flex-wrap:wrap;gap:0.6em 1.2em;align-items:flex-end;margin-bottom:0.8em}
.controls label{display:flex;flex-direction:column;font-size:0.85em} .controls label.wide{flex-basis:100%}
textarea,input[type=text],input:not([type]){font:inherit;padding:2px 4px}
fieldset{border:1px solid #ccc;display:flex;flex-wrap:wrap;gap:0.4em 1em;align-items:flex-end}
#pair-fields,#file-fields{display:flex;gap:1em} [hidden]{display:none!important}
.side-by-side{display:grid;grid-template-columns:1fr 1fr;gap:1em}
pre.completion{white-space:pre-wrap;background:#f6f6f6;padding:0.6em;min-height:4em;margin:0}
pre.completion .prompt{color:#777}
.error{background:#fde8e8;border:1px solid #d33;color:#900;padding:0.5em 0.8em;margin:0.5em 0}
.plot{min-height:360px} .plot.tall{min-height:560px} .meta{color:#666;font-size:0.85em}
.busy{opacity:0.6} button{font:inherit;padding:3px 12px}
ul.pages li{margin:0.4em 0} .fields{display:flex;flex-wrap:wrap;gap:0.5em}
.example{font-family:monospace;font-size:0.85em;white-space:pre-wrap;margin:0.3em 0;padding:0.2em;border-left:3px solid #ddd}
.tok{border-radius:2px} .tok.peak{outline:1px solid #a00} #prompt-table td{padding:1px 8px;vertical-align:top}
#prompt-table a{margin-right:0.3em}
"""

# Every request goes through avec.post / avec.get: the number of requests in flight is on
# <body data-pending>, so a test (or a user's script) can wait for the page to settle.
JS = r"""
const avec = {
  pending: 0,
  _track(delta) { this.pending += delta; document.body.dataset.pending = String(this.pending);
                  document.body.classList.toggle("busy", this.pending > 0); },
  async _fetch(url, options) {
    this._track(1);
    try {
      const r = await fetch(url, options);
      let data;
      try { data = await r.json(); } catch (e) { data = {error: "HTTP " + r.status + " (not JSON)"}; }
      if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
      return data;
    } finally { this._track(-1); }
  },
  post(url, body) {
    return this._fetch(url, {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  },
  get(url) { return this._fetch(url, {method: "GET"}); },
  // POST whose answer comes as server-sent events: onProgress(event) for each progress event, then the
  // result (or the error, thrown). Every progress event is also kept in avec.progressLog.
  progressLog: [],
  async stream(url, body, onProgress) {
    this._track(1);
    try {
      const r = await fetch(url, {method: "POST", body: JSON.stringify(body),
                                  headers: {"content-type": "application/json", "accept": "text/event-stream"}});
      if (!r.ok) {  // refused before it started (bad JSON, too large): a plain JSON error
        let data; try { data = await r.json(); } catch (e) { data = {error: "HTTP " + r.status}; }
        throw new Error(data.error || ("HTTP " + r.status));
      }
      const reader = r.body.getReader(), decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) throw new Error("the server closed the stream without an answer");
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const event = (block.match(/^event: (.*)$/m) || [])[1], data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1]);
          if (event === "progress") { this.progressLog.push(data); if (onProgress) onProgress(data); }
          else if (event === "result") { this.showProgress(null); return data; }
          else if (event === "error") { this.showProgress(null); throw new Error(data.error); }
        }
      }
    } finally { this._track(-1); }
  },
  showProgress(p) {
    const s = document.getElementById("status");
    if (!s) return;
    s.textContent = !p ? "" : p.stage === "queued" ? (p.ahead ? "waiting for the model: " + p.ahead + " ahead" : "starting")
      : p.stage === "running" ? "running" : p.stage + ": " + p.done + "/" + p.total;
  },
  _model: null,
  model() { return this._model || (this._model = this.get("/api/model")); },
  int(value) { const n = Number(value); return Number.isInteger(n) ? n : value; },
  showError(message) { const e = document.getElementById("error"); e.textContent = message; e.hidden = false; },
  clearError() { const e = document.getElementById("error"); e.textContent = ""; e.hidden = true; },
  completion(el, prompt, text) {  // model text goes in as text, never as markup
    const p = document.createElement("span"); p.className = "prompt"; p.textContent = prompt;
    el.replaceChildren(p, document.createTextNode(text));
  },
};
document.body.dataset.pending = "0";
"""


def nav(pages: Sequence, here: str | None, model_name: str) -> str:
    links = [f'<a href="/"{" class=here" if here is None else ""}><b>avec</b></a>']
    links += [f'<a href="/{p.slug}"{" class=here" if p.slug == here else ""}>{html.escape(p.title)}</a>' for p in pages
              if p.nav]
    return f"<header>{''.join(links)}<span class=model>model: {html.escape(model_name)}</span></header>"


def shell(title: str, pages: Sequence, here: str | None, model_name: str, body: str, script: str = "") -> str:
    scripts = ('<script src="/static/plotly.min.js"></script><script src="/static/avec.js"></script>'
               + (f"<script>\n{script}\n</script>" if script else ""))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)} - avec</title>"
            f"<link rel=stylesheet href=/static/avec.css></head><body>{nav(pages, here, model_name)}<main>"
            f"<h1>{html.escape(title)}</h1><div id=error class=error hidden></div>{body}</main>{scripts}</body></html>")


def index(pages: Sequence, model_name: str) -> str:
    items = "".join(f'<li><a href="/{p.slug}">{html.escape(p.title)}</a>: {html.escape(p.summary)}</li>' for p in pages
                    if p.nav)
    return shell("avec", pages, None, model_name, f"<ul class=pages>{items}</ul>")
