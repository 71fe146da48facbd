"The library reads like its anchors: lines wrapped at about 110 characters (a few long strings and generated lists may run over)."
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def library_lines() -> list[str]:
    "Every line of the exported library, the generated module index left out."
    files = [p for p in (ROOT/'lmkkit').rglob('*.py') if p.name != '_modidx.py']
    return [line.rstrip('\n') for p in files for line in p.read_text().splitlines()]


def test_at_most_one_percent_of_library_lines_exceed_120_characters():
    lines = library_lines()
    long = [l for l in lines if len(l) > 120]
    assert len(long) <= 0.01 * len(lines), f'{len(long)} of {len(lines)} lines exceed 120 characters, e.g. {long[:3]}'
