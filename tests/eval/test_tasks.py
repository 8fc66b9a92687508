"""Task loaders read their documented layouts; the demo tasks work on a built demo dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.data.demo_scenes import COLOURS, SHAPE_KINDS
from mmpretrain.errors import ConfigError, DataFormatError, RegistryError, UserError
from mmpretrain.eval.metrics import METRICS
from mmpretrain.eval.tasks import load_task, task_config
from mmpretrain.eval.types import EvalExample, PromptTemplate
from mmpretrain.registry import TASKS

FORMATS = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "formats"
ISSUE_TASKS = {
    "coco_captions", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hateful_memes", "image_folder",
    "librispeech", "spoken_qa", "interleaved_jsonl",
    "shapes_classify", "shapes_count", "shapes_caption", "shapes_asr",
}  # fmt: skip


def image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def audio(path: Path, seconds: float = 0.2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def kinds(ex: EvalExample) -> list[str]:
    return [seg.kind for seg in ex.segments]


# ------------------------------------------------------------------------------ registry


def test_every_issue_task_is_registered_and_documented() -> None:
    assert set(TASKS.names()) >= ISSUE_TASKS
    for name in ISSUE_TASKS:
        entry = TASKS.get(name)
        assert entry.summary, name
        cfg = task_config(name)
        assert cfg.name == name
        if name == "interleaved_jsonl":  # reads its file to know its kind and template
            with pytest.raises(UserError, match=r"file not found: datasets/my_benchmark/test\.jsonl"):
                load_task(name)
            continue
        spec = load_task(name)  # the others read their files in queries() / demos()
        assert spec.metric in METRICS
        assert spec.kind in ("generate", "classify")
        module_doc = __import__(entry.builder.__module__, fromlist=["_"]).__doc__
        assert "Files" in module_doc or "heldout" in module_doc, name


def test_task_config_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unknown tasks name 'nope'"):
        task_config("nope")
    with pytest.raises(ConfigError, match="karpathy_jsn"):
        task_config("coco_captions", ["karpathy_jsn=x.json"])
    with pytest.raises(ConfigError, match="task file not found"):
        task_config(tmp_path / "missing.yaml")
    spec = load_task("vqav2", [f"questions={tmp_path / 'q.json'}"])
    with pytest.raises(
        UserError, match=r"task vqav2: file not found: .*q\.json \(set it with questions=PATH"
    ):
        spec.queries()


def test_task_from_yaml_file(tmp_path: Path) -> None:
    rows = [{"segments": [{"text": "two plus two"}], "answer": "4"}]
    write_jsonl(tmp_path / "b.jsonl", rows)
    (tmp_path / "task.yaml").write_text(
        f"name: interleaved_jsonl\npath: {tmp_path / 'b.jsonl'}\nmax_new_tokens: 3\n"
    )
    spec = load_task(tmp_path / "task.yaml", ["template='{context} = {answer}'"])
    assert spec.max_new_tokens == 3
    assert spec.template.text == "{context} = {answer}"
    (ex,) = spec.queries()
    assert spec.template.render(ex, None) == ["two plus two ="]
    assert spec.template.continuation(ex.demo_answer) == " 4"


# ------------------------------------------------------------------------------ templates


def test_prompt_template_render() -> None:
    img1, img2 = (DecodedSegment("image", image=Image.new("RGB", (2, 2))) for _ in range(2))
    ex = EvalExample("q", [img1], question="What colour?", answers=["red"])
    template = PromptTemplate("<image>Question: {question} Short answer: {answer}")
    assert template.render(ex, "red") == [img1, "Question: What colour? Short answer: red"]
    assert template.render(ex, None) == [img1, "Question: What colour? Short answer:"]
    assert template.continuation("red") == " red"
    context = EvalExample("c", [DecodedSegment("text", text="Look: "), img1, img2], answers=["x"])
    assert PromptTemplate("{context} Answer: {answer}").render(context, "x") == [
        "Look: ",
        img1,
        img2,
        " Answer: x",
    ]
    with pytest.raises(UserError, match="no place for its 1 image"):
        PromptTemplate("<image>{answer}").render(EvalExample("two", [img1, img2], answers=["x"]), "x")
    with pytest.raises(UserError, match="needs more audio items"):
        PromptTemplate("<audio>{answer}").render(ex, "x")
    with pytest.raises(ValueError, match="exactly one"):
        PromptTemplate("<image>Output:")


def test_lazy_example_loads_once_and_releases() -> None:
    calls = []

    def load() -> list[DecodedSegment]:
        calls.append(1)
        return [DecodedSegment("text", text="hi")]

    ex = EvalExample("a", load_segments=load, answers=["x"])
    assert calls == []
    assert kinds(ex) == ["text"] and kinds(ex) == ["text"]
    assert len(calls) == 1
    ex.release()
    assert kinds(ex) == ["text"] and len(calls) == 2


# ------------------------------------------------------------------------------ captions


def test_coco_captions_karpathy_layout(tmp_path: Path) -> None:
    image(tmp_path / "val2014" / "COCO_val2014_000000391895.jpg")
    image(tmp_path / "train2014" / "COCO_train2014_000000057870.jpg")
    spec = load_task(
        "coco_captions", [f"karpathy_json={FORMATS / 'coco_karpathy.json'}", f"images={tmp_path}"]
    )
    assert (spec.kind, spec.metric) == ("generate", "cider")
    (query,) = spec.queries()
    assert query.id == "391895"
    assert query.answers == [
        "A rider in a blue jacket crosses a gravel bridge.",
        "A cyclist rides over a small bridge in the hills.",
    ]
    assert kinds(query) == ["image"] and query.segments[0].image.size == (8, 8)
    (demo,) = spec.demos()
    assert demo.id == "57870" and demo.demo_answer == "A cafe with round metal tables and tall windows."


def test_flickr30k_karpathy_layout(tmp_path: Path) -> None:
    images = [
        {
            "filename": "1000092795.jpg",
            "imgid": 0,
            "split": "test",
            "sentences": [{"raw": "Two men in a yard."}],
        },
        {"filename": "10002456.jpg", "imgid": 1, "split": "train", "sentences": [{"raw": "A dog runs."}]},
    ]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    for item in images:
        image(tmp_path / "flickr30k-images" / item["filename"])
    spec = load_task(
        "flickr30k",
        [f"karpathy_json={tmp_path / 'dataset_flickr30k.json'}", f"images={tmp_path / 'flickr30k-images'}"],
    )
    (query,) = spec.queries()
    assert query.id == "0" and query.answers == ["Two men in a yard."] and kinds(query) == ["image"]
    assert [d.id for d in spec.demos()] == ["1"]


# ------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize("name", ["vqav2", "okvqa"])
def test_vqa_official_layout(tmp_path: Path, name: str) -> None:
    image(tmp_path / "val2014" / "COCO_val2014_000000262148.jpg")
    files = {"questions": "vqav2_questions.json", "annotations": "vqav2_annotations.json"}
    overrides = [f"{k}={FORMATS / v}" for k, v in files.items()] + [f"images={tmp_path / 'val2014'}"]
    overrides += [f"demo_{k}={FORMATS / v}" for k, v in files.items()] + [
        f"demo_images={tmp_path / 'val2014'}"
    ]
    spec = load_task(name, overrides)
    assert (spec.kind, spec.metric) == ("generate", "vqa_accuracy")
    q1, q2 = spec.queries()
    assert (q1.id, q1.question) == ("262148000", "What colour is the umbrella?")
    assert len(q1.answers) == 10 and q1.answers[0] == "red" and sorted(q1.answers).count("red") == 7
    assert q2.demo_answer == "2" and q2.meta["answer_type"] == "number"
    assert kinds(q1) == ["image"]
    assert spec.template.render(q1, None)[1] == "Question: What colour is the umbrella? Short answer:"
    assert len(spec.demos()) == 2


def test_textvqa_layout(tmp_path: Path) -> None:
    data = {
        "dataset_name": "textvqa",
        "dataset_version": "0.5.1",
        "data": [
            {
                "question": "what brand is the phone?",
                "image_id": "003a8ae2ef43b901",
                "image_classes": ["Telephone"],
                "question_tokens": ["what", "brand", "is", "the", "phone"],
                "question_id": 34602,
                "set_name": "val",
                "answers": ["nokia"] * 8 + ["nokia phone", "toshiba"],
            }
        ],
    }
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(data))
    image(tmp_path / "train_images" / "003a8ae2ef43b901.jpg")
    spec = load_task(
        "textvqa",
        [f"annotations={tmp_path / 'TextVQA_0.5.1_val.json'}", f"images={tmp_path / 'train_images'}"],
    )
    (q,) = spec.queries()
    assert (q.id, q.question, q.demo_answer) == ("34602", "what brand is the phone?", "nokia")
    assert kinds(q) == ["image"] and len(q.answers) == 10


def test_vizwiz_layout(tmp_path: Path) -> None:
    answers = [{"answer": "coffee", "answer_confidence": "yes"}] * 6 + [
        {"answer": "unanswerable", "answer_confidence": "no"}
    ] * 4
    row = {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": answers}
    rows = [{**row, "answer_type": "other", "answerable": 1}]
    (tmp_path / "val.json").write_text(json.dumps(rows))
    image(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    spec = load_task("vizwiz", [f"annotations={tmp_path / 'val.json'}", f"images={tmp_path / 'val'}"])
    (q,) = spec.queries()
    assert (q.id, q.question, q.demo_answer) == ("VizWiz_val_00000000", "What is this?", "coffee")
    assert q.meta["answerable"] == 1 and kinds(q) == ["image"]


def test_vqa_format_errors(tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text(
        json.dumps({"questions": [{"question_id": 1, "image_id": 1, "question": "?"}]})
    )
    (tmp_path / "a.json").write_text(json.dumps({"annotations": []}))
    spec = load_task("vqav2", [f"questions={tmp_path / 'q.json'}", f"annotations={tmp_path / 'a.json'}"])
    with pytest.raises(DataFormatError, match="question 1 has no entry in"):
        spec.queries()


# ------------------------------------------------------------------------------ classification


def test_hateful_memes_layout(tmp_path: Path) -> None:
    rows = [
        {
            "id": 42953,
            "img": "img/42953.png",
            "label": 0,
            "text": "its their character not their color that matters",
        },
        {"id": 23058, "img": "img/23058.png", "label": 1, "text": "a mean meme"},
    ]
    write_jsonl(tmp_path / "dev_seen.jsonl", rows)
    for row in rows:
        image(tmp_path / row["img"])
    spec = load_task(
        "hateful_memes", [f"path={tmp_path / 'dev_seen.jsonl'}", f"demo_path={tmp_path / 'dev_seen.jsonl'}"]
    )
    assert (spec.kind, spec.metric) == ("classify", "roc_auc")
    a, b = spec.queries()
    assert (a.id, a.label, a.choices, b.label) == ("42953", "no", ["no", "yes"], "yes")
    assert kinds(a) == ["image"]
    assert (
        spec.template.render(b, None)[1]
        == "is an image with: 'a mean meme' written on it. Is it hateful? Answer:"
    )
    write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "label": 2}])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:1: label must be 0 or 1"):
        load_task("hateful_memes", [f"path={tmp_path / 'bad.jsonl'}"]).queries()


def test_image_folder_layout(tmp_path: Path) -> None:
    image(tmp_path / "val" / "golden_retriever" / "a.jpg")
    image(tmp_path / "val" / "golden_retriever" / "b.png")
    image(tmp_path / "val" / "n01440764" / "c.jpeg")
    (tmp_path / "val" / "n01440764" / "notes.txt").write_text("not an image")
    (tmp_path / "names.json").write_text(json.dumps({"n01440764": "tench"}))
    spec = load_task("image_folder", [f"root={tmp_path / 'val'}", f"class_names={tmp_path / 'names.json'}"])
    assert (spec.kind, spec.metric) == ("classify", "accuracy")
    examples = spec.queries()
    assert [(e.id, e.label) for e in examples] == [
        ("golden_retriever/a.jpg", "golden retriever"),
        ("golden_retriever/b.png", "golden retriever"),
        ("n01440764/c.jpeg", "tench"),
    ]
    assert examples[0].choices == ["golden retriever", "tench"]
    assert [e.id for e in spec.demos()] == [e.id for e in examples]
    assert kinds(examples[2]) == ["image"]


# ------------------------------------------------------------------------------ speech


def test_librispeech_layout(tmp_path: Path) -> None:
    root = tmp_path / "test-clean"
    shutil.copytree(FORMATS / "librispeech" / "test-clean", root)
    for utt in ("1089-134686-0000", "1089-134686-0001"):
        audio(root / "1089" / "134686" / f"{utt}.flac")
    spec = load_task("librispeech", [f"root={root}", f"demo_root={root}"])
    assert (spec.kind, spec.metric) == ("generate", "wer")
    first, _ = spec.queries()
    assert first.id == "1089-134686-0000"
    assert first.answers == ["the lantern swung slowly as the cart rolled down the hill toward the river"]
    (seg,) = first.segments
    assert seg.kind == "audio" and seg.sample_rate == 16000 and seg.text is None  # no transcript leak
    assert spec.template.render(first, None) == [seg, "Transcript:"]
    upper = load_task("librispeech", [f"root={FORMATS / 'librispeech' / 'test-clean'}", "lowercase=false"])
    assert upper.queries()[1].answers == ["NOBODY IN THE VILLAGE HAD SEEN SUCH A COLD MORNING IN MANY YEARS"]


def test_spoken_qa_layout(tmp_path: Path) -> None:
    rows = [
        {"audio": "clips/q1.flac", "question": "What colour is the car?", "answer": "red"},
        {"id": "q2", "audio": "clips/q2.wav", "question": "", "answer": ["two", "2"]},
    ]
    write_jsonl(tmp_path / "test.jsonl", rows)
    audio(tmp_path / "clips" / "q1.flac")
    audio(tmp_path / "clips" / "q2.wav")
    spec = load_task("spoken_qa", [f"path={tmp_path / 'test.jsonl'}"])
    assert (spec.kind, spec.metric) == ("generate", "accuracy")
    a, b = spec.queries()
    assert (a.id, a.question, a.answers) == ("test:1", "What colour is the car?", ["red"])
    assert (b.id, b.answers) == ("q2", ["two", "2"])
    assert kinds(a) == ["audio"] and kinds(b) == ["audio"]
    assert len(spec.demos()) == 2


def test_interleaved_jsonl_layout(tmp_path: Path) -> None:
    rows = [
        {
            "id": "q1",
            "segments": [
                {"image": "imgs/cat.png"},
                {"text": "A cat."},
                {"image": "imgs/dog.png"},
                {"audio": "bark.flac"},
            ],
            "question": "Which animal barks?",
            "answers": ["the dog", "dog"],
            "choices": ["the cat", "the dog"],
        },
        {"segments": [{"text": "Two plus two"}], "question": "Sum?", "answer": "4", "choices": ["3", "4"]},
    ]
    write_jsonl(tmp_path / "bench.jsonl", rows)
    image(tmp_path / "imgs" / "cat.png")
    image(tmp_path / "imgs" / "dog.png", (10, 10, 200))
    audio(tmp_path / "bark.flac")
    spec = load_task("interleaved_jsonl", [f"path={tmp_path / 'bench.jsonl'}"])
    assert (spec.kind, spec.metric) == ("classify", "accuracy")
    q1, q2 = spec.queries()
    assert kinds(q1) == ["image", "text", "image", "audio"] and q1.label == "the dog"
    assert q2.id == "bench:2" and q2.label == "4"
    parts = spec.template.render(q1, None)
    assert parts[1] == "A cat." and parts[-1] == " Question: Which animal barks? Answer:"
    write_jsonl(tmp_path / "bad.jsonl", [{"segments": [{"image": "a.png", "text": "x"}], "answer": "y"}])
    with pytest.raises(DataFormatError, match="exactly one of image, audio, text"):
        load_task("interleaved_jsonl", [f"path={tmp_path / 'bad.jsonl'}"])


# ------------------------------------------------------------------------------ demo tasks


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-data"
    mix = {"caption": 0.4, "vqa": 0.3, "speech_caption": 0.3}
    build_demo_dataset(out, samples=30, shards=2, seed=0, kinds_mix=mix, progress=False)
    return out


def test_demo_tasks_default_to_the_demo_build_and_say_how_to_make_it(tmp_path: Path) -> None:
    assert task_config("shapes_count").heldout == Path("runs/demo-data/heldout")
    spec = load_task("shapes_caption", [f"heldout={tmp_path / 'runs/demo-data/heldout'}"])
    with pytest.raises(UserError, match=r"mmpt data build --format demo --out runs/demo-data"):
        spec.queries()


def test_shapes_classify(demo_data: Path) -> None:
    spec = load_task("shapes_classify", [f"heldout={demo_data / 'heldout'}"])
    assert (spec.kind, spec.metric) == ("classify", "accuracy")
    queries, demos = spec.queries(), spec.demos()
    assert queries and len(demos) >= 20
    for ex in [*queries, *demos]:
        assert ex.label in ex.choices and ex.choices in (list(COLOURS), list(SHAPE_KINDS))
        shapes = ex.segments[0].meta["shapes"]
        if ex.meta["topic"] == "colour":  # the answer is read off the scene
            kind = ex.question.removeprefix("What colour ").split(" ", 2)[2].rstrip("?").removesuffix("s")
            assert {s["colour"] for s in shapes if s["kind"] == kind} == {ex.label}
        else:
            colour = ex.question.removeprefix("What shape is ").rstrip("?")
            assert {s["kind"] for s in shapes if s["colour"] == colour} == {ex.label}
    assert {ex.meta["topic"] for ex in demos} == {"colour", "shape"}
    assert all(ex.id.startswith("heldout/") for ex in queries) and all(
        ex.id.startswith("train/") for ex in demos
    )
    again = load_task("shapes_classify", [f"heldout={demo_data / 'heldout'}"])
    assert [(e.id, e.question) for e in again.demos()] == [(e.id, e.question) for e in demos]


def test_shapes_count(demo_data: Path) -> None:
    spec = load_task("shapes_count", [f"heldout={demo_data / 'heldout'}", "max_demos=5"])
    assert (spec.kind, spec.metric) == ("generate", "vqa_accuracy")
    queries, demos = spec.queries(), spec.demos()
    assert len(demos) == 5
    vqa = [ex for ex in [*queries, *demos] if ex.meta["sample_kind"] == "vqa"]
    assert vqa
    for ex in [*queries, *demos]:
        assert ex.question.startswith("How many ") and ex.answers == [ex.answers[0]] * 10
        assert ex.answers[0] in ex.choices == ["0", "1", "2", "3", "4", "5", "6"]
        shapes = ex.segments[0].meta["shapes"]
        word = ex.question.removeprefix("How many ").split(" ")[0]
        count = sum(word in (s["colour"], s["kind"] + "s") or word == "shapes" for s in shapes)
        assert ex.answers[0] == str(count)
    assert load_task("shapes_count", ["kind=classify"]).kind == "classify"


def test_shapes_caption_and_asr(demo_data: Path) -> None:
    caption = load_task("shapes_caption", [f"heldout={demo_data / 'heldout'}"])
    assert (caption.kind, caption.metric, caption.template.separator) == ("generate", "cider", "")
    (query,) = caption.queries()
    assert kinds(query) == ["image"] and query.answers[0].endswith(".")
    assert caption.template.render(query, None) == [query.segments[0]]
    assert caption.template.continuation(query.answers[0]) == query.answers[0]
    asr = load_task("shapes_asr", [f"heldout={demo_data / 'heldout'}", f"train={demo_data}"])
    assert (asr.kind, asr.metric) == ("generate", "wer")
    (query,) = asr.queries()
    (seg,) = query.segments
    assert seg.kind == "audio" and seg.text is None and seg.sample_rate == 16000 and len(seg.audio) > 1000
    assert query.answers[0][0].isupper()
    assert len(asr.demos()) == 9  # the training shards' speech_caption samples
