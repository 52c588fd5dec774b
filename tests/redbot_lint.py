"""Run REDbot (mnot's HTTP resource linter, PyPI ``redbot``) on one URL and print its
findings as one JSON object on stdout.

    python tests/redbot_lint.py URL [--method HEAD] [--header "Name: value"]...

REDbot's own CLI (``redbot/cli.py`` ``main``) takes a URL only: no request headers, so no
``Authorization`` for a share that wants a password. This script does what that CLI does
(an ``HttpResource`` with ``enable_local_access``, run on thor's loop until ``check_done``)
with the headers added, and reports every note instead of formatting text.

Output: ``{"url", "status", "headers": [[name, value]...], "fetch_error",
"notes": [{"check", "name", "level", "category", "subject", "summary", "subnotes"}...],
"subrequests": {check_id: {"status", "headers"}}}``. ``level`` is httplint's
``good``/``info``/``warning``/``bad``; ``name`` the note's class (e.g.
``FRESHNESS_HEURISTIC``), ``subnotes`` the class names of its child notes; ``check`` is
``default`` for a note on the main response, or the id of the probe (conditional, range, content negotiation) whose own
response carried it. Exit status 0 when the check ran to its end, 2 when it did not
finish within ``--timeout`` seconds.

It runs in its own process: thor's loop and REDbot's client are module globals, and the
linter's own deprecation warnings must not meet pytest's warnings-as-errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from configparser import ConfigParser
from typing import Any


def lint(url: str, headers: list[tuple[str, str]], timeout: float, method: str = "GET") -> dict[str, Any]:
    """Check ``url`` with REDbot (a ``method`` request), sending ``headers`` on it and on every probe.

    Returns the JSON-able report described in the module docstring; ``"finished"`` is
    False when thor's loop was stopped by the ``timeout`` (seconds) first.
    """
    import thor
    from httplint.note import levels
    from redbot.resource import HttpResource

    parser = ConfigParser()
    parser.read_dict({"redbot": {"enable_local_access": "True"}})
    config = parser["redbot"]
    resource = HttpResource(config, descend=False)
    resource.set_request(url, method=method, headers=headers)
    state = {"finished": False}

    @thor.events.on(resource)
    def check_done() -> None:
        state["finished"] = True
        thor.stop()

    thor.schedule(timeout, thor.stop)
    resource.check()
    thor.run()

    def note_json(check: str, note: Any) -> dict[str, str]:
        return {
            "check": check,
            "name": type(note).__name__,
            "level": note.level.value,
            "category": str(note.category.value),
            "subject": note.subject,
            "summary": str(note.summary),
            "subnotes": [type(sub).__name__ for sub in note.subnotes],
        }

    notes = [note_json("default", n) for n in resource.response.notes]
    subrequests: dict[str, Any] = {}
    for sub in resource.subreqs.values():
        if not sub.fetch_started:
            continue
        subrequests[sub.check_id] = {
            "status": sub.response.status_code,
            "headers": [list(h) for h in sub.response.headers.text],
        }
        notes += [
            note_json(sub.check_id, n)
            for n in sub.response.notes
            if n not in resource.response.notes and n.level in (levels.WARN, levels.BAD)
        ]
    error = resource.fetch_error
    return {
        "url": url,
        "finished": state["finished"],
        "status": resource.response.status_code,
        "headers": [list(h) for h in resource.response.headers.text],
        "fetch_error": None if error is None else f"{error.desc} {error.detail or ''}".strip(),
        "notes": notes,
        "subrequests": subrequests,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--header", action="append", default=[], help='"Name: value", repeatable')
    ap.add_argument("--method", default="GET", choices=["GET", "HEAD"], help="the request's method")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole check")
    args = ap.parse_args(argv)
    headers = []
    for raw in args.header:
        name, sep, value = raw.partition(":")
        if not sep:
            ap.error(f"--header {raw!r}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    report = lint(args.url, headers, args.timeout, args.method)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if report["finished"] else 2


if __name__ == "__main__":
    sys.exit(main())
