"`lmkkit benchmark` end to end on a synthetic ROxford5k-layout set with a tiny timm model, and revisited_map's extremes."
import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lmkkit.cli import main as cli_main
from lmkkit.metrics import revisited_map
from lmkkit.model import create_model, save_checkpoint
from lmkkit.revisited import make_revisited_synthetic, run_benchmark

METRICS = ['map', 'mp@1', 'mp@5', 'mp@10']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A synthetic ROxford5k set (4 landmarks x 2 queries; per landmark 3 easy, 3 hard, 2 junk; 8 negatives) + 3 distractors."
    root = tmp_path_factory.mktemp('revisited')
    return root, make_revisited_synthetic(root, n_distractors=3, image_size=64)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model('test_resnet', embedding_size=32, head=None)
    return save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'model.pt', model, None)


def _run_cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out): code = cli_main(list(map(str, argv)))
    return code, out.getvalue()


def test_benchmark_command_end_to_end(data, checkpoint, tmp_path):
    root, ds = data
    csv = tmp_path / 'roxford5k.csv'
    code, text = _run_cli('benchmark', 'roxford5k', root, '--checkpoint', checkpoint, '--size', 64, '--device', 'cpu',
                          '--distractors', root / 'revisitop1m', '--qe', 2, '--dba', 2, '--quiet', '--out', csv)
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].startswith('roxford5k: 40 images + 3 distractors'), text
    assert [line.split()[0] for line in lines[2:5]] == ['Easy', 'Medium', 'Hard'], text
    table = pd.read_csv(csv, index_col='setup')
    assert table.shape == (3, 18)  # 5 metrics + 13 settings (superglobal, pool, scale_merge: issue 25)
    assert list(table.index) == ['easy', 'medium', 'hard']
    assert list(table.columns[:5]) == [*METRICS, 'queries']
    assert table['queries'].tolist() == [8, 8, 8]
    values = table[METRICS].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    assert table.loc['easy', 'map'] > table.loc['hard', 'map']  # easy views are easier, even for random features
    assert table[['qe', 'dba', 'n_database', 'n_distractors']].iloc[0].tolist() == [2, 2, 40, 3]
    assert table['scales'].iloc[0] == '1 0.7071 1.414'
    # the printed percentages are the CSV's fractions
    easy_map = float(lines[2].split()[1])
    assert easy_map == pytest.approx(100 * table.loc['easy', 'map'], abs=0.006)


def test_benchmark_superglobal_options(data, checkpoint, tmp_path, capsys):
    "SuperGlobal's re-ranking, pooling and scale merge reach the run from the command line (issue 25)."
    root, _ = data
    code, text = _run_cli('benchmark', 'roxford5k', root, '--checkpoint', checkpoint, '--size', 64, '--device', 'cpu',
                          '--superglobal', 400, '--pool', 'window_gem', '--scale-merge', 'scale_max', '--quiet')
    assert code == 0, text
    assert text.splitlines()[0].endswith('superglobal 400, pool window_gem, scale merge scale_max'), text
    for flags, says in [(('--superglobal', -1), '--superglobal must be 0 (off) or the number of top images to re-rank'),
                        (('--superglobal', 1), 'to re-rank (at least 2), got 1'),
                        (('--superglobal', 10, '--sg-k', 0), '--sg-k must be at least 1 neighbour, got 0'),
                        (('--superglobal', 10, '--sg-beta', -1), '--sg-beta must be at least 0, got -1')] + \
                       ([] if torch.cuda.is_available() else [(('--device', 'cuda'), 'no CUDA GPU is visible here; use --device cpu')]):
        code, text = _run_cli('benchmark', 'roxford5k', root, '--checkpoint', checkpoint, *flags, '--quiet')
        assert code == 2 and says in capsys.readouterr().err, flags


def test_bad_images_are_counted_not_fatal(data, checkpoint, tmp_path):
    root, ds = data
    import shutil
    copy = tmp_path / 'copy'
    shutil.copytree(root / 'roxford5k', copy / 'roxford5k')
    (copy / 'roxford5k' / 'jpg' / f'{ds.imlist[0]}.jpg').write_bytes(b'truncated')
    (copy / 'roxford5k' / 'jpg' / f'{ds.qimlist[3]}.jpg').unlink()
    for kw in (dict(), dict(qe=2, dba=2)):
        table = run_benchmark('roxford5k', copy, checkpoint, size=64, scales=(1,), verbose=False, **kw)
        assert table.attrs['problems'] == {'unreadable query image': 1, 'unreadable database image': 1}
        assert table[METRICS].notna().all().all()


