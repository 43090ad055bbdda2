"""Reading which multiple-choice option a reasoning model chose, out of its free-text answer.

Why: a model trained on medical-o1 answers in prose ("The most likely diagnosis is parvovirus B19
infection"), not with a bare letter, so MC accuracy needs a careful extractor. It prefers explicit
statements ("the answer is C", "Option C:"), ignores negated mentions ("not A but C", "A is wrong"),
never reads the article "A" or a letter inside a word, and falls back to the option's own text.
"""

from __future__ import annotations

import re

from medsft.formats import THINK_CLOSE

LETTERS = "ABCDE"
_L = f"[{LETTERS}]"
# explicit statements of the choice (words case-insensitive; the letter may be lower case here)
_STRONG = [
    rf"(?i:answer|choice|option|diagnosis)[\s\*]*(?i:is|would be|:|=|-)?[\s\*]*(?i:option|choice)?[\s\(\[\*]*({_L}|[a-e])[\)\]\*]*(?![A-Za-z0-9])",
    rf"(?i:choose|chose|pick|select|go with)\s*(?i:option|choice)?[\s\(\[\*]*({_L})[\)\]\*]*(?![A-Za-z0-9])",
    rf"(?i:\bbut|\binstead|\bit is|\bit's|\bthis is)\s*(?i:option|choice)?[\s\(\[\*]*({_L})[\)\]\*]*(?![A-Za-z0-9-])",
]
# weaker marks of a letter used as a label
_MEDIUM = [
    rf"\(({_L})\)",
    rf"\*\*({_L})\*\*",
    rf"(?m)^\s*[\*#>-]*\s*({_L})\s*[\.\):](?:\s|$)",
    rf"(?<![A-Za-z0-9])({_L})\s*[\.\)]\s*$",
]
_NEG_BEFORE = re.compile(r"(?i)(?:\bnot|n't|\bnor|rather than|instead of|exclud\w*|rule[sd]? out|\bunlike|\bno)"
                         r"\s*(?:option|choice|answer)?\s*[\(\[\*]*$")
_NEG_AFTER = re.compile(r"(?i)^[\)\]\*]*\s*(?:is|seems|would be|are)?\s*(?:incorrect|wrong|unlikely|false|ruled out|"
                        r"excluded|not)")


def _negated(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 25):start]
    after = text[end:end + 25]
    return bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(after))


def _candidates(text: str, patterns) -> list[tuple[int, str]]:
    found = []
    for pattern in patterns:
        for m in re.finditer(pattern, text):
            if not _negated(text, m.start(1), m.end(1)):
                found.append((m.start(1), m.group(1).upper()))
    return sorted(found)


def extract_choice(answer: str, options: dict[str, str] | None = None) -> str | None:
    """The letter the text chooses, or None."""
    text = answer.replace(THINK_CLOSE, " ").strip()
    if not text:
        return None
    bare = re.sub(r"[\s\*\.\)\(\[\]:]", "", text)
    if len(bare) == 1 and bare.upper() in LETTERS:
        return bare.upper()
    strong = _candidates(text, _STRONG)
    if strong:
        return strong[-1][1]
    medium = _candidates(text, _MEDIUM)
    if medium:
        return medium[-1][1]
    if options:
        return _by_option_text(text, options)
    return None


def _by_option_text(text: str, options: dict[str, str]) -> str | None:
    low = text.lower()
    hits = []
    for letter, option in options.items():
        opt = option.lower().strip().rstrip(".")
        if not opt:
            continue
        for m in re.finditer(re.escape(opt), low):
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


def mc_prompt(question: str, options: dict[str, str]) -> str:
    """The question posed with lettered options, as MedQA does."""
    lines = [question.strip(), ""] + [f"{k}. {v}" for k, v in sorted(options.items())]
    return "\n".join(lines) + "\n\nAnswer with the letter of the correct option."
