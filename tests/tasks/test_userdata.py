"""User data of the hf-* task kinds: files, saved datasets, cached Hub datasets (loradyn.tasks.userdata)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from loradyn.errors import LoradynError  # noqa: E402
from loradyn.tasks.data import split_examples  # noqa: E402
from loradyn.tasks.userdata import Splits, describe, encode_labels, load_splits  # noqa: E402

CLASSIFY = {"roles": ("text", "text_pair", "label"), "required": [("text", "label")]}
SFT = {"roles": ("prompt", "completion", "messages"), "required": [("prompt", "completion"), ("messages",)]}


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    """Every cache under tmp_path: nothing is written to (or read from) the real HF cache."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def reviews(n=40):
    return [{"review": f"review number {i}", "sentiment": "pos" if i % 2 else "neg", "stars": i % 5} for i in range(n)]


def write_csv(path: Path, rows, cols=("review", "sentiment", "stars")) -> Path:
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(LoradynError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def test_csv_seeded_split_is_split_examples_deterministic_and_disjoint(tmp_path):
    path = write_csv(tmp_path / "all.csv", reviews())
    cols = {"text": "review", "label": "sentiment"}
    s = load_splits(str(path), cols, **CLASSIFY, n_val=8, n_test=6, split_seed=3)
    assert isinstance(s, Splits) and s.sizes == {"train": 26, "val": 8, "test": 6}
    assert s.columns == ("review", "sentiment", "stars") and s.roles == cols
    assert set(s.train[0]) == {"text", "label"}  # text_pair is absent: no column of that name
    rows = [{"text": r["review"], "label": r["sentiment"]} for r in reviews()]
    assert (s.train, s.val, s.test) == split_examples(rows, n_val=8, n_test=6, seed=3)
    texts = [{r["text"] for r in part} for part in (s.train, s.val, s.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert load_splits(path, cols, **CLASSIFY, n_val=8, n_test=6, split_seed=3) == s
    other = load_splits(path, cols, **CLASSIFY, n_val=8, n_test=6, split_seed=4)
    assert other.test != s.test
    sub = load_splits(path, cols, **CLASSIFY, n_train=5, n_val=8, n_test=6, split_seed=3)
    assert sub.train == s.train[:5] and sub.val == s.val and sub.test == s.test
    assert "split_seed=3" in s.source and str(path) in s.source


def test_jsonl_parquet_txt_and_default_columns(tmp_path):
    chats = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
             for i in range(12)]
    s = load_splits(str(write_jsonl(tmp_path / "chat.jsonl", chats)), None, **SFT, n_val=2, n_test=2)
    assert s.roles == {"messages": "messages"} and s.sizes == {"train": 8, "val": 2, "test": 2}
    assert s.train[0]["messages"][0] == {"role": "user", "content": s.train[0]["messages"][0]["content"]}

    pairs = datasets.Dataset.from_list([{"prompt": f"p{i}", "completion": f"c{i}", "id": i} for i in range(10)])
    pairs.to_parquet(str(tmp_path / "pairs.parquet"))
    s = load_splits(str(tmp_path / "pairs.parquet"), {}, **SFT, n_val=2, n_test=2)
    assert s.roles == {"prompt": "prompt", "completion": "completion"}
    assert sorted(r["prompt"] for r in s.train + s.val + s.test) == sorted(f"p{i}" for i in range(10))

    (tmp_path / "lines.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    s = load_splits(str(tmp_path / "lines.txt"), None, roles=("text",), required=[("text",)], n_val=1, n_test=1)
    assert s.columns == ("text",) and s.sizes == {"train": 8, "val": 1, "test": 1}


def test_tsv_maps_text_role(tmp_path):
    (tmp_path / "all.tsv").write_text("sentence\tlabel\n" + "".join(f"a, b {i}\t{i % 2}\n" for i in range(10)))
    s = load_splits(str(tmp_path / "all.tsv"), {"text": "sentence"}, **CLASSIFY, n_val=2, n_test=2)
    assert s.roles == {"text": "sentence", "label": "label"}
    assert all(r["text"].startswith("a, b ") for r in s.train)


def test_save_to_disk_dataset_and_datasetdict(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(30)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    s = load_splits(str(tmp_path / "ds"), None, **CLASSIFY, n_val=5, n_test=5, split_seed=1)
    assert (s.train, s.val, s.test) == split_examples(rows, n_val=5, n_test=5, seed=1)
    assert "save_to_disk" in s.source

    dd = datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:20]),
                              test=datasets.Dataset.from_list(rows[20:]))
    dd.save_to_disk(str(tmp_path / "dd"))
    s = load_splits(str(tmp_path / "dd"), None, **CLASSIFY, n_val=4, n_test=3, split_seed=2)
    assert s.sizes == {"train": 16, "val": 4, "test": 3}
    assert "val carved from train" in s.source and "split_seed=2" in s.source
    assert {r["text"] for r in s.train + s.val} == {f"t{i}" for i in range(20)}
    assert {r["text"] for r in s.test} <= {f"t{i}" for i in range(20, 30)}
    again = load_splits(str(tmp_path / "dd"), None, **CLASSIFY, n_val=4, n_test=3, split_seed=2)
    assert again.test == s.test and again.val == s.val  # the seeded subset is deterministic


def test_separate_files_mapping_and_subsets(tmp_path):
    write_csv(tmp_path / "tr.csv", reviews(30))
    write_jsonl(tmp_path / "va.jsonl", reviews(40)[30:])
    write_csv(tmp_path / "te.csv", reviews(20))
    cols = {"text": "review", "label": "sentiment"}
    data = {"train": str(tmp_path / "tr.csv"), "validation": str(tmp_path / "va.jsonl"), "test": str(tmp_path / "te.csv")}
    s = load_splits(data, cols, **CLASSIFY, n_val=0, n_test=0)
    assert s.sizes == {"train": 30, "val": 10, "test": 20} and "splits as given" in s.source
    assert [r["text"] for r in s.train] == [f"review number {i}" for i in range(30)]  # file order kept
    sub = load_splits(data, cols, **CLASSIFY, n_train=7, n_val=3, n_test=50, split_seed=5)
    assert sub.sizes == {"train": 7, "val": 3, "test": 20}
    assert sub == load_splits(data, cols, **CLASSIFY, n_train=7, n_val=3, n_test=50, split_seed=5)
    assert {r["text"] for r in sub.train} <= {r["text"] for r in s.train}
    # val is an alias of validation; a missing test split is carved from train
    s = load_splits({"train": data["train"], "val": data["validation"]}, cols, **CLASSIFY, n_val=4, n_test=6)
    assert s.sizes == {"train": 24, "val": 4, "test": 6} and "test carved from train" in s.source
    assert "unknown split" in error(load_splits, {"train": data["train"], "dev": data["test"]}, cols, **CLASSIFY)
    assert "no train file" in error(load_splits, {"test": data["test"]}, cols, **CLASSIFY)


def fake_hub_dataset(cache: Path, repo_id: str, files: dict[str, str]) -> None:
    """The layout `hf download --repo-type dataset` leaves: refs/main -> snapshots/<commit>/files."""
    repo = cache / ("datasets--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, text in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_hub_dataset_snapshot_in_the_hub_cache(tmp_path):
    train = "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(20))
    test = "text,label\n" + "".join(f"x{i},{i % 2}\n" for i in range(6))
    fake_hub_dataset(tmp_path / "hub-cache", "someone/toy", {"data/train.csv": train, "data/test.csv": test})
    s = load_splits("someone/toy", None, **CLASSIFY, n_val=4, n_test=0)
    assert s.sizes == {"train": 16, "val": 4, "test": 6}
    assert "someone/toy" in s.source and "local cache" in s.source


def fake_prepared_dataset(cache: Path, repo_id: str, split_rows: dict[str, list[dict]], features,
                          config: str = "default") -> None:
    """The layout an online datasets.load_dataset(repo_id) leaves in HF_DATASETS_CACHE."""
    name = repo_id.split("/")[-1]
    folder = cache / repo_id.replace("/", "___") / config / "0.0.0" / "abc123"
    folder.mkdir(parents=True)
    splits = {}
    for split, rows in split_rows.items():
        tmp = cache.parent / f"tmp-{split}"
        datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp))
        shutil.copy(tmp / "data-00000-of-00001.arrow", folder / f"{name}-{split}.arrow")
        splits[split] = {"name": split, "num_bytes": 0, "num_examples": len(rows), "dataset_name": name}
    info = {"features": features.to_dict(), "config_name": config, "dataset_name": name, "splits": splits}
    (folder / "dataset_info.json").write_text(json.dumps(info))


