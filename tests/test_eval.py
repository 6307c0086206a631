"""``mrgrpo eval``: prompt files (GenEval layout), per-category summaries, the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from mrgrpo.eval import EvalPrompt, load_eval_prompts, markdown_table, summarise


def test_geneval_jsonl_and_txt(tmp_path):
    f = tmp_path / "meta.jsonl"
    f.write_text(
        '{"tag": "two_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat and a dog"}\n'
        '\n{"prompt": "a red car", "category": "colors", "ocr_text": "x"}\n{"prompt": "no tag"}\n'
    )
    ps = load_eval_prompts(f)
    assert [(p.prompt, p.category) for p in ps] == [
        ("a cat and a dog", "two_object"),
        ("a red car", "colors"),
        ("no tag", "all"),
    ]
    assert ps[0].fields["include"][0]["class"] == "cat" and ps[1].fields["ocr_text"] == "x"
    t = tmp_path / "p.txt"
    t.write_text("# comment\na\n\nb\n")
    assert [(p.prompt, p.category) for p in load_eval_prompts(t)] == [("a", "all"), ("b", "all")]


@pytest.mark.parametrize(
    "text,match", [('{"prompt": 3}', "string field `prompt`"), ("{oops", "not valid JSON"), ("", "no prompts")]
)
def test_bad_prompt_files_name_the_line(tmp_path, text, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(text + "\n")
    with pytest.raises(ValueError, match=match):
        load_eval_prompts(f)
    with pytest.raises(ValueError, match="does not exist"):
        load_eval_prompts(tmp_path / "missing.jsonl")


def test_summary_means_over_valid_images_per_category():
    prompts = [EvalPrompt("a", "x"), EvalPrompt("b", "x"), EvalPrompt("c", "y")]
    scores = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    s = summarise(prompts, {"r": {"scores": scores, "valid": valid}})
    assert s["categories"]["x"]["r"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3 valid images
    assert s["categories"]["y"]["r"] is None  # nothing valid: no number, not a 0
    assert s["categories"]["overall"]["r"] == pytest.approx(2 / 3)
    assert [p["r"] for p in s["prompts"]] == [0.5, 1.0, None]
    table = markdown_table(s, ["r"])
    assert "| x | 2 | 0.667 |" in table and "| y | 1 | - |" in table


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (and much faster on a shared CPU, where two spin-wait)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_cli_scores_a_saved_policy_deterministically(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MRGRPO_CACHE", str(tmp_path / "cache"))
    from mrgrpo.cli import main
    from mrgrpo.registry import POLICIES

    policy = POLICIES.build("deepgen-toy")
    policy.set_stage("rl")
    policy.save(str(tmp_path / "policy"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a red circle", "tag": "single"}\n{"prompt": "two blue squares", "tag": "count"}\n'
        '{"prompt": "a green square", "tag": "single"}\n'
    )
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        rc = main(
            [
                "eval",
                str(tmp_path / "policy"),
                "--prompts",
                str(prompts),
                "--reward",
                "toy_color",
                "--reward",
                "bright=brightness",
                "--samples",
                "2",
                "--steps",
                "3",
                "--out",
                str(out),
            ]
        )
        assert rc == 0
        assert (out / "grid.png").is_file() and "| single | 2 |" in (out / "results.md").read_text()
        results.append(json.loads((out / "results.json").read_text()))
    a, b = results
    assert a["categories"] == b["categories"]  # fixed evaluation seeds
    single = [p["bright"] for p in a["prompts"] if p["category"] == "single"]
    assert a["categories"]["single"]["bright"] == pytest.approx(sum(single) / 2)
    assert set(a["categories"]) == {"single", "count", "overall"}
