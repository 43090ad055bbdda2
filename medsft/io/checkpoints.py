"""Which checkpoint a run continues from: the rules of resuming, in one place.

Why: `--resume auto` must never pick a half-written checkpoint (Trainer writes trainer_state.json last,
so a checkpoint is complete once it parses), and `--resume PATH` must be checked before anything heavy
is imported. Both the CLI and training read these rules from here.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from medsft.errors import MedsftError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


IDENTITY = "medsft-run.json"  # the identity of the run that wrote a checkpoint (RunSpec.identity)
ASIDE = ".medsft-previous"  # the previous run's files while `--resume never` starts over (set_aside)
# What Trainer, PEFT, DeepSpeed, FSDP and medsft write into a checkpoint; anything else in one is the user's.
WRITTEN = re.compile(r"^(adapter_model\.safetensors|adapter_config\.json|README\.md|optimizer\.pt|scheduler\.pt"
                     r"|scaler\.pt|rng_state(_\d+)?\.pth|trainer_state\.json|training_args\.bin|medsft-run\.json"
                     r"|latest|zero_to_fp32\.py|global_step\d+|pytorch_model_fsdp_\d+|optimizer_\d+"
                     r"|tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json"
                     r"|chat_template\.(jinja|json)|vocab\.(json|txt)|merges\.txt)$")
RUN_FILES = ("metrics.jsonl", "loss.png", "rows_seen.json")  # the run directory's own files besides checkpoints


def is_complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last; a checkpoint is complete once it parses and the weights and
    states it names are readable (an empty, truncated or weightless checkpoint is not)."""
    import zipfile

    checkpoint = Path(checkpoint)
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = checkpoint / "adapter_model.safetensors"
    sharded = any(checkpoint.glob("global_step*")) or any(checkpoint.glob("pytorch_model_fsdp*"))
    if weights.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as fh:
                list(fh.keys())
        except Exception:  # safetensors raises its own error types for a damaged file
            return False
    elif not sharded:
        return False
    for state in [*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]:  # torch.save writes zip archives
        try:
            with zipfile.ZipFile(state) as archive:
                if archive.testzip() is not None:
                    return False
        except (OSError, zipfile.BadZipFile):
            return False
    return True


JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
              type(None): "null"}


def identity_of(checkpoint: Path) -> dict | None:
    """The identity of the run that wrote `checkpoint`; None when it has none (an older medsft, a copy made by
    hand: `adapter_mismatches` then checks what can be checked). One that is there but does not read as a
    mapping is refused: an unreadable identity is no match."""
    checkpoint = Path(checkpoint)
    path = checkpoint / IDENTITY
    if not path.exists() and not path.is_symlink():
        return None
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(found, dict) else f"holds {JSON_TYPES.get(type(found), 'no mapping')}, not a mapping"
    except (OSError, ValueError) as err:  # a damaged, truncated, non-UTF-8 or unreadable file
        problem = f"cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:80]})"
    if problem is not None:
        raise MedsftError(f"the identity of checkpoint {checkpoint.name} {problem}, so whether it belongs to this run "
                          "cannot be told", f"train into a new output.dir, or delete {checkpoint} (--resume never "
                          "starts over and removes the run's checkpoints)", str(path))
    return found


def adapter_mismatches(checkpoint: Path, lora: dict) -> tuple[list[str], list[str]]:
    """(what stops the checkpoint's adapter from loading into the recipe's LoRA, what it would silently change):
    rank and adapted modules from the safetensors header (shapes without loading a tensor) and
    adapter_config.json; alpha, dropout and bias from adapter_config.json. `lora`: the identity's lora section."""
    checkpoint = Path(checkpoint)
    try:
        config = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    ranks, modules = set(), set()
    weights = checkpoint / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():
                for part in (".lora_A.", ".lora_embedding_A"):
                    if part in key:
                        modules.add(key.split(part)[0].removeprefix("base_model.model."))
                        shape = fh.get_slice(key).get_shape()
                        if shape and 0 not in shape:  # a ZeRO-3 placeholder holds no shape
                            ranks.add(shape[0])
    if not ranks and isinstance(config.get("r"), int):
        ranks = {config["r"]}
    shapes, settings = [], []
    if ranks and ranks != {lora.get("rank")}:
        shapes.append(f"lora.rank is {lora.get('rank')} but the checkpoint's is {'/'.join(map(str, sorted(ranks)))}")
    targets = lora.get("target_modules")
    if modules and isinstance(targets, list):  # PEFT adapts a module whose name is a target or ends in .target
        def hit(name: str, target: str) -> bool:
            return name == target or name.endswith("." + target)

        extra = sorted(m for m in modules if not any(hit(m, t) for t in targets))
        missing = [t for t in targets if not any(hit(m, t) for m in modules)]
        if extra or missing:
            leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
            shapes.append(f"lora.target_modules is {targets} but the checkpoint adapts {leaves}")
    for key, theirs in (("alpha", "lora_alpha"), ("dropout", "lora_dropout"), ("bias", "bias")):
        if theirs in config and lora.get(key) is not None and config[theirs] != lora[key]:
            settings.append(f"lora.{key} is {lora[key]!r} but the checkpoint's is {config[theirs]!r}")
    return shapes, settings


def changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """`key old → new` for every leaf that differs between two identities."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} → {b!r}")
    return out


def quiet(line: str) -> None:
    """The default `notify`: a caller that shows notices passes its own."""


def complete_checkpoints(output_dir: str, notify: Callable[[str], None] = quiet) -> list[Path]:
    """Checkpoints whose save finished, oldest first; incomplete ones are skipped (and `notify` says so)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            if is_complete(child):
                found.append((int(match.group(1)), child))
            else:
                notify(f"skipping incomplete checkpoint {child}")
    return [path for _, path in sorted(found)]


