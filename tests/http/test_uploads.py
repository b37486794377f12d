"""Attachments through a real server (AUTH_MODE=jwt, two users) on the test's database: real
multipart uploads of each type, files refused by their bytes, bodies refused before they are
read, the quota, isolation, EXIF gone, what goes upstream with a turn (the simulator records
each request body), a model that cannot read what is attached, budgets, deletion with the
conversation and the sweep of day-old unused uploads.

One server for the module (its own database, marked by hand); the fake upstream is reset per
test by the `fake` fixture."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from pypdf import PdfWriter

from app.dev.threaded_server import ThreadedServer
from app.main import create_app
from app.settings import Settings
from app.storage.tables import budget_overrides, uploads
from tests.http.identity_support import AUDIENCE, ISSUER, SECRET, token
from tests.support import (
    DatabaseHandle,
    _on_own_connection,
    local_client,
    make_database,
    run_async,
    wait_for,
)

pytestmark = pytest.mark.db

A, B = "user-a", "user-b"
MAX_UPLOAD = 400_000
QUOTA = 1_000_000
AGENTS = Path(__file__).resolve().parents[2] / "app" / "agents" / "agents.toml"
TEXT_ONLY = "meta-llama/llama-3.1-70b-instruct"  # the simulator's: no image, no file input
NO_FILES = "perplexity/sonar"  # reads images, not files: PDFs go through the parser


@pytest.fixture(scope="module")
def shared(fake_server, tmp_path_factory) -> Iterator[tuple[str, DatabaseHandle]]:
    _, upstream = fake_server
    folder = tmp_path_factory.mktemp("uploads")
    agents = folder / "agents.toml"
    # Every priced model allowed, so a turn may name one that cannot read images.
    agents.write_text(AGENTS.read_text().replace("[chat]\n", '[chat]\nallowed_models = "*"\n', 1))
    with make_database(folder) as database:
        settings = Settings(
            _env_file=None,
            app_env="test",
            openrouter_api_key="sk-or-test-secret-key",
            openrouter_model="openai/gpt-4o",
            openrouter_base_url=f"{upstream.url}/api/v1",
            database_url=database.url,
            auth_mode="jwt",
            auth_jwt_secret=SECRET,
            auth_jwt_audience=AUDIENCE,
            auth_jwt_issuer=ISSUER,
            agents_file=str(agents),
            auto_titles=False,
            max_upload_bytes=MAX_UPLOAD,
            upload_quota_bytes=QUOTA,
            checkpoint_interval=0.2,  # the heartbeat, and the sweep with it, every 0.2 s
        )
        with ThreadedServer(create_app(settings)) as server:
            yield server.url, database


def client(shared, user: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(SECRET, 'HS256', sub=user)}"}
    return local_client(shared[0], headers=headers, timeout=20)


@pytest.fixture
def a(shared, fake) -> Iterator[httpx.Client]:
    with client(shared, A) as http:
        yield http
    _delete_all(shared[1])


@pytest.fixture
def b(shared) -> Iterator[httpx.Client]:
    with client(shared, B) as http:
        yield http


def _delete_all(database: DatabaseHandle) -> None:
    """Each test starts without uploads (the quota counts them), conversations or budgets."""
    for table in (
        "upload_chunks",
        "uploads",
        "message_attachments",
        "budget_overrides",
        "budget_reservations",
        "budget_totals",
        "generations",
        "messages",
        "conversations",
    ):
        database.execute(f"DELETE FROM {table}")


def count(database: DatabaseHandle, table: str) -> int:
    return database.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]


# --- files -------------------------------------------------------------------------------------


def image_bytes(kind: str, size: tuple[int, int] = (40, 30), **save: Any) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    out = io.BytesIO()
    image.save(out, kind, **save)
    return out.getvalue()


def pdf_bytes(pages: int = 3) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PDF_2, PDF_3, PDF_4 = pdf_bytes(2), pdf_bytes(3), pdf_bytes(4)


def jpeg_with_location() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCamMaker"
    exif[0x8825] = {1: "N", 2: (IFDRational(51), IFDRational(30), IFDRational(12))}
    return image_bytes("JPEG", exif=exif, comment=b"secret-comment", xmp=b"<x>secret-xmp</x>")


def upload(http: httpx.Client, data: bytes, name: str, declared: str = "application/octet-stream"):
    return http.post("/api/uploads", files={"file": (name, data, declared)})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


# --- uploading ---------------------------------------------------------------------------------


def test_each_type_is_known_by_its_bytes_and_served_sandboxed(a):
    cases = [
        # (bytes, the name and type the client claims, what it is)
        (image_bytes("PNG"), "shot.png", "image/png", "image/png", (40, 30)),
        (image_bytes("JPEG"), "photo.jpg", "image/jpeg", "image/jpeg", (40, 30)),
        (image_bytes("WEBP", lossless=True), "a.webp", "image/webp", "image/webp", (40, 30)),
        (image_bytes("GIF"), "anim.gif", "image/gif", "image/gif", (40, 30)),
        (PDF_3, "doc.pdf", "application/pdf", "application/pdf", None),
        # Renamed, and declared as something else: its bytes say what it is.
        (image_bytes("PNG", (7, 9)), "report.pdf", "application/pdf", "image/png", (7, 9)),
    ]
    for data, name, declared, kind, pixels in cases:
        response = upload(a, data, name, declared)
        assert response.status_code == 201, response.text
        meta = response.json()
        assert meta["type"] == kind and meta["name"] == name
        if pixels is None:
            assert (meta["width"], meta["height"], meta["pages"]) == (None, None, 3)
        else:
            assert (meta["width"], meta["height"], meta["pages"]) == (*pixels, None)
        got = a.get(f"/api/uploads/{meta['id']}")
        assert got.status_code == 200 and got.json() == meta
        content = a.get(f"/api/uploads/{meta['id']}/content")
        assert content.status_code == 200
        assert content.headers["content-type"] == kind
        assert content.headers["x-content-type-options"] == "nosniff"
        assert content.headers["content-security-policy"] == "default-src 'none'; sandbox"
        disposition = "attachment" if kind == "application/pdf" else "inline"
        assert content.headers["content-disposition"].startswith(f"{disposition}; filename=")
        assert len(content.content) == meta["size"]
        assert meta["digest"] == "sha256:" + hashlib.sha256(content.content).hexdigest()
        if kind == "application/pdf":
            assert content.content == data  # kept as it came
        else:
            assert Image.open(io.BytesIO(content.content)).size == pixels


def test_an_image_loses_its_metadata_and_a_name_its_tricks(a):
    original = jpeg_with_location()
    assert b"SecretCamMaker" in original and b"secret-comment" in original
    meta = upload(a, original, "../../etc/\u202egpj.exe", "image/jpeg").json()
    assert meta["name"] == "gpj.exe"  # no path, no right-to-left override
    kept = a.get(f"/api/uploads/{meta['id']}/content").content
    for secret in (b"SecretCamMaker", b"secret-comment", b"secret-xmp", b"Exif"):
        assert secret not in kept
    image = Image.open(io.BytesIO(kept))
    assert image.size == (40, 30) and not image.getexif()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def test_other_files_and_polyglots_are_refused_with_nothing_kept(a, shared):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    refused = [
        (svg, "logo.svg", "image/svg+xml"),
        (svg, "logo.png", "image/png"),  # an SVG named and declared as a PNG
        (b"<html><script>alert(1)</script></html>", "page.pdf", "application/pdf"),
        # A GIF header before a script: a GIF/JavaScript polyglot, no image.
        (b"GIF89a/*\x00\x00*/=1;alert(document.domain)//", "x.gif", "image/gif"),
        # A real PNG with a page riding after its end.
        (image_bytes("PNG") + b"<html><script>alert(1)</script></html>", "x.png", "image/png"),
        # A PNG's signature and a truncated header chunk.
        (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", b"\x00" * 5), "y.png", "image/png"),
        (b"%PDF-1.7\n<html>not a pdf</html>", "z.pdf", "application/pdf"),
        (b"", "empty.png", "image/png"),
    ]
    for data, name, declared in refused:
        assert_error(upload(a, data, name, declared), 415, "unsupported_media_type")
    assert_error(a.post("/api/uploads", data={"note": "no file"}), 422, "invalid_field")
    assert_error(
        a.post("/api/uploads", content=b"{}", headers={"content-type": "application/json"}),
        422,
        "invalid_field",
    )
    assert count(shared[1], "uploads") == 0 and count(shared[1], "upload_chunks") == 0


def _raw(url: str, head: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(head)
    return conn


def _response(conn: socket.socket) -> tuple[bytes, bytes]:
    """The status line and headers, and the body (by its Content-Length) of the answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def test_a_body_over_the_limit_is_refused_before_it_is_read(a, shared):
    url = shared[0]
    auth = a.headers["authorization"].encode()
    # A declared length over the limit: answered at once, with none of the body sent.
    conn = _raw(
        url,
        b"POST /api/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: " + str(MAX_UPLOAD * 3).encode() + b"\r\n\r\n",
    )
    with conn:
        head, body = _response(conn)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "upload_too_large"
    # Chunked, with no length: counted as it arrives, refused once past the limit. The body
    # is cut off past it (no last chunk ever comes): the answer cannot have waited for it.
    conn = _raw(
        url,
        b"POST /api/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    with conn:
        piece = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        sent = 0
        while sent < MAX_UPLOAD + 128 * 1024:
            piece += b"\x00" * 65536
            conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
            piece = b""
        head, body = _response(conn)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "upload_too_large"
    # A file over MAX_UPLOAD_BYTES in a body within the framing's room: the file is counted.
    assert_error(upload(a, b"\x89PNG" + b"\x00" * MAX_UPLOAD, "big.png"), 413, "upload_too_large")
    assert count(shared[1], "uploads") == 0


def test_the_quota_counts_a_users_stored_bytes(a, b):
    # Noise: a PNG that barely compresses.
    seed = io.BytesIO()
    Image.effect_noise((350, 350), 100).convert("RGB").save(seed, "PNG")
    data = seed.getvalue()
    assert 100_000 < len(data) < MAX_UPLOAD
    kept = []
    while True:
        response = upload(a, data, "noise.png")
        if response.status_code != 201:
            break
        kept.append(response.json())
    body = assert_error(response, 413, "upload_quota_exceeded")
    assert body["error"]["quota_bytes"] == QUOTA
    assert sum(m["size"] for m in kept) <= QUOTA < sum(m["size"] for m in kept) + kept[0]["size"]
    # Another user's quota is their own; a deleted upload frees its room.
    assert upload(b, data, "noise.png").status_code == 201
    assert a.delete(f"/api/uploads/{kept[0]['id']}").status_code == 204
    assert upload(a, data, "noise.png").status_code == 201


# --- isolation ---------------------------------------------------------------------------------


def test_another_users_upload_is_not_found_anywhere(a, b, shared, fake):
    mine = upload(a, image_bytes("PNG"), "a.png").json()["id"]
    missing = "0" * 32
    for method, path in [
        ("GET", "/api/uploads/{}"),
        ("GET", "/api/uploads/{}/content"),
        ("DELETE", "/api/uploads/{}"),
    ]:
        theirs = b.request(method, path.format(mine))
        none = b.request(method, path.format(missing))
        assert theirs.status_code == none.status_code == 404
        assert theirs.json()["error"]["code"] == none.json()["error"]["code"] == "upload_not_found"
    before = count(shared[1], "messages")
    for route, body in [
        ("/api/chat", {"message": "look", "attachments": [mine], "stream": False}),
        ("/api/chat/messages", {"message": "look", "attachments": [mine]}),
        ("/api/coach/messages", {"question": "look", "attachments": [mine]}),
    ]:
        assert_error(b.post(route, json=body), 404, "upload_not_found")
    assert_error(
        b.get("/api/chat/stream", params={"message": "look", "attachments": mine}),
        404,
        "upload_not_found",
    )
    assert count(shared[1], "messages") == before and fake.requests == []
    assert a.get(f"/api/uploads/{mine}").status_code == 200  # still there, still A's


# --- turns -------------------------------------------------------------------------------------


def user_parts(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["body"]["messages"] if m["role"] == "user"]


def data_of(url: str, kind: str) -> bytes:
    prefix = f"data:{kind};base64,"
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix) :], validate=True)


