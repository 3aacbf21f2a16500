-- Demonstration pool for retrieval-augmented prompts: training examples of each task,
-- embedded by their INPUT only (embedding the target would leak gold answers into retrieval).
CREATE TABLE retrieval_examples (
    task           text        NOT NULL,
    example_id     text        NOT NULL,
    input          text        NOT NULL,
    target         text        NOT NULL,
    -- lower-cased, whitespace-collapsed input: lets a query exclude itself and its exact copies
    input_key      text        NOT NULL,
    embedding      vector(384) NOT NULL,
    -- which build produced the row, so a stale index can be detected
    index_version  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, example_id)
);

-- Approximate nearest neighbours by cosine distance (the embeddings are unit vectors).
CREATE INDEX retrieval_examples_embedding_hnsw
    ON retrieval_examples USING hnsw (embedding vector_cosine_ops);

-- Per-task counts and exact scans of small task pools. (The primary key also leads with
-- task; this narrower index is kept so the plan does not depend on the key's shape.)
CREATE INDEX retrieval_examples_task ON retrieval_examples (task);
