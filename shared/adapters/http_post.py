"""POST requests on keep-alive connections through libcurl (pycurl): one handle, and so one
connection, per sending thread.

At Braze's 1,000 requests/s the client's CPU per request is most of what a host spends on
delivery. Measured here (`bench/client_bench.py`: 75-object bodies, 64 requests in flight, the
sandbox at 50 ms on another core), the Braze client took 480-512 µs of CPU a request on
urllib3's `urlopen` and 194-220 on libcurl (earlier, with bare loops that left out the
client's own work and the sandbox unpinned: `http.client` 260-290, pycurl 150-166): libcurl
sends, waits and parses in C, where urllib3 runs its pool, timeouts and header parsing in
Python.

Like the urllib3 pool it replaces, it takes no proxy from the environment (libcurl would read
the proxy variables), follows no redirect and speaks only HTTP and HTTPS; certificates are
checked against the CA store Python's ssl module finds (`SSL_CERT_FILE` and `SSL_CERT_DIR`
included), else certifi's bundle (which `requests` always uses): the libcurl the wheel
bundles looks for a Red Hat path that Debian, which Azure Functions runs on, does not have.

libcurl sends a request again by itself when a reused connection turns out dead before any
answer came (curl/curl#18417 proposes an option against it). Braze may have taken the first
send, and the second would take no slot of the rate budget, so a window could go over. So the
body is given only through a read callback (never `POSTFIELDS`, which libcurl can always
rewind) with a seek callback that refuses: libcurl cannot rewind the body, fails the request
instead (CURLE_SEND_FAIL_REWIND), and the caller sends it again as after any dropped
connection, with a slot of its own. libcurl reads the body before it writes a byte, so every
resend would need the rewind.
"""

from __future__ import annotations

import io
import math
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import certifi
import pycurl


class TransportError(Exception):
    """No answer: the connection was refused, reset or dropped, timed out, or TLS failed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, reason phrase, headers (names as sent) and body."""

    status: int
    reason: str
    headers: dict[str, str]
    data: bytes


class KeepAlivePoster:
    """POSTs to one URL; each thread keeps its own libcurl handle and keep-alive connection
    (a handle must not be used by two threads at once)."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float) -> None:
        self._url = url
        self._connect_ms = round(connect_timeout * 1000)
        # libcurl has no read timeout: a transfer averaging under a byte a second for this long
        # is cut. Its average counts the body sent too, so a Braze that never answers is cut
        # after this plus up to 5 s (urllib3 cut it after this).
        self._stalled_seconds = max(1, math.ceil(read_timeout))
        self._ca = ca_store()
        self._local = threading.local()

    def post(self, body: bytes, headers: Sequence[str]) -> Answer:
        """Send `body` (not empty: see above) with `headers` ("Name: value" lines); raises
        TransportError."""
        if not body:
            raise ValueError("an empty body could be sent again unaccounted for")
        local = self._local
        handle = getattr(local, "handle", None)
        if handle is None:
            handle = local.handle = self._new_handle()
            local.headers = None
        if local.headers is not headers:  # the same list is set once per thread
            handle.setopt(pycurl.HTTPHEADER, list(headers))
            local.headers = headers
        lines: list[bytes] = []
        chunks: list[bytes] = []
        handle.setopt(pycurl.READFUNCTION, io.BytesIO(body).read)
        handle.setopt(pycurl.POSTFIELDSIZE_LARGE, len(body))
        handle.setopt(pycurl.HEADERFUNCTION, lines.append)
        handle.setopt(pycurl.WRITEFUNCTION, chunks.append)
        try:
            handle.perform()
        except pycurl.error as error:
            # A fresh handle for the next request: libcurl has closed the connection, and no
            # state of the failed transfer (a rewind, a speed check) can reach the next one.
            handle.close()
            local.handle = None
            code, message = error.args if len(error.args) == 2 else (None, str(error))
            raise TransportError(f"{message} (libcurl error {code})") from None
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        reason, answer_headers = _header_block(lines)
        return Answer(status, reason, answer_headers, b"".join(chunks))

    def _new_handle(self) -> pycurl.Curl:
        handle = pycurl.Curl()
        handle.setopt(pycurl.URL, self._url)
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.POST, 1)
        handle.setopt(pycurl.SEEKFUNCTION, _cannot_seek)
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
        handle.setopt(pycurl.PROXY, "")  # not from the environment
        handle.setopt(pycurl.FOLLOWLOCATION, 0)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, self._connect_ms)
        handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        handle.setopt(pycurl.LOW_SPEED_TIME, self._stalled_seconds)
        handle.setopt(pycurl.SSL_VERIFYPEER, 1)
        handle.setopt(pycurl.SSL_VERIFYHOST, 2)
        cafile, capath = self._ca
        if cafile:
            handle.setopt(pycurl.CAINFO, cafile)
        if capath:
            handle.setopt(pycurl.CAPATH, capath)
        return handle


def ca_store() -> tuple[str | None, str | None]:
    """The CA file and folder certificates are checked against: those Python's ssl module
    finds (it leaves out any that does not exist), else certifi's bundle."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile or paths.capath:
        return paths.cafile, paths.capath
    return certifi.where(), None


def _cannot_seek(offset: int, origin: int) -> int:
    return pycurl.SEEKFUNC_CANTSEEK


def _header_block(lines: list[bytes]) -> tuple[str, dict[str, str]]:
    """The reason phrase and headers of the last answer's header block (an interim answer,
    such as 100 Continue, comes before it)."""
    reason, headers = "", {}
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.startswith("HTTP/"):
            reason, headers = (line.split(" ", 2)[2:] or [""])[0], {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    return reason, headers
