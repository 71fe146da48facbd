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
    assert same.min() > 2 * other.max(), (same, other)  # every true pair ranks above every false one, by 2x
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
    assert auc >= 0.92, (auc, sorted(same), sorted(unrelated))
    a, b = landmarks[0], indoor[0]  # the stage used the verifier's own defaults: same answer as VERIFIERS.create('sift_magsac')
    v = VERIFIERS.create('sift_magsac')
    assert inl[a, b] == v.verify_pair(load_image(paths[a], v.max_side), load_image(paths[b], v.max_side)).inliers


@needs_real
def test_real_photos_unrelated_never_get_the_top_bonus(real_run):
    out, inl, landmarks, indoor, paths = real_run
    bonus = out.sims  # similarities were 0: what is left is the stage's bonus w * min(inliers, cap) / cap, w = 1
    unrelated = np.isin(out.ids, indoor)
    cap = stage_defaults('verify')['inlier_cap']
    assert bonus[unrelated].max() < 1.0 and max(inl[a, b] for a in landmarks for b in indoor) < cap
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
    assert true.inliers >= stage_defaults('verify')['inlier_cap'], true  # a true pair keeps the top bonus
