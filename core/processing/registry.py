"""Which processor handles a file: content types, extensions, content sniffing, and plugins.

:meth:`ProcessorRegistry.resolve` decides by content; names and types are hints (DESIGN §7):

1. the file's content is sniffed (:func:`.sniff.sniff`): a PDF header, the main part an Office zip names, an
   EPUB's ``mimetype``, media signatures; or, for text, what it looks like (HTML, XML, JSON, CSV, text);
2. the hint: the task's content type, when the registry knows it (a MIME type such as ``application/pdf``,
   parameters such as ``; charset=`` ignored, ``audio/*`` style entries matching a whole family, or a short
   name: ``pdf``, ``text``, ``audio``), else the extension of the file name the task gave (the original
   name), else of the local path. The generic names MoRAG sends for a family of formats (``document``,
   ``web``) and ``application/octet-stream`` give no hint (and for ``web``, a page that sniffs as plain
   text or as nothing known is taken for HTML without a doctype);
3. the hint's processor is used, unless the content is *certainly* a format of another kind that has a
   processor (XLSX content named ``report.docx`` or sent as ``text/plain`` goes to the XLSX processor).
   Where content is only a judgement (the text formats) or a plugin claimed the hint, the hint stands, so a
   file that is not what it claims fails in that parser with a message that says so. Without a hint, the
   sniffed format decides.

A download is saved as ``input.bin``; the pipeline resolves it with ``name_from_path=False``, so that name
is no hint at all.

Plugins: a distribution declares entry points in the group ``morag_worker.processors``. **Each entry point
must load to a callable ``register(registry: ProcessorRegistry) -> None``** that calls
:meth:`ProcessorRegistry.register` (the built-in modules expose the same hook). For example, in the
plugin's ``pyproject.toml``::

    [project.entry-points."morag_worker.processors"]
    images = "morag_images.plugin:register"

Plugins load after the built-ins, so a plugin may take over a content type or extension (it is logged). A
plugin that fails to import or to register is logged and skipped, and what it registered before failing is
undone. The registry is built once per worker process and only read afterwards. A plugin's processor runs
in a converter child under the worker's limits like the built-ins (its optional ``isolated``, ``preload``
and :func:`.base.check_output` are described on :class:`.base.Processor`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Protocol

import structlog

from morag_worker.core.processing.base import (
    CorruptInput,
    EmptyContent,
    ProcessedContent,
    Processor,
    ProgressFn,
    UnsupportedContent,
)
from morag_worker.core.processing.sniff import DAMAGED_ZIP, Sniffed, describe, sniff

__all__ = ["PLUGIN_GROUP", "EntryPointLike", "ProcessorRegistry", "Unavailable"]

log = structlog.get_logger(__name__)

PLUGIN_GROUP = "morag_worker.processors"
_GENERIC_TYPES = {"document", "web", "file", "url", "application/octet-stream", "binary/octet-stream"}
_FALLBACK = {"web": "html"}
# The built-in processors' names by the kind of content they read. Content that is certainly of another kind
# overrides a hint naming one of these; plugins' processors are not listed, so their claims always stand.
_FAMILIES = {
    **{name: name for name in ("pdf", "docx", "xlsx", "pptx", "epub")},
    **{name: "text" for name in ("text", "markdown", "html", "xml", "json", "csv")},
    **{name: "media" for name in ("audio", "video", "whisper")},
}


class EntryPointLike(Protocol):
    """What the registry uses of an ``importlib.metadata.EntryPoint`` (tests pass fakes)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