def check_resume_argument(resume: str) -> None:
    """`--resume auto|never|PATH`: a PATH must be a complete checkpoint (checked before any heavy import)."""
    if resume not in ("auto", "never") and not is_complete(Path(resume)):
        raise MedsftError(f"--resume {resume!r} is not a complete checkpoint directory",
                          "pass a checkpoint-N directory with trainer_state.json, or --resume auto")
    if resume not in ("auto", "never"):
        identity_of(Path(resume))  # an unreadable identity is refused before any heavy import, too


def resume_point(resume: str, output_dir: str, identity: dict | None = None,
                 notify: Callable[[str], None] = quiet) -> str | None:
    """The checkpoint to continue from, or None to start over. With the run's `identity` it fails closed:
    auto-resume refuses a checkpoint another recipe wrote (it would continue a different training silently),
    an explicit PATH continues with a notice listing what changed; an unreadable identity is refused either
    way, and so is an adapter that cannot load into the recipe's LoRA (checked before loading anything)."""
    if resume == "never":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir, notify)
        if not done:
            return None
        checkpoint = done[-1]
    else:
        check_resume_argument(resume)
        checkpoint = Path(resume)
    theirs = identity_of(checkpoint)
    if identity is None:
        return str(checkpoint) if resume == "auto" else resume
    shapes, settings = adapter_mismatches(checkpoint, identity.get("lora") or {})
    if theirs is not None and theirs != identity and resume == "auto":
        changed = changes(theirs, identity)
        anyway = "" if shapes else f", or --resume {checkpoint} to continue from it anyway"
        raise MedsftError(f"output.dir {output_dir!r} holds a checkpoint of a different run (changed: "
                          f"{'; '.join(changed[:6])}{' …' if len(changed) > 6 else ''})",
                          f"pass --resume never to start over, choose a new output.dir{anyway}")
    if shapes:
        raise MedsftError(f"checkpoint {checkpoint} holds an adapter that cannot load into this recipe's LoRA "
                          f"({'; '.join(shapes)})", "set the recipe's lora values to the checkpoint's to continue "
                          "it, or train into a new output.dir (--resume never starts over)", output_dir)
    if theirs is None:
        if settings and resume == "auto":
            raise MedsftError(f"checkpoint {checkpoint} has no medsft identity and its adapter differs from the "
                              f"recipe ({'; '.join(settings)})", "set the recipe's lora values to the checkpoint's, "
                              f"pass --resume never to start over, or --resume {checkpoint} to continue anyway",
                              output_dir)
        notify(f"checkpoint {checkpoint} has no medsft identity (an older medsft or a copy): only its adapter "
               f"could be checked against the recipe{' (' + '; '.join(settings) + ')' if settings else ''}")
    elif theirs != identity:
        notify(f"continuing from {resume} although the run changed: {'; '.join(changes(theirs, identity))}")
    return str(checkpoint) if resume == "auto" else resume



def set_aside(output_dir: str | Path) -> list[str]:
    """`--resume never`: move the previous run's checkpoints and metrics into ASIDE, where they stay until the new
    run's first complete checkpoint (`discard_aside`) or go back if it fails before (`restore_aside`). Only what
    medsft wrote moves: a file of the user's inside a checkpoint stays where it is. Returns those files' paths
    (relative to `output_dir`). An ASIDE already there (a start-over killed before its first checkpoint) is kept
    as it is: it is still the last complete run."""
    out = Path(output_dir)
    aside = out / ASIDE
    kept: list[str] = []
    if aside.exists():
        return kept
    for child in sorted(out.iterdir()) if out.is_dir() else []:
        if CHECKPOINT_RE.match(child.name) and child.is_dir() and not child.is_symlink():
            for entry in sorted(child.iterdir()):
                if WRITTEN.match(entry.name) and not entry.is_symlink():
                    (aside / child.name).mkdir(parents=True, exist_ok=True)
                    entry.rename(aside / child.name / entry.name)
                else:
                    kept.append(f"{child.name}/{entry.name}")
            if not any(child.iterdir()):
                child.rmdir()
        elif child.name in RUN_FILES and child.is_file() and not child.is_symlink():
            aside.mkdir(exist_ok=True)
            child.rename(aside / child.name)
    return kept


def restore_aside(output_dir: str | Path) -> bool:
    """Put the set-aside run back (the new run failed before its first checkpoint): its files replace what the
    failed run wrote under the same names. True when there was one."""
    out = Path(output_dir)
    aside = out / ASIDE
    if not aside.is_dir():
        return False
    for entry in sorted(aside.iterdir()):
        if entry.is_dir():
            (out / entry.name).mkdir(exist_ok=True)
            for inner in entry.iterdir():
                remove(out / entry.name / inner.name)
                inner.rename(out / entry.name / inner.name)
        else:
            remove(out / entry.name)
            entry.rename(out / entry.name)
    shutil.rmtree(aside)
    return True


def discard_aside(output_dir: str | Path) -> bool:
    """The new run has a complete checkpoint (or finished): the set-aside run goes. True when there was one."""
    aside = Path(output_dir) / ASIDE
    if not aside.is_dir():
        return False
    shutil.rmtree(aside)
    return True


def remove(path: Path) -> None:
    """Delete a file or directory medsft wrote (a failed run's own checkpoint files)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
