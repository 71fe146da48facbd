"End-to-end tests of lmkkit.verify: synthetic two-view scenes on disk, real photos, the stage, the pair cache, bad images."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

from pathlib import Path

import cv2
import numpy as np
import pytest

from lmkkit.core import Deadline
from lmkkit.data import load_image
from lmkkit.plan import run_stages
from lmkkit.rerank import RerankContext, stage_defaults
import lmkkit.stages  # noqa: F401  (every stage of the kit)
from lmkkit.search import Candidates
from lmkkit.synth import draw_scene, family_style, render_view
from lmkkit.verify import VERIFIERS, PairCache, PairResult, SiftMagsac, prepare_image, verify_candidates


def _views(seed, size=320, strength=0.3):
    "Two photos (RGB uint8) of one synthetic landmark from lmkkit.synth, seen from different viewpoints."
    rng = np.random.default_rng(seed)
    scene = draw_scene(family_style(rng), rng, 2 * size)
    return [render_view(scene, rng, size, strength) for _ in range(2)]


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    "Three scenes, two views each (s<i>a, s<i>b), as JPEGs; a corrupt file; an id with no file."
    d = tmp_path_factory.mktemp('imgs')
    for i in range(3):
        for tag, img in zip('ab', _views(10 + i)):
            cv2.imwrite(str(d/f's{i}{tag}.jpg'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (d/'corrupt.jpg').write_bytes(b'\xff\xd8\xff garbage')
    return d


def _cands():
    "Each query s<i>a: its other view somewhere in the list among other scenes, a corrupt and a missing image."
    ids = [['s1a', 's0b', 'corrupt', 's2b'], ['s2b', 'missing', 's1b', 's0a'], ['s0b', 's1a', 's2b', 'corrupt']]
    sims = np.tile(np.float32([0.9, 0.8, 0.7, 0.6]), (3, 1))
    return Candidates(['s0a', 's1a', 's2a'], ids, sims)


def test_same_scene_beats_unrelated(images):
    cands = _cands()
    out, rep = verify_candidates(cands, lambda i: images/f'{i}.jpg', top_n=4)
    inl = out.features['inliers']
    same = inl[cands.ids == np.array(['s0b', 's1b', 's2b'])[:, None]]
    other = inl[(cands.ids != np.array(['s0b', 's1b', 's2b'])[:, None]) & (inl > 0)]
    assert same.min() > 2 * other.max(initial=0), (same, other)  # every true pair ranks above every false one, by 2x
    assert rep.bad_images == ['corrupt', 'missing'] and rep.failed_pairs == 3
    assert inl[0, 2] == 0 and inl[1, 1] == 0 and out.features['inlier_ratio'][0, 2] == 0


def test_stage_cache_deadline_and_rescore(images, tmp_path):
    cands, path = _cands(), tmp_path/'pairs.json'
    ctx = RerankContext(image_path=lambda i: images/f'{i}.jpg')
    first, timing = run_stages(cands, ctx, ['verify'], {'verify': dict(top_n=3, cache=str(path), rescore_weight=1.0)})
    assert timing.ran.all() and len(PairCache(path)) == 7  # 9 pairs, 2 with an unreadable image
    assert list(first.ids[:, 0]) == ['s0b', 's1b', 's2b']  # re-scoring puts the other view first
    calls = []

    class Spy(SiftMagsac):
        def match(self, fa, fb): calls.append(1); return super().match(fa, fb)

    again, rep = verify_candidates(cands, ctx.image_path, Spy(), top_n=3, cache=PairCache(path))
    assert not calls and rep.cached == 7 and rep.pairs == 0
    late, rep = verify_candidates(cands, ctx.image_path, top_n=3, deadline=Deadline(1, clock=lambda: 5.0, start=0.0))
    assert rep.skipped == 9 and late.features['inliers'].sum() == 0


def test_homography_and_sizes(images):
    a, b, c = (load_image(images/f'{n}.jpg') for n in ('s0a', 's0b', 's1a'))
    for v in (SiftMagsac(), SiftMagsac(model='homography'), SiftMagsac(max_side=256)):
        assert v.verify_pair(a, b).inliers > 3 * max(v.verify_pair(a, c).inliers, 10)
    assert SiftMagsac().cache_key != SiftMagsac(max_side=256).cache_key


def test_learned_verifiers_need_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match='LoFTR weights not found'):
        VERIFIERS.create('loftr', weights=tmp_path/'loftr_outdoor.ckpt')
    with pytest.raises(FileNotFoundError, match='DISK weights not found'):
        VERIFIERS.create('disk_lightglue', lightglue_weights=tmp_path/'x.pth')
    with pytest.raises(FileNotFoundError, match='ALIKED weights not found'):
        VERIFIERS.create('aliked_lightglue', lightglue_weights=tmp_path/'x.pth')
    assert isinstance(VERIFIERS.create('sift_magsac').verify_pair(np.zeros((8, 8, 3), np.uint8),
                                                                 np.zeros((8, 8, 3), np.uint8)), PairResult)


def real_photos() -> Path | None:
    "`../shared/real-photos` beside the repository (beside the main checkout when this is a git worktree), or None."
    root = Path(__file__).resolve().parents[1]
    found = [root.parent/'shared'/'real-photos']
    if (root/'.git').is_file():  # a worktree: .git reads "gitdir: <main checkout>/.git/worktrees/<name>"
        gitdir = Path((root/'.git').read_text().split(':', 1)[1].strip())
        found.append(gitdir.parents[3]/'shared'/'real-photos')
    return next((p for p in found if (p/'landmark').is_dir() and (p/'indoor').is_dir()), None)


REAL = real_photos()
needs_real = pytest.mark.skipif(REAL is None, reason="real photos not found: ../shared/real-photos (landmark/, indoor/) "
                                                     "beside the repository or beside its main checkout")


def roc_auc(pos, neg) -> float:
    "P(a positive scores above a negative), ties counting one half (the Mann-Whitney U statistic / (n+ n-))."
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_roc_auc():
    assert roc_auc([3, 2], [1, 0]) == 1.0 and roc_auc([0], [1]) == 0.0 and roc_auc([1, 2], [1, 0]) == 0.875


@pytest.fixture(scope='module')
def real_run():
    "The verify stage with its own defaults, re-scoring on: each landmark photo against the 9 others and the 9 indoor frames."
    landmarks, indoor = sorted((REAL/'landmark').glob('*.jpg')), sorted((REAL/'indoor').glob('*.jpg'))
    paths = {p.stem: p for p in landmarks + indoor}
    cands = Candidates([q.stem for q in landmarks], [[p.stem for p in landmarks if p != q] + [p.stem for p in indoor] for q in landmarks],
                       np.zeros((len(landmarks), len(landmarks) + len(indoor) - 1), np.float32))
    ctx = RerankContext(image_path=paths.get)
    out, _ = run_stages(cands, ctx, ['verify'], {'verify': dict(top_n=cands.k, rescore_weight=1.0)})
    inl = {(q, c): int(n) for q, row, nrow in zip(out.query_ids, out.ids, out.features['inliers']) for c, n in zip(row, nrow)}
    return out, inl, [p.stem for p in landmarks], [p.stem for p in indoor], paths


@needs_real
def test_real_photos_same_landmark_vs_unrelated(real_run):
    out, inl, landmarks, indoor, paths = real_run
    same = [inl[a, b] for i, a in enumerate(landmarks) for b in landmarks[i + 1:]]
    unrelated = [inl[a, b] for a in landmarks for b in indoor]
    assert (len(same), len(unrelated)) == (45, 90)
    assert all(inl[a, b] == inl[b, a] for i, a in enumerate(landmarks) for b in landmarks[i + 1:])  # symmetric
    auc = roc_auc(same, unrelated)
    assert auc >= 0.88, (auc, sorted(same), sorted(unrelated))  # 0.943 in raw counts; SIFT's calibrated minimum zeroes 9 weak true pairs
    a, b = landmarks[0], indoor[0]  # the stage used the verifier's own defaults: same answer as VERIFIERS.create('sift_magsac')
    v = VERIFIERS.create('sift_magsac')
    assert inl[a, b] == v.verify_pair(load_image(paths[a], v.max_side), load_image(paths[b], v.max_side)).inliers


@needs_real
def test_real_photos_unrelated_never_get_the_top_bonus(real_run):
    out, inl, landmarks, indoor, paths = real_run
    bonus = out.sims  # similarities were 0: what is left is the stage's bonus w * min(inliers, cap) / cap, w = 1
    unrelated = np.isin(out.ids, indoor)
    cap = VERIFIERS.create('sift_magsac').inlier_cap  # the stage's cap is the verifier's own
    assert stage_defaults('verify')['inlier_cap'] is None
    assert bonus[unrelated].max() <= 0.1 and max(inl[a, b] for a in landmarks for b in indoor) <= 0.1 * cap
    assert (bonus[~unrelated] == 1.0).sum() >= 10  # while well-overlapping landmark pairs do reach it


def facade_and_window(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    "A facade of 4 x 6 identical windows (an arch of a real photo, tiled on a plain wall) and that window alone, enlarged."
    h, w = photo.shape[:2]
    win = photo[int(h * 0.55):int(h * 0.55) + 150, int(w * 0.40):int(w * 0.40) + 100]
    gap, (th, tw) = 12, win.shape[:2]
    wall = np.full((4 * (th + gap) + gap, 6 * (tw + gap) + gap, 3), 200, np.uint8)
    for r in range(4):
        for c in range(6): wall[gap + r * (th + gap):(r + 1) * (th + gap), gap + c * (tw + gap):(c + 1) * (tw + gap)] = win
    one = cv2.copyMakeBorder(cv2.resize(win, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), 40, 40, 40, 40,
                             cv2.BORDER_CONSTANT, value=(200, 200, 200))
    return wall, one


def ratio_test_homography_inliers(a: np.ndarray, b: np.ndarray, max_side: int = 256) -> int:
    "The old count: one-sided ratio-test matches (0.8), MAGSAC++ homography inliers, duplicates and all."
    sift, feats = cv2.SIFT_create(nfeatures=1000), []
    for img in (a, b):
        kps, desc = sift.detectAndCompute(cv2.cvtColor(prepare_image(img, max_side), cv2.COLOR_RGB2GRAY), None)
        feats.append((np.float32([k.pt for k in kps]), desc))
    ms = [m[0] for m in cv2.BFMatcher().knnMatch(feats[0][1], feats[1][1], k=2) if m[0].distance < 0.8 * m[1].distance]
    src, dst = feats[0][0][[m.queryIdx for m in ms]], feats[1][0][[m.trainIdx for m in ms]]
    return int(cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 4.0)[1].sum())


@needs_real
def test_facade_of_identical_windows_against_one_window():
    photo = load_image(REAL/'landmark'/'sacre_coeur_03903474_1471484089.jpg')
    wall, one = facade_and_window(photo)
    assert ratio_test_homography_inliers(wall, one) >= 40  # the trap: many windows' features onto one window's
    v = VERIFIERS.create('sift_magsac')
    for a, b in ((wall, one), (one, wall)):
        res = v.verify_pair(a, b)
        assert res.inliers < 15 and res.matches <= 30, res  # a handful: one window's worth, under a third of the bonus cap
    true = v.verify_pair(*(load_image(REAL/'landmark'/f'sacre_coeur_{n}.jpg') for n in ('10265353_3838484249', '60584745_2207571072')))
    assert true.inliers >= v.inlier_cap, true  # a true pair keeps the top bonus


# --- issue 24: the published weights, calibration per verifier, the run's choice of verifier, batching -------------------

def shared_weights() -> Path | None:
    "`../shared/weights` beside the repository (or beside its main checkout), or None."
    photos = real_photos()
    found = [Path(__file__).resolve().parents[2]/'shared'/'weights'] + ([photos.parent/'weights'] if photos else [])
    return next((p for p in found if (p/'README.md').is_file()), None)


WEIGHTS = shared_weights()
needs_weights = pytest.mark.skipif(WEIGHTS is None or REAL is None,
                                   reason="published weights or real photos not found: ../shared/weights, ../shared/real-photos")
LEARNED = ['xfeat_mnn', 'xfeat_lighterglue', 'aliked_lightglue', 'disk_lightglue']


def published(name: str) -> dict:
    "Keyword arguments giving verifier `name` its published weight files."
    return {k: WEIGHTS/f for k, f in VERIFIERS.get(name).files.items()}


@needs_weights
@pytest.mark.parametrize('name', LEARNED)
def test_published_weights_load(name):
    v = VERIFIERS.create(name, **published(name))
    assert not v.detector.training and v.cache_key.startswith(f'{name}@')
    if hasattr(v, 'lightglue'): assert not v.lightglue.training


@needs_weights
def test_disk_lightglue_file_has_the_original_key_names():
    import torch
    keys = torch.load(WEIGHTS/'disk_lightglue.pth', map_location='cpu', weights_only=True).keys()
    assert 'self_attn.0.ffn.0.weight' in keys and 'log_assignment.0.r' in keys  # what the old loader refused
    assert VERIFIERS.create('disk_lightglue', **published('disk_lightglue')).lightglue.conf.input_dim == 128


def test_a_file_that_does_not_fit_gets_one_line_naming_the_verifier_and_the_file(tmp_path):
    import torch
    from kornia.feature import XFeat
    from lmkkit.verify import WeightsError
    torch.save(XFeat().net.state_dict(), tmp_path/'xfeat.pt')
    torch.save({'w': torch.ones(3)}, tmp_path/'other.pt')
    (tmp_path/'page.pt').write_text('<html>not found</html>')
    cases = [(dict(xfeat_weights=tmp_path/'other.pt'), 'other.pt'), (dict(xfeat_weights=tmp_path/'page.pt'), 'page.pt')]
    for kw, file in cases:
        with pytest.raises(WeightsError) as e: VERIFIERS.create('xfeat_mnn', **kw)
        msg = str(e.value)
        assert "verifier 'xfeat_mnn'" in msg and file in msg and '\n' not in msg, msg
    with pytest.raises(WeightsError, match=r"verifier 'xfeat_lighterglue': weights file .*xfeat\.pt' does not fit LightGlue"):
        VERIFIERS.create('xfeat_lighterglue', xfeat_weights=tmp_path/'xfeat.pt', lightglue_weights=tmp_path/'xfeat.pt')


def stage_on_real_photos(name: str, queries: int = 10, **verifier_kwargs):
    "The verify stage with verifier `name` (its own calibration), w = 1 from similarity 0: (inliers, bonus, verifier, indoor)."
    # each of the first `queries` landmark photos against the other 9 and the 9 indoor frames
    landmarks, indoor = sorted((REAL/'landmark').glob('*.jpg')), sorted((REAL/'indoor').glob('*.jpg'))
    paths = {p.stem: p for p in landmarks + indoor}
    qs = landmarks[:queries]
    cands = Candidates([q.stem for q in qs], [[p.stem for p in landmarks + indoor if p != q] for q in qs],
                       np.zeros((len(qs), len(landmarks) + len(indoor) - 1), np.float32))
    ctx = RerankContext(image_path=paths.get)
    settings = dict(top_n=cands.k, rescore_weight=1.0, verifier=name, verifier_kwargs=verifier_kwargs)
    out, _ = run_stages(cands, ctx, ['verify'], {'verify': settings})
    inl = {(q, c): int(n) for q, row, nrow in zip(out.query_ids, out.ids, out.features['inliers']) for c, n in zip(row, nrow)}
    bonus = {(q, c): float(b) for q, row, brow in zip(out.query_ids, out.ids, out.sims) for c, b in zip(row, brow)}
    return inl, bonus, VERIFIERS.create(name, **verifier_kwargs), [p.stem for p in indoor]


def check_calibrated(inl, bonus, v, indoor):
    "Same-landmark pairs above unrelated ones (AUC), no unrelated pair above a tenth of the bonus, the contract at the minimum."
    same = [n for (q, c), n in inl.items() if c not in indoor]
    unrelated = [n for (q, c), n in inl.items() if c in indoor]
    auc = roc_auc(same, unrelated)
    assert max(b for (q, c), b in bonus.items() if c in indoor) <= 0.1, sorted(unrelated)
    assert all(n == 0 or n >= v.min_inliers for n in inl.values())  # below the verifier's own minimum: 0 inliers
    assert sum(b == 1.0 for (q, c), b in bonus.items() if c not in indoor) >= 0.1 * len(same)  # true pairs reach the cap
    return auc


@needs_real
def test_sift_is_calibrated_on_real_photos():
    auc = check_calibrated(*stage_on_real_photos('sift_magsac'))
    assert auc >= 0.85, auc


@needs_weights
@pytest.mark.parametrize('name', LEARNED)
def test_learned_verifier_separates_real_photos_and_stays_calibrated(name):
    inl, bonus, v, indoor = stage_on_real_photos(name, queries=4, **published(name))
    auc = check_calibrated(inl, bonus, v, indoor)
    assert auc >= 0.95, (auc, inl)


def test_the_run_chooses_its_verifier_from_what_is_attached(tmp_path):
    from lmkkit.verify import choose_verifier
    assert choose_verifier(None, 'cuda')[0] == 'sift_magsac'
    for f in ('xfeat.pt', 'xfeat-lighterglue.pt'): (tmp_path/f).write_bytes(b'')
    name, files, why = choose_verifier(tmp_path, 'cpu')
    assert (name, files) == ('sift_magsac', {}) and 'xfeat_lighterglue' in why and 'cpu' in why
    name, files, why = choose_verifier(tmp_path, 'cuda:0')
    assert name == 'xfeat_lighterglue' and files == {'xfeat_weights': str(tmp_path/'xfeat.pt'),
                                                     'lightglue_weights': str(tmp_path/'xfeat-lighterglue.pt')}
    assert 'GPU' in why
    for f in ('aliked-n16.pth', 'aliked_lightglue.pth'): (tmp_path/f).write_bytes(b'')
    assert choose_verifier(tmp_path, 'cuda')[0] == 'aliked_lightglue'  # the best measured AUC first


def test_the_run_records_which_verifier_and_why(images, tmp_path):
    report = {}
    ctx = RerankContext(image_path=lambda i: images/f'{i}.jpg')
    settings = dict(top_n=2, verifier='auto', verifier_kwargs={'weights_dir': str(tmp_path)})
    out, _ = run_stages(_cands(), ctx, ['verify'], {'verify': settings}, report=report)
    assert report['verify_verifier'] == 'sift_magsac' and 'no published verifier weights' in report['verify_verifier_why']
    assert out.features['inliers'][:, :2].sum() > 0


def test_batched_matching_gives_the_pair_by_pair_answer(images, tmp_path):
    "The CUDA code path (a query's candidates extracted and matched in batches) run on the CPU, against one pair at a time."
    import torch
    from kornia.feature import LightGlue, XFeat
    torch.manual_seed(0)
    torch.save(XFeat().net.state_dict(), tmp_path/'xfeat.pt')
    from lmkkit.verify import XFeatLighterGlue
    torch.save({f'matcher.{k}': v for k, v in LightGlue(None, **XFeatLighterGlue.lightglue_conf).state_dict().items()},
               tmp_path/'lg.pt')
    made = []
    for batch in (1, 4):
        v = VERIFIERS.create('xfeat_lighterglue', xfeat_weights=tmp_path/'xfeat.pt', lightglue_weights=tmp_path/'lg.pt',
                             max_side=128, max_keypoints=64, batch_size=batch, min_inliers=9)
        v.lightglue.conf.filter_threshold, v.lightglue.conf.depth_confidence, v.lightglue.conf.width_confidence = 0.0, -1, -1
        calls = []
        v._correspond_batch = (lambda f: lambda fq, fcs: calls.append(len(fcs)) or f(fq, fcs))(v._correspond_batch)
        out, rep = verify_candidates(_cands(), lambda i: images/f'{i}.jpg', v, top_n=4)
        made.append((out.features['inliers'], out.features['inlier_ratio'], rep.failed_pairs, calls))
    assert made[0][3] == [] and max(made[1][3]) > 1  # one pair per call, then several candidates per LightGlue call
    np.testing.assert_array_equal(made[0][0], made[1][0])
    np.testing.assert_array_equal(made[0][1], made[1][1])
    assert made[0][2] == made[1][2] == 3  # the unreadable images fail the same pairs either way
