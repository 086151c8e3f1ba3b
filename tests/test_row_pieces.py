"""Cache-sized pieces of a model call: exact tiling, alignment, and bitwise the same log-weights."""
import pytest
import torch

from evalkit.sampling.engine import log_weights
from evalkit.models import IWAE, MLPVAE, row_pieces
from evalkit.models.row_pieces import map_row_pieces, piece_bounds


@pytest.mark.parametrize("n_slots, k, max_rows", [(32, 96, 668), (32, 1024, 300), (64, 7, 100), (32, 40, 1000),
                                                  (5, 3, 1), (33, 64, 64), (1, 5000, 2**20)])
def test_pieces_tile_the_call_once_and_stay_aligned(n_slots, k, max_rows):
    bounds = piece_bounds(n_slots, k, max_rows)
    covered = torch.zeros(n_slots, k, dtype=torch.int64)
    for b0, b1, c0, c1 in bounds:
        assert 0 <= b0 < b1 <= n_slots and 0 <= c0 < c1 <= k
        assert b1 - b0 == 1 or (c0, c1) == (0, k)  # contiguous in a datapoint-major tensor
        covered[b0:b1, c0:c1] += 1
        if k % 32 == 0:
            assert (b0 * k + c0) % 32 == 0
        else:
            assert b0 % 32 == 0 and c0 == 0
        if k % 32 == 0 and k <= max_rows:
            assert (b1 - b0) * (c1 - c0) <= max(max_rows, 32)
    assert torch.equal(covered, torch.ones_like(covered))


def test_map_row_pieces_equals_one_piece():
    samples = torch.randn(6, 50, 3)
    data = torch.randn(6, 3)

    def fn(s, d):
        return (s * d.unsqueeze(1)).sum(-1).double()

    expected = fn(samples, data)
    for out_features in (1, 10**4, 10**5):
        assert torch.equal(map_row_pieces(fn, samples, data, out_features), expected)


def _models():
    torch.manual_seed(0)
    yield "iwae1", IWAE(48, [5], [[24, 16]])
    yield "iwae2", IWAE(48, [6, 3], [[24, 16], [12, 8]])
    yield "vae-bernoulli", MLPVAE(48, 4, (20, 12))
    yield "vae-gaussian", MLPVAE(48, 4, (20, 12), likelihood="gaussian")


@pytest.mark.parametrize("name, model", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_log_weights_do_not_depend_on_the_pieces(name, model, monkeypatch):
    x = torch.bernoulli(torch.full((37, 48), 0.4), generator=torch.Generator().manual_seed(1))
    for k in (40, 300):
        monkeypatch.setattr(row_pieces, "PIECE_BYTES", 2**40)
        whole = log_weights(model, x, k, seed=3, progress=False)
        # 48 features x 4 bytes x 64 rows: pieces of 64 rows, many per call.
        monkeypatch.setattr(row_pieces, "PIECE_BYTES", 48 * 4 * 64)
        for batch_size in (None, 1, 5, 32):
            pieces = log_weights(model, x, k, seed=3, batch_size=batch_size, progress=False)
            assert torch.equal(pieces, whole), (name, k, batch_size)
