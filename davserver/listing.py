"""The folder listing a browser sees: who is signed in, with which certificate
and factors, until when, and the folder's content with readable sizes and dates; a banner with a link to
renewal when the certificate expires within ``enrolment.renew_before_days``
(``RequestContext.renew_due``, set by the guard: request_context.py).

It replaces WsgiDAV's directory browser, which names its version and serves
its assets from an extra share outside our access rules.

Every name is shown through names.display_name (control characters and what
XML/HTML cannot carry become U+FFFD) and escaped; every link is the exact name,
percent-encoded. Names that are not UTF-8 are not listed (the share hides them).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .auth.identity import CertIdentity
from .browser_pages import LOCAL_TIME_SCRIPT, script_csp
from .config import ShareConfig
from .content_safety import NO_STORE_HEADERS
from .csrf import TOKEN_TTL_SECONDS
from .names import display_name
from .request_context import request_context
from .stepup import PREFIX as STEPUP_PREFIX
from .upstream import BaseMiddleware

__all__ = ["Listing", "human_size"]

#: Shows every ``<time datetime>`` in the browser's local time (browser_pages.py).
_TIME_SCRIPT = LOCAL_TIME_SCRIPT

#: The write controls of a writable listing: upload (file picker, drag and drop, with
#: progress), new folder, rename and delete. Every change is the WebDAV request any
#: client sends (PUT, MKCOL, MOVE, DELETE) to the same URL, so the guard's one decision,
#: the limits, the atomic writes and the audit apply; each carries the certificate-bound
#: token (csrf.py) in ``X-Davserver-CSRF``. Names are percent-encoded with
#: encodeURIComponent; refusals are said in plain words: a 403 the guard marks
#: ``X-Davserver-Refusal: csrf`` (the token, not the share's rule) asks to reload the
#: page, any other 403 does not. Kept byte-for-byte as hashed.
_WRITE_SCRIPT = r"""(()=>{
const tools=document.getElementById("tools");if(!tools)return;
const token=tools.dataset.token,base=tools.dataset.base,status=document.getElementById("status");
const shown=Date.now(),ttl=1000*Number(tools.dataset.ttl);
const names=new Set(Array.from(document.querySelectorAll("button.rename"),b=>b.dataset.name));
const folders_=new Set(Array.from(document.querySelectorAll("button.rename[data-folder]"),b=>b.dataset.name));
const words={0:"The connection was lost. Check the network and try again.",
400:"The server cannot accept this name or request.",
401:"You are not signed in any more. Reload the page to sign in again.",
403:"Your account may not change this here, or the server does not accept this name.",
404:"It is not there any more. Reload the page.",
405:"Something with this name is already here.",
409:"This cannot be done here: the folder is gone, or the name is not allowed.",
412:"Something with this name is already here. Choose another name.",
413:"The file is larger than this server accepts.",
414:"The name is too long. Choose a shorter name.",
415:"The server does not accept this kind of request here.",
503:"The server is busy or cannot reach its storage right now. Try again in a minute.",
423:"It is locked because someone is working on it. Try again later.",
507:"There is not enough space left on the server."};
function plain(code){if(code===-1)return(Date.now()-shown>=0.9*ttl?
"This page has been open too long to make changes from it. Reload the page, then try again.":
"This page can no longer send changes. Reload the page, then try again.");
return words[code]||(code>=500?
"The server had a problem ("+code+"). Try again later.":"It did not work ("+code+").");}
function say(text,kind){const p=document.createElement("p");
p.className=kind;p.textContent=text;status.append(p);return p;}
function again(){if(!document.getElementById("again")){const a=document.createElement("a");
a.id="again";a.href="";a.textContent="Show the folder as it is now";status.append(a);}}
function good(code){return code>=200&&code<300;}
function bad(name){return !name||name==="."||name===".."||name.includes("/");}
function send(method,url,headers,body,progress){return new Promise(done=>{
const x=new XMLHttpRequest();x.open(method,url);x.setRequestHeader("X-Davserver-CSRF",token);
for(const k in headers)x.setRequestHeader(k,headers[k]);if(progress)x.upload.onprogress=progress;
x.onload=()=>done(x.status===403&&x.getResponseHeader("X-Davserver-Refusal")==="csrf"?-1:x.status);x.onerror=()=>done(0);x.send(body===undefined?null:body);});}
async function upload(files,folders){
status.textContent="";let failed=folders>0;
if(folders)say("Folders cannot be uploaded here: open the folder and upload the files in it.","err");
for(const f of files){
const name=f.name,headers={"Content-Type":"application/octet-stream"};
if(folders_.has(name)){failed=true;say("“"+name+"” was not uploaded: a folder of that name is already here. "+
"Rename the folder or the file first.","err");continue;}
if(names.has(name)){if(!confirm("Replace “"+name+"”? The file already here will be overwritten."))continue;}
else headers["If-None-Match"]="*";
const line=say("Uploading “"+name+"” ","note"),bar=document.createElement("progress"),
done=document.createElement("span");bar.max=f.size||1;bar.value=0;done.textContent=" 0%";line.append(bar,done);
const code=await send("PUT",base+encodeURIComponent(name),headers,f,e=>{
if(e.lengthComputable){bar.max=e.total;bar.value=e.loaded;
done.textContent=" "+Math.floor(100*e.loaded/(e.total||1))+"%";}});
if(good(code)){line.className="ok";line.textContent="Uploaded “"+name+"”.";names.add(name);}
else{failed=true;line.className="err";line.textContent="“"+name+"” was not uploaded. "+plain(code);}}
if(failed)again();else location.reload();}
async function change(method,url,headers,done){const code=await send(method,url,headers);
if(good(code))location.reload();else{status.textContent="";say(done+" "+plain(code),"err");again();}}
const pick=document.getElementById("pick");
pick.addEventListener("change",()=>{const files=Array.from(pick.files);pick.value="";if(files.length)upload(files,0);});
document.getElementById("mkdir").addEventListener("click",()=>{
const given=prompt("Name of the new folder:","");if(given===null)return;const name=given.trim();
if(bad(name)){status.textContent="";say("A name cannot be empty, . or .., or hold a /.","err");return;}
change("MKCOL",base+encodeURIComponent(name),{},"The folder “"+name+"” was not created.");});
for(const b of document.querySelectorAll("button.rename"))b.addEventListener("click",()=>{
const old=b.dataset.name,given=prompt("New name for “"+old+"”:",old);if(given===null)return;
const name=given.trim();if(name===old)return;
if(bad(name)){status.textContent="";say("A name cannot be empty, . or .., or hold a /.","err");return;}
const dest=location.origin+base+encodeURIComponent(name)+(b.dataset.folder?"/":"");
change("MOVE",b.dataset.href,{"Destination":dest,"Overwrite":"F"},"“"+old+"” was not renamed.");});
for(const b of document.querySelectorAll("button.delete"))b.addEventListener("click",()=>{
const name=b.dataset.name;
if(!confirm("Delete “"+name+"”?"+(b.dataset.folder?" The folder and everything in it will be deleted.":"")))return;
change("DELETE",b.dataset.href,{},"“"+name+"” was not deleted.");});
document.addEventListener("dragover",e=>{if(e.dataTransfer&&Array.from(e.dataTransfer.types).includes("Files")){
e.preventDefault();e.dataTransfer.dropEffect="copy";document.body.classList.add("dragging");}});
document.addEventListener("dragleave",e=>{if(!e.relatedTarget)document.body.classList.remove("dragging");});
document.addEventListener("drop",e=>{if(!e.dataTransfer)return;e.preventDefault();document.body.classList.remove("dragging");
const items=Array.from(e.dataTransfer.items||[]),entries=items.map(i=>i.webkitGetAsEntry&&i.webkitGetAsEntry());
const folders=entries.filter(x=>x&&x.isDirectory).length,files=Array.from(e.dataTransfer.files).filter(
(f,i)=>!(entries[i]&&entries[i].isDirectory));if(files.length||folders)upload(files,folders);});
})();"""


#: Never 'self' (that would allow a user's uploaded .js from this origin) nor 'unsafe-inline'.
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src {scripts}; form-action 'none'; "
        "base-uri 'none'; frame-ancestors 'none'")
_READ_CSP = _CSP.format(scripts=script_csp(_TIME_SCRIPT))
#: connect-src 'self' only where the page writes (the XHRs of _WRITE_SCRIPT).
_WRITE_CSP = _CSP.format(scripts=f"{script_csp(_TIME_SCRIPT)} {script_csp(_WRITE_SCRIPT)}") + (
    "; connect-src 'self'")


def _headers(writable: bool) -> list[tuple[str, str]]:
    return [
        ("Cache-Control", "no-store"),
        ("Content-Security-Policy", _WRITE_CSP if writable else _READ_CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),  # a same-origin write keeps its real Origin
    ]


_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.3rem;overflow-wrap:anywhere}.who{background:#f3f5f8;padding:.6rem 1rem;font-size:.9rem;border-radius:4px}
.who p{margin:0}.who a{margin-left:.5rem}.who details{margin-top:.3rem;color:#555}.who summary{cursor:pointer}
table{border-collapse:collapse;width:100%;margin-top:1rem}
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #eee;vertical-align:middle}
td:first-child{overflow-wrap:anywhere}td.n{text-align:right;white-space:nowrap}td.act{text-align:right;white-space:nowrap}
th{font-weight:600;color:#555}th.n{text-align:right}.readonly{color:#555;font-size:.9rem}
.renew{background:#fff4ce;padding:.6rem 1rem}
a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}
.tools{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;margin-top:1rem}
.tools button,.tools label{font:inherit;font-size:.95rem;padding:.5rem .9rem;border-radius:4px;cursor:pointer;
border:1px solid #2a5db0;background:#2f6fd6;color:#fff}.tools button{background:#fff;color:#2a5db0}
.tools label:focus-within{outline:2px solid #222}
.tools input[type=file]{position:absolute;opacity:0;width:1px;height:1px}
.hint{color:#666;font-size:.85rem}.where{margin:-.6rem 0 .8rem;color:#555;font-size:.9rem;overflow-wrap:anywhere}
td.act button{font:inherit;font-size:.85rem;padding:.25rem .5rem;margin-left:.3rem;border:1px solid #bbb;
border-radius:4px;background:#fff;cursor:pointer}td.act button.delete{color:#b3261e;border-color:#e0a39e}
#status p{margin:.5rem 0;padding:.5rem .8rem;border-radius:4px;overflow-wrap:anywhere}
#status .ok{background:#e6f4ea}#status .err{background:#fce8e6}#status .note{background:#f3f5f8}
#status progress{width:10rem;max-width:40%;vertical-align:middle;margin-left:.4rem}
body.dragging{outline:3px dashed #2f6fd6;outline-offset:.5rem}
@media (max-width:40rem){body{margin:1rem auto;padding:0 .6rem}th.m,td.m{display:none}
td.act button{display:block;margin:.2rem 0 .2rem auto}.hint{display:none}}
"""


