"""HTTP downloads into a cache folder, checked against sha256 digests before anything reads them.

A download goes to a hidden `.<file>.<random>.part` beside it and is renamed into place only once complete
(and verified, when a digest is pinned). A file the caller has read successfully gets a `<file>.verified` mark
holding its digest: without a pinned digest, only that mark lets a later run reuse the file, since an HTML
error page or a truncated body looks like any other file. Local files (data.path) are checked here too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import math
import re
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from imgclf import fileio, progress
from imgclf.errors import DataSourceError

log = logging.getLogger(__name__)

_DOWNLOAD_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60  # the most one read waits for the next bytes
# The most a whole download may take: a per-read timeout never fires on a server that trickles a byte every
# 20 s, so this bounds the transfer itself. CIFAR-10 (162 MB) needs 27 minutes at 100 KB/s.
_DOWNLOAD_DEADLINE_S = 3600.0
# The most a download may write, unless the caller gives its own cap (an archive to extract: what its extraction
# limits allow): the default data.max_extracted_mb. An endless body stops here, not when the disk is full.
_MAX_DOWNLOAD_BYTES = 20480 << 20


def normalise_sha256(value: str | None) -> str | None:
    """Lower-case a sha256 hex digest, or refuse a value that is not one."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise DataSourceError(f"data.sha256 {value!r} is not a sha256 digest (64 hex characters); "
                              "correct it, or set it to null")
    return text


