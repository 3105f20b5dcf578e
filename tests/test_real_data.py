"""The real-profile loaders, tested on small data made here in the real formats."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipdef import data, evaluate, models


def write_image(path, colour, size=(40, 30), fmt="JPEG"):
    Image.new("RGB", size, colour).save(path, fmt)


@pytest.fixture
def cc3m_csv(tmp_path):
    (tmp_path / "img").mkdir()
    rows = ["filepath,caption"]
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.jpg", (40 * i, 10, 200))
        rows.append(f"img/{i}.jpg,\"a photo of thing {i}, with a comma\"")
    (tmp_path / "img" / "broken.jpg").write_bytes(b"not a jpeg")
    rows.append("img/broken.jpg,a broken image")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "train.csv"


def test_csv_pairs(cc3m_csv):
    ds = data.csv_pairs(cc3m_csv, image_size=32, max_bad_fraction=0.2, progress=False)
    assert len(ds) == 6 and len(ds.skipped) == 1 and "broken.jpg" in ds.skipped[0][0]
    img, cap = ds[2]
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1
    assert cap == "a photo of thing 2, with a comma"
    assert abs(img[0].mean().item() - 80 / 255) < 0.02  # the colour survives resize + centre crop


def test_csv_too_many_broken_images_fails(cc3m_csv):
    with pytest.raises(data.TooManyBadImages, match=r"1 unreadable image\(s\) among the first \d of 7 in .*0% allowed"):
        data.csv_pairs(cc3m_csv, image_size=32, max_bad_fraction=0.0, progress=False)


def test_csv_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="filepath,caption"):
        data.csv_pairs(tmp_path / "none.csv")
    (tmp_path / "wrong.csv").write_text("url,text\nx,y\n")
    with pytest.raises(ValueError, match="needs columns 'filepath' and 'caption'"):
        data.csv_pairs(tmp_path / "wrong.csv")


def test_webdataset_shards(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"cc3m-{shard:06d}.tar", "w") as tar:
            for i in range(3):
                key = f"{shard:03d}{i:04d}"
                buf = io.BytesIO()
                Image.new("RGB", (50, 50), (10, 100 * i, 30)).save(buf, "PNG")
                for name, blob in ((f"{key}.png", buf.getvalue()), (f"{key}.txt", f"caption {shard}-{i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    ds = data.webdataset_pairs(str(tmp_path / "cc3m-{000000..000001}.tar"), image_size=32, progress=False)
    assert len(ds) == 6 and ds.captions[4] == "caption 1-1" and ds.sample_keys[4] == "0010001"
    img, cap = ds[4]  # random access: one read at the member's offset
    assert img.shape == (3, 32, 32) and abs(img[1].mean().item() - 100 / 255) < 0.02
    streamed = {i: (image, caption) for image, caption, i in ds}  # a streaming pass: (image, caption, id)
    assert sorted(streamed) == list(range(6)) and streamed[4][1] == cap and torch.equal(streamed[4][0], img)
    with pytest.raises(FileNotFoundError, match="shards not found"):
        data.webdataset_pairs(str(tmp_path / "other-{000000..000001}.tar"))


@pytest.fixture
def imagenet_val(tmp_path):
    root = tmp_path / "val"
    for c, wnid in enumerate(["n01", "n02", "n03"]):
        (root / wnid).mkdir(parents=True)
        for i in range(4):
            write_image(root / wnid / f"ILSVRC_{c}_{i}.JPEG", (80 * c, 80 * c, 80 * c), size=(60, 45))
    (tmp_path / "names.txt").write_text("tench\ngoldfish\nbanana\n")
    return root, tmp_path / "names.txt"


def test_image_folder_and_zero_shot_on_it(imagenet_val):
    root, names = imagenet_val
    ds = data.image_folder(root, image_size=32, class_names_file=names, progress=False)
    assert len(ds) == 12 and ds.class_names == ("tench", "goldfish", "banana")
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    bundle = models.create_clip("clipdef-tiny", None, seed=0)
    metrics = evaluate.evaluate_clip(bundle, ds, None, ds.class_names, ["a photo of a {}."],
                                     trigger=lambda x: x.flip(-1), batch_size=5)
    assert set(metrics) == {f"{m}_top{k}" for m in ("ca", "asr") for k in evaluate.KS}
    with pytest.raises(ValueError, match="lists 2 names but"):
        names.write_text("a\nb\n")
        data.image_folder(root, class_names_file=names, progress=False)


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    records = np.concatenate([rng.integers(0, 10, (7, 1)), rng.integers(0, 256, (7, 3072))], 1).astype(np.uint8)
    (tmp_path / "test_batch.bin").write_bytes(records.tobytes())
    ds = data.cifar10_binary(tmp_path, "test")
    img, label = ds[3]
    assert len(ds) == 7 and label == records[3, 0] and img.shape == (3, 32, 32)
    assert torch.allclose(img * 255, torch.from_numpy(records[3, 1:].reshape(3, 32, 32)).float(), atol=1e-3)
    (tmp_path / "test_batch.bin").write_bytes(records.tobytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.cifar10_binary(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="cifar-10-binary"):
        data.cifar10_binary(tmp_path, "train")


def test_encode_images_same_for_tensor_and_dataset(imagenet_val):
    root, _ = imagenet_val
    ds = data.image_folder(root, image_size=32, progress=False)
    tensor = torch.stack([ds[i][0] for i in range(len(ds))])
    bundle = models.create_clip("clipdef-tiny", None, seed=0)
    assert torch.allclose(models.encode_images(bundle, ds, batch_size=4),
                          models.encode_images(bundle, tensor, batch_size=4), atol=1e-6)