def _folder_name(base: str) -> str:
    """The heading of a listing: the folder's own name (``/files/a/`` → ``a``), "All shares" at the root."""
    name = base.rstrip("/").rsplit("/", 1)[-1]
    return name or "All shares"


#: How each factor of a sign-in is said on the page.
_FACTOR_WORDS = {"password": "your password", "totp": "a code from your authenticator app"}


def human_size(n: int | None) -> str:
    """A size in bytes as the listing shows it: ``"1023 B"``, then binary units with one
    decimal (``"1.0 KiB"``, ``"5.0 MiB"``, up to TiB); ``""`` for None (a folder)."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _text(value: str) -> str:
    """Text for HTML (content or a quoted attribute): shown as names.display_name, then escaped."""
    return html.escape(display_name(value))


def _when(stamp: float | None) -> str:
    """A time as ``<time>``: UTC as text and tooltip, the browser's local time once _TIME_SCRIPT runs."""
    if stamp is None:
        return ""
    moment = datetime.fromtimestamp(stamp, UTC)
    return (f'<time datetime="{moment.strftime("%Y-%m-%dT%H:%M:%SZ")}" '
            f'title="{moment.strftime("%Y-%m-%d %H:%M:%S UTC")}">{moment.strftime("%Y-%m-%d %H:%M UTC")}</time>')


