"The held-out judge looks like the test (issue 27): the test's mix of query kinds, queries the model never saw, a retrieval judge."
import json
import re

import numpy as np
import pandas as pd
import pytest

from lmkkit.model import create_model, save_checkpoint
from lmkkit.pipeline import InferenceConfig, make_holdout, run_inference
from lmkkit.plan import weighted_gap
from lmkkit.rerank import register_stage
from lmkkit.search import search
from lmkkit.synth import make_synthetic


def _unit(a): return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _world(seed: int = 0, n_classes: int = 40, per: int = 6, d: int = 16):
    "Embeddings of a GLDv2-like set: classes are tight clusters, non-landmarks a loose cluster of their own."
    rng = np.random.default_rng(seed)
    centres, nl_centre = _unit(rng.standard_normal((n_classes + 10, d))), _unit(rng.standard_normal((1, d)))
    view = lambda c, n, s: _unit(np.repeat(c, n, 0) + s / np.sqrt(d) * rng.standard_normal((len(c) * n, d)))
    train = pd.DataFrame({'id': [f't{i:03d}' for i in range(n_classes * per)], 'landmark_id': np.repeat(np.arange(n_classes), per)})
    emb = view(centres[:n_classes], per, 0.25)
    nl_emb = view(nl_centre, 60, 0.6)
    # the test: 55% landmarks of train classes, 10% of classes absent from train, 35% non-landmarks
    test_emb = np.concatenate([view(centres[:n_classes], 2, 0.25)[:55], view(centres[n_classes:], 1, 0.25), view(nl_centre, 35, 0.6)])
    return train, emb, nl_emb, test_emb


def test_heldout_mix_follows_the_test():
    train, emb, nl_emb, test_emb = _world()
    cfg = InferenceConfig(holdout_frac=0.3, holdout_unseen_frac=0.3)
    test = search(np.array([f'q{i}' for i in range(len(test_emb))]), test_emb, train['id'].to_numpy(), emb, 5,
                  train['landmark_id'].to_numpy())
    h = make_holdout(train, emb, np.array([f'n{i}' for i in range(30)]), nl_emb[30:], nl_emb[:30], 5, cfg, test=(test, test_emb))
    unseen = set(train.landmark_id) - set(h.ctx.index_labels[~h.ctx.index_exclude])
    label = dict(zip(train.id, train.landmark_id))
    kind = {q: 'nonlandmark' if q not in label else 'unseen' if label[q] in unseen else 'landmark' for q in h.truth}
    assert not any(h.truth[q] for q in h.truth if kind[q] != 'landmark')  # as in the test: no right answer, empty truth
    w = pd.Series(h.weights)
    share = w.groupby(pd.Series(kind)).sum() / w.sum()
    raw = pd.Series(kind).value_counts(normalize=True)
    mix = pd.Series({'landmark': 0.55, 'unseen': 0.1, 'nonlandmark': 0.35})
    assert (raw - mix).abs().max() > 0.1, raw  # unweighted, the held-out mix is not the test's
    assert (share - mix).abs().max() < 0.06, share
    assert 'weighted to the test mix' in h.note
    given = make_holdout(train, emb, np.array([f'n{i}' for i in range(30)]), nl_emb[30:], nl_emb[:30], 5,
                         InferenceConfig(holdout_frac=0.3, holdout_unseen_frac=0.3, holdout_mix=(2, 1, 1)))
    share = pd.Series(given.weights).groupby(pd.Series(kind)).sum() / len(given.weights)
    assert abs(share['landmark'] - 0.5) < 1e-6 and 'given (holdout_mix)' in given.note


def test_heldout_queries_are_not_reference_images():
    "No held-out non-landmark query is in the penalty's pool, and no held-out landmark query is an image the model trained on."
    train, emb, nl_emb, _ = _world(seed=1)
    never_trained = np.zeros(len(train), bool)
    never_trained[np.arange(0, len(train), 5)] = True
    make = lambda n: make_holdout(train, emb, np.array([f'n{i}' for i in range(30)]), nl_emb[30:], nl_emb[:30], 5,
                                  InferenceConfig(min_holdout_landmarks=n), unseen_by_model=never_trained)
    h = make(48)
    held = [q for q, t in h.truth.items() if t]
    assert set(held) == set(train.id[never_trained]) and "never trained on" in h.note
    assert 'may have trained' in make(49).note  # too few images it never saw for a stage that learns: split by class instead
    q_nl = h.ctx.query_emb_of(np.array([q for q, t in h.truth.items() if not t]))
    assert (q_nl @ h.ctx.nonlandmark_emb.T).max() < 1 - 1e-4  # none of them is one of the penalty's reference images
    assert not (h.cands.ids == h.cands.query_ids[:, None]).any()  # no query is its own candidate
    assert not h.ctx.index_exclude.any()  # the others are: they search the test's database, all of train
    split = make(49)  # split by class: the classes held out whole are out of the database for every query
    gone = train.landmark_id.isin(set(train.landmark_id) - set(split.ctx.index_labels[~split.ctx.index_exclude]))
    assert gone.any() and split.ctx.index_exclude.tolist() == gone.tolist()
    assert not set(split.cands.labels.ravel()) & set(train.landmark_id[gone])


