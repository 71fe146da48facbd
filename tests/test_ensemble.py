"Several models in one inference run (issue 23): adopted only when held-out queries say they help; the deadline chooses how many run."
import json
import zlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import lmkkit.pipeline as pipeline
from lmkkit.data import submission_ids
from lmkkit.embed import id_strings
from lmkkit.metrics import load_solution, validate_submission
from lmkkit.model import create_model, save_checkpoint
from lmkkit.synth import make_synthetic

TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)
FAST = dict(image_size=32, batch_size=16, k=5, retrieval_k=20, verbose=False, holdout_frac=0.3, holdout_unseen_frac=0.2,
            min_holdout_landmarks=1, stages=['soft_vote'])


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A tiny synthetic GLDv2 folder and two untrained tiny checkpoints (other seeds: other random features)."
    root = tmp_path_factory.mktemp('ensemble')
    make_synthetic(root/'data', seed=0, verbose=False, **TINY)
    for i in range(3):
        import torch
        torch.manual_seed(i)
        save_checkpoint(root/f'm{i}.pt', create_model('test_resnet', embedding_size=16, head=None), None,
                        extra={'train_config': {'stages': [[32, 1]]}})
    return root


def _labels(data) -> dict:
    "id -> landmark id of every train and test image with one (non-landmarks: none)."
    train = pd.read_csv(data/'train.csv')
    test = {q: t[0] for q, t in load_solution(data, 'recognition').items() if t}
    return {**dict(zip(train['id'], train['landmark_id'])), **test}


def _swap_member(monkeypatch, member: int, vector):
    "Replace what `embed_together` gives for `member` by `vector(id)` (an L2-normalised (16,) array) on its readable rows."
    real = pipeline.embed_together
    def together(embedders, ids, paths, deadline=None, split='images'):
        res = real(embedders, ids, paths, deadline, split=split)
        if len(res) > member:
            r = res[member]
            emb = np.stack([vector(i) for i in id_strings(r.ids)]).astype(np.float32) if len(r.ids) else np.zeros((0, 16), np.float32)
            res[member] = replace(r, emb=np.where(r.ok[:, None], emb, np.nan).astype(np.float32))
        return res
    monkeypatch.setattr(pipeline, 'embed_together', together)


def _unit(v): return v / np.linalg.norm(v)


@pytest.mark.parametrize('kind', ['noise', 'oracle'])
def test_a_member_is_adopted_only_when_held_out_queries_say_it_helps(world, tmp_path, monkeypatch, kind):
    "Member 1 gives noise (hurts: not adopted, the submission is member 0's) or its class's own vector (helps: adopted)."
    labels = _labels(world/'data')
    vec = {'noise': lambda i: _unit(np.random.default_rng(zlib.crc32(i.encode())).normal(size=16)),
           'oracle': lambda i: _unit(np.random.default_rng(int(labels.get(i, -1)) + 1 if i in labels else zlib.crc32(i.encode())).normal(size=16))}
    _swap_member(monkeypatch, 1, vec[kind])
    res = pipeline.run_inference(data_dir=str(world/'data'), checkpoints=[str(world/'m0.pt'), str(world/'m1.pt')], out_dir=str(tmp_path),
                                 cache_dir=str(tmp_path/'cache'), **FAST)
    validate_submission(res.submission, submission_ids(world/'data', 'recognition'))
    ens = json.loads((tmp_path/'metrics.json').read_text())['ensemble']
    alone, other = ens['members'][0], ens['members'][1]
    add = ens['additions'][0]
    assert set(alone) >= {'checkpoint', 'weight', 'image_size', 'holdout', 'gap', 'ran', 'images_per_s'}
    assert add['member'] == 1 and add['members'] == [0, 1]
    if kind == 'noise':
        assert other['holdout'] < alone['holdout'] and add['holdout'] < alone['holdout'], ens
        assert add['adopted'] is False and ens['adopted'] == [0] and add['note'].endswith('not adopted')
        assert res.ablation[0]['gap'] == alone['gap'] == ens['gap']  # the kNN submission is member 0's alone
        # the ensemble's judge is the stages' judge: the same held-out queries, weighted to the same test mix
        assert alone['holdout'] == pytest.approx(res.ablation[0]['holdout']), (alone, res.ablation[0])
    else:
        assert add['holdout'] > alone['holdout'] and add['adopted'] is True and ens['adopted'] == [0, 1], ens
        assert res.ablation[0]['gap'] == add['gap'] == ens['gap'] > alone['gap']  # the kNN submission is the ensemble's
        assert add['holdout'] == pytest.approx(res.ablation[0]['holdout']), (add, res.ablation[0])
    steps = list(res.timeline['step'])
    assert steps.index('load_model') < steps.index('load_model[1]') < steps.index('probe_models') < steps.index('embed_test')
    assert steps.index('embed_train') < steps.index('ensemble') < steps.index('knn')


