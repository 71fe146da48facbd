"""`lmkkit.rehearse` end to end at tiny sizes: the step table, the submission it writes, the projection and its plot."""
import numpy as np

from lmkkit.metrics import gap, read_submission, validate_submission
from lmkkit.rehearse import (DEFAULT_REHEARSAL, GLDV2_TEST, GLDV2_TRAIN, RunAssumptions, make_embeddings,
                             plot_projection, project_run, rehearse)
from lmkkit.search import uint64_to_hex_ids

SIZES = dict(train=3000, test=400, dim=32)


def test_rehearse_tiny(tmp_path):
    steps = rehearse(tmp_path / 'run', **SIZES, lgbm_queries=600, seed=1)
    assert steps.step.tolist() == ['generate', 'warm-up', *DEFAULT_REHEARSAL]
    # every step has a time and its memory; the real steps have a work size in their declared unit
    assert (steps.seconds > 0).all()
    assert steps[['rss_start_mib', 'rss_end_mib', 'peak_mib', 'peak_rise_mib']].notna().all().all()
    assert (steps.peak_mib >= steps.rss_end_mib - 1e-6).all() and (steps.rss_end_mib > 0).all()
    by = steps.set_index('step')
    assert by.loc['knn', 'work'] == 400 * 3000 and by.loc['qe', 'work'] == 400 * 3000
    assert by.loc['soft_vote', 'work'] == 400 and by.loc['lgbm_fit', 'work'] == 600
    assert by.loc[['knn', 'qe', 'soft_vote'], 'shape'].tolist() == ['400x10'] * 3
    assert by.loc['lgbm_fit', 'shape'].startswith('600x') and by.loc['lgbm_fit', 'shape'].endswith('5 folds')
    assert (tmp_path / 'run' / 'steps.csv').exists() and not (tmp_path / 'run' / 'train.npy').exists()

    # the submission covers every test id; landmark queries get their own class (clusters are well apart at dim 32)
    _, test = make_embeddings(tmp_path / 'again', **SIZES, seed=1)  # deterministic: the same labels
    ids = uint64_to_hex_ids(test.ids)
    track, preds = validate_submission(tmp_path / 'run' / 'submission.csv', ids)
    assert track == 'recognition' and len(read_submission(tmp_path / 'run' / 'submission.csv')[1]) == 400
    landmark = test.labels >= 0
    right = np.array([preds[q][0] == l for q, l in zip(ids[landmark], test.labels[landmark])])
    assert right.mean() > 0.95
    truth = {q: ([int(l)] if l >= 0 else []) for q, l in zip(ids, test.labels)}
    assert 0.3 < gap(preds, truth) < 1.0  # non-landmark queries are answered too (no non-landmark rule yet)

    proj = project_run(steps, RunAssumptions(extract_rate=100.0, decode_rate_per_core=1000.0))
    assert proj.step.tolist() == ['overhead', 'extract train', 'extract test', *DEFAULT_REHEARSAL]
    assert np.isclose(proj.set_index('step').loc['extract train', 'seconds'], GLDV2_TRAIN / 100.0)
    soft = by.loc['soft_vote']
    assert np.isclose(proj.set_index('step').loc['soft_vote', 'seconds'], soft.seconds * GLDV2_TEST / 400)
    assert np.isclose(proj.end_h.iloc[-1], proj.seconds.sum() / 3600)
    assert plot_projection(proj, tmp_path / 'timeline.png').stat().st_size > 10_000
