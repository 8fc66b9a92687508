"""Hostile checkpoints and models: a run directory can come from anywhere.

- every ``torch.load`` in the repository passes ``weights_only=True`` (an AST scan), and
  nothing else deserialises pickles (pickle/dill/joblib/``np.load(allow_pickle=True)``/
  ``yaml.load``/``torch.jit.load``); no ``torch.save`` in the package: checkpoints and exports
  are safetensors + JSON;
- a pickle planted in a checkpoint under any file name never executes when a run is resumed,
  evaluated, exported or used as ``train.init_from``; one put in place of the real files is
  a one-line error (exit 2), still without executing;
- ``trust_remote_code`` is off unless a config sets it (scan and behaviour);
- wrong shapes or missing tensors fail naming the tensor.

The DeepSpeed backend's own checkpoint files are pickles that DeepSpeed's code loads: that
backend documents that it trusts its run directory; nothing here reads them.
"""

from __future__ import annotations

import ast
import functools
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hostile_inputs import pickle_payload, torch_payload_bytes
from reliability_helpers import run_quietly, train_argv
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("mmpretrain", "data", "encoders", "connectors", "scripts", "tests")
PACKAGE_DIRS = ("mmpretrain", "data", "encoders", "connectors")
TENSOR_FILE = "tensors/model-00001-of-00001.safetensors"
INDEX_FILE = "tensors/model.safetensors.index.json"

# names a pickle could hide under in a checkpoint (HF Trainer, DCP, torch, DeepSpeed files)
PLANTED_NAMES = (
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "training_args.bin",
    "pytorch_model.bin",
    "model.pkl",
    "state.pickle",
    "trainer_state.pt",
    "tensors/.metadata",
    "tensors/__0_0.distcp",
    "tensors/pytorch_model.bin",
    "tensors/model.pt",
    "deepspeed/ds/mp_rank_00_model_states.pt",
    "../../tokenizer/payload.pkl",
)


# ---------------------------------------------------------------------------- source scan


def python_files(dirs: tuple[str, ...] = SOURCE_DIRS) -> Iterator[Path]:
    for directory in dirs:
        yield from (REPO / directory).rglob("*.py")


@functools.cache
def _calls(path: Path) -> tuple[tuple[str, ast.Call], ...]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return tuple((ast.unparse(n.func), n) for n in ast.walk(tree) if isinstance(n, ast.Call))


def calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    """``(dotted callee, call)`` of every call in a file (``torch.load``, ``np.load``, ...)."""
    yield from _calls(path)


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_every_torch_load_passes_weights_only_true() -> None:
    offenders, seen = [], 0
    for path in python_files():
        for callee, call in calls(path):
            if callee in ("torch.load", "load") and (callee == "torch.load" or _imports_torch_load(path)):
                seen += 1
                if not is_true(keyword(call, "weights_only")):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}")
    assert not offenders, offenders
    assert seen >= 2  # the scan finds the real calls (encoders' checkpoint loading)


def _imports_torch_load(path: Path) -> bool:
    return "from torch import load" in path.read_text(encoding="utf-8")


UNSAFE_CALLS = {
    "pickle.load": "unpickles",
    "pickle.loads": "unpickles",
    "pickle.Unpickler": "unpickles",
    "dill.load": "unpickles",
    "dill.loads": "unpickles",
    "joblib.load": "unpickles",
    "cloudpickle.load": "unpickles",
    "cloudpickle.loads": "unpickles",
    "torch.jit.load": "loads TorchScript (code)",
    "yaml.load": "yaml.load can build Python objects: use yaml.safe_load",
    "yaml.unsafe_load": "builds Python objects",
    "marshal.loads": "loads code objects",
    "shelve.open": "unpickles",
}


def test_nothing_else_deserialises_pickles_or_code() -> None:
    offenders = []
    for path in python_files():
        if path.parent.name == "security":
            continue  # this suite writes payloads on purpose
        for callee, call in calls(path):
            if callee in UNSAFE_CALLS:
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {callee} {UNSAFE_CALLS[callee]}")
            if callee.endswith(("np.load", "numpy.load")) and is_true(keyword(call, "allow_pickle")):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: np.load(allow_pickle=True)")
            if callee.endswith("from_pretrained") and is_true(keyword(call, "trust_remote_code")):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: trust_remote_code set to True")
    assert not offenders, offenders


def test_the_package_writes_no_pickles() -> None:
    """Checkpoints and exports are safetensors + JSON: the package never calls torch.save
    or asks transformers for pickled weights."""
    offenders = []
    for path in python_files(PACKAGE_DIRS):
        for callee, call in calls(path):
            if callee in ("torch.save", "pickle.dump", "pickle.dumps", "np.save") or (
                isinstance(keyword(call, "safe_serialization"), ast.Constant)
                and keyword(call, "safe_serialization").value is False  # type: ignore[union-attr]
            ):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)[:80]}")
    assert not offenders, offenders


