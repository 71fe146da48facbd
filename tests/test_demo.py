"A reduced `lmkkit demo`: tiny synthetic set, tiny training, both inference kernels, all through papermill."
import json

from lmkkit.demo import METRIC, main, run_demo
from lmkkit.metrics import validate_submission
from lmkkit.data import submission_ids

TINY = dict(n_landmarks=6, n_unseen=2, n_families=2, train_per_landmark=5, index_per_landmark=3, test_per_landmark=2,
            n_train_nonlandmarks=10, n_index_nonlandmarks=4, n_test_nonlandmarks=6, image_size=64)


def test_reduced_demo(tmp_path):
    out = tmp_path/'demo'
    metrics = run_demo(out, seed=1, synth=TINY, verbose=False,
                       train={'stages': [[32, 1]], 'overrides': {'val_every_epochs': 0, 'batch_size': 8}},
                       inference={'overrides': {'verify_top_n': 2, 'batch_size': 16}})
    assert json.loads((out/'metrics.json').read_text()) == metrics
    assert list(metrics) == ['recognition', 'retrieval']
    for track, first in (('recognition', 'knn_top1'), ('retrieval', 'knn')):
        stages = metrics[track]['stages']
        assert list(metrics[track]) == ['stages']
        assert stages[0]['stage'] == first and stages[-1]['stage'] == 'final' and len(stages) >= 3
        assert all(set(r) == {'stage', METRIC[track], 'holdout', 'adopted'} and 0 <= r[METRIC[track]] <= 1 for r in stages)
        assert validate_submission(out/track/'submission.csv', submission_ids(out/'data', track))[0] == track
        assert (out/f'{track}.ipynb').is_file() and (out/track/'timeline.png').is_file()
    assert (out/'model'/'model.pt').is_file()


def test_demo_cli_help(capsys):
    try: main(['--help'])
    except SystemExit as e: assert e.code == 0
    assert '--seed' in capsys.readouterr().out
