"""How a path is written as a ``DAV:href``, the same on every path that writes one.

RFC 4918 §8.3 makes a ``DAV:href`` a URI reference, so every character of it must be
one RFC 3986 §2 allows raw: unreserved (``A-Z a-z 0-9 - . _ ~``), sub-delims
(``! $ & ' ( ) * + , ; =``), ``:``, ``@`` and the ``/`` between segments; everything
else — space, ``" # % < > ? [ \\ ] ^ ` { | }``, controls, non-ASCII — is
percent-encoded as UTF-8 (§2.1). WsgiDAV's ``get_href`` (dav_provider.py:417) kept ``|``
raw, which ``java.net.URI`` (Cyberduck, sardine, Nextcloud's Android client) rejects
(opencb/opencga#716).

Of the sub-delims only ``! $ ' ( ) * ,`` stay raw, the ones WsgiDAV has always kept
(Nautilus chokes on ``(`` written as ``%28``, dav_provider.py:415); ``& + ; = : @`` stay
encoded as before: ``+`` is read as a space by clients that form-decode paths, and
``;`` starts path parameters for Java servlet-style parsers. Both spellings are the same
URI to an RFC 3986 client, so this keeps every href the same as it was, except ``|``.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["HREF_SAFE", "quote_href"]

#: Characters left raw besides ASCII letters, digits and ``_.-~`` (which ``quote`` never encodes).
HREF_SAFE = "/!$'()*,"


def quote_href(path: str) -> str:
    """``path`` (decoded, ``/``-separated, str) percent-encoded as an href: UTF-8, only the
    characters of :data:`HREF_SAFE` and unreserved ones raw. Pure. Raises
    UnicodeEncodeError for a lone surrogate (a name on disk that is not UTF-8: such names
    are never listed, names.py), as WsgiDAV's ``get_href`` does."""
    return quote(path, safe=HREF_SAFE)