def test_trust_remote_code_is_off_unless_a_config_sets_it() -> None:
    """Every call that passes trust_remote_code passes False or a config's field, and
    every config field named trust_remote_code defaults to False."""
    passed = []
    for path in python_files(PACKAGE_DIRS):
        for _, call in calls(path):
            value = keyword(call, "trust_remote_code")
            if value is None:
                continue
            passed.append(path)
            ok = (isinstance(value, ast.Constant) and value.value is False) or (
                isinstance(value, ast.Attribute) and value.attr == "trust_remote_code"
            )
            assert ok, f"{path.relative_to(REPO)}:{call.lineno}: trust_remote_code={ast.unparse(value)}"
    assert passed
    from mmpretrain.registry import LLMS

    for name in LLMS.names():
        config_class = LLMS.get(name).config_class
        if config_class is not None and "trust_remote_code" in config_class.model_fields:
            assert config_class.model_fields["trust_remote_code"].default is False, name


# ---------------------------------------------------------------------------- planted pickles


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def eval_task(tmp_path: Path) -> list[str]:
    rows = [
        {"segments": [{"text": "The king speaks of the sea."}], "question": "Who speaks?",
         "answers": ["king"], "choices": ["king", "queen"]},
        {"segments": [{"text": "The queen loves the moon."}], "question": "Who loves?",
         "answers": ["queen"], "choices": ["king", "queen"]},
    ]  # fmt: skip
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return ["--task", "interleaved_jsonl", "--set", f"path={task}", "--device", "cpu"]