class Listing(BaseMiddleware):
    """The WSGI layer that answers GET/HEAD of a folder with the listing page (see the
    module docstring); every other request goes on to WsgiDAV unchanged."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        provider = environ.get("wsgidav.provider")
        if method not in ("GET", "HEAD") or provider is None:
            return self.next_app(environ, start_response)
        path = environ["PATH_INFO"]
        root = getattr(provider, "root_folder_path", None)
        if root is not None and not os.path.isdir(os.path.join(root, path.lstrip("/"))):
            # A cheap look first: most GETs are files, which the share resolves (and confines) itself.
            return self.next_app(environ, start_response)
        res = provider.get_resource_inst(path, environ)
        if res is None or not res.is_collection:
            return self.next_app(environ, start_response)
        base = environ.get("SCRIPT_NAME", "") + path
        if not base.endswith("/"):
            location = quote(base + "/")
            # A 301 is cacheable by default (RFC 9110 §15.4.2), and the folder may become a file.
            start_response("301 Moved Permanently",
                           [("Location", location), ("Content-Length", "0"), *NO_STORE_HEADERS])
            return [b""]
        token = self._write_token(environ)
        body = self._render(environ, res, base, token).encode("utf-8")
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
             *_headers(token is not None)],
        )
        return [b""] if method == "HEAD" else [body]

    @staticmethod
    def _write_token(environ: dict[str, Any]) -> str | None:
        """The CSRF token for this page's writes, or None when it offers none: the guard's
        access.decide said no PUT here (a read-only share, a reader), or there is no
        certificate to bind the token to."""
        context = request_context(environ)
        tokens, cert = context.csrf, context.cert
        if not context.may_write or tokens is None or cert is None:
            return None
        return tokens.issue(cert)

    @staticmethod
    def _token_seconds(environ: dict[str, Any]) -> int:
        """Seconds this page's token is accepted (``auth.browser_token_seconds``): the write
        script counts them from when the page was shown and, on a 403 after 90 % of them
        (the page may have arrived a little after the token was issued), says to reload."""
        tokens = request_context(environ).csrf
        return tokens.ttl_seconds if tokens is not None else TOKEN_TTL_SECONDS

    def _render(self, environ: dict[str, Any], res: Any, base: str, token: str | None) -> str:
        e = _text
        writable = token is not None
        rows = []
        blank = "<td></td><td class=m></td>" + ("<td></td>" if writable else "")
        if base != "/":
            parent = base.rstrip("/").rsplit("/", 1)[0] + "/"
            rows.append(f'<tr><td><a href="{e(quote(parent))}">../</a></td>{blank}</tr>')
        members = sorted(res.get_member_list(), key=lambda m: (not m.is_collection, m.name.lower()))
        for m in members:
            name = m.name + ("/" if m.is_collection else "")
            href = quote(base + name)
            size = "" if m.is_collection else human_size(m.get_content_length())
            actions = ""
            if writable:
                data = f'data-name="{e(m.name)}" data-href="{e(href)}"' + (" data-folder=1" if m.is_collection else "")
                actions = (f'<td class=act><button type=button class=rename {data} aria-label="Rename {e(m.name)}">'
                           f'Rename</button><button type=button class=delete {data} aria-label="Delete {e(m.name)}">'
                           "Delete</button></td>")
            rows.append(
                f'<tr><td><a href="{e(href)}">{e(name)}</a></td><td class=n>{e(size)}</td>'
                f"<td class='n m'>{_when(m.get_last_modified())}</td>{actions}</tr>"
            )
        if not members:
            rows.append(f"<tr><td colspan={4 if writable else 3}><em>This folder is empty.</em></td></tr>")
        tools = ""
        if writable:
            tools = (
                f'<div id=tools class=tools data-token="{html.escape(token or "")}" data-base="{e(quote(base))}" '
                f'data-ttl="{self._token_seconds(environ)}">'
                "<label>Upload files<input id=pick type=file multiple></label>"
                "<button id=mkdir type=button>New folder</button>"
                "<span class=hint>or drop files onto this page</span></div>"
                '<div id=status role=status aria-live=polite></div>'
            )
        elif request_context(environ).share is not None:
            tools = "<p class=readonly>You can open and download the files here, but not change them.</p>"
        scripts = [_TIME_SCRIPT, _WRITE_SCRIPT] if writable else [_TIME_SCRIPT]
        return "".join(
            [
                "<!doctype html><html lang=en><head><meta charset=utf-8>",
                '<meta name=viewport content="width=device-width,initial-scale=1">',
                f"<title>{e(base)}</title><style>{_STYLE}</style></head><body>",
                f"<h1>{e(_folder_name(base))}</h1><p class=where>Address: {e(base)}</p>",
                self._who(environ),
                tools,
                "<table><thead><tr><th>Name</th><th class=n>Size</th><th class='n m'>Modified</th>",
                "<th><span class=hint>Actions</span></th>" if writable else "",
                "</tr></thead><tbody>",
                *rows,
                "</tbody></table>",
                *(f"<script>{script}</script>" for script in scripts),
                "</body></html>",
            ]
        )

    @staticmethod
    def _who(environ: dict[str, Any]) -> str:
        """Who is signed in, in plain words: the account, the certificate by its name and
        expiry (subject and serial behind a details toggle), a two-factor session's end."""
        e = _text
        context = request_context(environ)
        cert: CertIdentity | None = context.cert
        account = context.account
        factors = ["this certificate", *(_FACTOR_WORDS.get(f, f) for f in context.factors)]
        said = factors[0] if len(factors) == 1 else ", ".join(factors[:-1]) + " and " + factors[-1]
        parts = [f"Signed in as <b>{e(account)}</b>"]
        details = ""
        if cert is not None:
            parts.append(f"with the certificate {e(cert.common_name or cert.subject)}, "
                         f"valid until {_when(cert.not_after.timestamp())}")
            details = (f"<details><summary>Certificate details</summary>{e(cert.subject)}, serial number "
                       f"{e(cert.serial)}. You signed in with {e(said)}.</details>")
        grant = context.grant_expires
        if grant:
            parts.append(f"· two-factor session until {_when(grant)}")
        share: ShareConfig | None = context.share
        if share is not None and "totp" in share.require or context.totp_enrolled:
            parts.append(f'<a href="/{STEPUP_PREFIX}/">two-factor sign-in</a>')
        banner = ""
        if context.renew_due and cert is not None:
            banner = (
                f"<p class=renew>Your certificate expires on {_when(cert.not_after.timestamp())}. "
                f'<a href="/{STEPUP_PREFIX}/#renew">Renew it now</a> so you are not locked out.</p>'
            )
        return f'<div class=who><p>{" ".join(parts)}</p>{details}</div>{banner}'
