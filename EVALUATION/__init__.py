"""Evaluation: features, weighted kNN monitor, ACC/ASR metrics, BadEncoder's downstream MLP."""
from EVALUATION.downstream import DownstreamMLP, train_downstream
from EVALUATION.features import extract_features
from EVALUATION.knn import knn_monitor, knn_predict
from EVALUATION.metrics import accuracy, attack_success_rate, backdoor_subset

__all__ = [
    "DownstreamMLP", "train_downstream", "extract_features", "knn_monitor", "knn_predict",
    "accuracy", "attack_success_rate", "backdoor_subset",
]
