"""Where a model or a dataset comes from: a local path, this machine's hub cache, or the hub — decided here,
once per name, before anything loads.

Why: transformers and datasets find out late and slowly (an unreachable endpoint: a minute of retries and two
dozen lines; a gated model and a misspelled one both reported as "not available offline"), and a hospital's GPU
nodes are air-gapped as a rule. One request with a short timeout says which of these it is, with the fix:
`hf auth login` for a gated model, a did-you-mean from the cache for a typo, and for an offline node the two
ways in (`hf download` where the hub is reachable and copy HF_HOME, or a local path). When the hub cannot be
reached but the cache has the files, the process goes offline at once instead of retrying on every file.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from pathlib import Path

from medsft.errors import MedsftError

TIMEOUT_S = 5.0  # one request; a closed port answers at once, an unroutable address waits this long
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_hub_id(name: str) -> bool:
    """A name the hub would resolve: not built in, not an existing or path-looking local name."""
    from medsft.paths import looks_local

    return isinstance(name, str) and not name.startswith("builtin:") and not looks_local(name) \
        and not Path(name).expanduser().exists() and HUB_ID.fullmatch(name) is not None


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_ids(kind: str) -> list[str]:
    """The ids of this kind ("model" or "dataset") the local hub cache holds."""
    prefix = f"{kind}s--"
    try:
        return sorted(p.name[len(prefix):].replace("--", "/") for p in cache_dir().iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def in_cache(repo_id: str, kind: str, revision: str | None) -> bool:
    """The cache has a snapshot of the revision (what an offline load reads)."""
    snapshot = cache_dir() / f"{kind}s--{repo_id.replace('/', '--')}" / "snapshots" / \
        (cached_commit(repo_id, kind, revision) or revision or "")
    return snapshot.name != "snapshots" and snapshot.is_dir() and any(snapshot.iterdir())


_COMMITS: dict[tuple[str, str, str | None], str] = {}  # (kind, id, revision) -> the commit the hub answered with
_UNANSWERED: list[str] = []  # the hub's failure that made this process go offline (go_offline), if any


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def why_offline() -> str:
    return f"the hub did not answer ({_UNANSWERED[0]})" if _UNANSWERED else "the hub is off (HF_HUB_OFFLINE=1)"


def go_offline(reason: str) -> None:
    """Every later load in this process (and its children) reads the cache without asking the hub."""
    from huggingface_hub import constants

    _UNANSWERED.append(reason)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:  # already imported: datasets keeps its own copy of the switch
        import sys

        if "datasets" in sys.modules:
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    except AttributeError:
        pass


def ways_in(repo_id: str, kind: str, where: str, revision: str | None = None) -> str:
    flag = (" --repo-type dataset" if kind == "dataset" else "") + (f" --revision {revision}" if revision else "")
    return (f"on a machine that reaches the hub run `hf download {repo_id}{flag}` and copy its HF_HOME "
            f"(~/.cache/huggingface) here, or set {where} to a local {'directory' if kind == 'model' else 'file'}")


def page(repo_id: str, kind: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"


@functools.lru_cache(maxsize=32)
def check_available(repo_id: str, kind: str = "model", revision: str | None = None, where: str = "model.name") -> str:
    """"cache" or "hub": where `repo_id` will be read from; a MedsftError naming the fix otherwise. A local path
    or a built-in name is "local" without a request."""
    if not is_hub_id(repo_id):
        from medsft.paths import looks_local

        if repo_id.startswith("builtin:") or looks_local(repo_id) or Path(repo_id).expanduser().exists():
            return "local"
        revision_key = "model.revision" if kind == "model" else f"{where.rsplit('.', 1)[0]}.revision"
        raise MedsftError(f"{repo_id!r} is neither a local path nor a hub id (org/name)",
                          f"write the revision in {revision_key}, not after an @" if "@" in repo_id else
                          "give a hub id like Qwen/Qwen3-0.6B, or the path of a local "
                          f"{'directory' if kind == 'model' else 'file'}", where)
    cached = in_cache(repo_id, kind, revision)
    at = f" at revision {revision}" if revision else ""
    if offline():
        if cached:
            return "cache"
        raise MedsftError(f"{kind} {repo_id!r}{at} is not in this machine's hub cache ({cache_dir()}) and "
                          f"{why_offline()}", ways_in(repo_id, kind, where, revision), where)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    try:
        info = HfApi().repo_info(repo_id, repo_type=kind, revision=revision, timeout=TIMEOUT_S)
        if info.sha:
            _COMMITS[(kind, repo_id, revision)] = info.sha
        return "hub"
    except RevisionNotFoundError:
        raise MedsftError(f"{kind} {repo_id!r} has no revision {revision!r}", "check its branches and tags on "
                          f"{page(repo_id, kind)}, or leave the revision out for main", where) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise MedsftError(f"the hub refused {kind} {repo_id!r} ({status}): it is gated or private (or does not "
                              "exist)", f"accept its terms on {page(repo_id, kind)}, then log in with `hf auth login` "
                              f"(or set HF_TOKEN){suggestion(repo_id, kind)}", where) from None
        if status == 404:
            local = f" (nor is it a local {'directory' if kind == 'model' else 'file'} here)" if "/" in repo_id else ""
            raise MedsftError(f"{kind} {repo_id!r} does not exist on the hub{local}", "check the id (org/name)"
                              f"{suggestion(repo_id, kind)}", where) from None
        if not cached:
            raise MedsftError(f"the hub answered {status} for {kind} {repo_id!r}",
                              ways_in(repo_id, kind, where, revision), where) from None
        reason = f"{status}"
    except Exception as err:  # no network, DNS, a closed port, a proxy: the request never got an answer
        if not cached:
            from huggingface_hub import constants

            raise MedsftError(f"the hub ({constants.ENDPOINT}) cannot be reached for {kind} {repo_id!r} "
                              f"({type(err).__name__})", ways_in(repo_id, kind, where, revision), where) from None
        reason = type(err).__name__
    go_offline(reason)  # the cache has it and the hub does not answer: read the cache without retrying per file
    return "cache"


def cached_commit(repo_id: str, kind: str, revision: str | None) -> str | None:
    """The commit this machine's hub cache points the revision at (what an offline load reads)."""
    ref = cache_dir() / f"{kind}s--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


