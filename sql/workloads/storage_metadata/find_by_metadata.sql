-- storage_metadata workload: a department's documents of one type (JSONB containment on
-- the GIN index), newest first. Weight 4.
\set d random_exponential(0, 7, 3.0)
\set t random(0, 11)
SELECT bucket, key, size_bytes, modified_at
FROM objects
WHERE metadata @> sm_metadata_filter(:d, :t)
ORDER BY modified_at DESC
LIMIT 50;