def test_weighted_gap_is_gap_of_the_reweighted_population():
    preds = {'a': (1, .9), 'b': (2, .8), 'n': (3, .85)}
    truth = {'a': [1], 'b': [2], 'n': []}
    twice = {**preds, 'n2': (3, .85)}
    assert weighted_gap(preds, truth, {'n': 2.0}) == pytest.approx(weighted_gap(twice, {**truth, 'n2': []}))
    assert weighted_gap(preds, truth, {'n': 2.0}) < weighted_gap(preds, truth)  # the non-landmark weighs more: it costs more


@register_stage('reverse_for_test', cost_s=1e-6, needs=('query_ids',))
def reverse_for_test(cands, ctx):
    "The candidates in reverse order: the worst possible answer."
    return cands.take(np.tile(np.arange(cands.k)[::-1], (len(cands), 1)))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny synthetic folder and an untrained tiny checkpoint."
    root = tmp_path_factory.mktemp('judge')
    make_synthetic(root/'data', seed=0, verbose=False, n_landmarks=6, n_unseen=1, n_families=2, train_per_landmark=6,
                   index_per_landmark=3, test_per_landmark=2, n_train_nonlandmarks=4, n_index_nonlandmarks=2,
                   n_test_nonlandmarks=2, image_size=48)
    save_checkpoint(root/'model.pt', create_model('test_resnet', embedding_size=16, head=None), None)
    return root


def test_retrieval_stages_are_judged_on_heldout_queries(tiny, tmp_path):
    res = run_inference(data_dir=str(tiny/'data'), checkpoint=str(tiny/'model.pt'), out_dir=str(tmp_path), cache_dir=str(tiny/'cache'),
                        track='retrieval', stages=['qe', 'reverse_for_test'], image_size=32, retrieval_k=20, device='cpu',
                        holdout_frac=0.4, verbose=False)
    rows = {r['stage']: r for r in json.loads((tmp_path/'metrics.json').read_text())['stages']}
    assert all(rows[s]['holdout'] is not None for s in ('knn', 'qe', 'reverse_for_test')), rows
    assert not rows['reverse_for_test']['adopted'] and rows['reverse_for_test']['holdout'] < rows['knn']['holdout']
    note = res.timeline.set_index('step').note['holdout']
    assert res.report['holdout_queries'] > 0 and 'truth: index_image_to_landmark.csv' in note
    # the index's labels are known, so its images are queries too: each against the rest of the index
    n_index = int(re.search(r'and (\d+) index images', note).group(1))
    labels = pd.read_csv(tiny/'data'/'index_image_to_landmark.csv')
    assert n_index == labels.landmark_id.isin(labels.landmark_id.value_counts()[lambda c: c >= 2].index).sum() > 0


def test_models_of_one_ensemble_share_their_validation_split(tmp_path):
    "`val_seed` fixes the split whatever the training seed, and the judge reproduces it from the checkpoint's config."
    import dataclasses
    from lmkkit.pipeline import model_unseen_rows
    from lmkkit.train import PRESETS
    from lmkkit.trainer import prepare_data
    make_synthetic(tmp_path, seed=0, verbose=False, n_landmarks=12, n_unseen=2, n_families=2, n_train_nonlandmarks=4,
                   n_index_nonlandmarks=2, n_test_nonlandmarks=2)
    train = pd.read_csv(tmp_path/'train.csv', dtype={'id': str})
    cfg = lambda **kw: dataclasses.replace(PRESETS['demo'], val_frac=0.3, val_unseen_class_frac=0.2, **kw)
    val = lambda c: set(prepare_data(tmp_path, c).val['id'])
    first, second, own = cfg(seed=0), cfg(seed=1, val_seed=0), cfg(seed=1)
    assert val(first) == val(second) != val(own)  # a second member with its own seed would hold out other images
    for c in (first, second, own):
        assert set(train.id[model_unseen_rows(train, c.to_dict())]) == val(c)


def test_capped_heldout_keeps_whole_classes_out_of_the_database():
    "`max_holdout` samples the held-out queries; a class held out whole stays out of the database even when none of its images is sampled."
    train, emb, nl_emb, _ = _world(seed=2)
    full = make_holdout(train, emb, np.array(['n0']), nl_emb[:1], None, 5, InferenceConfig(holdout_frac=0.3, holdout_unseen_frac=0.3))
    capped = make_holdout(train, emb, np.array(['n0']), nl_emb[:1], None, 5,
                          InferenceConfig(holdout_frac=0.3, holdout_unseen_frac=0.3, max_holdout=3))
    assert len(capped.cands) == 4 and capped.ctx.index_exclude.tolist() == full.ctx.index_exclude.tolist()
