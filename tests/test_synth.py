"End-to-end checks of the synthetic GLDv2 set: layout, CSV consistency, determinism, and bad-input loading."
import hashlib
import os
import shutil

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
import pandas as pd
import pytest
import torch

from lmkkit.data import ImageDataset, LoadStats, eval_transforms, id_to_path, list_ids, read_train_csv
from lmkkit.synth import make_synthetic

TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=3, index_per_landmark=2, test_per_landmark=2,
            n_train_nonlandmarks=3, n_index_nonlandmarks=2, n_test_nonlandmarks=3, image_size=64)

def _csv(root, name): return pd.read_csv(root/name, dtype=str, keep_default_na=False)

def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    return root, make_synthetic(root, seed=5, verbose=False, **TINY)

def test_layout_every_listed_id_has_its_file(synth):
    root, summary = synth
    train, nonlm = read_train_csv(root/'train.csv'), _csv(root, 'nonlandmarks.csv')
    rec, ret = _csv(root, 'recognition_solution.csv'), _csv(root, 'retrieval_solution.csv')
    index_ids = set(list_ids(root, 'index'))
    assert set(list_ids(root, 'train')) == set(train.id) | set(nonlm.id)
    assert not set(train.id) & set(nonlm.id)
    assert set(list_ids(root, 'test')) == set(rec.id) == set(ret.id)
    for split, ids in [('train', train.id), ('train', nonlm.id), ('test', rec.id)]:
        assert all(id_to_path(root, split, i).is_file() for i in ids)
    assert set(_csv(root, 'index_image_to_landmark.csv').id) <= index_ids
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in list(train.id) + list(index_ids))
    assert (summary['train'], summary['test'], summary['index']) == (len(train), len(rec), len(index_ids))
    assert not list(root.rglob('*.tmp'))

def test_solutions_agree_with_train_and_index(synth):
    root, _ = synth
    train = read_train_csv(root/'train.csv')
    rec, ret = _csv(root, 'recognition_solution.csv'), _csv(root, 'retrieval_solution.csv')
    index_lm = dict(zip(*_csv(root, 'index_image_to_landmark.csv')[['id', 'landmark_id']].T.values))
    assert set(rec.Usage) == {'Public', 'Private'}
    assert set(ret.Usage) <= {'Public', 'Private', 'Ignored'} and 'Ignored' in set(ret.Usage)
    seen = set(train.landmark_id.astype(str))
    labelled = rec[rec.landmarks != '']
    assert set(labelled.landmarks) <= seen and len(labelled) == TINY['n_landmarks'] * TINY['test_per_landmark']
    scored = ret[ret.Usage != 'Ignored']
    assert (ret.loc[ret.Usage == 'Ignored', 'images'] == 'None').all()
    for q, images in zip(scored.id, scored.images):
        lms = {index_lm[i] for i in images.split()}
        assert len(lms) == 1
        usage_rec = rec.set_index('id').loc[q, 'landmarks']
        assert usage_rec in ('', *lms)  # a labelled query's retrieval landmark is its recognition landmark
    assert (rec.set_index('id').Usage[scored.id] == scored.set_index('id').Usage).all()
    sub = _csv(root, 'recognition_sample_submission.csv')
    assert list(sub.id) == list(rec.id) and sub.landmarks.str.fullmatch(r'\d+ 0\.1').all()
    rsub = _csv(root, 'retrieval_sample_submission.csv')
    assert list(rsub.id) == list(ret.id) and set(rsub.images.iloc[0].split()) <= set(list_ids(root, 'index'))

def test_same_seed_same_bytes(synth, tmp_path):
    root, _ = synth
    make_synthetic(tmp_path/'again', seed=5, verbose=False, **TINY)
    assert _hashes(tmp_path/'again') == _hashes(root)
    make_synthetic(tmp_path/'other', seed=6, verbose=False, **TINY)
    assert _csv(tmp_path/'other', 'train.csv').id.tolist() != _csv(root, 'train.csv').id.tolist()

def test_missing_and_corrupt_files_load_as_not_ok(synth, tmp_path):
    root, _ = synth
    copy = tmp_path/'damaged'
    shutil.copytree(root, copy)
    train = read_train_csv(copy/'train.csv')
    paths = [id_to_path(copy, 'train', i) for i in train.id]
    paths[0].unlink()
    paths[1].write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    paths[2].write_bytes(paths[2].read_bytes()[:300])  # cut inside the header: undecodable
    paths[3].write_bytes(paths[3].read_bytes()[:-400])  # truncated tail: still decodable
    ds = ImageDataset(paths, train.landmark_id.tolist(), eval_transforms(32))
    stats = LoadStats()
    for batch in torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2):
        assert batch['image'].shape[1:] == (3, 32, 32)
        stats.add_batch(batch['ok'], [paths[i] for i in batch['index']])
    assert (stats.n, stats.failed) == (len(paths), 3)
    assert stats.summary().startswith(f'{len(paths) - 3}/{len(paths)} images loaded, 3 unreadable')
