"""Render the app icon (resources/icons/morag-worker.svg) into the sizes installers need.

    python packaging/icons.py OUT_DIR

writes ``OUT_DIR/hicolor/<n>x<n>/apps/morag-worker.png`` for the hicolor sizes, a copy of the SVG
under ``hicolor/scalable/apps``, and ``OUT_DIR/morag-worker.ico`` (16 to 256 px) for Windows.
Uses Qt's SVG renderer offscreen, so any machine with the build environment can run it. Build-time
only; runs on the main thread.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SIZES = (16, 22, 24, 32, 48, 64, 128, 256)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
NAME = "morag-worker"


def main(argv: list[str]) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from importlib import resources

    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    out = Path(argv[1])
    svg = resources.files("morag_worker.resources") / "icons" / f"{NAME}.svg"
    data = svg.read_bytes()
    app = QGuiApplication([argv[0]])  # noqa: F841 - QImage text/painting needs an application
    renderer = QSvgRenderer(data)
    if not renderer.isValid():
        print(f"icons: {svg} is not a valid SVG", file=sys.stderr)
        return 1
    images = {}
    for size in sorted(set(SIZES) | set(ICO_SIZES)):
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter)
        painter.end()
        images[size] = image
    for size in SIZES:
        target = out / "hicolor" / f"{size}x{size}" / "apps" / f"{NAME}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not images[size].save(str(target), "PNG"):
            print(f"icons: could not write {target}", file=sys.stderr)
            return 1
    scalable = out / "hicolor" / "scalable" / "apps" / f"{NAME}.svg"
    scalable.parent.mkdir(parents=True, exist_ok=True)
    scalable.write_bytes(data)
    write_ico(out / f"{NAME}.ico", [images[s] for s in ICO_SIZES])
    print(f"icons: {len(SIZES)} PNG sizes, an SVG and {NAME}.ico in {out}", file=sys.stderr)
    return 0


def write_ico(target: Path, images: list[object]) -> None:
    """An .ico with one PNG-compressed entry per size (Windows Vista and later read these)."""
    import struct

    from PySide6.QtCore import QBuffer, QByteArray, QIODevice

    blobs = []
    for image in images:
        buffer = QByteArray()
        device = QBuffer(buffer)
        device.open(QIODevice.OpenModeFlag.WriteOnly)
        image.save(device, "PNG")  # type: ignore[attr-defined]
        blobs.append((image.width(), bytes(buffer.data())))  # type: ignore[attr-defined]
    header = struct.pack("<HHH", 0, 1, len(blobs))
    offset = len(header) + 16 * len(blobs)
    entries, payload = b"", b""
    for width, blob in blobs:
        side = 0 if width >= 256 else width
        entries += struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(blob), offset + len(payload))
        payload += blob
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(header + entries + payload)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