def existing_file(path: str, *, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataSourceError(f"data.path {path!r} is not a file; it must be {what}, or null to download it")
    return file


def verify_local(file: Path, expected: str | None, *, official: str | None) -> str:
    """Check a local file against data.sha256 (an error) or the official digest (a warning); return its."""
    digest = fileio.sha256_file(file)
    if expected is not None and digest != expected:
        raise DataSourceError(f"{file}: sha256 is {digest} but data.sha256 expects {expected}; check that "
                              "data.path names the right file, or correct data.sha256")
    if expected is None and official is not None and digest != official:
        log.warning("%s differs from the official archive (sha256 %s, official %s); using it anyway because "
                    "data.sha256 is not set", file, digest, official)
    return digest


def download(url: str, destination: Path, *, sha256: str | None, max_bytes: int | None = None,
             deadline_s: float | None = None) -> Path:
    """Download `url` to `destination`, verified against `sha256` before it is renamed into place.

    A complete file already at `destination` is reused when its checksum matches, or, with no checksum
    given, when it was marked verified after an earlier use; otherwise it is downloaded again. The
    transfer goes to a hidden `.part` file beside it, never mistaken for a complete file. It stops with an
    error past `max_bytes` (default `_MAX_DOWNLOAD_BYTES`) or `deadline_s` (default `_DOWNLOAD_DEADLINE_S`).
    """
    return download_with_digest(url, Path(destination), sha256=normalise_sha256(sha256), max_bytes=max_bytes,
                                deadline_s=deadline_s)[0]


@contextlib.contextmanager
def verified_download(url: str, destination: Path, *, sha256: str | None, max_bytes: int | None = None,
                      deadline_s: float | None = None) -> Iterator[tuple[Path, str]]:
    """Download (or reuse) `url`; the body reads it. A file the body finds bad is deleted, a good one marked.

    Without a pinned digest only reading the file proves it good (an HTML error page or a truncated body
    has no Content-Length to betray it), so the mark, not the file's presence, decides reuse.
    """
    file, digest = download_with_digest(url, destination, sha256=sha256, max_bytes=max_bytes,
                                        deadline_s=deadline_s)
    try:
        yield file, digest
    except DataSourceError:
        discard_download(file)
        raise
    mark_verified(file, digest)


def _verified_mark(file: Path) -> Path:
    return file.with_name(file.name + ".verified")


def mark_verified(file: Path, digest: str) -> None:
    fileio.atomic_write_text(_verified_mark(file), digest + "\n")


def discard_download(file: Path) -> None:
    log.warning("removing %s: it failed verification, so the next run downloads it again", file)
    file.unlink(missing_ok=True)
    _verified_mark(file).unlink(missing_ok=True)


def download_with_digest(url: str, destination: Path, *, sha256: str | None, max_bytes: int | None = None,
                         deadline_s: float | None = None) -> tuple[Path, str]:
    """`download`, for a normalised `sha256`, also returning the file's digest (computed while streaming)."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DataSourceError(f"cannot download {url!r}: only http:// and https:// URLs are supported")
    if destination.is_file():
        digest = fileio.sha256_file(destination)
        mark = _verified_mark(destination)
        verified = mark.is_file() and mark.read_text().strip() == digest
        if digest == sha256 or (sha256 is None and verified):
            log.info("using %s, downloaded earlier", destination)
            return destination, digest
        log.warning("%s (sha256 %s) %s; downloading it again", destination, digest,
                    f"is not the expected {sha256}" if sha256 else "was never verified")
        _verified_mark(destination).unlink(missing_ok=True)
    with fileio.atomic_path(destination, suffix=".part") as partial:
        digest = _stream(url, partial, name=destination.name,
                         max_bytes=_MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes,
                         deadline_s=_DOWNLOAD_DEADLINE_S if deadline_s is None else deadline_s)
        if sha256 is not None and digest != sha256:
            raise DataSourceError(f"{url} downloaded with sha256 {digest}, but {sha256} was expected; check "
                                  "data.sha256 and the URL (the file may have changed upstream)")
    return destination, digest


def _stream(url: str, partial: Path, *, name: str, max_bytes: int, deadline_s: float) -> str:
    """Write the body at `url` to `partial` with a progress bar; return its sha256. Stops with an error once the
    body passes `max_bytes` or the transfer `deadline_s` seconds."""
    hasher = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "imgclf-download/1"})
    written, total = 0, None
    with _Deadline(deadline_s) as deadline:
        try:
            with (deadline.opener().open(request, timeout=min(_DOWNLOAD_TIMEOUT_S, deadline_s)) as response,
                  open(partial, "wb") as handle):
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and total > max_bytes:
                    raise _too_big(url, max_bytes, f"announces {total} bytes, more")
                log.info("downloading %s (%s bytes) to %s", url, total if total is not None else "unknown",
                         partial.parent)
                # A bar with rate and estimate (when Content-Length gives the size) in a terminal; one line in logs.
                with progress.step(f"download {name}", total=total, unit=progress.BYTES) as counter:
                    while chunk := response.read1(_DOWNLOAD_CHUNK):  # what one receive brings: the cap holds
                        written += len(chunk)
                        if written > max_bytes:
                            raise _too_big(url, max_bytes, "sends more")
                        handle.write(chunk)
                        hasher.update(chunk)
                        counter.update(len(chunk))
        except urllib.error.HTTPError as error:
            raise DataSourceError(f"downloading {url} failed: HTTP {error.code} {error.reason}; check the URL "
                                  "(data.path)") from error
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                ssl.SSLError) as error:
            if deadline.expired:
                raise _too_slow(url, deadline_s) from error
            reason = getattr(error, "reason", None) or error
            raise DataSourceError(f"downloading {url} failed ({reason}); check the network connection, or "
                                  "download the file yourself and point data.path at it") from error
        except OSError as error:
            if deadline.expired:
                raise _too_slow(url, deadline_s) from error
            if error.errno != errno.ENOSPC:
                raise
            need = f"about {math.ceil(total / (1 << 20))} MB" if total else f"more than {written >> 20} MB"
            raise DataSourceError(f"no space left on {partial.parent}, need {need} for {url}; free some space "
                                  "and run the stage again") from error
        if deadline.expired:  # the connection was shut mid-body: what came is not the whole file
            raise _too_slow(url, deadline_s)
    if total is not None and written != total:
        raise DataSourceError(f"downloading {url} stopped after {written} of {total} bytes; run the stage "
                              "again")
    return hasher.hexdigest()


class _Deadline:
    """Shuts the download's connections down once `seconds` have passed, so that a read blocked on a server that
    trickles (the headers, a chunk's size line, the body: a byte every 20 s) returns: a per-read timeout never fires
    on such a server, and http.client reads a header line or chunk size until it ends."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (proxies and redirects as usual) whose connections this deadline watches."""
        deadline = self

        class Connection(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        class SecureConnection(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        class Handler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Connection, req)

        class SecureHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(SecureConnection, req, context=self._context)

        return urllib.request.build_opener(Handler, SecureHandler)


def _shut(sock: socket.socket) -> None:
    """Shut the connection itself (a TLS socket's own shutdown would also drop its TLS state under the reader)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _too_slow(url: str, deadline_s: float) -> DataSourceError:
    return DataSourceError(f"downloading {url} took longer than {deadline_s:g} s in all, so it was stopped (a "
                           "stalled or very slow server); try again later, or download the file yourself and "
                           "point data.path at it")


def _too_big(url: str, max_bytes: int, what: str) -> DataSourceError:
    return DataSourceError(f"{url} {what} than the {max_bytes / (1 << 20):.1f} MB a download may have here (what "
                           "data.max_extracted_mb and data.max_archive_members allow an archive), so it was "
                           "stopped; check the URL, or raise those limits if the data set really is that big")


def is_url(path: str) -> bool:
    return urllib.parse.urlparse(path).scheme in ("http", "https")


def url_file_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download"


def url_cache_name(url: str) -> str:
    # Prefixed with a digest of the URL: two URLs ending in the same file name must not share a cache entry.
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{url_file_name(url)}"

