"""Tests for image-folder targets: decoding odd files, refusing bad ones, carving splits, the registry.

Offline: the real histology target from /work/shared/data (skipped where absent)
and tiny images that the tests write with Pillow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lth_keras.datasets import (
    TARGETS,
    DataError,
    FolderDataset,
    MissingDataError,
    load_dataset,
    load_image_folder,
    load_target,
    parse_split,
    scan_image_folder,
)

REPO = Path(__file__).resolve().parents[1]
HISTOLOGY = REPO.parent / "shared" / "data" / "histology_nuclei"
HISTOLOGY_CLASSES = ["cancer_epithelial", "immune_leukocyte", "muscle", "normal_epithelial"]


# ---------------------------------------------------------------------------
# Writing tiny image folders. Image k of a folder has pixel (0, 0) =
# (k % 256, k // 256, label) so a loaded example tells which file it came from.
# ---------------------------------------------------------------------------

def tagged_image(k, label, size=8):
    a = np.random.default_rng(k).integers(0, 256, (size, size, 3), dtype=np.uint8)
    a[0, 0] = (k % 256, k // 256, label)
    return a


def write_folder(root, counts, size=8, start=0):
    """counts: {split or "": {class: n}}; "" puts the class folders right under root. Returns root."""
    root = Path(root)
    k = start
    for split, classes in counts.items():
        for label, (cls, n) in enumerate(sorted(classes.items())):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                Image.fromarray(tagged_image(k, label, size)).save(d / f"img{k:04d}.png")
                k += 1
    return root


def three_splits(classes=("a", "b"), n=(6, 2, 2)):
    return {s: {c: m for c in classes} for s, m in zip(("train", "val", "test"), n)}


def ids(split):
    """The file numbers k of a split's examples (from the tagged pixel)."""
    return split.images[:, 0, 0, 0].astype(int) + 256 * split.images[:, 0, 0, 1].astype(int)


def one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert str(needle) in message, message
    return message


# ---------------------------------------------------------------------------
# The real target.
# ---------------------------------------------------------------------------

