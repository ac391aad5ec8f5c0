"""CLadder: loading, bad data, oracle abstraction and random intervention.

A tiny v1-layout folder written per test always runs; the checks over every
record of the shared benchmark files skip when `../shared/data` is absent.
"""

import dataclasses
import io
import json
import os
import random
import re
import zipfile
from pathlib import Path

import pytest
import yaml

from capt_jax.data import DataError, abstract, intervene, is_valid, load_examples, names_present, split, test_sets
from capt_jax.data.abstraction import original_names, validity_report
from capt_jax.data.answers import answer_instruction
from capt_jax.data.cladder import load_cladder_file, load_stories
from capt_jax.errors import MissingFileError

SHARED = Path(os.environ.get("CAPT_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SHARED_FILES = {"commonsense": 844, "anticommonsense": 844, "nonsense": 1120}

TOY_STORY = {
    "story_id": "toy",
    "Xname": "rain",
    "Xsubject": "situation",
    "X1_noun": "heavy rain",
    "X0_noun": "no rain",
    "X1_sentence": "it rains",
    "X0_sentence": "it does not rain",
    "X1_sentence_condition": "if it had rained instead of staying dry",
    "X0_sentence_condition": "if it had stayed dry instead of raining",
    "X1_wheresentence": "days with rain",
    "X0_wheresentence": "days without rain",
    "Yname": "umbrella",
    "Y1_noun": "open umbrella",
    "Y0_noun": "closed umbrella",
    "Y1_sentence": "the umbrella is open",
    "Y0_sentence": "the umbrella is closed",
    "Zname": float("nan"),
}
TOY_MODEL = {
    "model_id": 0,
    "story_id": "toy",
    "background": "Imagine a self-contained, hypothetical world with only the following conditions: "
    "Rain has a direct effect on umbrella.",
    "variable_mapping": {
        "Xname": "rain",
        "X1": "heavy rain",
        "X0": "no rain",
        "Yname": "umbrella",
        "Y1": "open umbrella",
        "Y0": "closed umbrella",
    },
}
TOY_QUESTION = {
    "question_id": 7,
    "desc_id": "toy-chain-ate",
    "given_info": "For days without rain, the probability of open umbrella is 10%. "
    "For days with rain, the probability of open umbrella is 90%.",
    "question": "For days with rain, would it be more likely to see open umbrella if it had stayed dry?",
    "answer": "no",
    "meta": {"story_id": "toy", "model_id": 0, "query_type": "ett", "rung": 3, "graph_id": "chain"},
    "reasoning": {
        "step0": "Let X = rain; Y = umbrella.",
        "step1": "X->Y",
        "step2": "E[Y_{X = 1} - Y_{X = 0} | X = 1]",
        "step3": "P(Y=1|X=1) - P(Y=1|X=0)",
        "step4": "P(Y=1 | X=0) = 0.10\nP(Y=1 | X=1) = 0.90",
        "step5": "0.90 - 0.10 = 0.80",
        "end": "0.80 > 0",
    },
}


def write_toy(folder: Path, questions=None, models=None, story=None) -> Path:
    """A v1-release-layout folder with one story, one model and the given questions."""
    (folder / "stories").mkdir(parents=True, exist_ok=True)
    (folder / "stories" / "toy.yml").write_text(yaml.safe_dump(story or TOY_STORY))
    (folder / "cladder-v1-meta-models.json").write_text(json.dumps(models or [TOY_MODEL]))
    path = folder / "cladder-v1-q-commonsense.json"
    path.write_text(json.dumps(questions if questions is not None else [TOY_QUESTION]))
    return path


def test_toy_example_loads_and_abstracts_exactly(tmp_path):
    write_toy(tmp_path)
    [example] = load_examples("cladder", "commonsense", data_dir=tmp_path)
    assert (example.id, example.variant, example.answer) == ("7", "commonsense", "No")
    assert example.meta["rung"] == 3 and example.meta["query_type"] == "ett"
    assert example.prompt.startswith("Imagine") and example.prompt.endswith("if it had stayed dry?")
    assert example.reasoning.startswith("Let X = rain; Y = umbrella.\nStep 1) Causal graph: X->Y")
    abstraction = abstract(example)
    assert abstraction.prompt == (
        "Imagine a self-contained, hypothetical world with only the following conditions: "
        "{symbol_1} has a direct effect on {symbol_2}. For {symbol_1}=0, the probability of {symbol_2}=1 is 10%. "
        "For {symbol_1}=1, the probability of {symbol_2}=1 is 90%. "
        "For {symbol_1}=1, would it be more likely to see {symbol_2}=1 if {symbol_1}=0?"
    )
    assert (
        "Step 3) Formal query: E[{symbol_2}_{{symbol_1} = 1} - {symbol_2}_{{symbol_1} = 0} | {symbol_1} = 1]"
        in abstraction.reasoning
    )
    assert "Let" not in abstraction.reasoning
    assert abstraction.symbols == {"symbol_1": "rain", "symbol_2": "umbrella"}
    assert is_valid(abstraction)
    shown = intervene(abstraction, "order")
    assert "For A=1, would it be more likely to see B=1 if A=0?" in shown.prompt
    assert shown.symbols == {"A": "rain", "B": "umbrella"}
    assert shown.target.startswith("<think>Step 1) Causal graph: A->B") and shown.target.endswith(
        "</think><answer>No</answer>"
    )


def fake_repository_archive(tmp_path: Path) -> bytes:
    """A zip laid out as GitHub's archive of causalNLP/cladder: the question and model files inside
    data/cladder-v1.zip (in a folder of their own), the stories and anticommonsense.yml under assets/."""
    release = tmp_path / "release"
    write_toy(release)
    for variant in ("anticommonsense", "noncommonsense"):
        (release / f"cladder-v1-q-{variant}.json").write_text(json.dumps([TOY_QUESTION]))
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for file in release.glob("*.json"):
            z.write(file, f"cladder-v1/{file.name}")
    top = "cladder-3d2d1169b4b939a09048a6a75956c8972a93cc38"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"{top}/data/cladder-v1.zip", inner.getvalue())
        z.writestr(f"{top}/assets/stories/toy.yml", yaml.safe_dump(TOY_STORY))
        z.writestr(f"{top}/assets/anticommonsense.yml", yaml.safe_dump({"variables": {}}))
        z.writestr(f"{top}/README.md", "not unpacked")
    return archive.getvalue()


def test_download_source_unpacks_the_release_with_its_stories_once(tmp_path, monkeypatch):
    """The hub has no v1 question files or stories: `download` fetches the authors' repository archive (served
    here from memory), unpacks it into the cache once, and the abstraction is exact."""
    import urllib.request

    from capt_jax.data.cladder_release import RELEASE_URL

    archive, requests = fake_repository_archive(tmp_path), []

    def fake_urlopen(url, timeout):
        requests.append(url)
        response = io.BytesIO(archive)
        response.headers = {"Content-Length": str(len(archive))}
        return response

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("CAPT_JAX_CACHE", str(tmp_path / "cache"))
    [example] = load_examples("cladder", "commonsense", source="download")
    assert is_valid(abstract(example)) and len(example.meta["variables"][0]["wordings"]["1"]) > 1
    [anti] = load_examples("cladder", "anti", source="download")
    assert anti.variant == "anticommonsense" and requests == [RELEASE_URL]  # the second load reads the cache
    folder = next((tmp_path / "cache" / "cladder").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [
        ".complete",
        "anticommonsense.yml",
        "cladder-v1-meta-models.json",
        "cladder-v1-q-anticommonsense.json",
        "cladder-v1-q-commonsense.json",
        "cladder-v1-q-noncommonsense.json",
        "stories",
    ]


def test_download_without_internet_says_what_to_do_instead(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    def cut(url, timeout):  # the connection closes halfway
        response = io.BytesIO(fake_repository_archive(tmp_path)[:1000])
        response.headers = {"Content-Length": "2000"}
        return response

    monkeypatch.setenv("CAPT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(MissingFileError, match="cannot download CLadder .* without internet, set data.data_dir"):
        load_examples("cladder", source="download")
    monkeypatch.setattr(urllib.request, "urlopen", cut)
    with pytest.raises(MissingFileError, match="connection closed after 1000 of 2000 bytes"):
        load_examples("cladder", source="download")
    left = [p.name for p in (tmp_path / "cache" / "cladder").iterdir() if p.suffix != ".lock"]
    assert left == []  # nothing half-made is left to be taken as done


def test_a_file_without_stories_warns_that_the_abstraction_is_inexact(tmp_path):
    path = write_toy(tmp_path)
    (tmp_path / "stories" / "toy.yml").unlink()
    (tmp_path / "stories").rmdir()
    with pytest.warns(UserWarning, match="no stories/ folder beside it"):
        load_cladder_file(path)


def test_data_file_of_one_variant_finds_the_other_variants_beside_it(tmp_path):
    """test_sets' "id" asks for the commonsense file and an anti run for the anticommonsense one, whichever of
    the release's files data.data_file names."""
    path = write_toy(tmp_path)
    anti = tmp_path / "cladder-v1-q-anticommonsense.json"
    anti.write_text(json.dumps([dict(TOY_QUESTION, question_id=8)]))
    assert [e.id for e in load_examples("cladder", "anti", data_file=path)] == ["8"]
    assert [e.id for e in load_examples("cladder", "commonsense", data_file=anti)] == ["7"]
    assert [e.id for e in load_examples("cladder", None, data_file=anti)] == ["8"]  # no variant: the file itself
    with pytest.raises(MissingFileError, match="no CLadder non question file"):
        load_examples("cladder", "non", data_file=path)
    # Only the anticommonsense file, and no "id" asked for: nothing looks for a commonsense file.
    path.unlink()
    anti.write_text(json.dumps([dict(TOY_QUESTION, question_id=i) for i in range(20)]))
    sets = test_sets("cladder", data_file=anti, variant="anti", splits=("anti",), n_train=2)
    assert list(sets) == ["anti"] and len(sets["anti"].excluded_overlap) == 2  # the same prompt as training's
    assert sets["anti"].excluded_by_query_type == {"ett": 2} and sets["anti"].query_types_gone() == ["ett"]


def test_question_carrying_its_own_model_needs_no_model_file(tmp_path):
    own = dict(TOY_QUESTION, background=TOY_MODEL["background"], variable_mapping=TOY_MODEL["variable_mapping"])
    path = write_toy(tmp_path, questions=[own], models=[])
    [example] = load_cladder_file(path)
    assert is_valid(abstract(example))


def test_a_question_of_a_story_without_yml_loads_with_a_warning(tmp_path):
    """One missing story file costs only its questions' exact abstraction, not the whole file or evaluation."""
    other = json.loads(json.dumps(TOY_QUESTION))
    other["meta"]["story_id"] = "no_such_story"
    path = write_toy(tmp_path, questions=[TOY_QUESTION, dict(other, question_id=8)])
    with pytest.warns(UserWarning, match=r"1 question of a story with no yml in stories/: 'no_such_story' \(1\)"):
        toy, unknown = load_cladder_file(path)
    assert "it had stayed dry" not in abstract(toy).prompt
    assert "it had stayed dry" in abstract(unknown).prompt  # only the causal model's names are known for it
    # and the validity report says its check could not see that phrase, rather than count the question valid only
    assert validity_report([toy, unknown], "toy").line() == (
        "toy: 2/2 valid, invalid rate 0.00%; 1 of them checked against the causal models' variable names only "
        "(no story phrases for them), so the story phrases left in their templates are not counted"
    )


def test_a_phrase_listed_for_both_values_becomes_the_bare_slot(tmp_path):
    """Some CLadder stories list one phrase for both values (firing_employee, vaccine_kills): the text cannot say
    which value it means, so the template must not claim one."""
    story = dict(TOY_STORY, X1_wherepartial="days with rain", X0_wherepartial="days with rain")
    path = write_toy(tmp_path, story=story)
    with pytest.warns(UserWarning, match=r"1 question with a story phrase .* toy: 'days with rain' \(1\)"):
        [example] = load_cladder_file(path)
    abstraction = abstract(example)
    assert "For {symbol_1}=0, the probability" in abstraction.prompt  # "days without rain" is one value's alone
    assert "For {symbol_1}, would it be more likely to see {symbol_2}=1 if {symbol_1}=0?" in abstraction.prompt
    assert is_valid(abstraction)


ANTI_JAZZ = {
    "plurals": {"situation": "situations"},
    "variables": {
        "X": {
            "likes jazz": {
                "Xname": "liking jazz",
                "X1_noun": "liking jazz",
                "X0_noun": "not liking jazz",
                "X1_wheresentence": "{plural} that like jazz",
                "X0_wheresentence": "{plural} that do not like jazz",
            }
        }
    },
}
JAZZ_MAPPING = dict(TOY_MODEL["variable_mapping"], Xname="liking jazz", X1="liking jazz", X0="not liking jazz")
JAZZ_QUESTION = dict(
    TOY_QUESTION,
    given_info="For situations that do not like jazz, the probability of open umbrella is 10%. "
    "For situations that like jazz, the probability of open umbrella is 90%.",
    question="For situations that like jazz, would it be more likely to see open umbrella if liking jazz were absent?",
)


@pytest.mark.parametrize("layout", ["causal model", "own mapping", "own mapping, no causal model"])
def test_anticommonsense_questions_take_the_replacement_whatever_their_layout(tmp_path, layout):
    """The anti-commonsense change comes from the causal model, from the model beside a question that carries its
    own mapping (the v1 release does), or, with no model at all, from the replacement named like its variable."""
    background = TOY_MODEL["background"].replace("Rain", "Liking jazz")
    change = {"variable": "X", "change": "likes jazz"}
    model = dict(TOY_MODEL, background=background, variable_mapping=JAZZ_MAPPING, anticommonsense=change)
    own = dict(JAZZ_QUESTION, background=background, variable_mapping=JAZZ_MAPPING)
    question, models = {
        "causal model": (JAZZ_QUESTION, [model]),
        "own mapping": (own, [model]),
        "own mapping, no causal model": (own, [TOY_MODEL]),
    }[layout]
    path = write_toy(tmp_path, questions=[question], models=models)
    (tmp_path / "anticommonsense.yml").write_text(yaml.safe_dump(ANTI_JAZZ))
    [example] = load_cladder_file(path, "anti")
    template = abstract(example).prompt
    assert "For {symbol_1}=0, the probability of {symbol_2}=1 is 10%." in template
    assert "jazz" not in template


def test_an_anticommonsense_file_without_its_replacements_loads_with_a_warning(tmp_path):
    """A missing anticommonsense.yml costs the anti questions their exact abstraction, not the evaluation."""
    change = {"variable": "X", "change": "likes jazz"}
    model = dict(TOY_MODEL, variable_mapping=JAZZ_MAPPING, anticommonsense=change)
    path = write_toy(tmp_path, questions=[JAZZ_QUESTION], models=[model])
    with pytest.warns(UserWarning, match="1 question of an anti-commonsense causal model, with no anticommonsense.yml"):
        [example] = load_cladder_file(path, "anti")
    assert "situations that like jazz" in abstract(example).prompt and not example.meta["story_known"]


def test_a_question_file_without_causal_models_says_so(tmp_path):
    path = write_toy(tmp_path)
    (tmp_path / "cladder-v1-meta-models.json").unlink()
    with pytest.raises(DataError, match=r"unknown causal model 0 \(no causal-model file, cladder-v1-meta-models"):
        load_cladder_file(path)


def test_the_validity_check_sees_story_wordings_not_only_the_causal_models_names(tmp_path):
    write_toy(tmp_path)
    [example] = load_examples("cladder", data_dir=tmp_path)
    abstraction = abstract(example)
    assert is_valid(abstraction)
    kept = dataclasses.replace(
        abstraction, prompt=abstraction.prompt.replace("if {symbol_1}=0?", "if it had stayed dry?")
    )
    assert not is_valid(kept)  # "it had stayed dry" names no variable of the causal model, but is a story wording


def test_report_on_a_cladder_folder_reads_only_its_cladder_files(tmp_path, monkeypatch, capsys):
    from capt_jax.data import __main__ as cli

    write_toy(tmp_path)
    monkeypatch.setattr(cli, "REPORT_GENERATOR_SETTINGS", [])
    cli.main(["report", f"--config.data.data_dir={tmp_path}"])
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'cladder-v1-q-commonsense.json'}: 1/1 valid, invalid rate 0.00%"
    ]


def test_null_reasoning_gives_answer_only_target(tmp_path):
    write_toy(tmp_path, questions=[dict(TOY_QUESTION, reasoning=None)])
    [example] = load_examples("cladder", data_dir=tmp_path)
    assert example.reasoning == ""
    shown = intervene(abstract(example), "random", random.Random(0))
    assert shown.target == "<answer>No</answer>"
    assert shown.prompt.endswith("\n\n" + answer_instruction("cladder", with_reasoning=False))  # as the target is


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda q: q.pop("question"), "question"),
        (lambda q: q["meta"].pop("query_type"), "meta.query_type"),
        (lambda q: q["meta"].update(model_id=99), "meta.model_id"),
        (lambda q: q.update(answer="maybe"), "answer"),
        (lambda q: q["reasoning"].pop("step3"), "reasoning.step3"),
        (lambda q: q.update(meta="oops"), "meta"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, change, field):
    question = json.loads(json.dumps(TOY_QUESTION))
    change(question)
    path = write_toy(tmp_path, questions=[question])
    with pytest.raises(DataError) as raised:
        load_cladder_file(path)
    message = str(raised.value)
    assert path.name in message and "record 7" in message and repr(field) in message


def test_bad_causal_model_names_model_and_field(tmp_path):
    model = json.loads(json.dumps(TOY_MODEL))
    del model["variable_mapping"]["Y0"]
    path = write_toy(tmp_path, models=[model])
    with pytest.raises(DataError, match=r"record 7, field 'variable_mapping.Y0': missing field"):
        load_cladder_file(path)
    del model["background"]
    path = write_toy(tmp_path, models=[model])
    with pytest.raises(DataError, match=r"record 7, field 'causal model 0.background'"):
        load_cladder_file(path)


def test_malformed_json_names_the_file(tmp_path):
    path = write_toy(tmp_path)
    path.write_text('[{"question_id": 1,')
    with pytest.raises(DataError, match="cladder-v1-q-commonsense.json.*malformed JSON"):
        load_cladder_file(path)


@pytest.mark.parametrize("question_id", ["absent", None])
def test_a_record_without_its_id_is_named_by_its_place_in_the_list(tmp_path, question_id):
    question = json.loads(json.dumps(TOY_QUESTION))
    if question_id == "absent":
        del question["question_id"]
    else:
        question["question_id"] = question_id
    path = write_toy(tmp_path, questions=[TOY_QUESTION, question])
    with pytest.raises(DataError, match=r"record at list index 1, field 'question_id': missing field"):
        load_cladder_file(path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "expected a mapping of phrase keys to phrases, got an empty file"),
        ("- a\n- b\n", "expected a mapping of phrase keys to phrases, got a list"),
        ("a: [\n", "malformed YAML at line 2, column 1: did not find expected node content"),
    ],
)
def test_a_broken_story_file_is_one_line_naming_it(tmp_path, text, problem):
    path = write_toy(tmp_path)
    (tmp_path / "stories" / "toy.yml").write_text(text)
    with pytest.raises(DataError) as raised:
        load_cladder_file(path)
    assert str(raised.value) == f"{tmp_path / 'stories' / 'toy.yml'}: {problem}"


