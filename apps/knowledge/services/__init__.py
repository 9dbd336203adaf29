"""Domain actions of the knowledge app: ingestion, retrieval, embeddings, the directory."""
