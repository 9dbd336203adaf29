"""Domain actions of the knowledge app: ingestion, retrieval, search, embeddings."""
