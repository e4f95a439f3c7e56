"""The four Pik-Fix sub-networks (restoration, similarity, SPHist, colorization) and the global tone head."""

from pikfix.nets.colorization import ColorizationNet
from pikfix.nets.restoration import MultiLevelRDN
from pikfix.nets.similarity import SimilarityNet
from pikfix.nets.sphist import SimilarityMap, SPHist
from pikfix.nets.tone import GlobalTone

__all__ = ["ColorizationNet", "GlobalTone", "MultiLevelRDN", "SPHist", "SimilarityMap", "SimilarityNet"]
