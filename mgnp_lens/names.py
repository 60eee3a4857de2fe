"""The vocabulary of choices that the command line offers, in one module that imports nothing heavy: ``mgnp
--help`` is built from it without importing torch. The modules that implement each choice import it from here.
"""

from __future__ import annotations

#: What a pruned node outputs (:mod:`mgnp_lens.ablation`).
ABLATIONS = ("corrupted", "zero", "mean")
#: How the corrupted activations are obtained during training (:mod:`mgnp_lens.hooks`).
CORRUPTION_MODES = ("batch", "cache")
#: The splits a circuit can be evaluated on (the last three: held-out templates and corruptions).
EVAL_SPLITS = ("train", "validation", "test", "test_templates", "test_corruption", "test_ood")
#: How a model is wrapped (:func:`mgnp_lens.models.load_model`).
BACKENDS = ("auto", "hooked", "bridge")
#: The built-in tasks (:data:`mgnp_lens.tasks.TASKS`).
TASK_NAMES = ("gp", "gt", "ioi")
#: The programs of :data:`mgnp_lens.tasks.tracr.LIBRARY`, in its order.
TRACR_PROGRAMS = ("reverse", "xproportion", "hist", "sort_unique", "sort", "frac_prevs", "pair_balance", "shuffle_dyck",
                  "shift_by", "detect_pattern")
#: The reference circuits (:func:`mgnp_lens.reference.reference_names`).
REFERENCE_NAMES = ("gt", "gt-acdc", "gt-hanna", "ioi", *sorted(f"tracr-{n}" for n in TRACR_PROGRAMS))
