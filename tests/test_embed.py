"End-to-end tests of lmkkit.embed: a tiny timm model, images on disk (one corrupt), TTA, the resumable cache."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import cv2
import numpy as np
import pytest
import torch

from lmkkit.embed import cached_embeddings, extract_embeddings
from lmkkit.model import create_model, save_checkpoint


def _model():
    torch.manual_seed(0)
    m = create_model('test_resnet', embedding_size=16, n_classes=None)
    m.calls = 0
    m.register_forward_pre_hook(lambda mod, args: setattr(mod, 'calls', mod.calls + 1))
    return m


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('embed')
    rng = np.random.default_rng(1)
    ids, paths = [], []
    for i in range(7):
        img = rng.integers(0, 255, (40 + 4 * i, 56, 3), dtype=np.uint8)
        cv2.imwrite(str(d/f'im{i}.jpg'), img); ids.append(f'im{i}'); paths.append(d/f'im{i}.jpg')
    (d/'im3.jpg').write_bytes(b'\xff\xd8\xff truncated')  # corrupt
    return d, ids, paths, save_checkpoint(d/'ckpt.pth', _model(), None)


def test_extract_shapes_norms_and_bad_image(data, capsys):
    d, ids, paths, _ = data
    emb, ok = extract_embeddings(_model(), paths, size=32, batch_size=3, verbose=False)
    assert emb.shape == (7, 16) and emb.dtype == np.float32 and ok.tolist() == [i != 3 for i in range(7)]
    np.testing.assert_allclose(np.linalg.norm(emb[ok], axis=1), 1, atol=1e-5)
    assert not emb[3].any() and '1 unreadable' in capsys.readouterr().out
    flip, _ = extract_embeddings(_model(), paths, size=32, tta=('none', 'flip'), verbose=False)
    assert np.abs(flip[ok] - emb[ok]).max() > 1e-3
    workers, _ = extract_embeddings(_model(), paths, size=32, batch_size=3, num_workers=2, verbose=False)
    np.testing.assert_allclose(workers, emb, atol=1e-6)


def test_cache_hit_and_resume(data, tmp_path):
    d, ids, paths, ckpt = data
    m = _model()
    e1, ok1 = cached_embeddings(tmp_path, ckpt, ids, paths, 32, model=m, chunk_size=2, batch_size=2, verbose=False)
    assert m.calls == 4
    m2 = _model()
    e2, ok2 = cached_embeddings(tmp_path, ckpt, [i for i in ids if i != 'im3'], [p for p in paths if p.stem != 'im3'],
                                32, model=m2, verbose=False)
    assert m2.calls == 0 and np.array_equal(e2, e1[ok1]) and ok2.all()

    class Killed(torch.nn.Module):
        def __init__(self, inner): super().__init__(); self.inner = inner
        def forward(self, x):
            if self.inner.calls == 2: raise KeyboardInterrupt
            return self.inner(x)

    run = tmp_path/'run2'
    with pytest.raises(KeyboardInterrupt):
        cached_embeddings(run, ckpt, ids, paths, 32, model=Killed(_model()), chunk_size=2, batch_size=2, verbose=False)
    m3 = _model()
    e3, ok3 = cached_embeddings(run, ckpt, ids, paths, 32, model=m3, chunk_size=2, batch_size=2, verbose=False)
    assert m3.calls == 2 and np.array_equal(ok3, ok1)  # {im0,im1} and {im2} were kept; {im3,im4}, {im5,im6} redone
    np.testing.assert_allclose(e3, e1, atol=1e-6)