def test_an_empty_question_file_is_named(tmp_path):
    path = write_toy(tmp_path, questions=[])
    with pytest.raises(DataError, match=r"cladder-v1-q-commonsense.json: expected a JSON list of questions, got an"):
        load_cladder_file(path)


def test_query_types_are_read_in_any_case_and_an_unknown_one_is_warned_about(tmp_path):
    shouted = json.loads(json.dumps(TOY_QUESTION))
    shouted["meta"]["query_type"] = f" {TOY_QUESTION['meta']['query_type'].upper()} "
    write_toy(tmp_path, questions=[TOY_QUESTION, dict(shouted, question_id=8)])
    plain, loud = load_examples("cladder", data_dir=tmp_path)
    assert loud.meta["query_type"] == plain.meta["query_type"]
    assert abstract(loud).prompt == abstract(plain).prompt and abstract(loud).reasoning == abstract(plain).reasoning
    respelled = json.loads(json.dumps(TOY_QUESTION))
    respelled["meta"]["query_type"] = "Det_Counterfactual"
    write_toy(tmp_path, questions=[respelled])
    assert load_examples("cladder", data_dir=tmp_path)[0].meta["query_type"] == "det-counterfactual"
    novel = json.loads(json.dumps(TOY_QUESTION))
    novel["meta"]["query_type"] = "pns"
    write_toy(tmp_path, questions=[novel])
    with pytest.warns(UserWarning, match=r"1 question of a query type the oracle does not know: 'pns' \(1\)"):
        load_examples("cladder", data_dir=tmp_path)


