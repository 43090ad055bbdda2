"""Loaded by the worker's interpreter (PYTHONPATH): every checkpoint save takes MEDSFT_TEST_SLOW_SAVE seconds more,
as a real model's does, and leaves `saving-<step>` in the run directory when it starts (what the test waits on)."""

import os
import time

if os.environ.get("MEDSFT_TEST_SLOW_SAVE"):
    import transformers

    original = transformers.Trainer._save_checkpoint

    def slow_save(self, model, trial):
        started = os.path.join(self.args.output_dir, f"saving-{self.state.global_step}")
        os.makedirs(self.args.output_dir, exist_ok=True)
        open(started, "w").close()
        time.sleep(float(os.environ["MEDSFT_TEST_SLOW_SAVE"]))  # the simulated cost of a large save
        return original(self, model, trial)

    transformers.Trainer._save_checkpoint = slow_save