@dataclass(frozen=True)
class Unavailable:
    """A placeholder for a processor whose optional dependencies are missing.

    Resolving to it raises :class:`UnsupportedContent` with ``reason`` (how to install what is missing).
    """

    name: str
    reason: str

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Always raises :class:`UnsupportedContent` with :attr:`reason`."""
        raise UnsupportedContent(self.reason)


def _normalize_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _normalize_extension(extension: str) -> str:
    extension = extension.strip().lower()
    return extension if extension.startswith(".") else f".{extension}"


class ProcessorRegistry:
    """Maps content types (MIME types and short names) and file extensions to processors."""

    def __init__(self) -> None:
        self._by_type: dict[str, Processor | Unavailable] = {}
        self._by_extension: dict[str, Processor | Unavailable] = {}

    def __repr__(self) -> str:
        return f"<ProcessorRegistry {', '.join(self.supported())}>"

    @classmethod
    def default(cls, entry_points: Iterable[EntryPointLike] | None = None) -> ProcessorRegistry:
        """The built-in processors plus the plugins found in :data:`PLUGIN_GROUP`.

        Args:
            entry_points: The plugins to load; None reads the installed distributions' entry points.
        """
        from morag_worker.core.processing import documents, media, text

        registry = cls()
        for module in (text, documents, media):
            module.register(registry)
        registry.load_plugins(entry_points)
        return registry

    def register(
        self,
        processor: Processor | Unavailable,
        *,
        content_types: Iterable[str] = (),
        extensions: Iterable[str] = (),
    ) -> None:
        """Route ``content_types`` (``application/pdf``, ``pdf``, ``audio/*``) and ``extensions`` here.

        A later registration of the same key replaces the earlier one.
        """
        for key in content_types:
            self._put(self._by_type, _normalize_type(key), processor)
        for key in extensions:
            self._put(self._by_extension, _normalize_extension(key), processor)

    def _put(
        self, table: dict[str, Processor | Unavailable], key: str, processor: Processor | Unavailable
    ) -> None:
        previous = table.get(key)
        if previous is not None and previous is not processor:
            log.info("processing.processor_replaced", key=key, old=previous.name, new=processor.name)
        table[key] = processor

    def load_plugins(self, entry_points: Iterable[EntryPointLike] | None = None) -> list[str]:
        """Load plugins (see the module docstring); returns the names of those that registered."""
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=PLUGIN_GROUP)
        loaded: list[str] = []
        for entry_point in entry_points:
            saved = (dict(self._by_type), dict(self._by_extension))
            try:
                hook = entry_point.load()
                if not callable(hook):
                    raise TypeError(
                        f"{entry_point.value} is a {type(hook).__name__}, not a register() callable"
                    )
                hook(self)
            except Exception as exc:
                self._by_type, self._by_extension = saved
                log.warning(
                    "processing.plugin_failed",
                    plugin=entry_point.name,
                    target=entry_point.value,
                    error=repr(exc),
                )
                continue
            log.info("processing.plugin_loaded", plugin=entry_point.name, target=entry_point.value)
            loaded.append(entry_point.name)
        return loaded

    def supported(self) -> list[str]:
        """The short names of the formats that can be processed here (no MIME types, no extensions)."""
        return sorted(
            key for key, p in self._by_type.items() if "/" not in key and not isinstance(p, Unavailable)
        )

    def _lookup_type(self, content_type: str) -> Processor | Unavailable | None:
        found = self._by_type.get(content_type)
        if found is None and "/" in content_type:
            found = self._by_type.get(content_type.split("/", 1)[0] + "/*")
        return found

    def resolve(
        self,
        content_type: str | None,
        filename: str | None,
        path: Path | bytes,
        *,
        name_from_path: bool = True,
    ) -> Processor:
        """The processor for the file at ``path``; see the module docstring for the order of the rules.

        Args:
            content_type: The task's content type (MIME type or short name), or None.
            filename: The file's original name (its extension is used), or None to use ``path``'s.
            path: The local file, whose content is sniffed (and overrides the hints, see above); or
                the bytes of a small input kept in memory, which have no name of their own.
            name_from_path: False where ``path``'s name is ours, not the file's (a download's ``input.bin``):
                then only ``filename`` is a hint, and no message names ``.bin``.

        Raises:
            UnsupportedContent: No processor handles it, or the one that would needs a missing extra.
            CorruptInput: Nothing decides and the content is a damaged container (a truncated zip).
            EmptyContent: Nothing decides and the file is empty.
        """
        wanted = _normalize_type(content_type)
        hinted = None if not wanted or wanted in _GENERIC_TYPES else self._lookup_type(wanted)
        name = filename or (path.name if name_from_path and not isinstance(path, bytes) else "")
        extension = PurePath(name).suffix.lower()
        if hinted is None and extension:
            hinted = self._by_extension.get(extension)
        empty = not path if isinstance(path, bytes) else path.stat().st_size == 0
        sniffed = None if empty else sniff(path)
        found = self._weigh(hinted, sniffed)
        if wanted in _FALLBACK and (found is None or (sniffed is not None and sniffed.format == "text")):
            found = self._by_type.get(_FALLBACK[wanted]) or found
        if found is None:
            if empty:
                raise EmptyContent("the file is empty (0 bytes)")
            if sniffed is not None and sniffed.format == DAMAGED_ZIP:
                raise CorruptInput(f"the file is {describe(DAMAGED_ZIP)}")
            raise UnsupportedContent(self._unsupported_message(wanted, extension, sniffed))
        if isinstance(found, Unavailable):
            raise UnsupportedContent(found.reason)
        log.debug(
            "processing.resolved",
            processor=found.name,
            content_type=wanted,
            extension=extension,
            sniffed=sniffed.format if sniffed else None,
        )
        return found

    def _weigh(
        self, hinted: Processor | Unavailable | None, sniffed: Sniffed | None
    ) -> Processor | Unavailable | None:
        """The hint's processor unless the content is certainly another format that a parser would refuse.

        A hint stands where content cannot be certain (text formats look alike: a ``.md`` file is "text",
        a ``.json`` file that fails to parse should fail as JSON) and where a plugin claimed it.
        """
        content = self._by_type.get(sniffed.format) if sniffed else None
        if hinted is None or content is None or content is hinted or sniffed is None:
            return hinted or content
        hinted_family = _FAMILIES.get(hinted.name)
        if sniffed.certain and hinted_family is not None and hinted_family != _FAMILIES.get(sniffed.format):
            log.info("processing.content_overrides_hint", hinted=hinted.name, content=sniffed.format)
            return content
        return hinted

    def _unsupported_message(self, wanted: str, extension: str, sniffed: Sniffed | None) -> str:
        supported = ", ".join(self.supported())
        if sniffed is not None and sniffed.certain:
            return f"this file is not supported: it is {describe(sniffed.format)} (supported: {supported})"
        if wanted and wanted not in _GENERIC_TYPES:
            what = f"content type {wanted!r}"
        elif extension:
            what = f"the file type {extension!r}"
        elif sniffed:
            what = f"this file (it looks like {describe(sniffed.format)})"
        else:
            what = "this file (its format was not recognised from its name or content)"
        return f"{what} is not supported; supported: {supported}"
