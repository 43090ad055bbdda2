"""The tokenized-data cache: keyed by the source's bytes, so a warm run never reads (or converts) the raw rows,
and a file corrected in place — same size, same mtime — is prepared again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # four fresh processes; CI runs it with the other slow tests

# One data stage in a fresh process: which opens of the data file it made (an audit hook sees every `open`),
# whether the cache answered, and the first training row's answer as the tokens say it.
STAGE = """
import json, sys
data_file = sys.argv[1]
opens = []
sys.addaudithook(lambda event, args: opens.append(1) if event == "open" and args[0] == data_file else None)
from medsft.data.cache import prepared_data
from medsft.data.tokenized import Tokenization
from medsft.model.load import load_tokenizer
from medsft.recipe.data_section import DataSection
from medsft.recipe.schema import ModelSection

tok = load_tokenizer(ModelSection(name=sys.argv[2]))
lines = []
stage = prepared_data(DataSection(source=data_file), tok, Tokenization(max_length=4096, drop_longer_than=4096),
                      report=lines.append)
answers = [tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
           for ids, labels in zip(stage.prepared["train"]["input_ids"], stage.prepared["train"]["labels"])]
print(json.dumps({"opens": len(opens), "hit": any("loaded tokenized splits" in l for l in lines),
                  "answers": answers, "rows": len(stage.prepared["train"]), "kept": stage.report.kept,
                  "questions": len(stage.questions), "test_ids": stage.row_ids["test"]}))
"""


def stage(data_file, tiny_dir, hf_cache) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": str(hf_cache), "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", STAGE, str(data_file), str(tiny_dir)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_warm_run_reads_no_row_and_an_in_place_edit_prepares_again(demo_json, tiny_dir, tmp_path):
    data_file = tmp_path / "rows.json"
    data_file.write_bytes(demo_json.read_bytes())
    cold = stage(data_file, tiny_dir, tmp_path / "hf-cold")
    assert not cold["hit"] and cold["opens"] >= 2, "hashed, then loaded"
    assert any((tmp_path / "hf-cold").rglob("*.arrow")), "datasets converted the rows"

    warm = stage(data_file, tiny_dir, tmp_path / "hf-warm")
    assert warm["hit"] and warm["opens"] == 1, "the warm path only hashes the file's bytes"
    assert not (tmp_path / "hf-warm").exists() or not any((tmp_path / "hf-warm").rglob("*.arrow")), \
        "the warm path converted the raw rows"
    assert {k: warm[k] for k in ("answers", "rows", "kept", "questions", "test_ids")} == \
        {k: cold[k] for k in ("answers", "rows", "kept", "questions", "test_ids")}

    # a correction in place: one word of an answer, the same length, the file's size and mtime kept
    text = data_file.read_text()
    rows = json.loads(text)
    trained = next(r for r in rows if any(r["Response"] in a for a in cold["answers"]))
    word = next(w for w in trained["Response"].split() if len(w) > 4 and w.isalpha())
    fixed = word[::-1] if word[::-1] != word else word.upper()
    before = os.stat(data_file)
    data_file.write_text(text.replace(trained["Response"], trained["Response"].replace(word, fixed, 1), 1))
    os.utime(data_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(data_file).st_size == before.st_size and os.stat(data_file).st_mtime_ns == before.st_mtime_ns

    edited = stage(data_file, tiny_dir, tmp_path / "hf-edited")
    assert not edited["hit"], "the cache answered for other bytes"
    assert any(fixed in a for a in edited["answers"]) and not any(fixed in a for a in cold["answers"])
    again = stage(data_file, tiny_dir, tmp_path / "hf-again")
    assert again["hit"] and again["answers"] == edited["answers"]
