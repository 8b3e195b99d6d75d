import numpy as np
import pytest
import torch
from PIL import Image

from litevar.models.core import imageio
from litevar.models.default import data


def test_same_seed_same_image_different_seeds_differ():
    a, b = data.render(3, 1234), data.render(3, 1234)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, data.render(3, 1235))


@pytest.mark.parametrize("cls", range(data.NUM_CLASSES))
def test_every_class_renders(cls):
    img = data.render(cls, seed=7)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.std() > 5  # not a flat image: the shape or pattern is visible


def test_split_sample_renders_on_its_own():
    images, labels = data.make_split("val", 25)
    i = 17
    assert np.array_equal(images[i], data.render(int(labels[i]), data.sample_seed("val", i)))


def test_make_split_shapes_balance_and_disjoint_seeds():
    images, labels = data.make_split("test", 40, size=32)
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=data.NUM_CLASSES).tolist() == [4] * data.NUM_CLASSES
    seeds = {s: set(data.sample_seed(s, np.arange(1000)).tolist()) for s in data.SPLITS}
    assert not (seeds["train"] & seeds["val"] or seeds["train"] & seeds["test"]
                or seeds["val"] & seeds["test"])
    assert not np.array_equal(data.make_split("train", 10)[0], data.make_split("val", 10)[0])


def test_workers_do_not_change_output():
    labels, seeds = np.arange(30) % 10, np.arange(30) + 99
    assert np.array_equal(data.render_many(labels, seeds, workers=1),
                          data.render_many(labels, seeds, workers=2))


def test_float_helpers_range_and_round_trip():
    images, _ = data.make_split("train", 8)
    x = data.to_float(images)
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(data.to_uint8(x), images)


def test_dataset_and_batches():
    ds = data.SplitDataset("val", 12)
    x, y = ds[3]
    assert x.shape == (3, 64, 64) and int(y) == 3
    batches = list(data.iterate_batches("val", 12, batch=5, shuffle_seed=0))
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(ds.y.tolist())
    assert batches[0][0].shape == (5, 3, 64, 64)


def test_bad_arguments():
    with pytest.raises(ValueError):
        data.sample_seed("training", 0)
    with pytest.raises(ValueError):
        data.render(data.NUM_CLASSES, 0)


def test_save_grid_atomic_png(tmp_path):
    images = data.preview(per_class=2)
    path = imageio.save_grid(images, tmp_path / "sub" / "grid.png", nrow=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 + 10 * 66, 2 + 2 * 66, 3)
    assert np.array_equal(grid[2:66, 68:132], images[1])  # row 0 = class 0, second image
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # float NCHW in [0, 1]
    assert np.array_equal(imageio.make_grid(floats, 2), imageio.make_grid(images, 2))