def test_a_turn_sends_its_attachments_as_parts_and_keeps_them(a, shared, fake):
    png = upload(a, image_bytes("PNG"), "shot.png").json()
    pdf = upload(a, PDF_2, "brief.pdf").json()
    png_bytes = a.get(f"/api/uploads/{png['id']}/content").content
    done = a.post(
        "/api/chat",
        json={"message": "what is this?", "attachments": [png["id"], pdf["id"]], "stream": False},
    )
    assert done.status_code == 200, done.text
    [sent] = fake.requests
    [asked] = user_parts(sent)
    text, image, file = asked["content"]
    assert text == {"type": "text", "text": "what is this?"}
    assert data_of(image["image_url"]["url"], "image/png") == png_bytes
    assert file["file"]["filename"] == "brief.pdf"
    assert data_of(file["file"]["file_data"], "application/pdf") == PDF_2
    assert "plugins" not in sent["body"]  # gpt-4o reads files itself
    # The image and the parsed pages are in the usage and the cost, and the ledger has it.
    generation = next(iter(fake.generations.values()))
    assert generation.media_cost > 0
    assert done.json()["cost_usd"] == pytest.approx(float(generation.cost))
    conversation_id = done.json()["conversation_id"]
    shown = a.get(f"/api/conversations/{conversation_id}").json()
    user, reply = shown["messages"]
    expected = [
        {k: png[k] for k in ("id", "type", "name", "size", "width", "height", "pages")},
        {k: pdf[k] for k in ("id", "type", "name", "size", "width", "height", "pages")},
    ]
    assert user["attachments"] == expected and reply["attachments"] == []
    exported = json.loads(a.get(f"/api/conversations/{conversation_id}/export?format=json").text)
    assert exported["messages"][0]["attachments"] == expected
    # The next turn sends them again with their turn, in the history.
    fake.reset()
    again = a.post(
        "/api/chat",
        json={"message": "and now?", "conversation_id": conversation_id, "stream": False},
    )
    assert again.status_code == 200
    first, second = user_parts(fake.requests[0])
    assert [p["type"] for p in first["content"]] == ["text", "image_url", "file"]
    assert second["content"] == "and now?"
    # Regenerate and edit keep the attachments of the message they rewrite.
    fake.reset()
    reply_id = reply["id"]
    assert a.post(f"/api/messages/{reply_id}/regenerate").status_code == 202
    wait_for(lambda: fake.requests, what="the regenerated turn upstream")
    [asked] = user_parts(fake.requests[0])
    assert [p["type"] for p in asked["content"]] == ["text", "image_url", "file"]
    fake.reset()
    edited = a.post(f"/api/messages/{user['id']}/edit", json={"message": "said otherwise"})
    assert edited.status_code == 202
    wait_for(lambda: fake.requests, what="the edited turn upstream")
    [asked] = user_parts(fake.requests[0])
    assert asked["content"][0]["text"] == "said otherwise" and len(asked["content"]) == 3


