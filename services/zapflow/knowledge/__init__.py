"""Knowledge bases and embeddings: the embedding service (`zapflow embedding`), see docs/knowledge.md."""
