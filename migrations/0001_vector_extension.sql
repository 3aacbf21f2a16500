-- pgvector powers the demonstration index (retrieval-augmented prompts).
CREATE EXTENSION IF NOT EXISTS vector;
