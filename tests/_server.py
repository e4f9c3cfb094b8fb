"""Helpers for the web app tests: a server on a free port in this process, and plain-HTTP calls."""

import json
import urllib.error
import urllib.request


def call(url: str, body=None, *, raw: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, decoded JSON) of a request; ``body`` is sent as JSON, ``raw`` as given."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = {"content-type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text.decode(errors="replace")
