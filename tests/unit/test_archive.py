"""Safe ZIP extraction: traversal, absolute paths, symlinks, limits on the decompressed bytes, junk,
nested folders, sidecar captions, corrupt and empty archives."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from serve_app.archive import ArchiveLimits, extract_images
from serve_app.errors import FieldError

FIELD = "images_data_url"
LIMITS = ArchiveLimits(max_images=10, max_entries=50, max_file_bytes=10_000, max_total_bytes=25_000,
                       max_caption_bytes=200)


def make_zip(members: dict[str, bytes | str], *, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def field_error(data: bytes, limits: ArchiveLimits = LIMITS) -> FieldError:
    with pytest.raises(FieldError) as e:
        extract_images(data, limits, FIELD)
    assert e.value.field == "images_data_url"
    assert e.value.detail[0]["loc"] == ["body", "images_data_url"]
    return e.value


def test_images_nested_folders_sidecars_and_junk() -> None:
    data = make_zip({
        "b.png": b"png-bytes",
        "set/one/a.JPG": b"jpg-bytes",
        "set/one/a.txt": "  a cat\non a sofa \n",
        "set/c.webp": b"webp",
        "set/c.TXT": "",  # empty sidecar: no caption
        "d.bmp": b"bmp",
        "e.jpeg": b"jpeg",
        "orphan.txt": "no image",
        "__MACOSX/set/one/._a.JPG": b"resource fork",
        "set/._b.png": b"apple double",
        ".hidden/f.png": b"hidden folder",
        "set/.DS_Store": b"x",
        "notes.gif": b"gif is not supported",
        "readme.md": b"#",
        "folder/": b"",
    })
    images = extract_images(data, LIMITS, FIELD)
    assert [i.name for i in images] == ["b.png", "d.bmp", "e.jpeg", "set/c.webp", "set/one/a.JPG"]
    by_name = {i.name: i for i in images}
    assert by_name["set/one/a.JPG"].caption == "a cat on a sofa"
    assert by_name["set/one/a.JPG"].data == b"jpg-bytes"
    assert by_name["set/c.webp"].caption is None and by_name["b.png"].caption is None


def test_sidecar_with_utf8_bom_and_windows_separators() -> None:
    data = make_zip({"dir\\x.png": b"p", "dir\\x.txt": "\ufeffcafé au lait".encode()})
    (image,) = extract_images(data, LIMITS, FIELD)
    assert image.name == "dir/x.png" and image.caption == "café au lait"


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "C:/evil.png", "..\\evil.png"])
def test_paths_that_escape_reject_the_archive(name: str) -> None:
    err = field_error(make_zip({"ok.png": b"x", name: b"x"}))
    assert "unsafe path" in err.message


def test_dot_segments_inside_the_archive_are_fine() -> None:
    (image,) = extract_images(make_zip({"./a/./b.png": b"x"}), LIMITS, FIELD)
    assert image.name == "a/b.png"


def test_symlink_entries_are_skipped() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        regular = zipfile.ZipInfo("real.png")
        regular.external_attr = (stat.S_IFREG | 0o644) << 16
        zf.writestr(regular, b"img")
    (image,) = extract_images(buf.getvalue(), LIMITS, FIELD)
    assert image.name == "real.png"


def test_too_many_images() -> None:
    err = field_error(make_zip({f"{i}.png": b"x" for i in range(11)}))
    assert "11 images" in err.message


def test_too_many_entries_of_any_kind() -> None:
    err = field_error(make_zip({f"junk{i}.log": b"" for i in range(51)}))
    assert "51 entries" in err.message


def test_a_member_over_the_per_file_limit() -> None:
    err = field_error(make_zip({"big.png": b"\0" * 10_001}))
    assert "big.png" in err.message


def test_the_total_limit_counts_every_member_read() -> None:
    members = {f"{i}.png": bytes([i]) * 9_000 for i in range(3)}  # each under 10 kB, 27 kB in all
    assert "total limit" in field_error(make_zip(members)).message
    assert len(extract_images(make_zip(dict(list(members.items())[:2])), LIMITS, FIELD)) == 2


def _lying_zip(real_size: int) -> bytes:
    """A deflated member whose headers claim 10 bytes but which inflates to `real_size` bytes."""
    data = bytearray(make_zip({"bomb.png": b"\0" * real_size}))
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = zf.infolist()[0]
    local, central = info.header_offset, data.rfind(b"PK\x01\x02")
    data[local + 22:local + 26] = (10).to_bytes(4, "little")  # local header: uncompressed size
    data[central + 24:central + 28] = (10).to_bytes(4, "little")  # central directory: uncompressed size
    return bytes(data)


def test_zip_bomb_headers_that_lie_are_refused() -> None:
    bomb = _lying_zip(5_000_000)  # 5 MB of zeros: a few kB compressed
    assert len(bomb) < 10_000
    assert zipfile.ZipFile(io.BytesIO(bomb)).infolist()[0].file_size == 10
    # zipfile inflates at most the declared size, then the CRC fails: refused, nothing big inflated.
    err = field_error(bomb)
    assert "Bad CRC" in err.message or "decompresses past" in err.message


def test_a_caption_over_its_limit() -> None:
    err = field_error(make_zip({"a.png": b"x", "a.txt": "word " * 100}))
    assert "a.txt" in err.message


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 30])
def test_not_a_zip(data: bytes) -> None:
    assert "not a readable ZIP" in field_error(data).message


def test_corrupt_member_data_is_a_field_error() -> None:
    data = bytearray(make_zip({"a.png": b"abc" * 1000}, compress=zipfile.ZIP_STORED))
    offset = data.find(b"abcabc")
    data[offset:offset + 3] = b"xyz"  # CRC no longer matches
    assert "not a readable ZIP" in field_error(bytes(data)).message


def test_no_images() -> None:
    err = field_error(make_zip({"a.txt": "caption", "__MACOSX/x.png": b"x", "b.gif": b"g"}))
    assert "no images" in err.message and ".png" in err.message


def test_encrypted_members_are_refused() -> None:
    data = bytearray(make_zip({"a.png": b"x"}, compress=zipfile.ZIP_STORED))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig)
        data[at + flag_at] |= 0x1
    assert "encrypted" in field_error(bytes(data)).message


def test_field_name_is_configurable() -> None:
    with pytest.raises(FieldError) as e:
        extract_images(b"nope", LIMITS, field="training_data")
    assert e.value.field == "training_data"
