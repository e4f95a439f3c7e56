"""The four Pik-Fix sub-networks: restoration, similarity, SPHist and colorization."""

from pikfix.nets.colorization import ColorizationNet
from pikfix.nets.restoration import MultiLevelRDN
from pikfix.nets.similarity import SimilarityNet
from pikfix.nets.sphist import SimilarityMap, SPHist

__all__ = ["ColorizationNet", "MultiLevelRDN", "SPHist", "SimilarityMap", "SimilarityNet"]
