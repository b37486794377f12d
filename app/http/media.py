"""What an uploaded file is, by its bytes, and the copy of it that is kept.

The type comes from the file's first bytes (its magic number), never from its name or the
type the client declared; then the file must parse, whole, as that type, with the field's own
libraries: Pillow for images, pypdf for PDFs. Anything else (SVG, HTML, a renamed executable)
is refused, and so is a polyglot: a file that starts as one of these types but does not
parse as it (a GIF header before a script), or a PNG with bytes after its end (an archive or
a page appended to a real image).

Images are kept as Pillow re-encodes them, so what is stored and served carries no metadata
(EXIF with its GPS position, XMP, comments), whatever the original held: a JPEG keeps its
own quantization tables (`quality="keep"`, no second loss) unless its EXIF orientation must
be applied to its pixels first; a WebP stays lossless if it was; animations keep their
frames. A PDF is kept as it came (its pages are counted).

Synchronous and CPU-bound: the route runs it in a worker thread. A file is read from the
spooled temporary file the multipart parser wrote (on disk past 1 MiB), and a re-encoded
image written to another, so no more than a decoded image is held in memory.
"""

from __future__ import annotations

import hashlib
import unicodedata
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile
from typing import IO, TYPE_CHECKING

from app.core.attachments import MediaType

# Pillow and pypdf are imported by the first upload, not at start-up: imported there they cost
# every process 9.5 MB more peak RSS (`python -m bench`, one stream: 99.0 -> 108.5 MB), whether
# it ever takes a file or not.
if TYPE_CHECKING:
    from PIL import Image

SPOOL_BYTES = 1024 * 1024
# Larger images are refused before they are decoded: a decompression bomb is a small file.
MAX_PIXELS = 40_000_000
# Frames times pixels, for an animation.
MAX_ANIMATION_PIXELS = 200_000_000
_PIL_FORMATS = {
    MediaType.PNG: "PNG",
    MediaType.JPEG: "JPEG",
    MediaType.WEBP: "WEBP",
    MediaType.GIF: "GIF",
}
EXTENSIONS = {
    MediaType.PNG: ".png",
    MediaType.JPEG: ".jpg",
    MediaType.WEBP: ".webp",
    MediaType.GIF: ".gif",
    MediaType.PDF: ".pdf",
}
# Metadata a save writes when given, or copies from the image read: given empty, it is not.
_NO_METADATA = {"exif": b"", "comment": b"", "xmp": b""}


class Unsupported(Exception):
    """Not a file of a type we keep (415 unsupported_media_type); the message says why."""


@dataclass
class Kept:
    """The bytes to keep (a file at its start), and what they are."""

    type: MediaType
    file: IO[bytes]
    size: int
    digest: str  # sha256:<hex> of `file`
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    def chunks(self, size: int) -> Iterator[bytes]:
        self.file.seek(0)
        while data := self.file.read(size):
            yield data


