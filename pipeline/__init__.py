"""Transfer learning on frozen image embeddings: data, backbone, classifiers, evaluation."""
