"""`sequifier make NAME`: a new project folder with commented config templates."""

import os
import shutil
from importlib import resources

from sequifier.errors import SequifierError
from sequifier.project import CONFIGS, DATA

TEMPLATES = ("preprocess.yaml", "train.yaml", "infer.yaml", "evaluate.yaml")


def make_project(name: str) -> str:
    if os.path.exists(name) and os.listdir(name):
        raise SequifierError(f"'{name}' already exists and is not empty; choose a new project name")
    templates = resources.files("sequifier.templates")
    os.makedirs(os.path.join(name, CONFIGS), exist_ok=True)
    os.makedirs(os.path.join(name, DATA), exist_ok=True)
    for template in TEMPLATES:
        with resources.as_file(templates / template) as src:
            shutil.copyfile(src, os.path.join(name, CONFIGS, template))
    with resources.as_file(templates / "gitignore") as src:
        shutil.copyfile(src, os.path.join(name, ".gitignore"))
    print(f"created project '{name}': {CONFIGS}/ (preprocess, train, infer, evaluate), {DATA}/, .gitignore\n"
          f"next: put your table in {name}/{DATA}/ and run `sequifier preprocess` inside {name}")
    return name