# --- every record of the shared benchmark files ------------------------------------------------


@pytest.fixture(scope="module")
def shared_cladder():
    if not (SHARED / "cladder").is_dir():
        pytest.skip(f"shared CLadder data not found at {SHARED / 'cladder'} (set CAPT_DATA_DIR)")
    return {variant: load_examples("cladder", variant, data_dir=SHARED) for variant in SHARED_FILES}


def test_shared_files_load_completely(shared_cladder):
    for variant, size in SHARED_FILES.items():
        examples = shared_cladder[variant]
        assert len(examples) == size and len({e.id for e in examples}) == size
        assert {e.answer for e in examples} == {"Yes", "No"}
        assert {e.meta["rung"] for e in examples} == {1, 2, 3}


@pytest.mark.parametrize("variant", SHARED_FILES)
def test_oracle_abstraction_valid_on_every_record(shared_cladder, variant):
    report = validity_report(shared_cladder[variant], variant)
    print(report.line())
    assert report.invalid_rate <= 0.02, report.invalid_ids[:10]
    # Stricter than names: no wording of any variable value survives either.
    leftover = [
        e.id for e in shared_cladder[variant] if names_present(_template_text(abstract(e)), _wordings(e), "cladder")
    ]
    assert len(leftover) <= 0.02 * len(shared_cladder[variant]), leftover[:10]


