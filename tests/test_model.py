"End-to-end checks of lmkkit.model: timm backbones, forward outputs, weights files and checkpoints (good and bad)."
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest
import timm
import torch
import torch.nn.functional as F

from lmkkit.model import CheckpointError, create_model, load_checkpoint, save_checkpoint

SLOW = os.environ.get('LMKKIT_SLOW') == '1'   # LMKKIT_SLOW=1 also builds the larger seed backbones


def _check(model, size, d=32, n=4, batch=1):
    x, labels = torch.randn(batch, 3, *size), torch.arange(batch) % n
    with torch.inference_mode(): out = model.eval()(x, labels)
    assert out['embeddings'].shape == (batch, d) and out['logits'].shape == (batch, n)
    torch.testing.assert_close(out['embeddings'].norm(dim=1), torch.ones(batch))
    assert torch.isfinite(out['logits']).all()


@pytest.mark.parametrize('name', ['test_resnet', 'test_vit', 'test_efficientnet'])
@pytest.mark.parametrize('pool', ['rgem', 'gem'])
def test_tiny_backbones(name, pool):
    _check(create_model(name, pool=pool, embedding_size=32, n_classes=4), (64, 64), batch=2)


@pytest.mark.parametrize('name,size,fmt', [
    ('swin_base_patch4_window12_384', (64, 96), 'NHWC'),
    ('legacy_seresnet101', (64, 64), 'NCHW'),
    ('nfnet_l0', (64, 64), 'NCHW'),
    pytest.param('seresnet101', (64, 64), 'NCHW', marks=pytest.mark.skipif(not SLOW, reason='LMKKIT_SLOW=1')),
    pytest.param('dm_nfnet_f0', (64, 64), 'NCHW', marks=pytest.mark.skipif(not SLOW, reason='LMKKIT_SLOW=1')),
    pytest.param('eca_nfnet_l1', (64, 64), 'NCHW', marks=pytest.mark.skipif(not SLOW, reason='LMKKIT_SLOW=1')),
])
def test_seed_backbones(name, size, fmt):
    model = create_model(name, embedding_size=32, n_classes=4)
    assert model.pool.fmt == fmt
    _check(model, size)


def test_train_step_under_autocast():
    model = create_model('test_resnet', embedding_size=16, n_classes=5).train()
    x, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x, labels)
    assert out['logits'].dtype == torch.float32
    F.cross_entropy(out['logits'], labels).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.pool.p.grad is not None


def test_local_pretrained_weights(tmp_path):
    src = timm.create_model('test_efficientnet', pretrained=False)
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    model = create_model('test_efficientnet', pretrained=tmp_path / 'w.pth', embedding_size=8)
    ref = src.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.backbone.state_dict().items())
    with pytest.raises(FileNotFoundError, match='pretrained=None'):
        create_model('test_efficientnet', pretrained=tmp_path / 'missing.pth')


def test_checkpoint_round_trip(tmp_path):
    model = create_model('test_vit', embedding_size=16, head='subcenterarcface', n_classes=3, k=2,
                         margins=torch.tensor([0.1, 0.2, 0.3]), pool_kwargs=dict(p=2.5)).eval()
    path = save_checkpoint(tmp_path / 'm.pt', model, [10, 20, 30], extra={'epoch': 1, 'best': [0.5, 0.6]})
    loaded, ids, extra = load_checkpoint(path)
    assert ids == [10, 20, 30] and extra == {'epoch': 1, 'best': [0.5, 0.6]}
    assert loaded.config == model.config and loaded.config.pool_kwargs == {"p": 2.5}
    torch.testing.assert_close(loaded.head.margins, torch.tensor([0.1, 0.2, 0.3]))
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    with torch.no_grad():
        a, b = model(x, labels), loaded(x, labels)
    assert torch.equal(a['embeddings'], b['embeddings']) and torch.equal(a['logits'], b['logits'])


def test_checkpoint_bad_files(tmp_path):
    model = create_model('test_resnet', embedding_size=8)
    good = save_checkpoint(tmp_path / 'good.pt', model, None)
    (tmp_path / 'cut.pt').write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(model.state_dict(), tmp_path / 'state_dict.pt')
    (tmp_path / 'text.pt').write_text('not a checkpoint\n')
    (tmp_path / 'empty.pt').write_bytes(b'')
    torch.save(dict(model=model.state_dict(), optimizer={}, scheduler={}, step=3), tmp_path / 'last.pt')
    unreadable = r'is not an lmkkit checkpoint \(torch.load failed: .*\); fix: pass the model.pt'
    for name, msg in [('cut.pt', unreadable), ('state_dict.pt', 'is a torch file but not an lmkkit checkpoint'),
                      ('last.pt', "resume state, not a model; fix: pass the model.pt in the same folder"),
                      ('text.pt', unreadable), ('empty.pt', r'\(torch.load failed: EOFError\)'), ('.', 'is a folder; pass the checkpoint file')]:
        with pytest.raises(CheckpointError, match=msg) as e:
            load_checkpoint(tmp_path / name)
        assert '\n' not in str(e.value), str(e.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / 'missing.pt')
    with pytest.raises(TypeError, match=r"extra\['when'\]"):
        save_checkpoint(tmp_path / 'x.pt', model, None, extra={'when': object()})