def test_a_model_must_read_what_is_attached(a, shared, fake):
    png = upload(a, image_bytes("PNG"), "shot.png").json()["id"]
    pdf = upload(a, PDF_4, "brief.pdf").json()["id"]
    before = count(shared[1], "messages")
    body = assert_error(
        a.post(
            "/api/chat",
            json={"message": "see", "attachments": [png], "model": TEXT_ONLY, "stream": False},
        ),
        422,
        "model_cannot_read_images",
    )
    assert body["error"]["model"] == TEXT_ONLY
    assert count(shared[1], "messages") == before and fake.requests == []
    # A model that does not read files gets a PDF through OpenRouter's parser.
    done = a.post(
        "/api/chat",
        json={"message": "read", "attachments": [pdf], "model": NO_FILES, "stream": False},
    )
    assert done.status_code == 200, done.text
    [sent] = fake.requests
    assert sent["body"]["plugins"] == [{"id": "file-parser", "pdf": {"engine": "cloudflare-ai"}}]
    assert user_parts(sent)[-1]["content"][1]["type"] == "file"
    # The coach takes a document as its context.
    fake.reset()
    coach = a.post("/api/coach", json={"attachments": [pdf], "stream": False})
    assert coach.status_code == 200, coach.text
    [asked] = user_parts(fake.requests[0])
    assert [p["type"] for p in asked["content"]] == ["text", "file"]


