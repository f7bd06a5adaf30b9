#!/bin/sh
# %test of every definition in containers/: run at the end of `containers/build.sh` and by
# `apptainer test IMAGE`. Fails unless the packages import and the CLI answers.
set -eu
python - <<'PY'
import importlib.metadata as md

import inat, jobs  # noqa: F401  the project itself
import keras
import tensorflow as tf

gpus = tf.config.list_physical_devices("GPU")
print(f"inat-jobs {md.version('inat-jobs')}: tensorflow {tf.__version__}, keras {keras.__version__}, "
      f"GPUs: {len(gpus)}")
PY
inat-jobs --help >/dev/null
echo "self-test passed"
