"""Device-resident data: whole-batch augmentation, permutation batches, eval batches, user tensors."""
import numpy as np
import pytest
import torch

from fa_nb_utils.data.device import PAD, DeviceData, augment_batch

N_DRAWS = 2 * (2 * PAD + 1) ** 2   # offsets on each axis x flip


def _find_transform(out_img, padded_img):
    """The (dy, dx, flip) that turns a padded image into `out_img`, or None."""
    for dy in range(2 * PAD + 1):
        for dx in range(2 * PAD + 1):
            crop = padded_img[:, dy:dy + 32, dx:dx + 32]
            for flip in (False, True):
                if torch.equal(out_img, crop.flip(-1) if flip else crop):
                    return dy, dx, flip
    return None


def test_augmentation_is_an_independent_crop_and_flip_per_image():
    b = 400
    x = torch.arange(b * 3 * 32 * 32, dtype=torch.float32).reshape(b, 3, 32, 32)  # all distinct
    fill = torch.tensor([-1.0, -2.0, -3.0]).reshape(1, 3, 1, 1)
    out = augment_batch(x, fill, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x - fill, (PAD,) * 4) + fill
    found = [_find_transform(out[i], padded[i]) for i in range(b)]
    assert all(f is not None for f in found), "an output is not a padded crop (maybe flipped) of its input"
    shifts = {(dy, dx) for dy, dx, _ in found}
    flips = [f for _, _, f in found]
    assert len(shifts) >= 70            # 81 possible shifts; independent per image
    assert 0.4 < np.mean(flips) < 0.6
    # padding is the fill value per channel (raw pixel 0 after normalising)
    corner = [(i, f) for i, f in enumerate(found) if f[0] == 0 and f[1] == 0 and not f[2]]
    i = corner[0][0]
    assert torch.all(out[i, :, :PAD, :] == fill[0, :, :, :].expand(3, PAD, 32))


def test_pad_fill_is_raw_zero_after_normalising(synthetic_data):
    fill = synthetic_data.pad_fill().flatten()
    expected = -torch.tensor((0.4914, 0.4822, 0.4465)) / torch.tensor((0.2470, 0.2435, 0.2616))
    torch.testing.assert_close(fill, expected)


def test_train_batches_are_a_permutation(synthetic_data):
    seen = torch.cat([y for _, y in synthetic_data.train_batches(
        128, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))])
    assert len(seen) == synthetic_data.num_train
    assert torch.equal(seen.sort().values, synthetic_data.train_y.sort().values)


def test_eval_batches_are_the_first_test_images_unshuffled(synthetic_data):
    batches = synthetic_data.eval_batches(10, 128)
    assert len(batches) == 10 and all(len(y) == 128 for _, y in batches)
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), synthetic_data.test_x[:1280])
    with pytest.raises(ValueError, match="need 20 x 128"):
        synthetic_data.eval_batches(20, 128)


def test_user_tensors_any_dim_and_class_count():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 7, generator=g) * 5 + 3
    y = torch.randint(0, 4, (300,), generator=g)
    d = DeviceData.from_tensors(x[:200], y[:200], x[200:], y[200:])
    assert d.num_classes == 4 and d.input_dim == 7 and not d.augment
    assert abs(float(d.train_x.mean())) < 1e-5 and abs(float(d.train_x.std()) - 1) < 1e-3
    imgs = DeviceData.from_tensors(torch.rand(20, 3, 32, 32), torch.arange(20) % 2,
                                   torch.rand(10, 3, 32, 32), torch.arange(10) % 2)
    assert imgs.augment  # crop/flip exactly for (N, 3, 32, 32) images


