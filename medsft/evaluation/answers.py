"""Reading which multiple-choice option a reasoning model chose, out of its free-text answer.

Why: a model trained on medical-o1 answers in prose ("The most likely diagnosis is parvovirus B19
infection"), not with a bare letter, and its reasoning weighs every option ("option A fits the anemia,
but…"), so MC accuracy needs a careful extractor. It reads only the answer after the reasoning
(`</think>` or `## Final Response`, formats.split_reasoning); an output whose reasoning never closed
has no answer. In the answer it reads, in three tiers:
1. explicit statements ("the answer is C", "Answer: (C)", "I would choose C", "not A but C",
   "\\boxed{C}"): the FIRST one counts, unless a later one revises it ("…but on reflection the answer
   is E"). HuatuoGPT-o1's scorer reports the better of its first- and last-match accuracies, which is
   optimistic; one fixed rule is not. The last statement is kept too, to compute their number;
2. letters used as labels ("(C)", "**C**", "C.", "Option C: …");
3. the text of an option ("…is parvovirus B19 infection"), whole words only.
Negated mentions ("not A", "A is wrong", "rather than B") never count, nor the article "A", the
pronoun "I" or a letter inside a word. Letters are the item's own option letters (A–Z, any count).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from medsft.data.formats import HUATUO_FINAL, HUATUO_THINKING, THINK_CLOSE, THINK_OPEN, split_reasoning


@dataclass(frozen=True)
class Item:
    """One multiple-choice question of a benchmark: its options by letter and the right letter."""

    question: str
    options: dict[str, str]
    answer_idx: str
    source: str


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # an item's options are any of these; without options, A–E
DEFAULT_LETTERS = "ABCDE"
HOW = ("statement", "label", "text", "none", "unclosed")  # how a reading was made; the last two: no answer


@dataclass(frozen=True)
class Reading:
    first: str | None  # the choice (first explicit statement, unless revised): the reported metric
    last: str | None  # the last statement of the same tier, for HuatuoGPT-o1's best-of-first-and-last
    how: str  # one of HOW


_NEG_BEFORE = re.compile(r"(?i)(?:\bnot|n't|\bnor|rather than|instead of|exclud\w*|rule[sd]? out|\bunlike|\bno)"
                         r"\s*(?:option|choice|answer)?\s*[\(\[\*]*$")
_NEG_AFTER = re.compile(r"(?i)^[\)\]\*]*\s*(?:is|seems|would be|are)?\s*(?:incorrect|wrong|unlikely|false|ruled out|"
                        r"excluded|not)")
_REVISION = re.compile(r"(?i)on (?:second thought|reflection|further (?:thought|reflection|review))|\bactually\b|"
                       r"\bwait\b|\bcorrection\b|\bi was wrong\b|\bupon (?:review|reflection)\b|\bre-?consider")


@lru_cache(maxsize=64)
def _patterns(letters: str) -> tuple[list[str], list[str]]:
    """(statements, labels) for one set of option letters."""
    L = f"[{letters}]"
    low = f"[{letters.lower()}]"
    end = r"(?![A-Za-z0-9])"
    # a capital after "but"/"it is" must end the phrase, else "but I think…", "it is A common…" would count
    phrase_end = r"(?=\s*(?:[^\sA-Za-z0-9-]|$)|\s+(?:is|seems|because|since)\b)"
    lower_end = r"(?=\s*(?:[\.\)\]:,;!]|$))"  # "the answer is c." counts, "the answer is a rare…" does not
    keyword = r"(?i:\b(?:answer|choice|option|diagnosis|response))"
    verb = r"(?i:is|would be|:|=|-)"
    # Linear time on any output: no two quantifiers in a row may both match the same character, else a
    # run of blanks is re-split at every start ("answer:" + 2,000 spaces, 3,000 blank lines took minutes).
    # So "[\s*]* (option)? [\s([*]*" is written "([\s*]* option)? [\s([*]*" (the same texts match).
    gap = r"(?:[\s\*]*(?i:option|choice))?[\s\(\[\*]*"
    verb_gap = r"(?:\s*(?i:option|choice))?[\s\(\[\*]*"
    statements = [
        rf"{keyword}[\s\*]*{verb}{gap}(?:({L})[\)\]\*]*{end}|({low}){lower_end})",
        rf"(?i:\b(?:choose|chose|pick|select|go with)){verb_gap}({L})[\)\]\*]*{end}",
        rf"(?i:\bbut|\binstead|\bit is|\bit's|\bthis is){verb_gap}({L})[\)\]\*]*{phrase_end}",
        rf"(?<![A-Za-z0-9])({L})\)?\s+(?i:is|would be)\s+(?i:the\s+)?(?i:correct|right|best|most likely)\b",
        rf"\\boxed\{{\s*(?:\\text\{{\s*)?({L}){end}",
    ]
    labels = [
        rf"(?i:\boption)\s*[\(\[\*]*({L})[\)\]\*]*{end}",
        rf"\(({L})\)",
        rf"\*\*({L})\*\*",
        # a letter opening its line; blanks before it stay on that line (a line start before blank lines
        # would scan them all, once per line: cubic)
        rf"(?m)^[^\S\n]*(?:[\*#>-]+[^\S\n]*)?({L})\s*[\.\):](?:\s|$)",
        rf"(?<![A-Za-z0-9])({L})\s*[\.\)]\s*$",
    ]
    return statements, labels


def _negated(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 25):start]
    after = text[end:end + 25]
    return bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(after))


def _candidates(text: str, patterns: Iterable[str]) -> list[tuple[int, int, str]]:
    """(start, end, letter) of every non-negated match, in reading order."""
    found = set()
    for pattern in patterns:
        for m in re.finditer(pattern, text):
            group = next(g for g in range(1, (m.lastindex or 1) + 1) if m.group(g) is not None)
            if not _negated(text, m.start(group), m.end(group)):
                found.add((m.start(group), m.end(group), m.group(group).upper()))
    return sorted(found)


def _first_unrevised(text: str, found: list[tuple[int, int, str]]) -> str:
    """The first statement, replaced by a later one only where the text between them revises it.
    The revisions are found once (searching each gap again was quadratic in the statements)."""
    revisions = [(m.start(), m.end()) for m in _REVISION.finditer(text)]
    starts = [start for start, _ in revisions]
    chosen = found[0]
    for later in found[1:]:
        i = bisect_left(starts, chosen[1])  # the first revision after the chosen statement ends soonest
        if i < len(revisions) and revisions[i][1] <= later[0]:
            chosen = later
    return chosen[2]


def read_choice(answer: str, options: dict[str, str] | None = None) -> Reading:
    """How the text of an answer (reasoning already removed) chooses among `options`."""
    text = answer.replace(THINK_CLOSE, " ").strip()
    if not text:
        return Reading(None, None, "none")
    letters = "".join(sorted(k for k in options if len(k) == 1 and k in LETTERS)) if options else DEFAULT_LETTERS
    bare = re.sub(r"[\s\*\.\)\(\[\]:]", "", text)
    if len(bare) == 1 and bare.upper() in letters:
        return Reading(bare.upper(), bare.upper(), "statement")
    statements, labels = _patterns(letters)
    for how, patterns in (("statement", statements), ("label", labels)):
        found = _candidates(text, patterns)
        if found:
            return Reading(_first_unrevised(text, found) if how == "statement" else found[0][2], found[-1][2], how)
    chosen = _by_option_text(text, options) if options else None
    return Reading(chosen, chosen, "text") if chosen else Reading(None, None, "none")


def reasoning_unclosed(text: str, fmt: str = "think") -> bool:
    """The output opened a reasoning block and never closed it (it ran out of tokens): no answer."""
    s = text.strip()
    if THINK_CLOSE in s or HUATUO_FINAL in s:
        return False
    return THINK_OPEN in s or s.startswith(HUATUO_THINKING) or (fmt == "huatuo" and bool(s))


def read_output(text: str, options: dict[str, str] | None, fmt: str = "think") -> Reading:
    """The choice in a whole generated output: only the answer after the reasoning is read."""
    if not text.strip():
        return Reading(None, None, "none")
    if reasoning_unclosed(text, fmt):
        return Reading(None, None, "unclosed")
    return read_choice(split_reasoning(text, fmt).answer, options)


def _by_option_text(text: str, options: dict[str, str]) -> str | None:
    low = text.lower()
    hits = []
    for letter, option in options.items():
        opt = option.lower().strip().rstrip(".")
        if not opt:
            continue
        # whole words: PubMedQA's "no" must not match inside "diagnosis"
        for m in re.finditer(rf"(?<![a-z0-9]){re.escape(opt)}(?![a-z0-9])", low):
            if not _negated(low, m.start(), m.end()):
                hits.append((m.start(), -len(opt), letter))
    if not hits:
        return None
    # an option whose text contains another's ("iron deficiency anemia" ⊃ "anemia"): the longest wins
    letters = {letter for _, _, letter in hits}
    if len(letters) == 1:
        return letters.pop()
    stated = re.search(r"(?i)(?:answer|diagnosis|cause|choice)\s+(?:is|would be)\b|most likely", text)
    after = [h for h in hits if stated and h[0] >= stated.start()]
    pool = after or hits
    longest = min(pool, key=lambda h: (h[1], h[0]))
    return longest[2]
