"Bad input for lmkkit.data: malformed CSVs stop early with file, line and fix; bad images never stop a loader."
import os

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
import numpy as np
import pytest
import torch
from PIL import Image

from lmkkit.data import (DataError, ImageDataset, LoadStats, id_to_path, list_ids, load_image, read_train_csv,
                         split_by_class, train_transforms)

@pytest.mark.parametrize('text,line,problem', [
    ('id,landmark_id\naaaaaaaaaaaaaaaa,1\nbbbbbbbbbbbbbbbb,NaN\n', 3, "landmark_id 'NaN'"),
    ('id,landmark_id\naaaaaaaaaaaaaaaa,1\nbbbbbbbbbbbbbbbb,2\naaaaaaaaaaaaaaaa,2\n', 4, 'duplicate id'),
    ('id,landmark_id\naaaaaaaaaaaaaaaa,-3\n', 2, 'not a non-negative integer'),
    ('image,landmark_id\naaaaaaaaaaaaaaaa,1\n', 1, 'missing column(s) id')])
def test_bad_train_csv_names_file_line_and_fix(tmp_path, text, line, problem):
    p = tmp_path/'train.csv'
    p.write_text(text)
    with pytest.raises(DataError) as e: read_train_csv(p)
    msg = str(e.value)
    assert str(p) in msg and f'line {line}:' in msg and problem in msg and 'fix:' in msg

def test_a_folder_of_bad_images_loads_through_a_dataloader(tmp_path):
    rng = np.random.default_rng(0)
    good = Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8))
    ids = [f'{i:016x}' for i in range(8)]
    paths = [id_to_path(tmp_path, 'test', i) for i in ids]
    for p in paths: p.parent.mkdir(parents=True, exist_ok=True)
    good.save(paths[0]); good.convert('L').save(paths[1], 'JPEG'); good.convert('CMYK').save(paths[2], 'JPEG')
    good.convert('RGBA').save(paths[3], 'PNG'); paths[4].write_bytes(b'')
    paths[5].write_bytes(b'GIF89a garbage'); good.save(paths[6], quality=90)
    paths[6].write_bytes(paths[6].read_bytes()[:-100])  # truncated, still decodable
    assert list_ids(tmp_path, 'test') == ids[:7]  # ids[7] was never written
    ds = ImageDataset(paths, transform=train_transforms(32))
    oks, stats = [], LoadStats()
    for b in torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2):
        assert b['image'].dtype == torch.float32 and b['image'].shape[1:] == (3, 32, 32)
        assert (b['label'] == -1).all()
        stats.add_batch(b['ok'], [paths[i] for i in b['index']]); oks += b['ok'].tolist()
    assert oks == [True, True, True, True, False, False, True, False]
    assert stats.failed == 3 and 'unreadable' in stats.summary()

def test_load_image_size_keeps_aspect_and_upright(tmp_path):
    p = tmp_path/'x.jpg'
    Image.fromarray(np.zeros((600, 800, 3), np.uint8)).save(p)
    assert load_image(p, size=100).shape == (75, 100, 3)
    assert load_image(tmp_path/'nope.jpg', size=100) is None

def test_split_by_class_on_a_long_tail():
    import pandas as pd
    labels = np.repeat(np.arange(30), np.arange(1, 31))
    df = pd.DataFrame({'id': [f'{i:016x}' for i in range(len(labels))], 'landmark_id': labels})
    tr, va = split_by_class(df, val_frac=0.1, unseen_class_frac=0.2, seed=3)
    assert len(tr) + len(va) == len(df) and 0 in set(tr.landmark_id)
    assert len(set(va.landmark_id) - set(tr.landmark_id)) == round(0.2 * 29)