def test_user_mistakes_stop_with_one_line(data, checkpoint, tmp_path, capsys):
    root, _ = data
    assert cli_main(['benchmark', 'rparis6k', str(root), '--checkpoint', str(checkpoint), '--quiet']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'gnd_rparis6k.pkl' in err
    assert cli_main(['benchmark', 'roxford5k', str(root), '--checkpoint', str(tmp_path / 'no.pt'), '--quiet']) == 2
    assert 'no.pt' in capsys.readouterr().err
    for extra, says in [(['--size', '0'], '--size must be at least 8 pixels, got 0'), (['--scales', '0'], '--scales must be positive'),
                        (['--qe', '-1'], '--qe must be 0 (off)'), (['--out', str(tmp_path)], 'is a folder; give the path of the CSV')]:
        assert cli_main(['benchmark', 'roxford5k', str(root), '--checkpoint', str(checkpoint), '--quiet', *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith('lmkkit benchmark: error: ') and err.count('\n') == 1, (extra, err)
        assert says in err and 'Traceback' not in err, (extra, err)


def _perfect(gnd, n_db):
    "Per query: easy, hard, junk, then every other image."
    rows = []
    for g in gnd:
        first = [*g['easy'], *g['hard'], *g['junk']]
        rows.append(first + [i for i in range(n_db) if i not in set(first)])
    return np.array(rows)


def _reversed_ap(before: int, n_pos: int) -> float:
    "Trapezoidal AP of `n_pos` positives at junk-free ranks before, before+1, ... (nothing else after them)."
    return sum((j / (before + j) + (j + 1) / (before + j + 1)) / 2 for j in range(n_pos)) / n_pos


def test_perfect_and_reversed_rankings(data):
    _, ds = data
    n_db = len(ds.imlist)  # 40: 4 landmarks x (3 easy + 3 hard + 2 junk) + 8 negatives
    perfect = _perfect(ds.gnd, n_db)
    res = revisited_map(perfect, ds.gnd)
    for setup in res:
        for metric, value in res[setup].items(): assert value == 1.0, (setup, metric)
    # reversed: 32 other images first, then junk (2), hard (3), easy (3) in reverse.
    # medium: 6 positives after 32 non-junk images; easy: 3 after 32 (hard is junk); hard: 3 after 32 (easy is junk)
    rev = revisited_map(perfect[:, ::-1].copy(), ds.gnd)
    assert rev['medium']['map'] == pytest.approx(_reversed_ap(32, 6), abs=1e-15)
    assert rev['easy']['map'] == pytest.approx(_reversed_ap(32, 3), abs=1e-15)
    assert rev['hard']['map'] == pytest.approx(_reversed_ap(32, 3), abs=1e-15)
    # by hand: (1/3) * sum_j (j/(32+j) + (j+1)/(33+j)) / 2 = (1/33 + 1/33 + 2/34 + 2/34 + 3/35) / 6
    assert rev['easy']['map'] == pytest.approx((2 / 33 + 4 / 34 + 3 / 35) / 6, abs=1e-15)
    for setup in rev:  # no positive in the first 10 places, and k is never clipped below 10
        assert [rev[setup][f'mp@{k}'] for k in (1, 5, 10)] == [0.0, 0.0, 0.0]
    # and a five-image case worked by hand: positives 0 and 1 at ranks 3 and 4 -> (1/8 + (1/4 + 2/5)/2) / 2 = 9/40
    assert revisited_map([[4, 3, 2, 1, 0]], [dict(easy=[0], hard=[1], junk=[])])['medium']['map'] == pytest.approx(9 / 40, abs=1e-15)
    with pytest.warns(UserWarning, match='no query has easy positives'):
        assert math.isnan(revisited_map([[0, 1]], [dict(easy=[], hard=[1], junk=[])])['easy']['map'])
