"""Meta-sparsity: λ learned with MAML-style inner and outer loops.

`inner_loop` (the differentiable inner steps), `module` (MetaSparsityModule), `meta_test`
(fine-tuning θ*, λ* on seen and unseen tasks) and `pipeline` (`lightning-mtl meta`). The
meta-batches come from `datamodules.MetaTaskDataModule` (data layer). The names below are
imported on first use (`lightning_mtl._lazy`): the inner loop (layer 1) runs without Lightning.
"""

from typing import TYPE_CHECKING

from lightning_mtl._lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lightning_mtl.meta.inner_loop": ["adapt", "group_lasso", "group_lasso_grad"],
        "lightning_mtl.meta.meta_test": ["MetaTestOptions", "check_meta_test", "meta_test"],
        "lightning_mtl.meta.module": ["MetaSparsityModule"],
    },
)
