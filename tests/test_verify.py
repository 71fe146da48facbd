"End-to-end tests of lmkkit.verify: synthetic two-view scenes on disk, the stage, the pair cache, bad images."
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import cv2
import numpy as np
import pytest

from lmkkit.core import Deadline
from lmkkit.plan import run_stages
from lmkkit.rerank import RerankContext
from lmkkit.search import Candidates
from lmkkit.synth import draw_scene, family_style, render_view
from lmkkit.verify import VERIFIERS, PairCache, PairResult, SiftMagsac, verify_candidates


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
    ctx = RerankContext(image_path=lambda i: images/f'{i}.jpg',
                        settings={'verify': dict(top_n=3, cache=str(path), rescore_weight=1.0)})
    first, timing = run_stages(cands, ctx, ['verify'])
    assert timing.ran.all() and len(PairCache(path)) == 7  # 9 pairs, 2 with an unreadable image
    assert list(first.ids[:, 0]) == ['s0b', 's1b', 's2b']  # re-scoring puts the other view first
    calls = []

    class Spy(SiftMagsac):
        def match(self, fa, fb): calls.append(1); return super().match(fa, fb)

    again, rep = verify_candidates(cands, ctx.image_path, Spy(), top_n=3, cache=PairCache(path))
    assert not calls and rep.cached == 7 and rep.pairs == 0
    late, rep = verify_candidates(cands, ctx.image_path, top_n=3, deadline=Deadline(1, clock=lambda: 5.0, start=0.0))
    assert rep.skipped == 9 and late.features['inliers'].sum() == 0


def test_fundamental_and_sizes(images):
    from lmkkit.data import load_image
    a, b, c = (load_image(images/f'{n}.jpg') for n in ('s0a', 's0b', 's1a'))
    for v in (SiftMagsac(model='fundamental'), SiftMagsac(max_side=512)):
        assert v.verify_pair(a, b).inliers > 3 * max(v.verify_pair(a, c).inliers, 10)
    assert SiftMagsac().cache_key != SiftMagsac(max_side=512).cache_key


def test_learned_verifiers_need_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match='LoFTR weights not found'):
        VERIFIERS.create('loftr', weights=tmp_path/'loftr_outdoor.ckpt')
    with pytest.raises(FileNotFoundError, match='DISK weights not found'):
        VERIFIERS.create('disk_lightglue', lightglue_weights=tmp_path/'x.pth')
    assert isinstance(VERIFIERS.create('sift_magsac').verify_pair(np.zeros((8, 8, 3), np.uint8),
                                                                 np.zeros((8, 8, 3), np.uint8)), PairResult)
