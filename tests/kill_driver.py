"""`python tests/kill_driver.py MOMENT TRAIN_ARGS...`: runs `python -m mmjax.train TRAIN_ARGS`
with a hook that SIGKILLs the process at one moment of a cleanup, so that the kill tests
(tests/test_resume_cleanup.py) land it there every time:

    delete          midway through Orbax deleting an old step (past `keep`): its
                    data_iterator/ and commit files are gone, its state/ is still there
    export_weights  during an export, once the new weights folder is written, before the
                    bundle's metadata names it
    export_meta     during an export, once the new metadata is in its temporary file, before
                    it replaces the old one
"""

import os
import shutil
import signal
import sys


def _die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _hook_delete():
    from orbax.checkpoint._src.path import deleter

    def delete_midway(self, step, target):
        shutil.rmtree(os.path.join(target, "data_iterator"))
        for name in ("_CHECKPOINT_METADATA", "commit_success.txt"):
            os.remove(os.path.join(target, name))
        print(f"kill_driver: SIGKILL midway through deleting step {step}", flush=True)
        _die()

    deleter.StandardCheckpointDeleter._delete_step_permanently = delete_midway


def _hook_export_weights():
    from mmjax.storage import paths

    def sync_then_die(path):
        print(f"kill_driver: SIGKILL once {path} is written", flush=True)
        _die()

    paths.sync_tree = sync_then_die


def _hook_export_meta():
    replace = os.replace

    def replace_or_die(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith(".json") and os.path.basename(os.path.dirname(dst)) in (
            "tokenizer",
            "fourm",
        ):
            print(f"kill_driver: SIGKILL before {src} replaces {dst}", flush=True)
            _die()
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_or_die


HOOKS = {
    "delete": _hook_delete,
    "export_weights": _hook_export_weights,
    "export_meta": _hook_export_meta,
}

if __name__ == "__main__":
    moment, args = sys.argv[1], sys.argv[2:]
    HOOKS[moment]()
    from mmjax.train.__main__ import main

    main(args)