def test_hub_dataset_prepared_in_the_datasets_cache_with_classlabel(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # read from the cache all the same
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive", "neutral"])})
    rows = [{"sentence": f"s{i}", "label": i % 3} for i in range(24)]
    fake_prepared_dataset(tmp_path / "datasets-cache", "org/sst", {"train": rows[:18], "validation": rows[18:]},
                          features)
    s = load_splits("org/sst", {"text": "sentence"}, **CLASSIFY, n_val=0, n_test=3)
    assert s.sizes == {"train": 15, "val": 6, "test": 3} and s.label_names == ("negative", "positive", "neutral")
    enc, names = encode_labels(s)
    assert names == ("negative", "positive", "neutral")  # ClassLabel order, not sorted
    assert [r["label"] for r in enc.train] == [r["label"] for r in s.train]
    assert datasets.config.HF_HUB_OFFLINE is False  # restored


def test_hub_dataset_with_several_configurations(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    for config, n in (("small", 10), ("large", 20)):
        rows = [{"text": f"{config}{i}", "label": i % 2} for i in range(n)]
        fake_prepared_dataset(tmp_path / "datasets-cache", "org/multi", {"train": rows}, features, config)
    msg = error(load_splits, "org/multi", None, **CLASSIFY)
    assert "small" in msg and "large" in msg and "ID:CONFIG" in msg
    s = load_splits("org/multi:large", None, **CLASSIFY, n_val=2, n_test=2)
    assert s.sizes == {"train": 16, "val": 2, "test": 2} and s.train[0]["text"].startswith("large")


def test_hub_id_not_in_the_cache_is_one_line(tmp_path):
    msg = error(load_splits, "nobody/nothing", None, **CLASSIFY)
    assert "hf download --repo-type dataset nobody/nothing" in msg and "huggingface-cli" in msg
    assert "save_to_disk" in msg and str(tmp_path / "datasets-cache") in msg


def test_file_errors_are_one_line(tmp_path):
    assert "does not exist" in error(load_splits, str(tmp_path / "missing.csv"), None, **CLASSIFY)
    assert "does not exist" in error(load_splits, {"train": str(tmp_path / "nope.jsonl")}, None, **CLASSIFY)
    assert "does not exist" in error(load_splits, "missing.docx", None, **CLASSIFY)
    (tmp_path / "data.xlsx").write_text("x")
    msg = error(load_splits, str(tmp_path / "data.xlsx"), None, **CLASSIFY)
    assert "unsupported format" in msg and ".xlsx" in msg and ".csv" in msg and ".parquet" in msg
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert "cannot read" in error(load_splits, str(tmp_path / "bad.jsonl"), None, **CLASSIFY)
    (tmp_path / "empty").mkdir()
    assert "save_to_disk" in error(load_splits, str(tmp_path / "empty"), None, **CLASSIFY)


def test_column_errors_name_the_role_and_list_the_columns(tmp_path):
    path = str(write_csv(tmp_path / "all.csv", reviews()))
    msg = error(load_splits, path, {"text": "body", "label": "sentiment"}, **CLASSIFY)
    assert "'body'" in msg and "role text" in msg and "review, sentiment, stars" in msg
    msg = error(load_splits, path, {"text": "review"}, **CLASSIFY)
    assert "role 'label'" in msg and "review, sentiment, stars" in msg and "task.columns" in msg
    msg = error(load_splits, path, {"review": "review"}, **CLASSIFY)
    assert "unknown role" in msg and "text, text_pair, label" in msg
    msg = error(load_splits, path, None, **SFT)
    assert "prompt+completion or messages" in msg and "review, sentiment, stars" in msg
    # a validation file without the mapped column
    write_csv(tmp_path / "va.csv", reviews(5), cols=("review", "stars"))
    msg = error(load_splits, {"train": path, "validation": str(tmp_path / "va.csv")},
                {"text": "review", "label": "sentiment"}, **CLASSIFY)
    assert "val split" in msg and "'sentiment'" in msg and "review, stars" in msg


def test_empty_and_too_small_splits(tmp_path):
    path = str(write_csv(tmp_path / "all.csv", reviews(10)))
    cols = {"text": "review", "label": "sentiment"}
    auto = load_splits(path, cols, **CLASSIFY, n_val=2, n_test=0)  # 0: 10 % of the rows, at least 1
    assert auto.sizes == {"train": 7, "val": 2, "test": 1}
    assert "too small" in error(load_splits, path, cols, **CLASSIFY, n_val=6, n_test=6)
    (tmp_path / "va.csv").write_text("review,sentiment,stars\n")
    msg = error(load_splits, {"train": path, "validation": str(tmp_path / "va.csv")}, cols, **CLASSIFY, n_test=2)
    assert "va.csv" in msg and "no rows" in msg and "empty split" in msg
    (tmp_path / "te.jsonl").write_text("")
    msg = error(load_splits, {"train": path, "test": str(tmp_path / "te.jsonl")}, cols, **CLASSIFY, n_val=2)
    assert "te.jsonl" in msg and "no rows" in msg
    # a carved split of size 0 takes 10 % of the train rows; a given split of size 0 is used whole
    write_csv(tmp_path / "va3.csv", reviews(3))
    given = load_splits({"train": path, "validation": str(tmp_path / "va3.csv")}, cols, **CLASSIFY)
    assert given.sizes == {"train": 9, "val": 3, "test": 1}


def test_rows_with_empty_needed_values_are_dropped_and_said(tmp_path):
    (tmp_path / "all.csv").write_text("review,sentiment\n" + "".join(f"r{i},{'' if i < 3 else 'pos'}\n" for i in range(12)))
    s = load_splits(str(tmp_path / "all.csv"), {"text": "review", "label": "sentiment"}, **CLASSIFY, n_val=2, n_test=2)
    assert sum(s.sizes.values()) == 9 and "3 rows with an empty label/text dropped" in s.source


def splits(train, val, test=None) -> Splits:
    rows = [[{"text": str(i), "label": v} for i, v in enumerate(part)] for part in (train, val, test or val)]
    return Splits(*rows, columns=("text", "label"), source="test data", roles={"text": "text", "label": "label"})


def test_encode_labels_strings_and_ints_in_a_stable_order():
    enc, names = encode_labels(splits(["pos", "neg", "neutral", "pos"], ["neg", "pos"]))
    assert names == ("neg", "neutral", "pos")
    assert [r["label"] for r in enc.train] == [2, 0, 1, 2] and [r["label"] for r in enc.val] == [0, 2]
    enc, names = encode_labels(splits([10, 2, 7, 2], [7, 10]))
    assert names == ("2", "7", "10")  # numeric order, names as strings
    assert [r["label"] for r in enc.train] == [2, 0, 1, 0] and [r["label"] for r in enc.test] == [1, 2]
    enc, names = encode_labels(splits([1.0, 0.0], [0.0]))
    assert names == ("0", "1") and [r["label"] for r in enc.train] == [1, 0]


def test_encode_labels_errors():
    msg = error(encode_labels, splits(["pos", "neg"], ["neg", "meh"]))
    assert "'meh'" in msg and "val split" in msg and "never occur in train" in msg
    msg = error(encode_labels, splits([0, 1], [0], [1, 2, 3]))
    assert "2, 3" in msg and "test split" in msg
    assert "at least 2" in error(encode_labels, splits(["pos", "pos"], ["pos"]))
    no_label = Splits([{"text": "a"}], [{"text": "b"}], [{"text": "c"}], ("text",), "x", {"text": "text"})
    assert "no label role" in error(encode_labels, no_label)


def test_describe_lists_source_columns_roles_and_sizes(tmp_path):
    path = write_csv(tmp_path / "all.csv", reviews())
    text = describe(load_splits(str(path), {"text": "review", "label": "sentiment"}, **CLASSIFY, n_val=8, n_test=6))
    lines = text.splitlines()
    assert len(lines) == 4 and str(path) in lines[0]
    assert lines[1] == "columns: review, sentiment, stars"
    assert lines[2] == "roles: text <- review, label <- sentiment"
    assert lines[3] == "rows: train 26, val 8, test 6"


def test_missing_datasets_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    msg = error(load_splits, str(write_csv(tmp_path / "all.csv", reviews())), None, **CLASSIFY)
    assert "pip install 'loradyn[hf]'" in msg
