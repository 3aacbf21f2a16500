-- The extraction switches in force when a note was processed (lexicon gate and floor, event
-- floor, status rules, TE mode), as the engine reports them: two runs with the same weights
-- but different switches can give different results, and informaticians must tell them
-- apart. Empty for rows written before this column existed.
ALTER TABLE extraction_results ADD COLUMN engine_options text NOT NULL DEFAULT '';
