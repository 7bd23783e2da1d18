"""
What the web page may ask of its peer, as JSON: the requests of the
C{p2p} command (status, search, ls, get, downloads, cancel) and the
page's own few (pause and resume a download, change the upload limits).
Each takes and returns plain values; L{p2pshare.peer.ui.site} speaks
HTTP around them.  The contract is in C{docs/operations.rst}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from p2pshare import wire
from p2pshare.options import parse_rate
from p2pshare.peer import share
from p2pshare.peer.control import IControlled, find
from p2pshare.peer.coverage import Found
from p2pshare.peer.download.transfer import FetchError
from p2pshare.pieces import piece_count

MAX_UPLOADS_LIMIT = 10_000  # as --max-uploads


class ApiError(Exception):
    """
    A request the page made cannot be done: an HTTP status and one sentence.
    """

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# The wire's error codes, as HTTP statuses.
_STATUS = {wire.E_NOT_FOUND: 404, wire.E_BAD_ARGS: 400, "busy": 503, wire.E_INCOMPLETE: 504}


def _failed(e: FetchError) -> ApiError:
    return ApiError(_STATUS.get(e.code, 409), e.text)


class ISettable(Protocol):
    """
    The share's limits, as the page may change them.
    """

    @property
    def max_uploads(self) -> int: ...

    @property
    def upload_cap(self) -> float | None: ...

    def set_upload_limits(self, max_uploads: int, upload_rate: float | None) -> None: ...


class Api:
    """
    @param shared: where this peer's share is, and C{downloads} where its
        downloads land (shown on the page).
    @param meta_web: the metadata server's live page, if it has one.
    """

    def __init__(self, node: IControlled, limits: ISettable, shared: Path | None = None,
                 downloads: Path | None = None,
                 meta_web: Callable[[], str | None] = lambda: None) -> None:
        self.node = node
        self.limits = limits
        self.shared = shared
        self.downloads_dir = downloads
        self.meta_web = meta_web

    def status(self) -> dict[str, Any]:
        """
        C{p2p status}, without the list of shared files (counts and totals).
        """
        status = dict(self.node.status())
        status.pop("shared", None)
        status["upload_rate"] = self.limits.upload_cap
        status["max_uploads"] = self.limits.max_uploads
        status["shared_dir"] = str(self.shared) if self.shared is not None else None
        status["downloads_dir"] = str(self.downloads_dir) if self.downloads_dir is not None else None
        status["meta_web"] = self.meta_web()
        return status

    async def fresh_status(self) -> dict[str, Any]:
        """
        L{status}, with the network's size as the metadata server says it now.
        """
        await self.node.network_size()
        return self.status()

    async def search(self, pattern: str, exact: bool = False) -> dict[str, Any]:
        problem = _field_problem(pattern)
        if problem is not None:
            raise ApiError(400, f"that is not a search: {problem}")
        found = await find(self.node.search, pattern, exact)
        return {"pattern": pattern, "coverage": found.coverage.as_dict(),
                "results": by_content(found)}

    async def ls(self, holder: str) -> dict[str, Any]:
        if not wire.is_name(holder):
            raise ApiError(400, "a peer's name is 1 to 64 letters, digits or _ - . @")
        try:
            files = await self.node.files.listing(holder)
        except FetchError as e:
            raise _failed(e) from None
        return {"peer": holder, "files": files}

    def downloads(self) -> dict[str, Any]:
        return {"downloads": list(self.node.queue.listing())}

    def get(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if (not isinstance(name, str) or _field_problem(name) is not None
                or share.get_problem(name) is not None):
            raise ApiError(400, "give the name of a file, a folder (ending in /) or sha256: "
                           "and 12 to 64 hex digits")
        try:
            entry = self.node.queue.add(name)
        except FetchError as e:
            raise _failed(e) from None
        return {"download": asdict(entry)}

    def pause(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._change(body, self.node.queue.pause)

    def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._change(body, self.node.queue.resume)

    def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._change(body, self.node.queue.cancel_one)

    def _change(self, body: dict[str, Any], how: Any) -> dict[str, Any]:
        ident = body.get("id")
        if not isinstance(ident, int) or isinstance(ident, bool):
            raise ApiError(400, "give the id of a download")
        try:
            entry = how(ident)
        except FetchError as e:
            raise _failed(e) from None
        return {"download": asdict(entry)}

    def settings(self, body: dict[str, Any]) -> dict[str, Any]:
        rate_text = body.get("upload_rate", "")
        slots = body.get("max_uploads", self.limits.max_uploads)
        if not isinstance(rate_text, str):
            raise ApiError(400, "the upload rate is like 8M (bytes per second), or empty")
        try:
            rate = parse_rate(rate_text) if rate_text.strip() else None
        except ValueError as e:
            raise ApiError(400, f"upload rate: {e}") from None
        if not isinstance(slots, int) or isinstance(slots, bool) or not (
            1 <= slots <= MAX_UPLOADS_LIMIT
        ):
            raise ApiError(400, f"uploads at once is from 1 to {MAX_UPLOADS_LIMIT:,}")
        self.limits.set_upload_limits(slots, rate)
        return self.status()


def _field_problem(text: str) -> str | None:
    """
    What keeps C{text} from travelling as a name or a pattern, if anything.
    """
    if not text:
        return "it is empty"
    try:
        return wire.FILE(wire.quote_name(text))
    except UnicodeEncodeError:
        return "it is not text"


def by_content(found: Found) -> list[dict[str, Any]]:
    """
    A search's matches, one entry per distinct content (as C{p2p search}
    shows them): under the path its nearest holder gives it, with every
    path it goes by and every holder (a holder still downloading it with
    the share of pieces it has).
    """
    groups: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str, str]] = set()
    for m in found.matches:
        if (m.holder, m.sha256, m.name) in seen:
            continue
        seen.add((m.holder, m.sha256, m.name))
        group = groups.setdefault(m.sha256, {
            "sha256": m.sha256, "name": m.name, "size": m.size, "paths": [], "holders": [],
        })
        if m.name not in group["paths"]:
            group["paths"].append(m.name)
        partial = None if m.have is None else m.have / max(1, piece_count(m.size))
        group["holders"].append({"name": m.holder, "path": m.name, "partial": partial})
    return list(groups.values())
