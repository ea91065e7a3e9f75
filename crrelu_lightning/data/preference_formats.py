"""Preference datasets as distributed: Anthropic HH, Stanford SHP and TRL-style records.

Every reader returns ``PromptGroup``s — one per distinct prompt, in order of first appearance, holding
its responses, the preference pairs between them and the SFT target — as the reference DPO code groups
them (docs/language.md, "Preference data").

* ``hh``: ``{"chosen", "rejected"}`` transcripts. Prompt = the text up to and including the last
  ``"\\n\\nAssistant:"`` of ``chosen``; responses = the rest. SFT target = the chosen response (of the
  prompt's last pair).
* ``shp``: ``{"history", "human_ref_A", "human_ref_B", "labels", "score_A", "score_B", ...}``. Prompt =
  ``"\\n\\nHuman: " + history + "\\n\\nAssistant:"``, responses ``" " + ref``; ``labels == 1`` means A is
  preferred. Only pairs with score ratio ``max(sA/sB, sB/sA) >= 2`` are kept; SFT target = the
  highest-scored response of the prompt.
* ``trl``: ``{"prompt", "chosen", "rejected"}`` as strings (used verbatim), or as lists of
  ``{"role", "content"}`` messages rendered with ``render_messages``; without ``prompt``, message lists
  share their prompt as the common leading messages (TRL's implicit prompt). SFT target as for hh.

Folder layouts (``split_files``): HH ``<subset>/<split>.jsonl.gz``, SHP ``<domain>/<split>.json``
(JSON Lines despite the name), TRL ``<split>.jsonl[.gz]`` / ``<split>.parquet`` / ``<split>-*.parquet``
(also under ``<subset>/`` or ``data/``). A folder holding the split file itself is one subset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from crrelu_lightning.data.records import BadRecords, MalformedRecordError, iter_records

ASSISTANT = "\n\nAssistant:"
ROLE_NAMES = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}
SHP_MIN_SCORE_RATIO = 2.0
SUFFIXES = {
    "hh": (".jsonl.gz", ".jsonl", ".json.gz", ".json"),
    "shp": (".json", ".jsonl", ".json.gz", ".jsonl.gz"),
    "trl": (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet"),
}


@dataclass
class PromptGroup:
    """One prompt with its responses; ``pairs`` are (preferred, dispreferred) indices into ``responses``."""

    prompt: str
    responses: List[str] = field(default_factory=list)
    pairs: List[Tuple[int, int]] = field(default_factory=list)
    sft_target: str = ""
    scores: List[float] = field(default_factory=list)

    def add_pair(self, chosen: str, rejected: str, scores: Optional[Tuple[float, float]] = None) -> None:
        n = len(self.responses)  # each pair appends its two responses, as the reference code does
        self.responses += [chosen, rejected]
        self.pairs.append((n, n + 1))
        if scores is not None:
            self.scores += list(scores)


# ---------------------------------------------------------------- message lists (TRL conversational)
def render_messages(messages: Sequence[Dict[str, Any]]) -> str:
    """HH-style transcript: ``"\\n\\n<Role>: <content>"`` per message, roles user/human -> Human,
    assistant -> Assistant, system -> System. Prompt + response renders to the whole conversation."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLE_NAMES:
            raise MalformedRecordError(f"message {i} must be {{'role': one of {sorted(ROLE_NAMES)}, "
                                       f"'content': str}}, got {str(m)[:80]!r}")
        out.append(f"\n\n{ROLE_NAMES[m['role']]}: {m['content']}")
    return "".join(out)


def _render_prompt(messages: Sequence[Dict[str, Any]]) -> str:
    return render_messages(messages) + ASSISTANT


def _render_response(messages: Sequence[Dict[str, Any]]) -> str:
    """The continuation of ``_render_prompt``: the first (assistant) message without its role label."""
    if not messages:
        raise MalformedRecordError("empty response message list")
    first = messages[0]
    if not (isinstance(first, dict) and first.get("role") == "assistant"):
        raise MalformedRecordError(f"a response must start with an assistant message, got {str(messages[0])[:80]!r}")
    return render_messages(messages)[len("\n\nAssistant:"):]


# ---------------------------------------------------------------- per-record parsers
def _str_fields(rec: Dict[str, Any], *keys: str) -> List[str]:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise MalformedRecordError(f"missing field(s) {missing} (has {sorted(rec)[:8]})")
    bad = [k for k in keys if not isinstance(rec[k], str)]
    if bad:
        raise MalformedRecordError(f"field(s) {bad} must be strings")
    return [rec[k] for k in keys]


def parse_hh(rec: Dict[str, Any]) -> Tuple[str, str, str]:
    chosen, rejected = _str_fields(rec, "chosen", "rejected")
    cut = chosen.rfind(ASSISTANT)
    if cut < 0:
        raise MalformedRecordError(f"'chosen' has no {ASSISTANT!r} turn")
    prompt = chosen[: cut + len(ASSISTANT)]
    if not rejected.startswith(prompt):
        raise MalformedRecordError("'rejected' does not share the prompt of 'chosen'")
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def _score(rec: Dict[str, Any], key: str) -> float:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise MalformedRecordError(f"{key!r} must be a number >= 0, got {v!r}")
    return float(v)


def shp_score_ratio(a: float, b: float) -> float:
    """max(a/b, b/a); a zero score against a positive one is an infinite ratio, two zeros a ratio of 1."""
    if a == b:
        return 1.0
    return float("inf") if min(a, b) == 0 else max(a / b, b / a)