def test_user_tensors_bad_input_names_the_fix():
    x, y = torch.randn(10, 5), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="label 7 but num_classes=3"):
        DeviceData.from_tensors(x, y, x, torch.full((10,), 7), num_classes=3)
    with pytest.raises(ValueError, match="negative labels"):
        DeviceData.from_tensors(x, y - 1, x, y)
    with pytest.raises(ValueError, match=r"must have shape \(10,\)"):
        DeviceData.from_tensors(x, y[:5], x, y)
    with pytest.raises(ValueError, match="per-sample shape"):
        DeviceData.from_tensors(x, y, torch.randn(10, 6), y)
    with pytest.raises(ValueError, match="augment=False"):
        DeviceData.from_tensors(x, y, x, y, augment=True)
    with pytest.raises(ValueError, match="NaN or inf"):
        DeviceData.from_tensors(x.masked_fill(x > 1, float("nan")), y, x, y)
    with pytest.raises(ValueError, match=r"shape \(N, \.\.\.\)"):
        DeviceData.from_tensors(torch.randn(10), y, x, y)


def test_train_batches_crop_like_augment_batch(synthetic_data):
    """The fast path (gathers from the pre-padded set) gives exactly augment_batch's crops."""
    order = torch.Generator().manual_seed(5)
    aug = torch.Generator().manual_seed(6)
    x_fast, y_fast = next(synthetic_data.train_batches(64, order, aug))
    order = torch.Generator().manual_seed(5)
    idx = torch.randperm(synthetic_data.num_train, generator=order)[:64]
    x_ref = augment_batch(synthetic_data.train_x[idx], synthetic_data.pad_fill(),
                          torch.Generator().manual_seed(6))
    assert torch.equal(x_fast, x_ref) and torch.equal(y_fast, synthetic_data.train_y[idx])


def test_gathered_crop_flip_is_the_per_image_pad_slice_flip(synthetic_data):
    """Each image of a train batch is its own image padded with the fill, sliced at its drawn
    offsets and flipped (per image: dy, then dx, uniform in 0..2P, then flip = rand < 0.5, from
    the augmentation stream), built here with plain indexing, image by image."""
    b = 96
    x, y = next(synthetic_data.train_batches(b, torch.Generator().manual_seed(5),
                                             torch.Generator().manual_seed(6)))
    idx = torch.randperm(synthetic_data.num_train, generator=torch.Generator().manual_seed(5))[:b]
    g = torch.Generator().manual_seed(6)
    dys, dxs = (torch.randint(0, 2 * PAD + 1, (b,), generator=g).tolist() for _ in range(2))
    flips = (torch.rand(b, generator=g) < 0.5).tolist()
    fill = synthetic_data.pad_fill()[0]
    assert torch.equal(y, synthetic_data.train_y[idx])
    for i in range(b):
        padded = fill.expand(3, 32 + 2 * PAD, 32 + 2 * PAD).clone()
        padded[:, PAD:PAD + 32, PAD:PAD + 32] = synthetic_data.train_x[int(idx[i])]
        ref = padded[:, dys[i]:dys[i] + 32, dxs[i]:dxs[i] + 32]
        if flips[i]:
            ref = ref[:, :, list(range(31, -1, -1))]
        assert torch.equal(x[i], ref), i


def test_crop_offsets_and_flips_cover_the_whole_range_uniformly():
    """Read back from the pixels (each encodes its row and column): over 8,100 images every
    offset 0..2P on both axes, with and without a flip, occurs, each about equally often."""
    n = 8100
    rows = torch.arange(32.0)[:, None].expand(32, 32)
    cols = torch.arange(32.0)[None, :].expand(32, 32)
    x = (100 * rows + cols).expand(n, 3, 32, 32)
    out = augment_batch(x, torch.full((1, 3, 1, 1), -1.0), torch.Generator().manual_seed(0))
    centre = out[:, 0, 16, 16:18]                       # two neighbours, inside every crop
    dy = (centre[:, 0] // 100).long() - 16 + PAD
    flip = centre[:, 1] % 100 < centre[:, 0] % 100
    col = (centre[:, 0] % 100).long()
    dx = torch.where(flip, col - (31 - 16) + PAD, col - 16 + PAD)
    counts = torch.bincount(flip.long() * 81 + dy * 9 + dx, minlength=N_DRAWS)
    assert len(counts) == N_DRAWS and int(dy.min()) == 0 and int(dy.max()) == 2 * PAD
    assert int(dx.min()) == 0 and int(dx.max()) == 2 * PAD
    assert int(counts.min()) >= 25 and int(counts.max()) <= 75     # expected 50 each