@pytest.mark.parametrize("variant", SHARED_FILES)
def test_random_intervention_hides_every_name(shared_cladder, variant):
    rng = random.Random(0)
    for example in shared_cladder[variant]:
        abstraction = abstract(example)
        shown = intervene(abstraction, "random", rng)
        names = original_names(example) + _wordings(example)
        assert not names_present(shown.prompt + "\n" + shown.target, names, "cladder"), example.id
        letters = list(shown.symbols)
        assert len(set(letters)) == len(letters) == len(abstraction.terms)
        assert not {"P", "E"} & set(letters)  # notation letters are never symbols
        for slot, letter in zip(abstraction.terms, letters):
            token = re.compile(rf"(?<![A-Za-z]){letter}(?![A-Za-z])")
            in_prompt = "{" + slot + "}" in abstraction.prompt
            in_reasoning = "{" + slot + "}" in abstraction.reasoning
            assert bool(token.search(shown.prompt)) == in_prompt
            assert bool(token.search(shown.target)) == in_reasoning


def test_unseen_v1_records_abstract_validly(tmp_path):
    """The authors' LLM failed on these v1 commonsense questions; the oracle must not."""
    sample = SHARED / "cladder" / "cladder-v1-q-commonsense_gpt-4o-mini_2ex_abstract_invalid.json"
    if not sample.is_file():
        pytest.skip(f"{sample} not found (set CAPT_DATA_DIR)")
    records = [r["old"] for r in json.loads(sample.read_text())]
    path = tmp_path / "cladder-v1-q-commonsense.json"
    path.write_text(json.dumps(records))
    examples = load_cladder_file(path, models={}, stories=load_stories(SHARED / "cladder" / "stories"))
    assert len(examples) == 187
    assert validity_report(examples, "v1 sample").invalid_rate == 0


