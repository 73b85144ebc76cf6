"""Mutual-information analysis of poisons (`miue mi`): estimators of I(X; Y) for paired samples
(histogram, KSG k-NN, MINE), their sliced versions for high-dimensional features, and the
feature geometry of the paper's theorem (intra-class cosine, class-covariance log-det)."""

from miue_ext.mutual_info.histogram import histogram_mi
from miue_ext.mutual_info.ksg import ksg_mi
from miue_ext.mutual_info.mine import mine_mi, mine_mi_batched
from miue_ext.mutual_info.sliced import ESTIMATORS, sliced_mi

__all__ = ["histogram_mi", "ksg_mi", "mine_mi", "mine_mi_batched", "sliced_mi", "ESTIMATORS"]
