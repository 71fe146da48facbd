"""Package metadata comes from settings.ini, as nbdev 2 expects."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent / 'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

# What a kernel imports is in `requirements`; the tools around the kernels are extras. No OpenCV distribution is
# required: opencv-python and opencv-python-headless both provide cv2 (albumentations brings the headless one).
extras = {'kaggle': ['kaggle'],  # lmkkit kernels validate/push
          'notebooks': ['papermill', 'ipykernel', 'pyyaml'],  # lmkkit demo, lmkkit sweep
          'opencv': ['opencv-python-headless'],
          # lmkkit docs: the website and README builder (markdown, highlighting, templates, executing notebooks, MathJax)
          'docs': ['nbconvert', 'nbformat', 'nbclient', 'ipykernel', 'pygments', 'jinja2', 'django-static-mathjax==3.2.2.1']}

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=(Path(__file__).parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license='Apache-2.0',
    url=cfg['git_url'],
    python_requires='>=' + cfg['min_python'],
    packages=setuptools.find_packages(include=['lmkkit', 'lmkkit.*']),
    include_package_data=True,
    install_requires=cfg['requirements'].split(),
    extras_require={**extras, 'dev': cfg['dev_requirements'].split() + sorted({r for v in extras.values() for r in v}),
                    'gpu': ['faiss-gpu>=1.15']},
    entry_points={'console_scripts': cfg['console_scripts'].split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