def test_test_sets_are_shuffled_tenths_of_the_id_and_ood_files(shared_cladder):
    sets = test_sets("cladder", data_dir=SHARED, keep_overlap=True)
    assert [len(sets[k].examples) for k in ("id", "anti", "non")] == [85, 85, 112]
    assert [e.id for e in sets["id"].examples] == [e.id for e in split(shared_cladder["commonsense"], 100)[1]]
    assert [e.id for e in sets["non"].examples] == [e.id for e in split(shared_cladder["nonsense"], 0)[1]]


def _template_text(abstraction) -> str:
    return abstraction.prompt + "\n" + abstraction.reasoning


def _wordings(example) -> list[str]:
    return [w for v in example.meta["variables"] for texts in v["wordings"].values() for w in texts]


DET_QUESTION = {  # the official generator's deterministic counterfactual (causalbenchmark/queries/deterministic.py)
    "question_id": 8,
    "desc_id": "toy-chain-det-counterfactual-model0-spec0-q0",
    "given_info": "We know that heavy rain causes open umbrella.",
    "question": "Would the umbrella is open if no rain instead of heavy rain?",
    "answer": "no",
    "meta": {
        "story_id": "toy",
        "graph_id": "chain",
        "given_info": {},
        "formal_form": "Y_{X=0} = 1 | ",
        "treatment": "X",
        "outcome": "Y",
        "action": 0,
        "polarity": 1,
        "groundtruth": 0,
        "query_type": "det-counterfactual",
        "rung": 3,
        "model_id": 0,
    },
    "reasoning": {
        "step0": "Let X = rain; Y = umbrella.",
        "step1": "X->Y",
        "step2": "Y_{X=0} = 1 | ",
        "step3": "Solve for Y, given the evidence and the action",
        "step4": "Y = X",
        "step5": "Y = 0 = 0",
        "end": "0",
    },
}


def test_deterministic_counterfactual_abstracts_exactly(tmp_path):
    """A query type the shared files lack but the v1 release holds (rung 3, no numbers)."""
    write_toy(tmp_path, questions=[DET_QUESTION])
    [example] = load_examples("cladder", "commonsense", data_dir=tmp_path)
    abstraction = abstract(example)
    assert abstraction.prompt.endswith(
        "{symbol_1} has a direct effect on {symbol_2}. We know that {symbol_1}=1 causes {symbol_2}=1. "
        "Would {symbol_2}=1 if {symbol_1}=0 instead of {symbol_1}=1?"
    )
    assert abstraction.symbols == {"symbol_1": "rain", "symbol_2": "umbrella"}
    assert is_valid(abstraction)
    shown = intervene(abstraction, "order")
    assert "We know that A=1 causes B=1. Would B=1 if A=0 instead of A=1?" in shown.prompt
    assert "Step 2) Query type: deterministic counterfactual\nStep 3) Formal query: B_{A=0} = 1 | " in shown.target
    assert shown.target.endswith("Result: 0, so the answer is no.</think><answer>No</answer>")
