-- storage_metadata workload: the lifecycle rule: delete up to 10 of a bucket's objects not
-- modified for 180 days, oldest first, with their version history, in one statement.
-- Weight 3. SKIP LOCKED leaves objects being written to the next run.
\set n random(1, 100000)
WITH gone AS (
    DELETE FROM objects
    WHERE object_id IN (
        SELECT object_id
        FROM objects
        WHERE bucket = sm_bucket(:n) AND modified_at < now() - '180 days'::interval
        ORDER BY modified_at
        LIMIT 10
        FOR UPDATE SKIP LOCKED
    )
    RETURNING bucket, key
)
DELETE FROM object_versions AS v
USING gone
WHERE v.bucket = gone.bucket AND v.key = gone.key;
