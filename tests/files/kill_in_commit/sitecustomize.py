"""Loaded by a medsft process (PYTHONPATH) with MEDSFT_TEST_KILL_IN_COMMIT set: it dies like `kill -9` (no cleanup)
after renaming the first file of a unit of files into place (medsft/io/outputs.py Staging.commit)."""

import os

if os.environ.get("MEDSFT_TEST_KILL_IN_COMMIT"):
    import medsft.io.outputs as outputs

    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if not str(dst).endswith(outputs.PENDING):
            os._exit(137)

    original = outputs.Staging.commit

    def commit(self, last):
        outputs.os.replace = replace_then_die
        try:
            original(self, last)
        finally:
            outputs.os.replace = real_replace

    outputs.Staging.commit = commit
