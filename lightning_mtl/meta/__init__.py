"""Meta-sparsity: λ learned with MAML-style inner and outer loops.

`inner_loop` (the differentiable inner steps), `module` (MetaSparsityModule), `meta_test`
(fine-tuning θ*, λ* on seen and unseen tasks) and `pipeline` (`lightning-mtl meta`). The
meta-batches come from `datamodules.MetaTaskDataModule` (data layer).
"""

from lightning_mtl.meta.inner_loop import adapt, group_lasso, group_lasso_grad
from lightning_mtl.meta.meta_test import MetaTestOptions, check_meta_test, meta_test
from lightning_mtl.meta.module import MetaSparsityModule

__all__ = [
    "MetaSparsityModule",
    "MetaTestOptions",
    "adapt",
    "check_meta_test",
    "group_lasso",
    "group_lasso_grad",
    "meta_test",
]
