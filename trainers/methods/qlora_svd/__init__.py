"""qlora-svd: the obvious competitor to QDyLoRA. One QLoRA run at r_max, its update B @ A truncated by SVD to every
rank: the factors are stored in singular-value order, so rank b is the prefix A[:b], B[:, :b] (the best rank-b
approximation of the trained update) and every rank sweeps and exports like QDyLoRA's. The scale stays what
training used, alpha / r_max, at every b; the adapter's meta says so ("scaling": "alpha/r_max").

    from trainers.methods.qlora_svd.layer import svd_ordered_factors   # the math, one pair of factors
    from trainers.methods.qlora_svd.model import svd_order_adapter     # a saved QLoRA adapter -> a qlora-svd one

The names load lazily, so registering the method imports no torch.
"""

from trainers.methods import MethodSpec, register_method

register_method(MethodSpec(
    name="qlora-svd", label="QLoRA-SVD", trainer="trainers.methods.qlora_svd.method:SvdTruncatedLoraMethod",
    base="config", rank_dynamic=True, samples_rank=False,
    summary="one QLoRA run at r_max, truncated by SVD to every rank r_min..r_max (scale alpha/r_max)",
))
