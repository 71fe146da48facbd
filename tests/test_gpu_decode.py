"""The GPU JPEG path of lmkkit.embed, run on the CPU: `decode='torchvision'` on device 'cpu' runs the same batch logic as on
CUDA (workers read bytes, torchvision decodes the batch, the resize runs on the device), with libjpeg-turbo instead of nvJPEG.
Agreement with the PIL path on real photos and synthetic images, bad files, the one-line error, the cache key."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import numpy as np
import pytest
import torch
from PIL import Image

from lmkkit.core import ConfigError
from lmkkit.data import IMAGENET_STD, ImageDataset, LoadStats, eval_transforms
from lmkkit.embed import (Embedder, decode_jpegs, eval_on_device, extract_embeddings, gpu_decoder_problem, plain_jpeg_bytes,
                          resolve_decode)
from lmkkit.model import create_model, save_checkpoint
from lmkkit.pipeline import run_inference
from lmkkit.synth import make_synthetic
from tests.test_verify import REAL, needs_real

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
TINY = dict(n_landmarks=4, n_unseen=1, n_families=2, train_per_landmark=4, index_per_landmark=2, test_per_landmark=2,
            n_train_nonlandmarks=6, n_index_nonlandmarks=2, n_test_nonlandmarks=3)


def _model():
    "A randomly initialised ResNet-18 retrieval model (no trained weights are available offline)."
    torch.manual_seed(0)
    return create_model('resnet18', embedding_size=64, n_classes=None)


def _embed(paths, size, decode, **kw):
    "(emb, ok, reasons) of `paths` by one decoder."
    st = LoadStats()
    emb, ok = extract_embeddings(_model(), paths, size, batch_size=4, num_workers=0, verbose=False, stats=st, decode=decode, **kw)
    return emb, ok, dict(st.reasons)


def _grey_levels(paths, size) -> np.ndarray:
    "Mean |device path - CPU path| of each image's model input, in grey levels of 255."
    ds = ImageDataset(paths, transform=eval_transforms(size), load_size=size)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    imgs = decode_jpegs([p.read_bytes() for p in paths], 'cpu')
    return np.array([((eval_on_device(img, size, size) - ds[i]['image']) * std).abs().mean().item() for i, img in enumerate(imgs)])


def _check_agreement(paths, size, max_grey_mean, max_grey):
    "Same ok flags; cosine > 0.999 per image; each device-path embedding's nearest PIL-path embedding is its own image's."
    grey = _grey_levels(paths, size)
    assert grey.mean() < max_grey_mean and grey.max() < max_grey, (grey.mean(), grey.max())
    pil, ok_pil, _ = _embed(paths, size, 'cpu')
    dev, ok_dev, _ = _embed(paths, size, 'torchvision')
    assert ok_pil.all() and ok_dev.all()
    cos = (pil * dev).sum(1)
    assert cos.min() > 0.999, cos.min()  # measured: >= 0.9998 (synthetic, 64 px), >= 0.99995 (real photos)
    np.testing.assert_array_equal((dev @ pil.T).argmax(1), np.arange(len(paths)))
    return grey, cos


@needs_real
@pytest.mark.parametrize('size', [64, 224])
def test_device_path_agrees_with_pil_on_real_photos(size):
    "19 real photos (675-1083 px): measured mean 0.30 (64 px) and 0.36 (224 px) grey levels of difference, at most 0.46 per image."
    paths = sorted(REAL.rglob('*.jpg'))
    assert len(paths) >= 10 and all(plain_jpeg_bytes(p) is not None for p in paths)
    _check_agreement(paths, size, max_grey_mean=1.0, max_grey=1.5)


@pytest.mark.parametrize('size', [64, 224])
def test_device_path_agrees_with_pil_on_synthetic_images(tmp_path, size):
    "`lmkkit synth` images (256 px): measured mean 0.61 (64 px, draft scale 4) and 0.17 (224 px) grey levels, at most 1.2 per image."
    make_synthetic(tmp_path, seed=3, verbose=False, image_size=256, **TINY)
    paths = sorted(tmp_path.rglob('*.jpg'))[:24]
    _check_agreement(paths, size, max_grey_mean=1.5, max_grey=3.0)


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
    "Good JPEGs with every kind of bad file between them: (paths, names)."
    d = tmp_path_factory.mktemp('mixed')
    rng = np.random.default_rng(0)
    photo = lambda: Image.fromarray(np.kron(rng.integers(0, 255, (15, 20, 3), np.uint8), np.ones((8, 8, 1), np.uint8)))
    files = {}
    def save(name, img, fmt='JPEG', **kw): img.save(d/f'{name}.jpg', fmt, **kw); files[name] = d/f'{name}.jpg'
    for i in range(3): save(f'good{i}', photo(), quality=90)
    save('png', photo(), 'PNG'); save('webp', photo(), 'WEBP')
    save('gray', photo().convert('L')); save('cmyk', photo().convert('CMYK'))
    exif = Image.new('RGB', (1, 1)).getexif(); exif[0x0112] = 6  # rotated: shown turned 90 degrees
    save('rotated', photo(), exif=exif.tobytes())
    full = (d/'good0.jpg').read_bytes()
    for name, data in [('truncated', full[:len(full) * 2 // 3]), ('header', full[:200]), ('empty', b'')]:
        (d/f'{name}.jpg').write_bytes(data); files[name] = d/f'{name}.jpg'
    files['missing'] = d/'missing.jpg'
    order = ['good0', 'png', 'truncated', 'good1', 'webp', 'empty', 'gray', 'missing', 'cmyk', 'good2', 'rotated', 'header']
    return [files[n] for n in order], order


@pytest.mark.parametrize('workers', [0, 2])
def test_bad_files_in_a_batch_get_the_cpu_paths_reasons_and_rows(mixed, workers):
    paths, names = mixed
    kw = dict(batch_size=4, num_workers=workers, verbose=False)
    st_pil, st_dev = LoadStats(), LoadStats()
    pil, ok_pil = extract_embeddings(_model(), paths, 64, stats=st_pil, decode='cpu', **kw)
    dev, ok_dev = extract_embeddings(_model(), paths, 64, stats=st_dev, decode='torchvision', **kw)
    bad = {'empty', 'missing', 'header'}
    assert ok_dev.tolist() == ok_pil.tolist() == [n not in bad for n in names]
    assert dict(st_dev.reasons) == dict(st_pil.reasons) == {'corrupt': 2, 'missing': 1}
    assert not dev[~ok_dev].any()
    on_cpu = [i for i, n in enumerate(names) if n in {'png', 'webp', 'gray', 'cmyk', 'rotated', 'truncated'}]
    assert [plain_jpeg_bytes(paths[i]) is None for i in on_cpu] == [names[i] != 'truncated' for i in on_cpu]  # truncated: the decoder refuses it
    np.testing.assert_allclose(dev[on_cpu], pil[on_cpu], atol=1e-5)  # loaded by the CPU loader on both paths
    good = [i for i, n in enumerate(names) if n.startswith('good')]
    assert (dev[good] * pil[good]).sum(1).min() > 0.999


def test_the_cache_tells_the_decoders_apart_and_keeps_failures(mixed, tmp_path):
    "The decoder is part of the key; unreadable rows are NaN with the same status under both."
    paths, names = mixed
    ckpt = save_checkpoint(tmp_path/'model.pth', _model(), None)
    made = {d: Embedder(_model(), ckpt, tmp_path/'cache', 64, batch_size=4, num_workers=0, decode=d) for d in ('cpu', 'auto', 'torchvision')}
    assert made['cpu'].cache.key == made['auto'].cache.key != made['torchvision'].cache.key
    assert made['torchvision'].cache.settings['decoder'] == 'torchvision' and 'decoder' not in made['cpu'].cache.settings
    res = {d: made[d](names, paths) for d in ('cpu', 'torchvision')}
    assert res['cpu'].ok.tolist() == res['torchvision'].ok.tolist() and res['cpu'].reasons == res['torchvision'].reasons
    assert sorted(res['torchvision'].unreadable) == ['empty', 'header', 'missing']
    assert np.isnan(res['torchvision'].emb[~res['torchvision'].ok]).all()
    assert len(list((tmp_path/'cache').iterdir())) == 2  # one cache per decoder: neither reused the other's rows


@no_cuda
def test_gpu_without_cuda_stops_in_one_line(mixed, tmp_path):
    paths, _ = mixed
    for call in (lambda: extract_embeddings(_model(), paths, 64, device='cpu', decode='gpu', verbose=False),
                 lambda: Embedder(_model(), save_checkpoint(tmp_path/'m.pth', _model(), None), tmp_path, 64, device='cuda', decode='gpu')):
        with pytest.raises(ConfigError) as e: call()
        msg = str(e.value)
        assert '\n' not in msg and msg.startswith("decode='gpu' needs torchvision's JPEG decoder on a CUDA device")
        assert "fix: run on a GPU" in msg and "decode='auto' or 'cpu'" in msg


@no_cuda
def test_a_gpu_decoder_that_fails_is_named_in_one_line(monkeypatch):
    "CUDA claimed but no driver (as with a broken install): the probe's failure becomes the reason; 'auto' falls back."
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    gpu_decoder_problem.cache_clear()
    try:
        problem = gpu_decoder_problem('cuda:0')
        assert problem.startswith("torchvision's decode_jpeg fails there (") and '\n' not in problem, problem
        assert resolve_decode('auto', 'cuda:0') == 'pil'
        with pytest.raises(ConfigError, match="but torchvision's decode_jpeg fails there"): resolve_decode('gpu', 'cuda:0')
    finally:
        gpu_decoder_problem.cache_clear()


@no_cuda
def test_pipeline_decode_setting(tmp_path):
    "'gpu' stops the run at load_model with the one line; 'auto' falls back to PIL and the timeline says so."
    make_synthetic(tmp_path/'data', seed=0, verbose=False, image_size=64, **TINY)
    save_checkpoint(tmp_path/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None)
    kw = dict(data_dir=str(tmp_path/'data'), checkpoint=str(tmp_path/'model.pt'), device='cpu', image_size=32, k=5,
              stages=[], verbose=False)
    with pytest.raises(ConfigError, match="decode='gpu' decodes JPEGs on the CUDA device but device='cpu'; use decode='cpu' or device='cuda'"):
        run_inference(out_dir=str(tmp_path/'gpu'), decode='gpu', **kw)
    res = run_inference(out_dir=str(tmp_path/'auto'), decode='auto', **kw)
    assert res.timeline.set_index('step').note['load_model'].split('; ')[1] == 'JPEGs decoded by PIL in the DataLoader workers'
