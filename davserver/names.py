"""File and folder names: which ones a client may create, and how the names found
on disk are written into XML and HTML.

A name is a string of the share's filesystem, and on Linux almost any byte can
be in one. Not every such string can be written into a document: XML 1.0 (§2.2,
``Char``) cannot carry C0 controls other than tab, LF and CR — not even as a
character reference — nor lone surrogates, U+FFFE and U+FFFF; one such name in
a ``<D:displayname>`` made the whole Depth 1 answer unparsable, so every client
of every account failed on that folder. The rules:

* **Created over WebDAV** (PUT, MKCOL, LOCK on an unmapped URL, the last segment
  of a COPY/MOVE Destination): a name with a control character (Unicode ``Cc``:
  U+0000–U+001F, U+007F–U+009F), a surrogate, U+FFFE/U+FFFF, or a bidirectional
  embedding, override or isolate (U+202A–U+202E, U+2066–U+2069, which make
  ``invoice<U+202E>fdp.exe`` show as ``invoiceexe.pdf``) is refused with 400 and
  the audit reason ``bad_name`` (as Nextcloud/Sabre refuse invalid names with 400).
* **Found on disk** (made by other means) with such characters: listed and
  served. Its href carries the exact name, percent-encoded (RFC 3986 §2.1), so
  it can be fetched, renamed and deleted; wherever a name is shown as text
  (``<D:displayname>``, the HTML listing) each of those characters is replaced
  by U+FFFD.
* **Not valid UTF-8 on disk** (``os.scandir`` gives them as surrogate escapes):
  hidden — not listed on any path, not copied with their folder, but moved and
  deleted with it. No request can name them (a request target must be UTF-8,
  target.py), so listing them would only offer links that cannot work.
"""

from __future__ import annotations

import re

__all__ = ["display_name", "is_listable", "refused_name"]

#: What no created name may contain (see the module docstring).
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def refused_name(name: str) -> str | None:
    """Why ``name`` may not be created (a sentence for the client), or None when it may.

    ``name`` is one decoded path segment. Pure; no I/O. A name of white space only
    (``str.strip`` leaves nothing) is refused too: no client can show or type it back,
    and WsgiDAV takes such a last segment for the share root (util.get_uri_parent
    strips the path), which turned a PUT of ``%0D`` into a refusal to replace the root.
    """
    if not name.strip():
        return "A name cannot consist of white space only."
    if name.isprintable():  # fast path: every refused character is non-printable
        return None
    found = _REFUSED.search(name)
    if found is None:
        return None
    return f"The name contains the character U+{ord(found.group()):04X}, which names may not contain."


def is_listable(name: str) -> bool:
    """False for a name on disk that is not valid UTF-8 (a surrogate-escaped ``str``)."""
    return name.isascii() or _SURROGATE.search(name) is None


def display_name(name: str) -> str:
    """``name`` as text to show: every character :func:`refused_name` refuses becomes U+FFFD.

    The result is a valid XML 1.0 ``Char`` sequence and free of HTML control
    characters; it still needs ``&<>`` escaping like any text.
    """
    if name.isprintable():
        return name
    return _REFUSED.sub("\ufffd", name)