def consumers(run: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that reads a run's checkpoint, as ``mmpt`` argv."""
    newest = run / "checkpoints" / "step_0000004"
    init = tmp_path / "init.yaml"
    init.write_text(
        (run / "config.yaml").read_text(encoding="utf-8")
        + "\n# a new run initialised from the planted one\n",
        encoding="utf-8",
    )
    return {
        "resume": train_argv(run / "config.yaml", run, "--resume"),
        "eval_run": ["eval", str(run), *eval_task(tmp_path), "--out", str(tmp_path / "eval.json")],
        "eval_checkpoint": ["eval", str(newest), *eval_task(tmp_path), "--out", str(tmp_path / "eval2.json")],
        "export_safetensors": ["export", str(run), "--to", "safetensors", "--out", str(tmp_path / "st")],
        "export_hf": ["export", str(newest), "--to", "hf", "--out", str(tmp_path / "hf")],
        "init_from": train_argv(
            run / "config.yaml", tmp_path / "fresh", "--set", f"train.init_from={run}", "--set",
            "train.max_steps=2",
        ),
    }  # fmt: skip


def torch_payload(marker: Path, path: Path) -> None:
    path.write_bytes(torch_payload_bytes(marker))


def plant(checkpoint: Path, marker: Path) -> list[Path]:
    planted = []
    for i, name in enumerate(PLANTED_NAMES):
        path = (checkpoint / name).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            torch_payload(marker, path)
        else:
            path.write_bytes(pickle_payload(marker))
        planted.append(path)
    return planted


def test_planted_pickles_never_execute(run_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    for checkpoint in (run_copy / "checkpoints").glob("step_*"):
        plant(checkpoint, marker)
    # the payloads work: unpickling one would create the marker
    with pytest.raises(Exception):  # noqa: B017 -- weights_only refuses them
        torch.load(run_copy / "checkpoints" / "step_0000004" / "scheduler.pt", weights_only=True)
    assert not marker.exists()
    for name, argv in consumers(run_copy, tmp_path).items():
        code, output = run_quietly(argv)
        assert code == 0, (name, output)
        assert not marker.exists(), f"{name} executed a planted pickle"


@pytest.mark.parametrize("replaced", [TENSOR_FILE, INDEX_FILE, "state.json", "COMMITTED"])
def test_a_pickle_in_place_of_a_checkpoint_file_is_an_error_not_code(
    run_copy: Path, tmp_path: Path, replaced: str
) -> None:
    marker = tmp_path / "PWNED"
    newest = run_copy / "checkpoints" / "step_0000004"
    if replaced == "COMMITTED":  # the marker's content is never parsed: the checkpoint loads
        (newest / replaced).write_bytes(pickle_payload(marker))
    else:
        torch_payload(marker, newest / replaced)
    for name, argv in consumers(run_copy, tmp_path).items():
        if name in ("init_from", "export_safetensors") or (replaced == "COMMITTED" and name != "resume"):
            continue  # the same reading code as resume and the other export
        code, output = run_quietly(argv)
        assert not marker.exists(), f"{name} executed the pickle in place of {replaced}"
        if replaced == "COMMITTED":
            assert code == 0, (name, output)
            continue
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in output, (name, output)
        assert str(newest) in errors[0] or "step_0000004" in errors[0], (name, errors)


# ---------------------------------------------------------------------------- safetensors everywhere


def is_pickle(path: Path) -> bool:
    data = path.read_bytes()[:4096]
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    if data.startswith(b"PK") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith((".pkl", "data.pkl")) for name in archive.namelist())
    return False


def test_checkpoints_and_exports_are_safetensors_and_json(run_copy: Path, tmp_path: Path) -> None:
    for name in ("export_safetensors", "export_hf"):
        code, output = run_quietly(consumers(run_copy, tmp_path)[name])
        assert code == 0, output
    outputs = [run_copy, tmp_path / "st", tmp_path / "hf"]
    files = [p for root in outputs for p in root.rglob("*") if p.is_file() and "tb" not in p.parts]
    pickled = [str(p) for p in files if is_pickle(p) or p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    assert not pickled, pickled
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) >= 3
    for path in weights:
        with safe_open(str(path), framework="pt") as handle:
            assert list(handle.keys())


# ---------------------------------------------------------------------------- trust_remote_code


def remote_code_model_dir(directory: Path, marker: Path) -> Path:
    """A local Llama (config + safetensors weights) whose config.json also asks for custom
    code, which would create ``marker`` when imported."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    code = f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaConfig as EvilConfig\n"
    (directory / "evil_config.py").write_text(code, encoding="utf-8")
    model_code = code + "from transformers import LlamaForCausalLM as EvilModel\n"
    (directory / "evil_model.py").write_text(model_code, encoding="utf-8")
    data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    data["auto_map"] = {
        "AutoConfig": "evil_config.EvilConfig",
        "AutoModelForCausalLM": "evil_model.EvilModel",
    }
    (directory / "config.json").write_text(json.dumps(data), encoding="utf-8")
    return directory


def test_remote_code_in_a_local_model_runs_only_when_enabled(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep ~/.cache clean
    import transformers

    # The trusted load registers the (aliased) Llama classes for auto classes process-wide;
    # later save_pretrained calls in this worker would then try to copy "custom code".
    for cls in (transformers.LlamaForCausalLM, transformers.LlamaConfig):
        monkeypatch.setattr(cls, "_auto_class", getattr(cls, "_auto_class", None))
    marker = tmp_path / "PWNED"
    model_dir = remote_code_model_dir(tmp_path / "llm", marker)

    def train_from(run: str, *extra: str) -> tuple[int, str]:
        return run_quietly(
            train_argv(
                trained_run / "config.yaml", tmp_path / run, "--set", f"model.llm.pretrained={model_dir}",
                "--set", "train.max_steps=1", "--set", "train.save_every=1", *extra,
            )
        )  # fmt: skip

    code, output = train_from("default")
    assert not marker.exists(), "custom model code ran without trust_remote_code"
    assert code == 0, output  # transformers' own Llama code loaded the weights
    code, output = train_from("trusted", "--set", "model.llm.trust_remote_code=true")
    assert marker.exists(), f"the payload is live: trusting the directory runs it ({output[-300:]})"


def test_a_tokenizer_asking_for_remote_code_never_runs_it(
    shards_and_tokenizer: tuple[Path, Path], tmp_path: Path
) -> None:
    from mmpretrain.data.tokenizer import load_tokenizer
    from mmpretrain.errors import UserError

    _, tokenizer = shards_and_tokenizer
    marker = tmp_path / "PWNED"
    hostile = tmp_path / "tokenizer"
    shutil.copytree(tokenizer, hostile)
    config = json.loads((hostile / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}
    (hostile / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (hostile / "evil_tokenizer.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n",
        encoding="utf-8",
    )
    try:
        load_tokenizer(hostile)
    except UserError as exc:
        assert "\n" not in str(exc)
    assert not marker.exists(), "tokenizer code from the directory ran"


# ---------------------------------------------------------------------------- wrong tensors


def rewrite_tensors(checkpoint: Path, change: str, name: str) -> None:
    path = checkpoint / TENSOR_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    if change == "missing":
        del tensors[name]
        index = json.loads((checkpoint / INDEX_FILE).read_text(encoding="utf-8"))
        del index["weight_map"][name]
        (checkpoint / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    else:
        tensors[name] = torch.zeros(3, 5)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("change", ["missing", "shape"])
def test_wrong_shapes_or_missing_tensors_fail_naming_the_tensor(
    run_copy: Path, tmp_path: Path, change: str
) -> None:
    name = "model.llm.model.layers.1.mlp.up_proj.weight"
    rewrite_tensors(run_copy / "checkpoints" / "step_0000004", change, name)
    for consumer, argv in consumers(run_copy, tmp_path).items():
        if consumer in ("export_hf", "eval_checkpoint"):
            continue  # the same readers as export_safetensors and eval_run
        code, output = run_quietly(argv)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in output, (consumer, output)
        assert "layers.1.mlp.up_proj.weight" in errors[0], (consumer, errors)
