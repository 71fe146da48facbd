"""Benchmark: how often the held-out judge's verdict agrees with what a stage does to the test score, per track.

Run: nice python tests/benchmarks/bench_judge.py [--work /tmp/bench_judge] [--seeds 0 1 2 3 4] [--tag NAME] [--given-mix]
(CPU, minutes per case; the trained models and the embedding caches are kept under --work, so a second run, e.g.
with another checkout's code, only re-runs inference). The code judged is the `lmkkit` that Python imports first:
PYTHONPATH=/work/main benchmarks the main checkout's judge on the same models and data.

Cases: the standard synthetic set (`lmkkit synth`) at several seeds, a smaller one, and a folder with the real photos
of ../shared/real-photos added (Sacre-Coeur as a landmark, indoor frames as non-landmarks). Each case trains the
demo model (`lmkkit demo`'s training settings, with a validation split sized for the judge:
`JUDGE_SIZED_VALIDATION`; a case folder made with other settings stops the run), then runs both tracks with every stage of the seed chain (plus
SuperGlobal), and reads each stage's row of the ablation: the test-score change against the answer it competed
with (`InferenceResult.table`'s delta) and the verdict. A verdict agrees when a stage adopted raised the test score
and a stage rejected lowered it; changes under 0.01 are ignored (they are noise at these sizes). Each row also
records the test mix the recognition judge weighted to and the true one; `--given-mix` gives it the true one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.append(str(Path(__file__).resolve().parents[2]))  # this checkout, unless PYTHONPATH names another first
from lmkkit.plan import HOLDOUT_KINDS as KINDS  # noqa: E402  (landmark, unseen, non-landmark)

REAL = Path(__file__).resolve().parents[2]/'..'/'shared'/'real-photos'
MIN_CHANGE = 0.01
# the validation split a competitor keeps for the judge: at least min_holdout_landmarks (136) images of seen classes
# that the model never trained on (GLDv2's 1.58M clean images give ~79,000 at the default 5%; these ~450-image sets
# need 40%). With the demo's 10%, the judge falls back to images the model trained on (biased; see 51_plan).
JUDGE_SIZED_VALIDATION = {'val_frac': 0.4, 'val_unseen_class_frac': 0.1}
INFERENCE = dict(time_limit_hours=24.0, reserve_minutes=1.0, verbose=False, verify_top_n=5, device='cpu')
CHAINS = {'recognition': ('qe', 'nonlandmark_penalty', 'soft_vote', 'verify', 'lgbm'),
          'retrieval': ('dba', 'qe', 'label_boost', 'superglobal', 'verify')}
SMALL = dict(n_landmarks=32, n_unseen=8, n_train_nonlandmarks=40, n_index_nonlandmarks=20, n_test_nonlandmarks=40)


def _id(name: str) -> str: return hashlib.md5(name.encode()).hexdigest()[:16]


def add_real_photos(root: Path) -> None:
    "Add the real photos to a synthetic folder: Sacre-Coeur as landmark 900 (6 train, 2 index, 2 test), indoor frames as non-landmarks (5 train, 4 test)."
    lm, indoor = sorted((REAL/'landmark').glob('*.jpg')), sorted((REAL/'indoor').glob('*.jpg'))
    def put(split, path):
        i = _id(path.name)
        dst = root/split/i[0]/i[1]/i[2]/f'{i}.jpg'
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists(): dst.symlink_to(path.resolve())
        return i
    train = pd.DataFrame({'id': [put('train', p) for p in lm[:6]], 'landmark_id': 900})
    index = pd.DataFrame({'id': [put('index', p) for p in lm[6:8]], 'landmark_id': 900})
    nonlm = pd.DataFrame({'id': [put('train', p) for p in indoor[:5]]})
    test = [(put('test', p), '900') for p in lm[8:]] + [(put('test', p), '') for p in indoor[5:]]
    add = lambda name, rows: pd.concat([pd.read_csv(root/name, dtype=str, keep_default_na=False), rows.astype(str)]).to_csv(root/name, index=False)
    add('train.csv', train)
    add('nonlandmarks.csv', nonlm)
    add('index_image_to_landmark.csv', index)
    add('recognition_solution.csv', pd.DataFrame([dict(id=i, landmarks=l, Usage='Public') for i, l in test]))
    images = ' '.join(index['id'])
    add('retrieval_solution.csv', pd.DataFrame([dict(id=i, images=images if l else 'None', Usage='Public' if l else 'Ignored')
                                                for i, l in test]))
    for track, col in (('recognition', 'landmarks'), ('retrieval', 'images')):
        sample = pd.read_csv(root/f'{track}_sample_submission.csv', dtype=str, keep_default_na=False)
        add(f'{track}_sample_submission.csv', pd.DataFrame({'id': [i for i, _ in test], col: sample[col].iloc[0]}))


def cases(seeds) -> dict[str, dict]:
    "name -> dict(seed, sizes, real, epochs): the synthetic seeds (the demo's 40 epochs for the first two, 15 after: CPU time), a smaller set, the real-photo folder."
    out = {f'seed{s}': dict(seed=s, sizes={}, real=False, epochs=40 if i < 2 else 15) for i, s in enumerate(seeds)}
    if (REAL/'landmark').is_dir(): out['real_photos'] = dict(seed=0, sizes=SMALL, real=True, epochs=15)
    out['small_seed5'] = dict(seed=5, sizes=SMALL, real=False, epochs=15)
    return out


def prepare(work: Path, name: str, case: dict) -> Path:
    "The case's folder: data/ (synthetic, real photos added) and model/model.pt (the demo model), made once."
    from lmkkit.synth import make_synthetic
    from lmkkit.demo import DEMO_TRAIN
    from lmkkit.train import kernel_config, train
    folder, case = work/name, {**case, 'validation': JUDGE_SIZED_VALIDATION}
    if (folder/'ready').is_file() and json.loads((folder/'ready').read_text()) == case: return folder
    if (folder/'ready').is_file():
        raise SystemExit(f"{folder} was made with other settings ({(folder/'ready').read_text()}); pass another --work")
    make_synthetic(folder/'data', seed=case['seed'], verbose=False, overwrite=True, **case['sizes'])
    if case['real']: add_real_photos(folder/'data')
    overrides = {**DEMO_TRAIN['overrides'], **JUDGE_SIZED_VALIDATION}
    cfg = kernel_config(**{**DEMO_TRAIN, 'stages': [[64, case['epochs']]], 'overrides': overrides},
                        data_dir=str(folder/'data'), out_dir=str(folder/'model'))
    train(folder/'data', folder/'model', cfg, device='cpu', verbose=False)
    (folder/'ready').write_text(json.dumps(case))
    return folder




def test_mix(data: Path) -> dict[str, float]:
    "The test split's true shares of landmark, unseen-landmark and non-landmark queries (from the solution files)."
    rec = pd.read_csv(data/'recognition_solution.csv', dtype=str, keep_default_na=False).set_index('id')['landmarks']
    ret = pd.read_csv(data/'retrieval_solution.csv', dtype=str, keep_default_na=False).set_index('id')['images']
    kind = [('landmark' if rec[q] else 'nonlandmark' if ret.get(q, 'None') in ('', 'None') else 'unseen') for q in rec.index]
    return pd.Series(kind).value_counts(normalize=True).reindex(KINDS, fill_value=0.0).to_dict()


def verdicts(folder: Path, track: str, out: Path, given_mix: bool = False) -> pd.DataFrame:
    """One row per stage of the track's run on the case: test change, held-out estimate, verdict, held-out size,
    and the test mix the judge weighted to beside the true one (`given_mix`: the true mix given as `holdout_mix`)."""
    from lmkkit.pipeline import run_inference
    true = test_mix(folder/'data')
    mix = dict(holdout_mix=tuple(true[k] for k in KINDS)) if given_mix else {}
    res = run_inference(data_dir=str(folder/'data'), checkpoint=str(folder/'model'/'model.pt'), out_dir=str(out),
                        cache_dir=str(folder/'cache'), track=track, stages=list(CHAINS[track]), **INFERENCE, **mix)
    df = res.table()
    df = df[~df.stage.isin(['final', 'knn', 'knn_top1'])].rename(columns={res.metric: 'test'})
    r, fmt = res.report, lambda m: '/'.join(f'{m.get(k, 0):.0%}' for k in KINDS) if m else '-'
    return df.assign(track=track, holdout_queries=r.get('holdout_queries'), holdout_landmarks=r.get('holdout_landmarks'),
                     mix_used=fmt(r.get('holdout_test_mix')) if track == 'recognition' else '-', mix_true=fmt(true))


def agreement(rows: pd.DataFrame) -> pd.DataFrame:
    "Per track: stages judged, those that moved the test score by MIN_CHANGE or more, and the share of those the verdict got right."
    moved = rows[rows.delta.abs() >= MIN_CHANGE]
    agree = moved.adopted.astype(bool) == (moved.delta > 0)
    return pd.DataFrame({'stages': rows.groupby('track').size(), 'moved': moved.groupby('track').size(),
                         'agree': agree.groupby(moved.track).sum()}).fillna(0).astype(int).assign(
        share=lambda d: (d.agree / d.moved.where(d.moved > 0)).round(3))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', type=Path, default=Path('/tmp/bench_judge'), help='cases, models and caches (kept)')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    ap.add_argument('--only', nargs='*', default=None, help='case names to run (default: all)')
    ap.add_argument('--tracks', nargs='+', default=list(CHAINS), help='tracks to run')
    ap.add_argument('--prepare-only', action='store_true', help='make the data and models, run no inference')
    ap.add_argument('--tag', default='run', help='name of this run (its rows go to WORK/<tag>.csv)')
    ap.add_argument('--given-mix', action='store_true', help="give the judge the test's true mix (holdout_mix) instead of its estimate")
    ap.add_argument('--report', nargs='*', default=None, metavar='CSV',
                    help='only print the agreement of rows saved before (per run tag; files of one tag are pooled)')
    args = ap.parse_args(argv)
    if args.report is not None: return print(report(pd.concat([_saved_rows(Path(p)) for p in args.report], ignore_index=True)))
    import lmkkit
    print(f'lmkkit from {Path(lmkkit.__file__).parent}', flush=True)
    rows = []
    for name, case in cases(args.seeds).items():
        if args.only and name not in args.only: continue
        folder = prepare(args.work, name, case)
        print(f'{name}: prepared', flush=True)
        if args.prepare_only: continue
        for track in args.tracks:
            df = verdicts(folder, track, folder/f'{args.tag}_{track}', args.given_mix).assign(case=name, run=args.tag)
            cols = ['case', 'track', 'stage', 'test', 'delta', 'holdout', 'adopted', 'holdout_landmarks', 'mix_used', 'mix_true']
            print(df[cols].to_string(index=False), flush=True)
            rows.append(df)
    if not rows: return
    rows = pd.concat(rows, ignore_index=True)
    rows.to_csv(args.work/f'{args.tag}.csv', index=False)
    print(report(rows))


def _saved_rows(path: Path) -> pd.DataFrame:
    "Rows a run saved; rows saved without their run tag get the file's name."
    rows = pd.read_csv(path)
    return rows if 'run' in rows else rows.assign(run=path.stem)


def report(rows: pd.DataFrame) -> str:
    """Per run (`--tag`) and track, as Markdown: stages judged, those that moved the test score by MIN_CHANGE or more
    (`moved`), how many verdicts agreed with the sign of that change (`agree`, `share`), and the held-out sizes; then
    per case the test mix the recognition judge weighted to beside the true one."""
    tables = []
    for run, part in rows.groupby('run', sort=False):
        sizes = part.groupby(['track', 'case'])[['holdout_queries', 'holdout_landmarks']].first().groupby('track').agg(['min', 'max'])
        sizes.columns = [f'{a}_{b}' for a, b in sizes.columns]
        tables.append(agreement(part).join(sizes).reset_index().assign(run=run).set_index('run').reset_index())
    out = [_markdown(pd.concat(tables, ignore_index=True))]
    if {'mix_used', 'mix_true'} <= set(rows):
        mix = rows[rows.track == 'recognition'].groupby(['run', 'case'], sort=False)[['mix_used', 'mix_true']].first()
        out.append('test mix (landmark/unseen/non-landmark), recognition:\n' + _markdown(mix.reset_index()))
    return '\n\n'.join(out)


def _markdown(df: pd.DataFrame) -> str:
    "A DataFrame as a Markdown table (pandas' `to_markdown` needs tabulate, which the kit does not install)."
    lines = ['| ' + ' | '.join(map(str, df.columns)) + ' |', '|' + '---|' * len(df.columns)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(str, r)) + ' |' for r in df.itertuples(index=False)])


if __name__ == '__main__':
    main()