@functools.lru_cache(maxsize=32)
def commit(repo_id: str, kind: str, revision: str | None) -> str:
    """The commit a load of `repo_id` reads (a data cache's identity): a full commit id as written; the hub's
    answer (check_available's, or one request); else the cache's; else the revision as written."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    if (kind, repo_id, revision) not in _COMMITS and not offline():
        try:
            check_available(repo_id, kind, revision, "data.source")
        except MedsftError:
            pass  # unreachable or unknown: the cache decides, as it does for the load
    return _COMMITS.get((kind, repo_id, revision)) or cached_commit(repo_id, kind, revision) or revision or "main"


def suggestion(repo_id: str, kind: str) -> str:
    close = difflib.get_close_matches(repo_id, cached_ids(kind), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r} (in this machine's cache)?" if close and close[0] != repo_id else ""


def check_push(hub_model_id: str | None, where: str = "training.push_to_hub") -> None:
    """TRL's `push_to_hub` pushes at the end of training: a node that cannot push must say so before step 1."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    fix = (f"set {where}: false and push the adapter later from a connected machine (`hf upload REPO_ID "
           "OUTPUT_DIR/adapter`)")
    if offline():
        raise MedsftError(f"push_to_hub is on but {why_offline()}", fix, where)
    if not get_token():
        raise MedsftError("push_to_hub is on but there is no hub token",
                          f"log in with `hf auth login` (or set HF_TOKEN) with write access, or {fix}", where)
    try:
        hf_raise_for_status(get_session().get(f"{constants.ENDPOINT}/api/whoami-v2", headers=build_hf_headers(),
                                              timeout=TIMEOUT_S))
    except Exception as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        what = f"the hub refused the token ({status})" if status in (401, 403) else \
            f"the hub cannot be reached ({type(err).__name__})"
        raise MedsftError(f"push_to_hub is on but {what}", f"log in again with `hf auth login`, or {fix}", where) \
            from None