def test_the_deadline_chooses_how_many_models_run(world, tmp_path, monkeypatch):
    "Retrieval with three models: the third is probed too slow for the time left and never extracted; the deadline cuts the second's index extraction short, so it is left out and the run keeps the first's submission."
    monkeypatch.setattr(pipeline, 'probe_members', lambda embedders, paths, workers=0: dict(decode_s=0.0, model_s=[1e-4, 1e-4, 1e4], images=len(paths)))
    real = pipeline.embed_together
    def cut_second(embedders, ids, paths, deadline=None, split='images'):
        res = real(embedders, ids, paths, deadline, split=split)
        assert len(res) == 2  # the third model is never extracted
        if split == 'embed_index':  # as if the deadline stopped the second model 3 images early
            r, ok = res[1], res[1].ok.copy()
            ok[-3:] = False
            res[1] = replace(r, ok=ok, emb=np.where(ok[:, None], r.emb, np.nan).astype(np.float32), skipped=3)
        return res
    monkeypatch.setattr(pipeline, 'embed_together', cut_second)
    res = pipeline.run_inference(data_dir=str(world/'data'), checkpoints=[str(world/f'm{i}.pt') for i in range(3)], track='retrieval',
                                 out_dir=str(tmp_path), cache_dir=str(tmp_path/'cache'), **FAST)
    validate_submission(res.submission, submission_ids(world/'data', 'retrieval'))
    ens = json.loads((tmp_path/'metrics.json').read_text())['ensemble']
    assert [m['ran'] for m in ens['members']] == [True, False, False] and ens['adopted'] == [0] and ens['additions'] == []
    assert ens['members'][1]['note'].startswith('left out: the deadline cut its extraction short')
    skipped = res.timeline.set_index('step').loc['model[2]']
    assert not skipped.ran and 'checkpoints[2] needs' in skipped.note and 'not kept for the stages' in skipped.note
    assert any(c.startswith('model[2]: skipped') for c in res.cut) and any(c.startswith('model[1]: left out') for c in res.cut), res.cut
    assert isinstance(ens['members'][0]['map@100'], float) and res.ablation[0]['map@100'] == ens['members'][0]['map@100'] == ens['map@100']
    assert int(res.timeline.set_index('step').loc['knn', 'note'].split(' x ')[1].split()[0]) == 19  # all of the first model's index


def test_presets_train_the_seeds_three_members_and_the_training_kernel_says_how_to_attach_them():
    import re
    import nbformat
    import timm
    from lmkkit.train import PRESETS
    for name, backbone in [('seed_swin', 'swin_base_patch4_window12_384'), ('seed_seresnet101', 'legacy_seresnet101'),
                           ('seed_nfnet', 'dm_nfnet_f0')]:
        assert PRESETS[name].backbone == backbone and timm.is_model(backbone)
        assert PRESETS[name].stages == ((448, 8), (512, 8), (640, 8), (736, 4))  # the seed's schedule
    root = __import__('pathlib').Path(__file__).resolve().parents[1]
    nb = nbformat.read(root/'kaggle_kernels'/'lmkkit-train'/'lmkkit-train.ipynb', as_version=4)
    text = '\n'.join(c.source for c in nb.cells if c.cell_type == 'markdown')
    named = set(re.findall(r"'(seed_\w+)'", text))
    assert named == {'seed_swin', 'seed_seresnet101', 'seed_nfnet'} <= set(PRESETS) and '`checkpoints`' in text


def test_a_misspelt_checkpoint_path_names_its_entry(world, tmp_path):
    "A path in `checkpoints` that does not exist stops the run in one line that says which entry it is."
    from lmkkit.core import ConfigError
    bad = str(world/'m1.ptt')
    with pytest.raises(ConfigError, match=r"parameter 'checkpoints'\[1\]: '.*m1\.ptt' not found; check the path") as e:
        pipeline.run_inference(data_dir=str(world/'data'), checkpoints=[str(world/'m0.pt'), bad], out_dir=str(tmp_path/'out'),
                               track='recognition', device='cpu', **FAST)
    assert '\n' not in str(e.value)
    with pytest.raises(ConfigError, match=r"parameter 'checkpoint': .* not found"):
        pipeline.run_inference(data_dir=str(world/'data'), checkpoint=bad, out_dir=str(tmp_path/'out1'), track='recognition',
                               device='cpu', **FAST)