def parse_shp(rec: Dict[str, Any]) -> Optional[Tuple[str, str, str, Tuple[float, float]]]:
    """(prompt, chosen, rejected, (score_chosen, score_rejected)), or None when the ratio is below 2."""
    history, a, b = _str_fields(rec, "history", "human_ref_A", "human_ref_B")
    label = rec.get("labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise MalformedRecordError(f"'labels' must be 0 or 1, got {label!r}")
    sa, sb = _score(rec, "score_A"), _score(rec, "score_B")
    if shp_score_ratio(sa, sb) < SHP_MIN_SCORE_RATIO:
        return None
    prompt = "\n\nHuman: " + history + ASSISTANT
    if label == 1:
        return prompt, " " + a, " " + b, (sa, sb)
    return prompt, " " + b, " " + a, (sb, sa)


def parse_trl(rec: Dict[str, Any]) -> Tuple[str, str, str]:
    for k in ("chosen", "rejected"):
        if k not in rec:
            raise MalformedRecordError(f"missing field {k!r} (has {sorted(rec)[:8]})")
    prompt, chosen, rejected = rec.get("prompt"), rec["chosen"], rec["rejected"]
    if prompt is None:  # implicit prompt: the common leading messages
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise MalformedRecordError("no 'prompt' field: an implicit prompt needs 'chosen'/'rejected' message lists")
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise MalformedRecordError("'chosen' and 'rejected' share no leading messages to use as the prompt")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
        return prompt, chosen, rejected
    if isinstance(prompt, list) and isinstance(chosen, list) and isinstance(rejected, list):
        return _render_prompt(prompt), _render_response(chosen), _render_response(rejected)
    raise MalformedRecordError("'prompt', 'chosen' and 'rejected' must be all strings or all message lists, got "
                               f"{type(prompt).__name__}, {type(chosen).__name__}, {type(rejected).__name__}")


# ---------------------------------------------------------------- files -> prompt groups
def read_groups(fmt: str, files: Iterable[Path], on_error: str = "skip", max_bad_fraction: float = 0.1,
                stats: Optional[Dict[str, int]] = None) -> List[PromptGroup]:
    """Parse and group the records of ``files`` (one split). ``stats`` (if given) receives
    ``records``, ``malformed``, ``filtered`` (SHP pairs below the score ratio) and ``pairs`` counts."""
    if fmt not in PARSERS:
        raise ValueError(f"format must be one of {sorted(PARSERS)}, got {fmt!r}")
    files = [Path(f) for f in files]
    report = BadRecords(fmt, on_error, max_bad_fraction)
    groups: Dict[str, PromptGroup] = {}
    filtered = 0
    for path in files:
        for line, rec in iter_records(path):
            try:
                if isinstance(rec, Exception):
                    raise rec
                if not isinstance(rec, dict):
                    raise MalformedRecordError(f"expected a JSON object, got {type(rec).__name__}")
                parsed = PARSERS[fmt](rec)
            except MalformedRecordError as e:
                report.bad(path, line, str(e))
                continue
            report.ok()
            if parsed is None:
                filtered += 1
                continue
            prompt, chosen, rejected, *scores = parsed
            group = groups.setdefault(prompt, PromptGroup(prompt))
            group.add_pair(chosen, rejected, scores[0] if scores else None)
            group.sft_target = chosen
    out = list(groups.values())
    for g in out:
        if g.scores:  # SHP: the highest-scored response (first of equals)
            g.sft_target = g.responses[max(range(len(g.responses)), key=lambda i: (g.scores[i], -i))]
    n_pairs = sum(len(g.pairs) for g in out)
    report.finish(n_pairs, ", ".join(map(str, files)) or "(no files)")
    if stats is not None:
        stats.update(records=report.seen, malformed=len(report.locations), filtered=filtered, pairs=n_pairs)
    return out


PARSERS: Dict[str, Callable[[Dict[str, Any]], Any]] = {"hh": parse_hh, "shp": parse_shp, "trl": parse_trl}


def _split_file(folder: Path, fmt: str, split: str) -> List[Path]:
    for suffix in SUFFIXES[fmt]:
        f = folder / f"{split}{suffix}"
        if f.is_file():
            return [f]
    if fmt == "trl":  # Hugging Face's sharded Parquet naming: train-00000-of-00002.parquet
        for base in (folder, folder / "data"):
            shards = sorted(base.glob(f"{split}-*.parquet"))
            if shards:
                return shards
    return []


def split_files(fmt: str, root: Path, split: str, subsets: Optional[Sequence[str]] = None) -> List[Path]:
    """The files of ``split`` under ``root``: a file itself, a folder holding the split file (one subset),
    or a folder of subset/domain folders (all, or the chosen ``subsets``, sorted)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"preference data path {str(root)!r} does not exist")
    own = _split_file(root, fmt, split)
    if own and not subsets:
        return own
    available = {d.name: files for d in sorted(root.iterdir()) if d.is_dir() and (files := _split_file(d, fmt, split))}
    if subsets:
        unknown = [s for s in subsets if s not in available]
        if unknown:
            raise FileNotFoundError(f"{root}: no {split} file for subset(s) {unknown}; available: {sorted(available)}")
        return [f for s in subsets for f in available[s]]
    if not available:
        names = " or ".join(f"{split}{s}" for s in SUFFIXES[fmt])
        raise FileNotFoundError(f"{root}: no {names} in it or in its subfolders (layout: docs/language.md)")
    return [f for files in available.values() for f in files]