@pytest.mark.skipif(not HISTOLOGY.is_dir(), reason="histology_nuclei not present")
def test_histology_target():
    ds = load_image_folder(HISTOLOGY, storage_size=20)
    assert isinstance(ds, FolderDataset)
    assert ds.name == "histology_nuclei"
    assert list(ds.class_names) == HISTOLOGY_CLASSES == sorted(HISTOLOGY_CLASSES)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1680, 240, 480)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.shape[1:] == (20, 20, 3) and split.images.dtype == np.uint8
        assert np.bincount(split.labels).tolist() == [len(split) // 4] * 4
    summary = ds.summary()
    assert summary["sizes"] == {"train": 1680, "val": 240, "test": 480}
    assert summary["folder"]["skipped_non_image_files"] == 0 and summary["folder"]["skipped_bad_images"] == 0

    # Without resizing, the pixels are exactly the files' (sorted class, then file name).
    native = load_image_folder(HISTOLOGY, split=None)
    first = sorted((HISTOLOGY / "test" / HISTOLOGY_CLASSES[0]).glob("*.png"))[0]
    np.testing.assert_array_equal(native.test.images[0], np.asarray(Image.open(first).convert("RGB")))
    assert native.test.images.shape == (480, 100, 100, 3)


# ---------------------------------------------------------------------------
# Odd but valid files: exact 8-bit RGB values.
# ---------------------------------------------------------------------------

def load_one(tmp_path, filename, data, **kwargs):
    """Put the file `data` (bytes) as the only image of a one-class folder; its decoded pixels."""
    for split in ("train", "val", "test"):
        d = tmp_path / "odd" / split / "c"
        d.mkdir(parents=True)
        (d / filename).write_bytes(data)
    return load_image_folder(tmp_path / "odd", **kwargs).train.images[0]


def encoded(image, fmt, **params):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_16bit(values, color_type):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): color_type 0 gray, 2 RGB."""
    h, w = values.shape[:2]
    raw = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def scaled_16(values):
    """The documented 16 -> 8 bit rule, in floats as an independent reference."""
    return np.array([round(int(v) * 255 / 65535) for v in np.ravel(values)], np.uint8).reshape(np.shape(values))


VALUES_16 = np.array([[0, 128, 129, 257], [1000, 32768, 65534, 65535]], np.uint16)


def test_grayscale_is_replicated(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = load_one(tmp_path, "g.png", encoded(Image.fromarray(gray), "PNG"))
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=-1))


def test_one_bit_is_0_or_255(tmp_path):
    bits = (np.indices((8, 8)).sum(0) % 2).astype(bool)
    rgb = load_one(tmp_path, "b.BMP", encoded(Image.fromarray(bits), "BMP"))
    np.testing.assert_array_equal(rgb, np.repeat(np.where(bits, 255, 0)[..., None], 3, axis=-1))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path, mode):
    rng = np.random.default_rng(1)
    channels = 4 if mode == "RGBA" else 2
    a = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
    a[..., -1] = 0  # fully transparent: compositing onto anything would change the colour
    a[0, :, -1] = 255
    rgb = load_one(tmp_path, "a.png", encoded(Image.fromarray(a, mode), "PNG"))
    expected = a[..., :3] if mode == "RGBA" else np.repeat(a[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(rgb, expected)


def test_palette_with_transparency_gives_palette_colours(tmp_path):
    palette = [(10, 20, 30), (200, 100, 50), (0, 255, 7)]
    index = (np.arange(64).reshape(8, 8) % 3).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([v for colour in palette for v in colour])
    rgb = load_one(tmp_path, "p.png", encoded(image, "PNG", transparency=1))
    np.testing.assert_array_equal(rgb, np.array(palette, np.uint8)[index])


@pytest.mark.parametrize("fmt,name", [("PNG", "g16.png"), ("TIFF", "g16.tif"), ("TIFF-BE", "g16.TIFF")])
def test_16bit_gray_is_scaled(tmp_path, fmt, name):
    values = VALUES_16.astype(">u2") if fmt == "TIFF-BE" else VALUES_16
    image = Image.fromarray(values)
    assert image.mode in ("I;16", "I;16B")
    rgb = load_one(tmp_path, name, encoded(image, fmt.split("-")[0]))
    np.testing.assert_array_equal(rgb, np.repeat(scaled_16(VALUES_16)[..., None], 3, axis=-1))
    assert scaled_16(VALUES_16).tolist() == [[0, 0, 1, 1], [4, 128, 255, 255]]


def test_16bit_rgb_png_is_scaled_from_all_16_bits(tmp_path):
    values = np.random.default_rng(2).integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    values[0, 0] = (128, 129, 65535)  # high byte alone would give 0, 0, 255; rounding gives 0, 1, 255
    rgb = load_one(tmp_path, "c16.png", png_16bit(values, 2))
    np.testing.assert_array_equal(rgb, scaled_16(values))
    assert rgb[0, 0].tolist() == [0, 1, 255]


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :8] = (0, 255, 255, 0)      # red
    cmyk[:8, 8:] = (50, 100, 150, 60)
    cmyk[8:, :8] = (0, 0, 0, 255)        # black
    cmyk[8:, 8:] = (0, 0, 0, 0)          # white
    data = encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    rgb = load_one(tmp_path, "k.jpg", data)
    # Pillow's own conversion of the same file, exactly.
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    # And the documented formula R = (255 - C)(255 - K) / 255, up to JPEG loss.
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    reference = (255 - c) * (255 - k) / 255
    centres = (slice(2, 6), slice(10, 14))
    for ys in centres:
        for xs in centres:
            assert np.abs(rgb[ys, xs] - reference[ys, xs]).max() <= 3


def test_exif_orientation_is_applied(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rgb = load_one(tmp_path, "o.png", encoded(Image.fromarray(a), "PNG", exif=exif))
    np.testing.assert_array_equal(rgb, np.rot90(a, k=-1))


def test_storage_size_resizes_every_image(tmp_path):
    write_folder(tmp_path, three_splits(), size=12)
    ds = load_image_folder(tmp_path, storage_size=5)
    assert ds.train.images.shape == (12, 5, 5, 3) and ds.test.images.shape == (4, 5, 5, 3)
    assert ds.summary()["folder"]["storage_size"] == 5


def test_mixed_sizes_need_storage_size(tmp_path):
    write_folder(tmp_path, three_splits())
    Image.fromarray(tagged_image(99, 0, size=10)).save(tmp_path / "train" / "a" / "big.png")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, "big.png", "10x10", "image_size")
    assert load_image_folder(tmp_path, storage_size=8).train.images.shape[1:] == (8, 8, 3)


# ---------------------------------------------------------------------------
# Bad inputs: one DataError line naming the file or class; or skipped and counted.
# ---------------------------------------------------------------------------

def truncated_png():
    data = encoded(Image.fromarray(tagged_image(0, 0, size=20)), "PNG")
    return data[: len(data) // 2]


BAD_FILES = {
    "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "empty.jpg": b"",
    "truncated.png": truncated_png(),
    "text.png": b"this is not an image\n",
}


@pytest.mark.parametrize("filename", sorted(BAD_FILES))
def test_bad_image_is_refused(tmp_path, filename):
    write_folder(tmp_path, three_splits())
    (tmp_path / "val" / "b" / filename).write_bytes(BAD_FILES[filename])
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, os.path.join("val", "b", filename), "--skip_bad_images")


def test_skip_bad_images_skips_and_counts(tmp_path, caplog):
    write_folder(tmp_path, three_splits())
    for i, (filename, data) in enumerate(sorted(BAD_FILES.items())):
        (tmp_path / ("train", "test")[i % 2] / "a" / filename).write_bytes(data)
    with caplog.at_level(logging.WARNING):
        ds = load_image_folder(tmp_path, skip_bad_images=True)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 4)
    folder = ds.summary()["folder"]
    assert folder["skipped_bad_images"] == 4
    assert sorted(os.path.basename(p) for p in folder["bad_image_examples"]) == sorted(BAD_FILES)
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 4


def test_empty_class_folder(tmp_path):
    write_folder(tmp_path, three_splits(("a", "b", "c")))
    for f in (tmp_path / "train" / "c").iterdir():
        f.unlink()
    (tmp_path / "train" / "c" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, os.path.join("train", "c"), "empty class folder")


def test_empty_class_folder_in_test(tmp_path):
    write_folder(tmp_path, three_splits())
    for f in (tmp_path / "test" / "b").iterdir():
        f.unlink()
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, os.path.join("test", "b"), "'b'", "empty class folder")


def test_class_missing_from_test(tmp_path):
    write_folder(tmp_path, three_splits(("a", "b", "c")))
    for f in (tmp_path / "test" / "c").iterdir():
        f.unlink()
    (tmp_path / "test" / "c").rmdir()
    with pytest.raises(DataError) as e:
        scan_image_folder(tmp_path)
    one_line_error(e, "'c'", "missing from test/")


def test_extra_class_in_test(tmp_path):
    write_folder(tmp_path, three_splits())
    write_folder(tmp_path, {"test": {"zebra": 1}}, start=500)
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, "'zebra'", "test/", "not classes of train/")


def test_val_without_train(tmp_path):
    write_folder(tmp_path, {"val": {"a": 1}, "test": {"a": 1}})
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, "no train/")


def test_non_image_files_are_skipped_and_counted(tmp_path, caplog):
    write_folder(tmp_path, three_splits())
    (tmp_path / "train" / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "train" / "b" / "notes.csv").write_text("file,label\n")
    (tmp_path / "val" / "a" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "test" / "labels.txt").write_text("a\nb\n")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    with caplog.at_level(logging.INFO):
        ds = load_image_folder(tmp_path)
    assert ds.class_names == ("a", "b")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 4)
    folder = ds.summary()["folder"]
    assert folder["skipped_non_image_files"] == 5
    assert os.path.join("train", "b", "notes.csv") in folder["non_image_examples"]
    assert any("5 non-image file(s)" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# Missing splits.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("flat", [False, True])
def test_split_carves_stratified_seeded_splits(tmp_path, flat):
    root = write_folder(tmp_path / "f", {"" if flat else "train": {"a": 20, "b": 30, "c": 10}})
    ds = load_image_folder(root, split=(0.7, 0.1, 0.2), seed=3)
    per_class = {what: np.bincount(ds.split(what).labels, minlength=3).tolist() for what in ("train", "val", "test")}
    assert per_class == {"train": [14, 21, 7], "val": [2, 3, 1], "test": [4, 6, 2]}
    # A partition of the files, each example with its own label.
    all_ids = np.concatenate([ids(ds.train), ids(ds.val), ids(ds.test)])
    assert sorted(all_ids) == list(range(60))
    for what in ("train", "val", "test"):
        split = ds.split(what)
        np.testing.assert_array_equal(split.images[:, 0, 0, 2], split.labels)
    folder = ds.summary()["folder"]
    assert folder["split"] == [0.7, 0.1, 0.2] and set(folder["carved"]) == {"val", "test"}
    assert folder["images_read"]["test"] is None

    again = load_image_folder(root, split="0.7,0.1,0.2", seed=3)
    assert again.fingerprint() == ds.fingerprint()
    other = load_image_folder(root, split=(0.7, 0.1, 0.2), seed=4)
    assert other.fingerprint() != ds.fingerprint()


def test_split_keeps_existing_folders(tmp_path):
    write_folder(tmp_path, {"train": {"a": 18, "b": 18}, "val": {"a": 2, "b": 2}})
    ds = load_image_folder(tmp_path, split=(0.7, 0.1, 0.2))
    # test takes 0.2 / (0.7 + 0.2) of train/ (4 of 18 per class); val/ is kept as it is.
    assert (len(ds.train), len(ds.val), len(ds.test)) == (28, 4, 8)
    assert set(ids(ds.val)) == set(range(36, 40))


def test_split_must_be_three_fractions_summing_to_1(tmp_path):
    write_folder(tmp_path, {"train": {"a": 10}})
    for bad in ((0.7, 0.3), (0.5, 0.1, 0.2), (0.8, 0.0, 0.2), "a,b,c"):
        with pytest.raises(DataError, match="sum to 1"):
            load_image_folder(tmp_path, split=bad)
    assert parse_split(" 0.6, 0.2 ,0.2") == (0.6, 0.2, 0.2)


def test_missing_val_is_carved_from_train(tmp_path):
    write_folder(tmp_path, {"train": {"a": 10, "b": 10}, "test": {"a": 2, "b": 2}})
    ds = load_image_folder(tmp_path, val_fraction=0.2, seed=1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 4)
    assert np.bincount(ds.val.labels).tolist() == [2, 2]
    assert ds.summary()["folder"]["carved"] == {"val": "0.2 of train/"}


@pytest.mark.parametrize("flat", [False, True])
def test_missing_test_needs_split(tmp_path, flat):
    write_folder(tmp_path, {"" if flat else "train": {"a": 10}})
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    one_line_error(e, "--split")


def test_train_fraction_applies_to_train(tmp_path):
    write_folder(tmp_path, three_splits(n=(8, 2, 2)))
    ds = load_image_folder(tmp_path, train_fraction=0.5, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 4)
    assert np.bincount(ds.train.labels).tolist() == [4, 4]
    assert ds.summary()["folder"]["sizes_before_train_fraction"]["train"] == 16


# ---------------------------------------------------------------------------
# The registry and the dispatcher.
# ---------------------------------------------------------------------------

def test_registry_matches_table_1():
    assert list(TARGETS) == ["human_lba", "lung_tissues", "mouse_lba", "bone_marrow", "artist1", "type", "artist2"]
    assert [(t.num_classes, t.total) for t in TARGETS.values()] == [
        (9, 5420), (10, 6331), (8, 4284), (8, 1291), (20, 3881), (20, 3588), (19, 3533)]
    assert {t.domain for t in TARGETS.values()} == {"pathology", "art"}


def fake_bone_marrow(data_dir, num_classes=8):
    classes = [f"cell{i}" for i in range(num_classes)]
    return write_folder(Path(data_dir) / "bone_marrow", three_splits(classes, n=(3, 1, 1)))


def test_registered_target_warns_on_sizes(tmp_path, caplog):
    fake_bone_marrow(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("bone_marrow", data_dir=tmp_path)
    assert ds.name == "bone_marrow" and ds.num_classes == 8 and len(ds.train) == 24
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("522/130/639" in w and "24/8/8" in w for w in warnings), warnings


def test_registered_target_class_count_mismatch(tmp_path):
    fake_bone_marrow(tmp_path, num_classes=7)
    with pytest.raises(DataError) as e:
        load_target("bone_marrow", data_dir=tmp_path)
    one_line_error(e, "7 class folders", "8", "Table 1")


def test_registered_target_missing(tmp_path):
    with pytest.raises(MissingDataError) as e:
        load_dataset("mouse_lba", data_dir=tmp_path)
    one_line_error(e, str(tmp_path / "mouse_lba"), "{train,val,test}/<class>/*", "not a public download", "Cytomine")
    with pytest.raises(MissingDataError) as e:
        load_dataset("artist2")
    one_line_error(e, "--data_dir", "WikiArt")


def test_dispatch_folder_path_and_image_size(tmp_path):
    root = write_folder(tmp_path / "my_target", three_splits(n=(4, 1, 1)), size=10)
    ds = load_dataset(str(root), image_size=8)
    # Stored at pipeline.resize_size(8) = round(8 * 256 / 224) = 9.
    assert ds.name == "my_target" and ds.train.images.shape == (8, 9, 9, 3)


def test_dispatch_source(tiny_fashion_dir):
    ds = load_dataset("fashion_mnist", data_dir=tiny_fashion_dir, seed=0)
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and len(ds.test) == 100
    with pytest.raises(DataError, match="image folders"):
        load_dataset("fashion_mnist", data_dir=tiny_fashion_dir, split=(0.7, 0.1, 0.2))


def test_dispatch_unknown(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "nowhere"))
    one_line_error(e, "fashion_mnist", "human_lba", "artist2", "path")


# ---------------------------------------------------------------------------
# The on-disk cache of decoded folders
# ---------------------------------------------------------------------------

def test_folders_are_decoded_once_into_a_memory_mapped_cache(tmp_path, caplog):
    root = write_folder(tmp_path / "folder", three_splits(), size=12)
    cache_dir = str(tmp_path / "cache")
    first = load_image_folder(root, storage_size=9, cache_dir=cache_dir)
    entries = sorted(os.listdir(cache_dir))
    assert len([e for e in entries if e.endswith(".npy")]) == 3  # train, val, test
    with caplog.at_level(logging.INFO):
        again = load_image_folder(root, storage_size=9, cache_dir=cache_dir)
    assert "read from the cache" in caplog.text
    assert sorted(os.listdir(cache_dir)) == entries  # nothing decoded or written again
    assert isinstance(again.train.images, np.memmap)
    plain = load_image_folder(root, storage_size=9, cache_dir=None)
    assert not isinstance(plain.train.images, np.memmap)
    assert first.fingerprint() == again.fingerprint() == plain.fingerprint()
    # Another storage size, or a changed file, is another entry.
    load_image_folder(root, storage_size=10, cache_dir=cache_dir)
    changed = root / "test" / "a" / sorted(os.listdir(root / "test" / "a"))[0]
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(changed)
    edited = load_image_folder(root, storage_size=9, cache_dir=cache_dir)
    assert edited.fingerprint() != plain.fingerprint()
    assert len([e for e in os.listdir(cache_dir) if e.endswith(".npy")]) == 3 + 3 + 1


def test_a_damaged_cache_entry_is_decoded_again(tmp_path):
    root = write_folder(tmp_path / "folder", three_splits(), size=12)
    cache_dir = tmp_path / "cache"
    expected = load_image_folder(root, storage_size=9, cache_dir=str(cache_dir)).fingerprint()
    entries = sorted(cache_dir.glob("*.npy"))
    entries[0].write_bytes(b"\x93NUMPY truncated")  # not a .npy file any more
    data = entries[1].read_bytes()
    entries[1].write_bytes(data[:len(data) // 2])  # cut short
    again = load_image_folder(root, storage_size=9, cache_dir=str(cache_dir))
    assert again.fingerprint() == expected
