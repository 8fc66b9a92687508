"""Text benchmarks through lm-evaluation-harness, offline, on our own model in-process.

:class:`MmptHarnessLM` implements lm-eval's ``LM`` interface (``loglikelihood``,
``loglikelihood_rolling``, ``generate_until``) on the LLM of a loaded model and the run's
own tokenizer, so any lm-eval task YAML runs on a run directory, a checkpoint or an export
without converting it. Task YAMLs over local JSON/JSONL files (``dataset_path: json`` with
``dataset_kwargs.data_files``) need no network; lm-eval's bundled tasks that download
datasets do, and fail offline with lm-eval's own error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmpretrain.errors import UserError
from mmpretrain.eval.model_io import LoadedModel, load_for_eval


def _lm_base() -> type:
    try:
        from lm_eval.api.model import LM
    except ImportError as exc:
        raise UserError(
            f"lm-evaluation-harness is not installed ({exc}); pip install 'mmpretrain-lm[eval]'"
        ) from None
    return LM


class MmptHarnessLM(_lm_base()):  # type: ignore[misc]
    """lm-eval ``LM`` over an mmpretrain model: scores and generates with its LLM."""

    def __init__(self, loaded: LoadedModel, max_length: int = 2048) -> None:
        super().__init__()
        self.loaded = loaded
        self.llm = loaded.model.llm.eval()
        self.tokenizer = loaded.tokenizer
        self.max_length = max_length

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    @torch.no_grad()
    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities of every next token for the (left-truncated) sequence ``ids``."""
        ids = ids[-(self.max_length + 1) :]
        logits = self.llm(input_ids=torch.tensor([ids[:-1]])).logits[0].float()
        return F.log_softmax(logits, dim=-1)

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """Sum of log-probabilities of each continuation given its context, and whether it is greedy."""
        results = []
        for request in requests:
            context, continuation = request.args
            prefix = [self.tokenizer.eos_id, *self._encode(context)]
            target = self._encode(continuation)
            if not target:
                results.append((0.0, True))
                continue
            logprobs = self._logprobs(prefix + target)[-len(target) :]
            wanted = torch.tensor(target)
            score = logprobs.gather(1, wanted[:, None]).sum().item()
            greedy = bool((logprobs.argmax(dim=-1) == wanted).all())
            results.append((score, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """Log-likelihood of whole texts: every token scored once, in disjoint windows of
        ``max_length`` predictions (lm-eval's definition without overlap)."""
        results = []
        for request in requests:
            ids = [self.tokenizer.eos_id, *self._encode(request.args[0])]
            total = 0.0
            for start in range(0, len(ids) - 1, self.max_length):
                window = ids[start : start + self.max_length + 1]
                logprobs = self._logprobs(window)
                total += logprobs.gather(1, torch.tensor(window[1:])[:, None]).sum().item()
            results.append(total)
        return results

    @torch.no_grad()
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy generation until a stop string, EOS or ``max_gen_toks`` (KV cache)."""
        outputs = []
        for request in requests:
            context, kwargs = request.args
            stops = kwargs.get("until") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            ids = ([self.tokenizer.eos_id, *self._encode(context)])[-self.max_length :]
            past, new, text = None, [], ""
            step_input = torch.tensor([ids])
            for _ in range(int(kwargs.get("max_gen_toks", 64))):
                out = self.llm(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1].argmax())
                if token == self.tokenizer.eos_id:
                    break
                new.append(token)
                text = self.tokenizer.decode(new)
                if any(stop in text for stop in stops):
                    text = min((text.split(stop)[0] for stop in stops if stop in text), key=len)
                    break
                step_input = torch.tensor([[token]])
            outputs.append(text)
        return outputs


def run_lm_eval(
    checkpoint: str | Path, task_files: list[str], limit: int | None = None, max_length: int = 2048
) -> dict[str, Any]:
    """Run lm-eval task YAMLs (local files) on ``checkpoint``; lm-eval's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    paths = [Path(f) for f in task_files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"lm-eval task file(s) not found: {', '.join(missing)}")
    loaded = load_for_eval(checkpoint)
    manager = TaskManager(
        include_path=sorted({str(p.parent.resolve()) for p in paths}), include_defaults=False
    )
    names = [_task_name(p) for p in paths]
    model = MmptHarnessLM(loaded, max_length=max_length)
    return dict(
        simple_evaluate(model=model, tasks=names, task_manager=manager, limit=limit, log_samples=False)
    )


def _task_name(path: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), str):
        raise UserError(f"{path}: an lm-eval task YAML needs a `task:` name")
    return str(data["task"])