def test_the_budget_counts_attachments_at_their_worst(a, shared, fake):
    ids = [upload(a, image_bytes("PNG", (8, 8 + i)), f"{i}.png").json()["id"] for i in range(10)]
    # A daily budget of $0.05 for A: a text turn on gpt-4o fits at its worst (about $0.012),
    # ten images' worst case (2,500 tokens and $0.003613 each) does not.
    run_async(_on_own_connection(shared[1].url, _budget))
    assert a.post("/api/chat", json={"message": "hi", "stream": False}).status_code == 200
    refused = a.post("/api/chat", json={"message": "hi", "attachments": ids, "stream": False})
    assert_error(refused, 402, "budget_exceeded")


async def _budget(db) -> None:
    await db.execute(
        budget_overrides.insert().values(
            user_id=A,
            daily_overridden=True,
            daily_picousd=50_000_000_000,
            monthly_overridden=False,
            monthly_picousd=None,
            updated_at=datetime.now(UTC),
        )
    )


# --- deleting ----------------------------------------------------------------------------------


def test_uploads_go_with_their_conversation_and_unused_ones_after_a_day(a, shared, fake):
    database = shared[1]
    used = upload(a, image_bytes("PNG"), "used.png").json()["id"]
    done = a.post("/api/chat", json={"message": "hi", "attachments": [used], "stream": False})
    conversation_id = done.json()["conversation_id"]
    assert a.delete(f"/api/conversations/{conversation_id}").status_code == 204
    assert a.get(f"/api/uploads/{used}").status_code == 404
    assert count(database, "upload_chunks") == 0 and count(database, "message_attachments") == 0
    # An upload no message carries goes a day after it was made; one that is carried stays.
    unused = upload(a, image_bytes("PNG"), "unused.png").json()["id"]
    carried = upload(a, image_bytes("PNG"), "carried.png").json()["id"]
    fresh = upload(a, image_bytes("PNG"), "fresh.png").json()["id"]
    a.post("/api/chat", json={"message": "hi", "attachments": [carried], "stream": False})

    async def age(db) -> None:
        await db.execute(
            uploads.update()
            .where(uploads.c.id.in_([unused, carried]))
            .values(created_at=datetime(2000, 1, 1, tzinfo=UTC))
        )

    run_async(_on_own_connection(database.url, age))
    wait_for(
        lambda: a.get(f"/api/uploads/{unused}").status_code == 404, timeout=30, what="the sweep"
    )
    assert a.get(f"/api/uploads/{carried}").status_code == 200
    assert a.get(f"/api/uploads/{fresh}").status_code == 200


def test_without_a_parser_a_pdf_needs_a_model_that_reads_files(start_server, fake, tmp_path):
    """PDF_ENGINE=off: no file-parser plugin, so a model without file input refuses a PDF
    before anything is written; one with file input takes it."""
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS.read_text().replace("[chat]\n", '[chat]\nallowed_models = "*"\n', 1))
    server = start_server(pdf_engine="off", agents_file=str(agents))
    with local_client(server.url, timeout=20) as http:
        pdf = upload(http, PDF_2, "brief.pdf").json()["id"]
        body = {"message": "read", "attachments": [pdf], "stream": False}
        refused = http.post("/api/chat", json={**body, "model": NO_FILES})
        assert assert_error(refused, 422, "model_cannot_read_files")["error"]["model"] == NO_FILES
        assert fake.requests == [] and http.get("/api/conversations").json()["conversations"] == []
        assert http.post("/api/chat", json=body).status_code == 200  # gpt-4o reads files
        assert "plugins" not in fake.requests[0]["body"]