def sniff(head: bytes) -> MediaType | None:
    """The type a file's first bytes say it is, if one of ours."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType.JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return MediaType.GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType.WEBP
    if head.startswith(b"%PDF-"):
        return MediaType.PDF
    return None


def clean_name(name: str | None, kind: MediaType) -> str:
    """The client's file name as we keep and show it: its last path part, without control or
    format characters (a right-to-left override would disguise its extension), spaces
    collapsed, at most 200 characters; a name for it when nothing is left."""
    text = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C")
    text = " ".join(text.split()).strip(". ")[:200].strip()
    return text or f"upload{EXTENSIONS[kind]}"


def keep(source: IO[bytes]) -> Kept:
    """What to keep of the uploaded `source`; `Unsupported` when it is none of our types."""
    source.seek(0)
    kind = sniff(source.read(16))
    source.seek(0)
    if kind is None:
        raise Unsupported(
            "not a PNG, JPEG, WebP, GIF or PDF file (recognised by its content, not its name)"
        )
    if kind is MediaType.PDF:
        return _pdf(source)
    return _image(source, kind)


def _digest(file: IO[bytes]) -> tuple[int, str]:
    file.seek(0)
    digest = hashlib.sha256()
    size = 0
    while data := file.read(SPOOL_BYTES):
        digest.update(data)
        size += len(data)
    file.seek(0)
    return size, f"sha256:{digest.hexdigest()}"


def _pdf(source: IO[bytes]) -> Kept:
    from pypdf import PdfReader

    try:
        reader = PdfReader(source)
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unsupported("an encrypted PDF: a model cannot read it")
        pages = len(reader.pages)
    except Unsupported:
        raise
    except Exception as exc:  # pypdf raises many kinds on a malformed file
        raise Unsupported("the file starts as a PDF but does not parse as one") from exc
    if pages < 1:
        raise Unsupported("a PDF without pages")
    size, digest = _digest(source)
    return Kept(type=MediaType.PDF, file=source, size=size, digest=digest, pages=pages)


def _png_ends_cleanly(source: IO[bytes]) -> bool:
    """Whether the PNG's chunks end with IEND at the end of the file: bytes after it are
    another file riding on the image."""
    source.seek(8)
    while True:
        header = source.read(8)
        if len(header) < 8:
            return False
        length = int.from_bytes(header[:4], "big")
        source.seek(length + 4, 1)  # the chunk's data and CRC
        if header[4:8] == b"IEND":
            return source.read(1) == b""


def _image(source: IO[bytes], kind: MediaType) -> Kept:
    from PIL import Image

    if kind is MediaType.PNG and not _png_ends_cleanly(source):
        raise Unsupported(
            "a PNG that is cut short or has data after its end (another file riding on it)"
        )
    source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source, formats=[_PIL_FORMATS[kind]])
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            if width * height > MAX_PIXELS or width * height * frames > MAX_ANIMATION_PIXELS:
                raise Unsupported(f"an image of more than {MAX_PIXELS:,} pixels")
            out: IO[bytes] = SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
            width, height = _save(image, kind, out, animated=frames > 1)
    except Unsupported:
        raise
    except Exception as exc:  # Pillow raises many kinds on a malformed file
        raise Unsupported(f"the file starts as {kind} but does not parse as one") from exc
    size, digest = _digest(out)
    return Kept(type=kind, file=out, size=size, digest=digest, width=width, height=height)


def _save(
    image: Image.Image, kind: MediaType, out: IO[bytes], *, animated: bool
) -> tuple[int, int]:
    """Re-encode `image` into `out` without its metadata; its pixel size as stored."""
    from PIL import ImageOps

    icc = image.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    if kind is MediaType.JPEG:
        orientation = image.getexif().get(0x0112, 1)
        if orientation == 1:
            image.save(out, "JPEG", quality="keep", subsampling="keep", **_NO_METADATA, **extra)
        else:
            # The orientation is in the EXIF that goes: applied to the pixels instead.
            image = ImageOps.exif_transpose(image)
            image.save(out, "JPEG", quality=92, **_NO_METADATA, **extra)
    elif kind is MediaType.WEBP:
        lossless = _webp_lossless(image)
        image.save(
            out,
            "WEBP",
            lossless=lossless,
            quality=100 if lossless else 90,
            save_all=animated,
            **_NO_METADATA,
            **extra,
        )
    else:
        image.load()
        image.save(out, _PIL_FORMATS[kind], save_all=animated, **_NO_METADATA, **extra)
    return image.size


def _webp_lossless(image: Image.Image) -> bool:
    """Whether a WebP's first image is lossless (a VP8L chunk), from the file Pillow read."""
    fp = getattr(image, "fp", None)
    if fp is None:
        return False
    at = fp.tell()
    try:
        # The first image chunk, `VP8L` (lossless) or `VP8 `, comes within the first few
        # chunks (after VP8X, ICCP, ANIM and a frame's header in the extended format).
        fp.seek(12)
        head = fp.read(4096)
    finally:
        fp.seek(at)
    lossless, lossy = head.find(b"VP8L"), head.find(b"VP8 ")
    return lossless != -1 and (lossy == -1 or lossless < lossy)
